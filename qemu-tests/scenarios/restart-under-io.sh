#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# run-only 10.0 (QEMU 7.2 cannot reconnect a vhost-user-scsi back-end)
# The daemon restarted under a running guest. QEMU 8.2 and later reconnect
# to a vhost-user-scsi back-end (`-chardev socket,...,reconnect-ms=`);
# QEMU 7.2 cannot, so this scenario runs on 10.0 only. A file LUN with
# O_DIRECT on a disk filesystem, two request queues, fio random writes at
# depth 32 with crc32c verification; the daemon is SIGKILLed five times
# (requests in flight at the kill are found in the inflight region QEMU
# keeps, and resubmitted by the next daemon), then stopped with SIGTERM and
# started again five times (a graceful upgrade is a new process started
# like this). Passes when every fio pass verified and the guest logged no
# I/O error.
. "$(dirname "$0")/../lib.sh"

version=$("$QEMU" --version | sed -n 's/.*version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -1)
read -r major minor <<<"$version"
if ((major * 100 + minor < 802)); then
    log "QEMU $major.$minor cannot reconnect a vhost-user-scsi back-end: nothing to test"
    exit 0
fi

dir=$(mktemp -d /var/tmp/vus-restart.XXXXXX)
trap 'rm -rf "$dir"; cleanup' EXIT
disk=$dir/d0.img
truncate -s 64M "$disk"
ctl=$(make_disk ctl.img 1M)
args=(--socket "$WORK/s0,queues=2" --lun "0:file=$disk,direct" --lun "1:file=$ctl")
start_daemon "${args[@]}"
script=$(fio_passes_script restart)

export SMP=2 GUEST_TIMEOUT=600
start_guest g0 "$script" -chardev "socket,id=c0,path=$WORK/s0,reconnect-ms=200" \
    -device vhost-user-scsi-pci,chardev=c0,num_queues=2
wait_for_console g0 FIO-RUNNING

# restart SIGNAL N: after a moment of I/O the daemon gets SIGNAL, and the
# same binary starts again.
restart() {
    sleep 2
    grep -aq GUEST-RESULT "$LOG_DIR/g0.log" && fail "fio ended before restart $2"
    kill "-$1" "$DAEMON_PID"
    wait "$DAEMON_PID" 2>/dev/null || true
    DAEMON_PID=
    local before
    before=$(grep -c "Listening on" "$DAEMON_LOG")
    start_daemon "${args[@]}"
    # The old socket file is still there: wait for the new daemon itself.
    for _ in $(seq 400); do
        (($(grep -c "Listening on" "$DAEMON_LOG") > before)) && break
        kill -0 "$DAEMON_PID" 2>/dev/null || fail "the daemon did not start again (see $DAEMON_LOG)"
        sleep 0.05
    done
    (($(grep -c "Listening on" "$DAEMON_LOG") > before)) || fail "the daemon did not listen again"
    log "restart $2 ($1)"
}
for n in 1 2 3 4 5; do restart KILL "$n"; done
for n in 6 7 8 9 10; do restart TERM "$n"; done
sleep 2
finish_fio_passes g0 "$ctl"
log "inflight resubmissions: $(grep -c "resubmitted" "$DAEMON_LOG" || true)"
stop_daemon
