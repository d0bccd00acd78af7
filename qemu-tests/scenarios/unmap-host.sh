#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# run-only 10.0 (the guest's SCSI traffic is the same with either QEMU)
# Writes allocate blocks in the sparse host file; a discard from the guest
# (UNMAP) punches them out again: du shrinks on the host.
. "$(dirname "$0")/../lib.sh"

disk=$(make_disk d0.img 128M)
start_daemon --socket "$WORK/s0" --lun "file=$disk"
fill=$(guest_script fill <<'G'
sd=$(disk_for_lun :0:0:0)
dd if=/dev/urandom of="$sd" bs=1M count=32 oflag=direct 2>/dev/null
sg_sync "$sd"
G
)
trim=$(guest_script trim <<'G'
sd=$(disk_for_lun :0:0:0)
check '[ "$(cat /sys/block/${sd#/dev/}/queue/discard_max_bytes)" != 0 ]'
blkdiscard -o 0 -l $((16 * 1024 * 1024)) "$sd"
sg_unmap --lba=32768 --num=32768 --force "$sd"
G
)
# shellcheck disable=SC2046
boot_guest "$fill" $(vhost_scsi_dev "$WORK/s0" c0) || fail "fill failed"
before=$(du -k "$disk" | cut -f1)
log "allocated after writes: ${before} KiB"
[[ $before -ge 32000 ]] || fail "writes did not allocate (du ${before} KiB)"
# shellcheck disable=SC2046
boot_guest "$trim" $(vhost_scsi_dev "$WORK/s0" c0) || fail "discard failed"
after=$(du -k "$disk" | cut -f1)
log "allocated after discard: ${after} KiB"
[[ $after -le 1024 ]] || fail "discard did not punch holes (du ${after} KiB)"
stop_daemon
