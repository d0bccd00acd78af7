#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# run-only 10.0 (the daemons under test are the same with either QEMU; the one-daemon scenario runs on both)
# Live migration between two daemon processes on the same file: what two
# hosts on shared storage look like. Both give share-rw (each would refuse
# the disk the other holds otherwise); the guest runs fio random writes
# with crc32c verification on two request queues while it is migrated back
# and forth four times, each hop from one daemon to the other. Passes when
# every migration completes, every fio pass verified, and the guest logged
# no I/O error. (Reservations are refused on share-rw LUNs: the
# one-daemon scenario tests them across migrations.)
. "$(dirname "$0")/../lib.sh"

VM=iqn.2026-12.org.vhost-user-scsi:vm1
disk=$(make_disk d0.img 64M)
ctl=$(make_disk ctl.img 1M)
daemon_args() { # daemon_args END
    echo --socket "$WORK/a-$1,queues=2,initiator=$VM,port=1" \
        --lun "0:file=$disk,share-rw" --lun "1:file=$ctl,share-rw"
}
# shellcheck disable=SC2046
start_daemon $(daemon_args src)
first=$DAEMON_PID
# The second daemon (the other host).
DAEMON_LOG=$LOG_DIR/daemon2.log
# shellcheck disable=SC2046
start_daemon $(daemon_args dst)
second=$DAEMON_PID
trap 'kill -KILL $first 2>/dev/null || true; cleanup' EXIT
MIGRATION_SCRIPT=$(fio_passes_script migrate)

devices() { # devices END
    vhost_scsi_dev "$WORK/a-$1" ca ,num_queues=2
}
export SMP=2 GUEST_TIMEOUT=600
# shellcheck disable=SC2046
start_guest g0 "$MIGRATION_SCRIPT" $(devices src)
wait_for_console g0 FIO-RUNNING
migrate_back_and_forth 4 devices
finish_fio_passes "$LAST_GUEST" "$ctl"
stop_daemon
DAEMON_PID=$first
DAEMON_LOG=$LOG_DIR/daemon.log
stop_daemon
