#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# run-only 7.2 (the guest's SCSI traffic is the same with either QEMU)
# Task management against an iSCSI LUN whose target hangs: tgtd is frozen
# (SIGSTOP) under a read and the guest resets the LUN. The reset goes to the
# target as an iSCSI LUN RESET; the target never answers, so once the
# daemon gives the silent connection up it aborts the commands itself and
# answers the guest (the reset does not wait for the target). The read is
# retried and completes with the right data after tgtd is thawed.
# (Linux's virtio-scsi driver does not abort commands on a timeout: it
# waits, so the reset is issued explicitly.)
. "$(dirname "$0")/../lib.sh"

img=$(make_disk tgt.img 64M)
start_tgtd
tgt_target 1 iqn.2026-11.test:eh "$img"
start_daemon --socket "$WORK/s0" --lun "iscsi://127.0.0.1:$TGT_PORT/iqn.2026-11.test:eh/1"
script=$(guest_script iscsi-eh <<'G'
sd=$(disk_for_lun :0:0:0)
dd if=/dev/urandom of=/tmp/blk bs=4k count=64 2>/dev/null
dd if=/tmp/blk of="$sd" bs=4k oflag=direct conv=fsync 2>/dev/null
echo FREEZE-NOW
sleep 3
t0=$(date +%s)
dd if="$sd" of=/tmp/back bs=4k count=64 iflag=direct &
reader=$!
sleep 2
sg_reset -d "$sd"
rc=$?
echo "RESET-DONE rc=$rc after $(( $(date +%s) - t0 )) s"
check '[ $rc -eq 0 ]'
wait $reader
rc=$?
echo "READ-DONE rc=$rc after $(( $(date +%s) - t0 )) s"
check '[ $rc -eq 0 ]'
check 'cmp /tmp/blk /tmp/back'
G
)
(
    for _ in $(seq 1200); do
        grep -aq FREEZE-NOW "$LOG_DIR"/guest1.log 2>/dev/null && break
        sleep 0.1
    done
    pid=$(cat "$WORK/tgtd.pid")
    kill -STOP "$pid"
    echo "tgtd frozen" >>"$LOG_DIR/events.log"
    sleep 30
    kill -CONT "$pid"
    echo "tgtd thawed" >>"$LOG_DIR/events.log"
) &
chaos=$!
# shellcheck disable=SC2046
GUEST_TIMEOUT=400 boot_guest "$script" $(vhost_scsi_dev "$WORK/s0" c0) || fail "guest checks failed"
wait "$chaos"
grep -q "tgtd thawed" "$LOG_DIR/events.log" || fail "the target was never frozen and thawed"
grep -q "logical unit reset of .* (at the iSCSI target)" "$DAEMON_LOG" ||
    fail "the guest's LUN reset did not reach the daemon"
stop_daemon
