#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# sg3_utils against one LUN: INQUIRY/VPD, capacity, LUNs, opcodes, mode
# pages, UNMAP, WRITE SAME (10, 16, unmap), SYNCHRONIZE CACHE, COMPARE AND
# WRITE, GET LBA STATUS, VERIFY.
. "$(dirname "$0")/../lib.sh"

disk=$(make_disk d0.img 64M)
start_daemon --socket "$WORK/s0" --lun "file=$disk"
script=$(guest_script sg <<'G'
sd=$(disk_for_lun :0:0:0)
sg=$(sg_for_lun :0:0:0)
check '[ -b "$sd" ] && [ -c "$sg" ]'

sg_inq "$sd" | tee /tmp/inq
check 'grep -q "Vendor identification: VUSCSI" /tmp/inq'
check 'grep -q "Product identification: vhost-user-scsi" /tmp/inq'
check 'grep -q "CmdQue=1" /tmp/inq'
sg_vpd --page=0x00 "$sd" | tee /tmp/vpd0
for p in "Unit serial number" "Device identification" "Block limits" \
         "Block device characteristics" "Logical block provisioning"; do
    check "grep -q '$p' /tmp/vpd0"
done
sg_vpd --page=0x80 "$sd" | tee /tmp/vpd80
check 'grep -q "Unit serial number: [0-9a-f]\{16\}" /tmp/vpd80'
sg_vpd --page=0x83 "$sd" | tee /tmp/vpd83
check 'grep -q "designator type: NAA" /tmp/vpd83'
check 'grep -q "vendor id: VUSCSI" /tmp/vpd83'
check 'grep -q "Relative target port: 0x1" /tmp/vpd83'
sg_vpd --page=0xb0 "$sd" | tee /tmp/vpdb0
check 'grep -q "Maximum compare and write length: 128 blocks" /tmp/vpdb0'
check 'grep -q "Maximum unmap LBA count: -1" /tmp/vpdb0 || grep -q "Maximum unmap LBA count: 4294967295" /tmp/vpdb0'
sg_vpd --page=0xb1 "$sd" | tee /tmp/vpdb1
check 'grep -q "Non-rotating medium" /tmp/vpdb1'
sg_vpd --page=0xb2 "$sd" | tee /tmp/vpdb2
check 'grep -q "Unmap command supported (LBPU): 1" /tmp/vpdb2'
check 'grep -q "Provisioning type: 2" /tmp/vpdb2'

sg_readcap -l "$sd" | tee /tmp/cap
check 'grep -q "Last LBA=131071" /tmp/cap'
check 'grep -q "Logical block length=512 bytes" /tmp/cap'
check 'grep -q "lbpme=1, lbprz=1" /tmp/cap'

sg_luns "$sd" | tee /tmp/luns
check 'grep -q "Lun list length = 8" /tmp/luns'
sg_luns --select=2 "$sd" | tee /tmp/luns2
check 'grep -q "c101000000000000" /tmp/luns2'

sg_opcodes "$sd" | tee /tmp/ops
for op in "Compare and write" "Get LBA status" "Unmap" "Write same(16)" "Report supported operation codes"; do
    check "grep -qi '$op' /tmp/ops"
done
sg_opcodes --opcode=0x28 "$sd" | tee /tmp/op28
check 'grep -q "28 f8 ff ff ff ff 1f ff ff 04" /tmp/op28'
sg_opcodes --tmf "$sd" | tee /tmp/tmf
check 'grep -q "Abort task" /tmp/tmf'
check 'grep -q "Logical unit reset" /tmp/tmf'

sg_modes --page=0x3f "$sd" | tee /tmp/modes
check 'grep -qi "Caching" /tmp/modes'
check 'grep -qi "Control" /tmp/modes'
check 'grep -qi "Informational exceptions" /tmp/modes'
sg_modes --control=1 --page=0x08 "$sd" | tee /tmp/chg
# MODE SENSE(6), PC=11b (saved values), caching page.
sg_raw -r 255 "$sd" 1a 00 c8 00 ff 00 >/tmp/saved 2>&1 && { echo "saved values should be rejected"; exit 1; }
cat /tmp/saved
check 'grep -qi "saving parameters not supported" /tmp/saved'

# Data: write a pattern, verify it, compare-and-write, then unmap.
dd if=/dev/zero bs=512 count=16 2>/dev/null | tr '\000' 'A' > /tmp/A
dd if=/tmp/A of="$sd" bs=512 count=16 oflag=direct 2>/dev/null
sg_sync "$sd"
dd if=/dev/zero bs=512 count=1 2>/dev/null | tr '\000' 'B' > /tmp/B1
head -c 512 /tmp/A > /tmp/A1
cat /tmp/A1 /tmp/B1 > /tmp/caw
sg_compare_and_write --in=/tmp/caw --lba=3 --num=1 --xferlen=1024 "$sg"
dd if="$sd" bs=512 skip=3 count=1 iflag=direct 2>/dev/null | cmp - /tmp/B1
# A second identical CAW now miscompares (the block holds B) and exit status 14.
rc=0; sg_compare_and_write --in=/tmp/caw --lba=3 --num=1 --xferlen=1024 "$sg" || rc=$?
check '[ $rc -eq 14 ]'

sg_write_same --10 --lba=100 --num=8 --in=/tmp/B1 "$sd"
dd if="$sd" bs=512 skip=100 count=8 iflag=direct 2>/dev/null | tr -d 'B' | wc -c > /tmp/n
check '[ "$(cat /tmp/n)" = 0 ]'
sg_write_same --16 --lba=200 --num=8 --in=/tmp/B1 "$sd"
sg_write_same --16 --unmap --lba=0 --num=16 "$sd"
dd if="$sd" bs=512 count=16 iflag=direct 2>/dev/null | tr -d '\000' | wc -c > /tmp/n
check '[ "$(cat /tmp/n)" = 0 ]'

sg_get_lba_status --lba=0 "$sd" | tee /tmp/glbas
check 'grep -qi "deallocated\|unmapped" /tmp/glbas'
dd if=/tmp/A of="$sd" bs=512 seek=4096 count=16 oflag=direct 2>/dev/null
sg_get_lba_status --lba=4096 "$sd" | tee /tmp/glbas2
check 'grep -qi "mapped" /tmp/glbas2'
sg_unmap --lba=4096 --num=16 --force "$sd"
sg_get_lba_status --lba=4096 "$sd" | tee /tmp/glbas3
check 'grep -qi "deallocated\|unmapped" /tmp/glbas3'

sg_verify --lba=0 --count=64 "$sd"
sg_turs "$sd"
sg_requests "$sd"
echo ALL-SG-OK
G
)
# shellcheck disable=SC2046
boot_guest "$script" $(vhost_scsi_dev "$WORK/s0" c0) || fail "guest checks failed"
stop_daemon
