#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# One daemon, two controllers (sockets) exposing the same backstore to one
# guest: two paths to one logical unit. Both report the same NAA designator
# and serial (so multipath can group them), different relative target ports,
# and a write through one path is read back through the other.
. "$(dirname "$0")/../lib.sh"

shared=$(make_disk shared.img 32M)
own=$(make_disk own.img 16M)
start_daemon --socket "$WORK/a" --lun "file=$shared" \
             --socket "$WORK/b" --lun "file=$own" --lun "1:file=$shared"
script=$(guest_script paths <<'G'
lsscsi
a=$(disk_for_lun :0:0:0)
b=$(disk_for_lun :0:0:1)
# The two controllers are hosts 0 and 1 in probe order; find the shared LU on
# the second one as the disk whose serial matches.
serial_a=$(sg_vpd --page=0x80 "$a" | sed -n 's/.*Unit serial number: //p')
for d in /sys/class/scsi_disk/*; do
    dev=/dev/$(ls "$d/device/block")
    [ "$dev" = "$a" ] && continue
    s=$(sg_vpd --page=0x80 "$dev" | sed -n 's/.*Unit serial number: //p')
    [ "$s" = "$serial_a" ] && b=$dev
done
check '[ "$a" != "$b" ]'
sg_vpd --page=0x83 "$a" > /tmp/ida
sg_vpd --page=0x83 "$b" > /tmp/idb
naa_a=$(grep -A1 "designator type: NAA" /tmp/ida | tail -1)
naa_b=$(grep -A1 "designator type: NAA" /tmp/idb | tail -1)
check '[ -n "$naa_a" ] && [ "$naa_a" = "$naa_b" ]'
check 'grep -q "Relative target port: 0x1" /tmp/ida'
check 'grep -q "Relative target port: 0x2" /tmp/idb'
dd if=/dev/urandom of=/tmp/x bs=4096 count=16 2>/dev/null
dd if=/tmp/x of="$a" bs=4096 seek=5 oflag=direct 2>/dev/null
dd if="$b" bs=4096 skip=5 count=16 iflag=direct 2>/dev/null | cmp - /tmp/x
G
)
# shellcheck disable=SC2046
boot_guest "$script" $(vhost_scsi_dev "$WORK/a" c0) $(vhost_scsi_dev "$WORK/b" c1) || fail "guest checks failed"
stop_daemon
