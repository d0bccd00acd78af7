#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# run-only 10.0 (three guests at once: LIO's and the two ends of each migration)
# Live migration of a guest whose disk is an iSCSI LUN (LIO, the kernel's
# target, in a guest of its own) reached by two daemon processes, one per
# end: the guest runs fio random writes with crc32c verification on two
# request queues while it is migrated back and forth four times. Both
# daemons give the controller the same initiator= and port=, so at the
# target the destination's session is the same initiator port (same name
# and ISID) as the source's: the reservation the guest took at LIO before
# still holds after, and the other initiator (a second controller with its
# own nexus) still conflicts. A daemon logs its session in when its VM's
# device starts and out when it stops, so the destination never cuts the
# source's session while the source runs. Passes when every migration
# completes, every fio pass verified, and the guest logged no I/O error.
. "$(dirname "$0")/../lib.sh"

VM=iqn.2026-12.org.vhost-user-scsi:vm1
OTHER=iqn.2026-12.org.vhost-user-scsi:other
start_lio
lun=iscsi://127.0.0.1:$LIO_PORT/$LIO_IQN:plain/0,discover-portals=no
ctl=$(make_disk ctl.img 1M)
daemon_args() { # daemon_args END
    echo --socket "$WORK/a-$1,queues=2,initiator=$VM,port=1" \
        --lun "0:$lun" --lun "1:file=$ctl,share-rw" \
        --socket "$WORK/b-$1,queues=1,initiator=$OTHER,port=2" --lun "0:$lun"
}
# shellcheck disable=SC2046
start_daemon $(daemon_args src)
first=$DAEMON_PID
DAEMON_LOG=$LOG_DIR/daemon2.log
# shellcheck disable=SC2046
start_daemon $(daemon_args dst)
second=$DAEMON_PID
trap 'kill -KILL $first 2>/dev/null || true; cleanup' EXIT
# Starting the second daemon (its check login) did not disturb the first.
grep -q "logged in to" "$LOG_DIR/daemon.log" && fail "the first daemon logged in before any VM"
MIGRATION_SCRIPT=$(fio_passes_script migrate pr)

devices() { # devices END
    # shellcheck disable=SC2046
    echo $(vhost_scsi_dev "$WORK/a-$1" ca ,num_queues=2) $(vhost_scsi_dev "$WORK/b-$1" cb ,num_queues=1)
}
export SMP=2 GUEST_TIMEOUT=600
# shellcheck disable=SC2046
start_guest g0 "$MIGRATION_SCRIPT" $(devices src)
wait_for_console g0 FIO-RUNNING
migrate_back_and_forth 4 devices
finish_fio_passes "$LAST_GUEST" "$ctl"
for d in daemon daemon2; do
    if grep -q "session reinstated" "$LOG_DIR/$d.log"; then
        fail "a session was lost and reinstated in $d.log: the ends cut each other's sessions"
    fi
    log "$d: $(grep -c "logged in to" "$LOG_DIR/$d.log") login(s), $(grep -c "logged out" "$LOG_DIR/$d.log") logout(s)"
done
stop_daemon
DAEMON_PID=$first
DAEMON_LOG=$LOG_DIR/daemon.log
stop_daemon
