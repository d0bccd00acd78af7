#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# run-once (only the LIO guest runs in QEMU: the outer QEMU does not matter)
# Recovery against LIO: the target's machine freezes (SIGSTOP to its QEMU)
# for 25 s in the middle of verified writes and reads. The daemon finds the
# target dead (no answer to its keepalive), logs in again once it is back
# (session reinstatement: same ISID, TSIH 0, which makes LIO drop the old
# session), and sends the unfinished commands again; the load generator
# sees only a delay: no error, and every block reads back as written.
. "$(dirname "$0")/../lib.sh"

start_lio
start_daemon --socket "$WORK/v.sock" --lun "iscsi://127.0.0.1:$LIO_PORT/$LIO_IQN:plain/0"
"$VUS_BIN" bench --socket "$WORK/v.sock" --verify --qd 8 --time 50 --quiet \
    >"$LOG_DIR/bench.log" 2>&1 &
bench=$!
sleep 8
log "freezing the target for 25 s"
kill -STOP "$LIO_PID"
sleep 25
kill -CONT "$LIO_PID"
log "target running again"
wait "$bench" || fail "verified I/O across the freeze failed: $(tail -3 "$LOG_DIR/bench.log")"
cat "$LOG_DIR/bench.log"
grep -q "no answer from the target" "$DAEMON_LOG" || fail "the daemon did not notice the frozen target"
grep -q "session reinstated" "$DAEMON_LOG" || fail "no session reinstatement in the daemon log"
grep -q "errors 0, verify failures 0" "$LOG_DIR/bench.log" || fail "errors in $LOG_DIR/bench.log"
stop_daemon
