#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Persistent reservations passed through to an iSCSI target: two controllers
# on one tgtd LUN are two iSCSI sessions with their own initiator names, so
# tgt sees two I_T nexuses and enforces the reservation itself.
. "$(dirname "$0")/../lib.sh"

img=$(make_disk tgt.img 64M)
start_tgtd
tgt_target 1 iqn.2026-11.test:shared "$img"
url="iscsi://127.0.0.1:$TGT_PORT/iqn.2026-11.test:shared/1"
start_daemon --socket "$WORK/a,initiator=iqn.2026-11.test:path-a" --lun "$url" \
             --socket "$WORK/b,initiator=iqn.2026-11.test:path-b" --lun "$url"
script=$(pr_two_paths_script)
# shellcheck disable=SC2046
boot_guest "$script" $(vhost_scsi_dev "$WORK/a" c0) $(vhost_scsi_dev "$WORK/b" c1) || fail "guest checks failed"
stop_daemon
