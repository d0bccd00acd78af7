#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# run-once (the daemon's clean-up is under test, not QEMU)
# Several guest boots against one daemon (two request queues, I/O on both),
# one of them SIGKILLed in the middle of fio: the daemon's open descriptors,
# threads and memory mappings are the same after each boot as after the
# first (which may warm up the allocator), and it still serves.
. "$(dirname "$0")/../lib.sh"

disk=$(make_disk d0.img 64M)
start_daemon --socket "$WORK/s0,queues=2" --lun "file=$disk"

# daemon_usage: "FDS THREADS MAPS" once every accept thread is back in
# accept(2), i.e. the last connection has been torn down.
daemon_usage() {
    local i t sc busy
    for i in $(seq 600); do
        busy=0
        for t in /proc/"$DAEMON_PID"/task/*; do
            if [[ $(cat "$t/comm" 2>/dev/null) == accept-* ]]; then
                read -r sc _ <"$t/syscall" || sc=
                [[ $sc == 288 ]] || busy=1 # accept4 on x86_64
            fi
        done
        if ((!busy)); then
            echo "$(ls /proc/"$DAEMON_PID"/fd | wc -l)" \
                "$(awk '/^Threads:/ {print $2}' /proc/"$DAEMON_PID"/status)" \
                "$(wc -l </proc/"$DAEMON_PID"/maps)"
            return 0
        fi
        sleep 0.1
    done
    fail "the daemon did not go back to waiting for QEMU"
}

io=$(guest_script io <<'G'
sd=$(disk_for_lun :0:0:0)
for cpu in 0 1; do
    taskset -c $cpu fio --name=s$cpu --filename="$sd" --ioengine=io_uring --direct=1 \
        --rw=randwrite --bs=4k --iodepth=16 --size=8M --offset=$((cpu * 8))M \
        --verify=crc32c --verify_fatal=1 --do_verify=1 --output=/tmp/fio$cpu.log &
done
wait
check 'grep -q "err= 0" /tmp/fio0.log'
check 'grep -q "err= 0" /tmp/fio1.log'
G
)
endless=$(guest_script endless <<'G'
sd=$(disk_for_lun :0:0:0)
echo FIO-RUNNING
fio --name=e --filename="$sd" --ioengine=io_uring --direct=1 --rw=randrw --bs=4k \
    --iodepth=32 --numjobs=2 --time_based --runtime=600 --output=/tmp/fio.log
G
)

# shellcheck disable=SC2046
SMP=2 boot_guest "$io" $(vhost_scsi_dev "$WORK/s0" c0 ,num_queues=2) || fail "boot 1 failed"
first=$(daemon_usage)
log "after boot 1: fds threads maps = $first"
for n in 2 3 4; do
    if ((n == 3)); then
        # QEMU killed with commands in flight.
        # shellcheck disable=SC2046
        (SMP=2 boot_guest "$endless" $(vhost_scsi_dev "$WORK/s0" c0 ,num_queues=2) || true) &
        sub=$!
        console=$LOG_DIR/guest$((GUEST_N + 1)).log
        for _ in $(seq 1200); do
            grep -aq FIO-RUNNING "$console" 2>/dev/null && break
            sleep 0.1
        done
        grep -aq FIO-RUNNING "$console" || fail "boot 3 never started fio"
        sleep 3
        qpid=$(tail -1 "$WORK/qemu.pids")
        kill -KILL "$qpid"
        wait "$sub" || true
        GUEST_N=$((GUEST_N + 1))
        log "boot 3: QEMU SIGKILLed under fio"
    else
        # shellcheck disable=SC2046
        SMP=2 boot_guest "$io" $(vhost_scsi_dev "$WORK/s0" c0 ,num_queues=2) || fail "boot $n failed"
    fi
    now=$(daemon_usage)
    log "after boot $n: fds threads maps = $now"
    [[ $now == "$first" ]] || fail "boot $n left the daemon with $now (after boot 1: $first)"
done
stop_daemon
