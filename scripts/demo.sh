#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# The main job, end to end: start the daemon serving a default local disk
# (a 1 GiB sparse file), boot a QEMU guest attached to it over
# vhost-user-scsi, and watch the guest find the disk, format it, mount it,
# write and read files. Run scripts/install-deps.sh once first.
#
# Usage: scripts/demo.sh [DISK_IMAGE]    (default: target/demo/disk.img)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

cargo build --release --quiet
qemu-tests/build-guest.sh target/guest

demo=$root/target/demo
mkdir -p "$demo"
disk=${1:-$demo/disk.img}
[[ -e $disk ]] || truncate -s 1G "$disk"
sock=$demo/vhost-user-scsi.sock

"$root/target/release/vhost-user-scsi" serve --socket "$sock" --lun "file=$disk" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null; wait $daemon 2>/dev/null || true' EXIT
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.05; done

cat > "$demo/guest.sh" <<'G'
echo "=== The guest sees a SCSI disk served by vhost-user-scsi:"
lsscsi
sd=/dev/$(ls /sys/class/scsi_disk/*/device/block | head -1)
sg_inq "$sd" | sed -n '/Vendor identification/,/Product revision/p'
sg_readcap -l "$sd" | grep -E "Last LBA|Device size"
echo "=== mkfs.ext4 $sd, mount, write files:"
mkfs.ext4 -q -F "$sd"
mount -t ext4 "$sd" /mnt
dd if=/dev/urandom of=/mnt/random.bin bs=1M count=16 2>/dev/null
echo "hello from the guest" > /mnt/hello.txt
sha256sum /mnt/random.bin | tee /tmp/sum
df -h /mnt
umount /mnt
echo "=== fsck and re-read:"
e2fsck -fn "$sd" | tail -1
mount -t ext4 -o ro "$sd" /mnt
cat /mnt/hello.txt
sha256sum -c /tmp/sum
umount /mnt
G

echo "Booting the demo guest (TCG, about 10 s)..."
timeout 300 qemu-system-x86_64 -accel tcg -nodefaults -no-reboot -display none \
    -m 512 -smp 2 \
    -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem \
    -kernel target/guest/vmlinuz -initrd target/guest/initrd \
    -append "console=ttyS0 panic=-1 quiet" -serial stdio \
    -fw_cfg name=opt/test,file="$demo/guest.sh" \
    -chardev socket,id=c0,path="$sock" -device vhost-user-scsi-pci,chardev=c0 \
    </dev/null | tr -d '\r' | tee "$demo/console.log" | grep -av '^$'
grep -aq "GUEST-RESULT: 0" "$demo/console.log"
echo "Demo finished: the disk image is $disk"
