#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# A dm-multipath map over two paths (two controllers, one shared LU) inside
# a guest: REGISTER through our helper on the map's fd registers the key on
# both paths (two I_T nexuses in READ FULL STATUS); RESERVE goes through one
# path; after one path is removed, PR IN through the map fails over.
. "$(dirname "$0")/../lib.sh"

shared=$(make_disk shared.img 32M)
start_daemon --socket "$WORK/a" --lun "file=$shared" --socket "$WORK/b" --lun "file=$shared"
script=$(guest_script mpath <<'G'
A=$(disk_on_port 1); B=$(disk_on_port 2)
modprobe dm_multipath; modprobe dm_round_robin
sectors=$(cat /sys/block/${A#/dev/}/size)
da=$(cat /sys/block/${A#/dev/}/dev); db=$(cat /sys/block/${B#/dev/}/dev)
dmsetup create mp0 --uuid mpath-vus-test0 \
    --table "0 $sectors multipath 0 0 1 1 round-robin 0 2 1 $da 1 $db 1"
dmsetup mknodes mp0 2>/dev/null || true
map=/dev/mapper/mp0
[ -b $map ] || map=/dev/$(ls /sys/block | grep '^dm-' | head -1)
echo "map $map over $A ($da) and $B ($db)"
check '[ -b "$map" ]'
vhost-user-scsi pr-helper -v -k /tmp/v.sock -f /tmp/v.pid 2>/tmp/helper.log &
i=0; while [ ! -S /tmp/v.sock ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
K=0000000000000077; Z=0000000000000000
vhost-user-scsi pr-client --socket /tmp/v.sock --device $map --cdb 5f000000000000001800 \
    --data ${Z}${K}00000000000000000000 | tee /tmp/r1
check 'grep -q "status=0x00" /tmp/r1'
sg_persist --in --read-keys "$A" | tee /tmp/ka
check '[ "$(grep -c 0x77 /tmp/ka)" = 2 ]'
sg_persist --in --read-full-status "$B" | tee /tmp/fs
check '[ "$(grep -c "Key=0x77" /tmp/fs)" = 2 ]'
check 'grep -q "Relative port address: 0x1" /tmp/fs && grep -q "Relative port address: 0x2" /tmp/fs'
# RESERVE Write Exclusive through the map: one path holds it.
vhost-user-scsi pr-client --socket /tmp/v.sock --device $map --cdb 5f010100000000001800 \
    --data ${K}${Z}00000000000000000000 | tee /tmp/r2
check 'grep -q "status=0x00" /tmp/r2'
sg_persist --in --read-reservation "$B" | tee /tmp/rr
check 'grep -qi "Write Exclusive" /tmp/rr'
# REGISTER AND MOVE is refused, as libmpathpersist refuses it.
vhost-user-scsi pr-client --socket /tmp/v.sock --device $map --cdb 5f070000000000001800 \
    --data ${K}${K}00000000000000000000 | tee /tmp/r3
check 'grep -q "status=0x02" /tmp/r3'
# Remove the first path: PR IN through the map fails over to the second.
first=$(echo "$A $B" | tr ' ' '\n' | sort | head -1)
echo 1 > /sys/block/${first#/dev/}/device/delete
sleep 0.5
vhost-user-scsi pr-client --socket /tmp/v.sock --device $map --cdb 5e000000000000010000 | tee /tmp/r4
check 'grep -q "status=0x00" /tmp/r4'
check 'grep -q "0000000000000077" /tmp/r4'
cat /tmp/helper.log | tail -5
G
)
with_daemon_binary
# shellcheck disable=SC2046
boot_guest "$script" $(vhost_scsi_dev "$WORK/a" c0) $(vhost_scsi_dev "$WORK/b" c1) \
    || fail "multipath checks failed"
stop_daemon
