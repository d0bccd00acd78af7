#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# run-only 10.0 (the guest's SCSI traffic is the same with either QEMU)
# A guest whose disk is an iSCSI LUN (tgtd on loopback) passed through by
# the daemon's own initiator: mkfs, mount, write files, fsck, checksums; then
# fio with crc32c verification while tgtd is killed and restarted under it
# (the daemon reinstates the session and retries; no acknowledged write may
# be lost).
. "$(dirname "$0")/../lib.sh"

img=$(make_disk tgt.img 128M)
start_tgtd
tgt_target 1 iqn.2026-11.test:guest "$img"
start_daemon --socket "$WORK/s0" --lun "iscsi://127.0.0.1:$TGT_PORT/iqn.2026-11.test:guest/1"
script=$(guest_script iscsi <<'G'
sd=$(disk_for_lun :0:0:0)
sg_inq "$sd" | tee /tmp/inq
check 'grep -q "Vendor identification: IET" /tmp/inq'
mkfs.ext4 -q -F "$sd"
mount -t ext4 "$sd" /mnt
dd if=/dev/urandom of=/mnt/a bs=64k count=64 2>/dev/null
(cd /mnt && sha256sum a > /tmp/sum)
umount /mnt
e2fsck -fn "$sd"
mount -t ext4 -o ro "$sd" /mnt
(cd /mnt && sha256sum -c /tmp/sum)
umount /mnt
# Big reads: their Data-In segments go from the socket straight into guest
# memory. Read back what was written, in 1 MiB and 256 KiB requests.
dd if=/dev/urandom of=/tmp/big bs=1M count=8 2>/dev/null
dd if=/tmp/big of="$sd" bs=1M seek=40 oflag=direct conv=fsync 2>/dev/null
check 'dd if="$sd" bs=1M skip=40 count=8 iflag=direct 2>/dev/null | cmp - /tmp/big'
check 'dd if="$sd" bs=256k skip=160 count=32 iflag=direct 2>/dev/null | cmp - /tmp/big'
# A LUN reset from the guest goes to the target as an iSCSI LUN RESET.
sg_reset -d "$sd"
sg_turs "$sd" || sg_turs "$sd"
echo FIO-START
fio --name=v --filename="$sd" --offset=64M --size=48M --ioengine=io_uring --direct=1 \
    --rw=randwrite --bs=4k --iodepth=32 --verify=crc32c --verify_fatal=1 --do_verify=1 \
    --output=/tmp/fio.log
cat /tmp/fio.log
check 'grep -q "err= 0" /tmp/fio.log'
G
)
# Kill tgtd once fio has started writing, bring it back a few seconds later.
(
    for _ in $(seq 600); do
        grep -aq FIO-START "$LOG_DIR"/guest1.log 2>/dev/null && break
        sleep 0.1
    done
    sleep 2
    kill_tgtd
    echo "tgtd killed" >>"$LOG_DIR/events.log"
    sleep 3
    start_tgtd
    tgt_target 1 iqn.2026-11.test:guest "$img"
    echo "tgtd restarted" >>"$LOG_DIR/events.log"
) &
chaos=$!
# shellcheck disable=SC2046
GUEST_TIMEOUT=400 boot_guest "$script" $(vhost_scsi_dev "$WORK/s0" c0) || fail "guest checks failed"
wait "$chaos"
grep -q "tgtd restarted" "$LOG_DIR/events.log" || fail "the target was never restarted during the run"
grep -q "session reinstated" "$DAEMON_LOG" || fail "the daemon did not reinstate the session"
grep -q "logical unit reset of .* (at the iSCSI target)" "$DAEMON_LOG" ||
    fail "the guest's LUN reset did not go to the target"
stop_daemon
