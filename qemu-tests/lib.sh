# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Helpers for guest scenarios. A scenario is a bash script that sources this
# file, sets up disks, starts the daemon, boots one or more guests with a
# guest-side script, checks the results and exits 0 (pass) or non-zero.
#
# Environment (set by qemu-tests/run.sh):
#   VUS_BIN     the daemon binary
#   GUEST_DIR   directory with vmlinuz and initrd (build-guest.sh)
#   QEMU        qemu-system-x86_64 to use; QEMU_ARGS extra arguments (e.g. -L DIR)
#   LOG_DIR     where this scenario keeps its logs

set -euo pipefail

: "${VUS_BIN:?}" "${GUEST_DIR:?}" "${QEMU:=qemu-system-x86_64}" "${QEMU_ARGS:=}"
: "${LOG_DIR:=$(mktemp -d)}"
mkdir -p "$LOG_DIR"

# Scratch space in RAM: disk images and sockets.
WORK=$(mktemp -d /dev/shm/vus-test.XXXXXX)
DAEMON_PID=
DAEMON_LOG=$LOG_DIR/daemon.log
GUEST_N=0

TGTD_PID=
TGT_PORT=
cleanup() {
    # Guests still running (a scenario that failed, or was killed, while a
    # guest booted in a background subshell, whose traps do not run).
    local pid
    for pid in $(cat "$WORK/qemu.pids" 2>/dev/null); do
        if [[ $(cat "/proc/$pid/comm" 2>/dev/null) == qemu* ]]; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    stop_tgtd
    if [[ -n ${DAEMON_PID} ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -KILL "$DAEMON_PID" 2>/dev/null || true
        wait "$DAEMON_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

log() {
    echo "  $*"
}

# start_tgtd: tgtd on a free loopback port ($TGT_PORT), its own control
# socket in $WORK. tgtadm_ ARGS... talks to it.
tgtadm_() {
    TGT_IPC_SOCKET=$WORK/tgt-ipc tgtadm -C 7 --lld iscsi "$@"
}
start_tgtd() {
    [[ -n $TGT_PORT ]] || TGT_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    TGT_IPC_SOCKET=$WORK/tgt-ipc tgtd -f -C 7 --iscsi portal=127.0.0.1:$TGT_PORT >>"$LOG_DIR/tgtd.log" 2>&1 &
    TGTD_PID=$!
    # Subshells may restart tgtd: the PID file is the truth.
    echo "$TGTD_PID" >"$WORK/tgtd.pid"
    local i
    for i in $(seq 100); do
        tgtadm_ --mode sys --op show >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    fail "tgtd did not start"
}
# tgt_target TID IQN IMAGE: a target with LUN 1 on IMAGE, open to all.
tgt_target() {
    tgtadm_ --mode target --op new --tid "$1" --targetname "$2"
    tgtadm_ --mode logicalunit --op new --tid "$1" --lun 1 --bstype rdwr --backing-store "$3"
    tgtadm_ --mode target --op bind --tid "$1" --initiator-address ALL
}
# kill_tgtd: the target dies (tgtd ignores SIGTERM).
kill_tgtd() {
    local pid
    pid=$(cat "$WORK/tgtd.pid" 2>/dev/null) || return 0
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    TGTD_PID=
    rm -f "$WORK"/tgt-ipc* "$WORK/tgtd.pid"
}
stop_tgtd() {
    [[ -e ${WORK:-/nonexistent}/tgtd.pid ]] || return 0
    tgtadm_ --mode sys --op update --name State -v offline >/dev/null 2>&1 || true
    kill_tgtd
}

# pr_two_paths_script: the guest side of persistent reservations on one
# iSCSI LUN reached through two controllers (host 0 and host 1: two
# sessions, two I_T nexuses at the target): path A registers and reserves,
# path B sees the reservation and conflicts, then preempts A and clears.
pr_two_paths_script() {
    guest_script ipr <<'G'
A=$(disk_for_lun /0:0:0:0); B=$(disk_for_lun /1:0:0:0)
echo "path A: $A, path B: $B"
check '[ -n "$A" ] && [ -n "$B" ] && [ "$A" != "$B" ]'
# The first command of each session may carry a unit attention.
sg_turs "$A" >/dev/null 2>&1 || true; sg_turs "$B" >/dev/null 2>&1 || true
sg_persist --out --register --param-sark=0xabc123 "$A"
sg_persist --out --reserve --param-rk=0xabc123 --prout-type=3 "$A"
sg_persist --in --read-keys "$B" | tee /tmp/k
check 'grep -q 0xabc123 /tmp/k'
sg_persist --in --read-reservation "$B" | tee /tmp/r
check 'grep -qi "Exclusive Access" /tmp/r'
check 'conflicts rd "$(sg_of $B)"'
check '! conflicts rd "$(sg_of $A)"'
sg_persist --out --release --param-rk=0xabc123 --prout-type=3 "$A"
check '! conflicts rd "$(sg_of $B)"'
sg_persist --out --register --param-sark=0x123abc "$B"
sg_persist --out --reserve --param-rk=0xabc123 --prout-type=1 "$A"
sg_persist --out --preempt --param-rk=0x123abc --param-sark=0xabc123 --prout-type=1 "$B"
check 'conflicts wr "$(sg_of $A)" || conflicts wr "$(sg_of $A)"'
sg_persist --out --clear --param-rk=0x123abc "$B"
sg_persist --in --read-keys "$A" | tee /tmp/k2
check 'grep -qi "there are NO registered reservation keys" /tmp/k2'
G
}

# start_lio: the Linux kernel's iSCSI target (LIO) in a guest of its own
# (qemu-tests/lio-target.sh lists its targets), its port 3260 forwarded to
# 127.0.0.1:$LIO_PORT; LIO_PID is its QEMU. Returns once the targets are
# set up.
LIO_PORT=
LIO_PID=
LIO_IQN=iqn.2026-12.org.vhost-user-scsi.lio
start_lio() {
    LIO_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    local console=$LOG_DIR/lio.log
    # shellcheck disable=SC2086
    "$QEMU" $QEMU_ARGS \
        -accel tcg -nodefaults -no-reboot -display none -m 512 -smp 1 \
        -kernel "$GUEST_DIR/vmlinuz" -initrd "$GUEST_DIR/initrd" \
        -append "console=ttyS0 panic=-1 quiet vus_nodisk" \
        -serial "file:$console" \
        -fw_cfg name=opt/test,file="$(dirname "${BASH_SOURCE[0]}")/lio-target.sh" \
        -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$LIO_PORT-:3260" \
        -device virtio-net-pci,netdev=n0,romfile= >"$console.qemu" 2>&1 &
    LIO_PID=$!
    local pid=$LIO_PID
    echo "$pid" >>"$WORK/qemu.pids"
    disown "$pid" # killed by cleanup, without a "Killed" job notice
    local i
    for i in $(seq 1200); do
        if grep -aq LIO-READY "$console" 2>/dev/null; then
            # Its portal listens a moment after configfs says so.
            for i in $(seq 100); do
                "$VUS_BIN" discover "iscsi://127.0.0.1:$LIO_PORT" >/dev/null 2>&1 && return 0
                sleep 0.2
            done
            fail "LIO's portal does not answer (see $console)"
        fi
        grep -aq GUEST-RESULT "$console" 2>/dev/null && fail "LIO setup failed (see $console)"
        kill -0 "$pid" 2>/dev/null || fail "the LIO guest exited (see $console.qemu)"
        sleep 0.1
    done
    fail "LIO did not come up in 120 s (see $console)"
}

# make_disk NAME SIZE: a sparse file in $WORK; prints its path.
make_disk() {
    local path=$WORK/$1
    truncate -s "$2" "$path"
    echo "$path"
}

# start_daemon ARGS...: start `vhost-user-scsi serve ARGS...` and wait until
# every --socket exists.
start_daemon() {
    RUST_LOG=${RUST_LOG:-info} "$VUS_BIN" serve "$@" >>"$DAEMON_LOG" 2>&1 &
    DAEMON_PID=$!
    local socks=() prev=
    for a in "$@"; do
        [[ $prev == --socket ]] && socks+=("${a%%,*}")
        prev=$a
    done
    local i
    for i in $(seq 100); do
        local all=1
        for s in "${socks[@]}"; do [[ -S $s ]] || all=0; done
        ((all)) && return 0
        kill -0 "$DAEMON_PID" 2>/dev/null || fail "daemon exited at start (see $DAEMON_LOG)"
        sleep 0.05
    done
    fail "daemon sockets did not appear"
}

# stop_daemon: SIGTERM, and the daemon must exit 0.
stop_daemon() {
    kill -TERM "$DAEMON_PID"
    local rc=0
    wait "$DAEMON_PID" || rc=$?
    DAEMON_PID=
    [[ $rc -eq 0 ]] || fail "daemon exited with $rc after SIGTERM"
}

# guest_args CONSOLE MONITOR SCRIPT TIMEOUT: set GUEST_ARGS to the QEMU
# arguments of a test guest (no devices): 512M of shared (memfd) memory so
# the daemon can map it, SMP from $SMP, SCRIPT as its test (fw_cfg), its
# console in CONSOLE, its monitor on the unix socket MONITOR.
guest_args() {
    local console=$1 monitor=$2 script=$3 timeout=$4
    local mem=${GUEST_MEM:-512}
    GUEST_ARGS=(
        -accel tcg -nodefaults -no-reboot -display none
        -m "$mem" -smp "${SMP:-1}"
        -object "memory-backend-memfd,id=mem,size=${mem}M,share=on" -numa node,memdev=mem
        -kernel "$GUEST_DIR/vmlinuz" -initrd "${GUEST_INITRD:-$GUEST_DIR/initrd}"
        -append "console=ttyS0 panic=-1 quiet vus_watchdog=$((timeout > 30 ? timeout - 15 : timeout * 2 / 3))"
        -serial "file:$console"
        -monitor "unix:$monitor,server=on,wait=off"
        -fw_cfg "name=opt/test,file=$script"
    )
}

# boot_guest SCRIPT [QEMU ARGS...]: boot the test guest with SCRIPT as its
# test; the remaining arguments add devices. Returns the script's exit code.
boot_guest() {
    local script=$1
    shift
    GUEST_N=$((GUEST_N + 1))
    local console=$LOG_DIR/guest$GUEST_N.log
    local monitor=$WORK/guest$GUEST_N.mon timeout=${GUEST_TIMEOUT:-240}
    guest_args "$console" "$monitor" "$script" "$timeout"
    # shellcheck disable=SC2086
    "$QEMU" $QEMU_ARGS "${GUEST_ARGS[@]}" "$@" >"$console.qemu" 2>&1 &
    local qemu_pid=$! deadline=$((SECONDS + timeout))
    echo "$qemu_pid" >>"$WORK/qemu.pids"
    while kill -0 "$qemu_pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if kill -0 "$qemu_pid" 2>/dev/null; then
        # Timed out: record what the guest, QEMU and the daemon were doing.
        # shellcheck disable=SC2086
        python3 "$(dirname "${BASH_SOURCE[0]}")/hang-dump.py" "$monitor" "$qemu_pid" \
            $DAEMON_PID "$(cat "$WORK/tgtd.pid" 2>/dev/null)" >"$console.hang" 2>&1 || true
        echo "  guest $GUEST_N timed out after $timeout s (state in $console.hang)" >&2
        kill -KILL "$qemu_pid" 2>/dev/null || true
    fi
    wait "$qemu_pid" 2>/dev/null || true
    local line
    line=$(grep -a 'GUEST-RESULT:' "$console" | tail -1 | tr -d '\r' || true)
    if [[ -z $line ]]; then
        echo "  guest $GUEST_N did not finish (see $console, $console.qemu)" >&2
        return 98
    fi
    return "${line##*: }"
}

# start_guest NAME SCRIPT [QEMU ARGS...]: start a test guest in the
# background, for scenarios that drive it themselves (live migration):
# console $LOG_DIR/NAME.log, monitor $WORK/NAME.mon; sets GUEST_PID. The
# guest may run for GUEST_TIMEOUT seconds (its watchdog reports then).
start_guest() {
    local name=$1 script=$2
    shift 2
    guest_args "$LOG_DIR/$name.log" "$WORK/$name.mon" "$script" "${GUEST_TIMEOUT:-240}"
    # shellcheck disable=SC2086
    "$QEMU" $QEMU_ARGS "${GUEST_ARGS[@]}" "$@" >"$LOG_DIR/$name.log.qemu" 2>&1 &
    GUEST_PID=$!
    echo "$GUEST_PID" >>"$WORK/qemu.pids"
    disown "$GUEST_PID"
    local i
    for i in $(seq 100); do
        [[ -S $WORK/$name.mon ]] && return 0
        kill -0 "$GUEST_PID" 2>/dev/null || fail "QEMU $name exited at start (see $LOG_DIR/$name.log.qemu)"
        sleep 0.1
    done
    fail "QEMU $name did not start"
}

# hmp NAME COMMAND...: run monitor commands in guest NAME's QEMU.
hmp() {
    local name=$1
    shift
    python3 "$(dirname "${BASH_SOURCE[0]}")/monitor.py" "$WORK/$name.mon" "$@"
}

# migrate FROM TO: live-migrate guest FROM (started with start_guest) to
# guest TO (started with start_guest ... -incoming unix:$WORK/TO.mig), wait
# until it completed, and quit FROM's QEMU.
migrate() {
    local from=$1 to=$2 out
    if ! out=$(python3 "$(dirname "${BASH_SOURCE[0]}")/monitor.py" "$WORK/$from.mon" \
                   --migrate "unix:$WORK/$to.mig" --timeout 180 2>&1); then
        echo "$out" >&2
        fail "migration $from -> $to did not complete"
    fi
    grep -E "total time|downtime" <<<"$out" | sed "s/^/  $from -> $to: /" || true
    hmp "$from" quit >/dev/null 2>&1 || true
}

# migrate_and_cancel FROM TO: start migrating guest FROM to guest TO (as
# for migrate), cancel it while it runs, and quit TO's QEMU: FROM goes on.
migrate_and_cancel() {
    local from=$1 to=$2 out
    if ! out=$(python3 "$(dirname "${BASH_SOURCE[0]}")/monitor.py" "$WORK/$from.mon" \
                   --migrate-and-cancel "unix:$WORK/$to.mig" 2>&1); then
        echo "$out" >&2
        fail "migration $from -> $to was not cancelled"
    fi
    hmp "$to" quit >/dev/null 2>&1 || true
}

# with_nested_qemu: put Debian's QEMU (binary, libraries, TCG module,
# firmware) and a minimal inner guest (/inner/vmlinuz, /inner/initrd) into
# the extra archive, so the guest can run QEMU itself. Call before
# with_daemon_binary.
with_nested_qemu() {
    local d=$WORK/extra q
    q=$(command -v qemu-system-x86_64)
    "$(dirname "${BASH_SOURCE[0]}")/build-guest.sh" "$GUEST_DIR/inner" minimal >/dev/null
    mkdir -p "$d/inner" "$d/usr/bin" "$d/usr/lib/x86_64-linux-gnu/qemu" "$d/usr/share/qemu" "$d/usr/share/seabios"
    cp "$GUEST_DIR/vmlinuz" "$d/inner/vmlinuz"
    cp "$GUEST_DIR/inner/initrd" "$d/inner/initrd"
    cp -L "$q" "$d/usr/bin/qemu-system-x86_64"
    cp -L /usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so "$d/usr/lib/x86_64-linux-gnu/qemu/"
    cp -L /usr/share/qemu/kvmvapic.bin /usr/share/qemu/linuxboot_dma.bin "$d/usr/share/qemu/"
    cp -L /usr/share/seabios/bios-256k.bin "$d/usr/share/seabios/"
    local lib
    for lib in $( (ldd "$q"; ldd /usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so) |
                  awk '/=>/ {print $3}' | sort -u); do
        mkdir -p "$d$(dirname "$lib")"
        cp -Ln "$lib" "$d$lib"
    done
}

# with_daemon_binary: boot guests of this scenario with our (stripped)
# binary as /bin/vhost-user-scsi: a second cpio archive appended to the
# initramfs (the kernel unpacks concatenated archives).
with_daemon_binary() {
    local d=$WORK/extra
    mkdir -p "$d/bin"
    strip -o "$d/bin/vhost-user-scsi" "$VUS_BIN"
    (cd "$d" && find . -print0 | cpio --null -o -H newc --quiet) > "$WORK/extra.cpio"
    # Uncompressed archive first: lz4 legacy streams have no end marker.
    cat "$WORK/extra.cpio" "$GUEST_DIR/initrd" > "$WORK/initrd"
    GUEST_INITRD=$WORK/initrd
}

# vhost_scsi_dev SOCKET ID [PROPS]: QEMU arguments for one controller with
# QEMU's default properties (plus PROPS, e.g. ",num_queues=2").
vhost_scsi_dev() {
    echo "-chardev socket,id=$2,path=$1 -device vhost-user-scsi-pci,chardev=$2${3:-}"
}

# guest_script NAME <<'EOF' ... EOF: write a guest-side script; prints its path.
# The script runs under `sh -e` with a small library available: check
# (assertion), sense_of (run an sg command, print its sense output).
guest_script() {
    local path=$WORK/$1.sh
    {
        cat <<'GLIB'
set -e
FAILED=0
check() { if ! eval "$1"; then echo "CHECK FAILED: $1"; FAILED=1; fi; }
fails() { if "$@" >/tmp/out 2>&1; then echo "EXPECTED FAILURE: $*"; cat /tmp/out; exit 1; fi; cat /tmp/out; }
disk_for_lun() { # disk_for_lun HOST:CH:TGT:LUN suffix -> /dev/sdX
    for d in /sys/class/scsi_disk/*; do
        case "$d" in *"$1") ls "$d/device/block" | head -1 | sed 's,^,/dev/,'; return;; esac
    done
}
disk_on_port() { # disk_on_port N -> the /dev/sdX whose VPD 83h names relative target port N
    for d in /sys/class/scsi_disk/*; do
        dev=/dev/$(ls "$d/device/block" | head -1)
        if sg_vpd --page=0x83 "$dev" 2>/dev/null | grep -q "Relative target port: 0x$1\$"; then
            echo "$dev"; return
        fi
    done
}
sg_of() { # sg_of /dev/sdX -> /dev/sgN
    echo /dev/$(ls /sys/block/${1#/dev/}/device/scsi_generic | head -1)
}
# rd DEV / wr DEV: READ(10) / WRITE(10) of LBA 100 straight through SG_IO;
# prints sg_raw's output (status, sense).
rd() { sg_raw -r 512 "$1" 28 00 00 00 00 64 00 00 01 00 2>&1 || true; }
wr() { dd if=/dev/zero of=/tmp/zero bs=512 count=1 2>/dev/null
       sg_raw -s 512 -i /tmp/zero "$1" 2a 00 00 00 00 64 00 00 01 00 2>&1 || true; }
conflicts() { "$@" | grep -q "Reservation Conflict"; }
sg_for_lun() {
    for d in /sys/class/scsi_device/*; do
        case "$d" in *"$1") ls "$d/device/scsi_generic" | head -1 | sed 's,^,/dev/,'; return;; esac
    done
}
GLIB
        cat
        echo 'exit $FAILED'
    } >"$path"
    echo "$path"
}

# fio_passes_script NAME [PR]: a guest script for live migration and restart
# scenarios. Path A is LUN 0 of the first controller; LUN 1 of the same
# controller is a control disk the host writes STOP into to end the test.
# Until then the guest runs fio passes on A (random writes, crc32c
# verification with verify_backlog, one job per vCPU, two request queues),
# printing FIO-RUNNING first and "fio passes: N" at the end, and fails on
# any verification error or I/O error in its kernel log. With PR, path B
# (LUN 0 of the second controller, another nexus) is used too: A registers
# and reserves Exclusive Access first, B conflicts; at the end the
# reservation still holds, B still conflicts, A releases, B reads.
fio_passes_script() {
    local pr=${2:-}
    {
        echo 'A=$(disk_for_lun /0:0:0:0); CTL=$(disk_for_lun /0:0:0:1)'
        echo 'check '"'"'[ -n "$A" ] && [ -n "$CTL" ]'"'"
        echo 'check '"'"'[ "$(ls /sys/block/${A#/dev/}/mq | wc -l)" = 2 ]'"'"
        echo 'sg_turs "$A" >/dev/null 2>&1 || true'
        if [[ -n $pr ]]; then
            cat <<'G'
B=$(disk_for_lun /1:0:0:0)
check '[ -n "$B" ]'
sg_turs "$B" >/dev/null 2>&1 || true
sg_persist --out --register --param-sark=0xa1 "$A"
sg_persist --out --reserve --param-rk=0xa1 --prout-type=3 "$A"
check 'conflicts rd "$(sg_of $B)"'
G
        fi
        cat <<'G'
echo FIO-RUNNING
pass=0
while :; do
    sg_raw -o /tmp/ctl -r 512 "$(sg_of $CTL)" 28 00 00 00 00 00 00 00 01 00 >/dev/null 2>&1 || true
    grep -q STOP /tmp/ctl 2>/dev/null && break
    for cpu in 0 1; do
        taskset -c $cpu fio --name=m$cpu --filename="$A" --ioengine=io_uring --direct=1 \
            --rw=randwrite --bs=4k --iodepth=32 --size=8M --offset=$((cpu * 8))M \
            --verify=crc32c --verify_backlog=64 --verify_fatal=1 --do_verify=1 \
            --randrepeat=0 --output=/tmp/fio$cpu.log &
    done
    wait
    pass=$((pass + 1))
    for cpu in 0 1; do
        if ! grep -q "err= 0" /tmp/fio$cpu.log; then
            echo "fio pass $pass on cpu $cpu failed:"; cat /tmp/fio$cpu.log; FAILED=1
        fi
    done
    [ $FAILED = 0 ] || break
done
echo "fio passes: $pass"
check '[ $pass -ge 1 ]'
G
        if [[ -n $pr ]]; then
            cat <<'G'
sg_persist --in --read-reservation "$A" | tee /tmp/r
check 'grep -qi "Exclusive Access" /tmp/r'
check 'grep -q 0xa1 /tmp/r'
check 'conflicts rd "$(sg_of $B)"'
check '! conflicts rd "$(sg_of $A)"'
sg_persist --out --release --param-rk=0xa1 --prout-type=3 "$A"
check '! conflicts rd "$(sg_of $B)"'
sg_persist --out --register --param-rk=0xa1 --param-sark=0 "$A"
G
        fi
        cat <<'G'
echo "--- kernel log (SCSI)"; dmesg | grep -iE "sd |scsi|virtio" | tail -20
if dmesg | grep -iE "I/O error|blk_update_request|critical"; then
    echo "I/O errors in the kernel log"; FAILED=1
fi
true
G
    } | guest_script "$1"
}

# wait_for_console NAME TEXT: until guest NAME's console shows TEXT (or the
# guest ends, or 120 s pass).
wait_for_console() {
    local i
    for i in $(seq 1200); do
        grep -aq -e "$2" -e GUEST-RESULT "$LOG_DIR/$1.log" 2>/dev/null && break
        sleep 0.1
    done
    grep -aq "$2" "$LOG_DIR/$1.log" || fail "guest $1 never printed $2 (see $LOG_DIR/$1.log)"
}

# finish_fio_passes NAME CTL: write STOP into the control disk CTL and wait
# for guest NAME to end its fio passes; fails unless its result is 0.
finish_fio_passes() {
    local name=$1 deadline line
    printf 'STOP' | dd of="$2" conv=notrunc status=none
    deadline=$((SECONDS + 300))
    while kill -0 "$GUEST_PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
    kill -0 "$GUEST_PID" 2>/dev/null && fail "guest $name did not finish (see $LOG_DIR/$name.log)"
    line=$(grep -a 'GUEST-RESULT:' "$LOG_DIR/$name.log" | tail -1 | tr -d '\r')
    grep -a "fio passes" "$LOG_DIR/$name.log" | tr -d '\r' | sed 's/^/  /'
    [[ ${line##*: } == 0 ]] || fail "guest result: ${line:-none} (see $LOG_DIR/$name.log)"
}

# migrate_back_and_forth N DEVICES_FN: guest g0 (already started with
# `DEVICES_FN src`) is migrated N times, alternately to a QEMU started with
# `DEVICES_FN dst` and `DEVICES_FN src`, a few seconds of I/O apart. Sets
# LAST_GUEST to the guest that runs at the end.
migrate_back_and_forth() {
    local n=$1 fn=$2 cur=g0 next i end
    for i in $(seq "$n"); do
        sleep 3
        next=g$i
        end=dst
        ((i % 2 == 0)) && end=src
        # shellcheck disable=SC2046
        start_guest "$next" "$MIGRATION_SCRIPT" $("$fn" "$end") -incoming "unix:$WORK/$next.mig"
        migrate "$cur" "$next"
        cur=$next
        grep -aq GUEST-RESULT "$LOG_DIR/$cur.log" && fail "fio ended before migration $i (passes too short)"
        log "migration $i completed"
    done
    LAST_GUEST=$cur
}
