#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# A guest sees one disk and reads and writes it.
. "$(dirname "$0")/../lib.sh"

disk=$(make_disk d0.img 64M)
start_daemon --socket "$WORK/s0" --lun "file=$disk"
script=$(guest_script smoke <<'G'
lsscsi
dev=$(disk_for_lun :0:0:0)
check '[ -b "$dev" ]'
echo hello | dd of=$dev bs=512 count=1 conv=sync 2>/dev/null
dd if=$dev bs=512 count=1 2>/dev/null | grep -q hello
G
)
# shellcheck disable=SC2046
boot_guest "$script" $(vhost_scsi_dev "$WORK/s0" c0)
stop_daemon
head -c 5 "$disk" | grep -q hello || fail "data not on the host file"
