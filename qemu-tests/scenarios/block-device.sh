#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# A block device backstore (a loop device) opened with O_DIRECT: the size
# comes from BLKGETSIZE64, and data written by the guest is on the device.
. "$(dirname "$0")/../lib.sh"

img=$(make_disk loop.img 48M)
loop=$(losetup -f --show "$img") || fail "cannot create a loop device"
trap 'losetup -d "$loop" 2>/dev/null; cleanup' EXIT
start_daemon --socket "$WORK/s0" --lun "file=$loop,direct"
script=$(guest_script blk <<'G'
sd=$(disk_for_lun :0:0:0)
sg_readcap -l "$sd" | tee /tmp/cap
check 'grep -q "Device size: 50331648 bytes" /tmp/cap'
fio --name=b --filename="$sd" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
    --iodepth=16 --size=16M --verify=crc32c --verify_fatal=1 --output=/tmp/fio.log
cat /tmp/fio.log
check 'grep -q "err= 0" /tmp/fio.log'
printf 'block-device-marker' | dd of="$sd" bs=512 seek=40960 conv=sync oflag=direct 2>/dev/null
sg_sync "$sd"
G
)
# shellcheck disable=SC2046
boot_guest "$script" $(vhost_scsi_dev "$WORK/s0" c0) || fail "guest checks failed"
stop_daemon
dd if="$loop" bs=512 skip=40960 count=1 iflag=direct 2>/dev/null | grep -q block-device-marker ||
    fail "data not on the block device"
grep -q "O_DIRECT" "$DAEMON_LOG" || fail "daemon did not open with O_DIRECT"
