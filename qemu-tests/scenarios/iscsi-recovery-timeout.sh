#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# run-only 10.0 (the guest's SCSI traffic is the same with either QEMU)
# recovery-timeout: when the iSCSI target stays away, the guest's I/O fails
# after the timeout (instead of hanging) and works again, with the data
# written before intact, once the target is back.
. "$(dirname "$0")/../lib.sh"

img=$(make_disk tgt.img 64M)
start_tgtd
tgt_target 1 iqn.2026-11.test:rto "$img"
start_daemon --socket "$WORK/s0" \
    --lun "iscsi://127.0.0.1:$TGT_PORT/iqn.2026-11.test:rto/1,recovery-timeout=3"
script=$(guest_script iscsi-rto <<'G'
sd=$(disk_for_lun :0:0:0)
rd1() { dd if="$sd" of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null; }
dd if=/dev/urandom of=/tmp/blk bs=4k count=16 2>/dev/null
dd if=/tmp/blk of="$sd" bs=4k oflag=direct conv=fsync 2>/dev/null
echo TARGET-GO-AWAY
# Reads succeed until the target is gone; then one fails (the timeout).
t0=$(date +%s)
while rd1; do
    sleep 0.5
    [ $(( $(date +%s) - t0 )) -lt 60 ] || break
done
t1=$(date +%s)
if rd1; then echo "CHECK FAILED: reads never failed"; FAILED=1; fi
t2=$(date +%s)
echo "READ-FAILED after $((t1 - t0)) s; a later read failed in $((t2 - t1)) s"
# Past the timeout, commands fail at once instead of waiting (the kernel
# retries a few times: allow some seconds, far below its 30 s timeout).
check '[ $((t2 - t1)) -lt 10 ]'
# The target comes back: I/O resumes and the data is intact.
t0=$(date +%s)
until rd1; do
    sleep 1
    [ $(( $(date +%s) - t0 )) -lt 120 ] || break
done
dd if="$sd" of=/tmp/back bs=4k count=16 iflag=direct 2>/dev/null
check 'cmp /tmp/blk /tmp/back'
G
)
(
    for _ in $(seq 1200); do
        grep -aq TARGET-GO-AWAY "$LOG_DIR"/guest1.log 2>/dev/null && break
        sleep 0.1
    done
    sleep 1
    kill_tgtd
    echo "tgtd killed" >>"$LOG_DIR/events.log"
    for _ in $(seq 1200); do
        grep -aq READ-FAILED "$LOG_DIR"/guest1.log 2>/dev/null && break
        sleep 0.1
    done
    start_tgtd
    tgt_target 1 iqn.2026-11.test:rto "$img"
    echo "tgtd restarted" >>"$LOG_DIR/events.log"
) &
chaos=$!
# shellcheck disable=SC2046
GUEST_TIMEOUT=400 boot_guest "$script" $(vhost_scsi_dev "$WORK/s0" c0) || fail "guest checks failed"
wait "$chaos"
grep -q "no session within the recovery timeout" "$DAEMON_LOG" ||
    fail "the daemon did not fail commands after the recovery timeout"
grep -q "session reinstated" "$DAEMON_LOG" || fail "the daemon did not reinstate the session"
stop_daemon
