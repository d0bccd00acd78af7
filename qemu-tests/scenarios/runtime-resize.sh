#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# A LUN grown while its filesystem is mounted: the guest sees the new size
# by itself (parameter change event) and resize2fs grows the filesystem
# online; the data stays intact.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../runtime-lib.sh"

d0=$(make_disk d0.img 64M)
start_daemon --control "$CTL_SOCK" --socket "$WORK/s0" --lun "file=$d0"
script=$({ echo "$GUEST_RUNTIME_LIB"; cat <<'G'; } | guest_script runtime-resize
sd=$(disk_for_lun :0:0:0)
mkfs.ext4 -q -F "$sd"
mount -t ext4 "$sd" /mnt
dd if=/dev/urandom of=/mnt/f bs=64k count=64 2>/dev/null
sha256sum /mnt/f > /tmp/sum
before=$(df -k /mnt | awk 'NR==2 {print $2}')
check '[ "$(blockdev --getsize64 $sd)" = 67108864 ]'
step mounted
poll_until '[ "$(blockdev --getsize64 $sd)" = 134217728 ]' 30
echo "size now $(blockdev --getsize64 $sd)"
resize2fs "$sd"
after=$(df -k /mnt | awk 'NR==2 {print $2}')
echo "filesystem: $before KiB -> $after KiB"
check '[ "$after" -gt $((before + 50000)) ]'
dd if=/dev/urandom of=/mnt/g bs=64k count=800 2>/dev/null
sha256sum -c /tmp/sum
umount /mnt
e2fsck -fn "$sd"
G
)
# shellcheck disable=SC2046
boot_guest_bg "$script" $(vhost_scsi_dev "$WORK/s0" c0)
await_step mounted
ctl lun-resize controller="$WORK/s0" lun=0 size=128M
guest_wait || fail "guest checks failed"
[[ $(stat -c %s "$d0") == 134217728 ]] || fail "the file was not grown"
stop_daemon
