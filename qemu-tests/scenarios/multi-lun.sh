#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Three LUNs: a writable one, a read-only one (writes get DATA PROTECT /
# WRITE PROTECTED) and one with 4096-byte logical blocks.
. "$(dirname "$0")/../lib.sh"

d0=$(make_disk d0.img 32M)
d1=$(make_disk d1.img 32M)
d2=$(make_disk d2.img 32M)
printf 'readonly-lun' | dd of="$d1" conv=notrunc 2>/dev/null
start_daemon --socket "$WORK/s0" --lun "file=$d0" --lun "file=$d1,ro" --lun "file=$d2,block-size=4096"
script=$(guest_script multi <<'G'
lsscsi
check '[ "$(ls /sys/class/scsi_disk | wc -l)" = 3 ]'
sd0=$(disk_for_lun :0:0:0); sd1=$(disk_for_lun :0:0:1); sd2=$(disk_for_lun :0:0:2)
check '[ "$(cat /sys/block/${sd1#/dev/}/ro)" = 1 ]'
check '[ "$(blockdev --getss $sd2)" = 4096 ]'
check '[ "$(blockdev --getss $sd0)" = 512 ]'
dd if="$sd1" bs=12 count=1 2>/dev/null | grep -q readonly-lun
# WRITE(10) of one block straight to the read-only LU.
dd if=/dev/zero of=/tmp/zero bs=512 count=1 2>/dev/null
rc=0; sg_raw -s 512 -i /tmp/zero "$(sg_for_lun :0:0:1)" 2a 00 00 00 00 00 00 00 01 00 >/tmp/w 2>&1 || rc=$?
cat /tmp/w
check '[ $rc -ne 0 ]'
check 'grep -qi "data protect" /tmp/w'
check 'grep -qi "write protected" /tmp/w'
dd if=/dev/urandom of=/tmp/blk bs=4096 count=8 2>/dev/null
dd if=/tmp/blk of="$sd2" bs=4096 seek=3 oflag=direct 2>/dev/null
dd if="$sd2" bs=4096 skip=3 count=8 iflag=direct 2>/dev/null | cmp - /tmp/blk
sg_readcap -l "$sd2" | grep -q "Logical block length=4096"
G
)
# shellcheck disable=SC2046
boot_guest "$script" $(vhost_scsi_dev "$WORK/s0" c0) || fail "guest checks failed"
stop_daemon
head -c 12 "$d1" | grep -q readonly-lun || fail "read-only backstore changed"
