#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Live migration with one daemon serving the source and the destination
# sockets of the same disk: the guest runs fio random writes with crc32c
# verification (and verify_backlog) on two request queues while it is
# migrated back and forth four times. The controllers of each end are the
# same I_T nexus (initiator= and port=): a reservation the guest took
# before still holds after, the other initiator (a second controller of the
# guest with its own nexus) still conflicts, and the guest releases it.
# A migration cancelled half-way leaves the guest running on the source,
# and the daemon stops logging dirty pages. Passes when every migration
# completes, every fio pass verified, and the guest logged no I/O error.
. "$(dirname "$0")/../lib.sh"

VM=iqn.2026-12.org.vhost-user-scsi:vm1
OTHER=iqn.2026-12.org.vhost-user-scsi:other
disk=$(make_disk d0.img 64M)
ctl=$(make_disk ctl.img 1M)
args=()
for end in src dst; do
    args+=(--socket "$WORK/a-$end,queues=2,initiator=$VM,port=1"
           --lun "0:file=$disk" --lun "1:file=$ctl"
           --socket "$WORK/b-$end,queues=1,initiator=$OTHER,port=2"
           --lun "0:file=$disk")
done
start_daemon "${args[@]}"
MIGRATION_SCRIPT=$(fio_passes_script migrate pr)

devices() { # devices END
    # shellcheck disable=SC2046
    echo $(vhost_scsi_dev "$WORK/a-$1" ca ,num_queues=2) $(vhost_scsi_dev "$WORK/b-$1" cb ,num_queues=1)
}
export SMP=2 GUEST_TIMEOUT=600
# shellcheck disable=SC2046
start_guest g0 "$MIGRATION_SCRIPT" $(devices src)
wait_for_console g0 FIO-RUNNING
# shellcheck disable=SC2046
start_guest cancelled "$MIGRATION_SCRIPT" $(devices dst) -incoming "unix:$WORK/cancelled.mig"
migrate_and_cancel g0 cancelled
grep -q "Dirty page logging stopped" "$DAEMON_LOG" || fail "logging went on after the cancelled migration"
log "a cancelled migration: the daemon stopped logging"
migrate_back_and_forth 4 devices
finish_fio_passes "$LAST_GUEST" "$ctl"
stop_daemon
