#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# mkfs.ext4, mount, write files, umount, fsck clean; the guest reboots onto
# the same daemon (reconnect with fresh device state), then the daemon is
# restarted and a third boot re-reads the checksums.
. "$(dirname "$0")/../lib.sh"

disk=$(make_disk d0.img 256M)
args=(--socket "$WORK/s0" --lun "file=$disk")
start_daemon "${args[@]}"
write=$(guest_script write <<'G'
sd=$(disk_for_lun :0:0:0)
mkfs.ext4 -q -F "$sd"
mount -t ext4 "$sd" /mnt
i=0
while [ $i -lt 20 ]; do
    dd if=/dev/urandom of=/mnt/f$i bs=64k count=$((i + 1)) 2>/dev/null
    i=$((i + 1))
done
(cd /mnt && sha256sum f* > /tmp/sums && cp /tmp/sums /mnt/SUMS)
umount /mnt
e2fsck -fn "$sd"
G
)
verify=$(guest_script verify <<'G'
sd=$(disk_for_lun :0:0:0)
e2fsck -fn "$sd"
mount -t ext4 -o ro "$sd" /mnt
(cd /mnt && sha256sum -c SUMS)
umount /mnt
G
)
# shellcheck disable=SC2046
boot_guest "$write" $(vhost_scsi_dev "$WORK/s0" c0) || fail "mkfs/write boot failed"
log "second boot on the same daemon (reconnect)"
# shellcheck disable=SC2046
boot_guest "$verify" $(vhost_scsi_dev "$WORK/s0" c0) || fail "verify after reconnect failed"
stop_daemon
log "daemon restarted"
start_daemon "${args[@]}"
# shellcheck disable=SC2046
boot_guest "$verify" $(vhost_scsi_dev "$WORK/s0" c0) || fail "verify after daemon restart failed"
stop_daemon
grep -q "front-end disconnected" "$DAEMON_LOG" || fail "daemon did not log the disconnect"
