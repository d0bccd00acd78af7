#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# run-once (QEMU only carries the commands; the daemon does the work)
#
# SANITIZE from a guest with sg3_utils' sg_sanitize: an OVERWRITE started
# with IMMED set and followed with REQUEST SENSE until it ends, the pattern
# on every block after it; a BLOCK ERASE waited for (IMMED clear), after
# which the blocks read zeros, GET LBA STATUS says deallocated and the
# host file has no blocks left; CRYPTOGRAPHIC ERASE refused; EXIT FAILURE
# MODE; the opcodes and the Block Device Characteristics page.
. "$(dirname "$0")/../lib.sh"

disk=$(make_disk d0.img 512M)
start_daemon --socket "$WORK/s0" --lun "file=$disk"
script=$(guest_script sanitize <<'G'
sd=$(disk_for_lun :0:0:0)
sg=$(sg_for_lun :0:0:0)
sg_turs "$sg" >/dev/null 2>&1 || true

sg_opcodes "$sg" | grep -i sanitize | tee /tmp/ops
check 'grep -qi "overwrite" /tmp/ops'
check 'grep -qi "block erase" /tmp/ops'
check 'grep -qi "exit failure mode" /tmp/ops'
check '! grep -qi "cryptographic" /tmp/ops'
sg_vpd --page=bdc "$sg" | tee /tmp/bdc
check 'grep -q "WABEREQ=1" /tmp/bdc'
check 'grep -q "WACEREQ=0" /tmp/bdc'

dd if=/dev/urandom of="$sd" bs=1M count=8 oflag=direct 2>/dev/null
dd if=/dev/urandom of="$sd" bs=1M seek=511 count=1 oflag=direct 2>/dev/null
# 8 passes over 512 MiB, started with IMMED set: the command returns at
# once, REQUEST SENSE reports the progress until the operation ends.
dd if=/dev/zero bs=512 count=1 2>/dev/null | tr '\000' Z >/tmp/pat
sg_sanitize --quick --overwrite --pattern=/tmp/pat --count=8 --early "$sg"
polls=0
while sg_requests --progress "$sg" >/tmp/req 2>&1 && grep -q "Progress indication" /tmp/req; do
    polls=$((polls + 1))
    [ $polls -le 3 ] && cat /tmp/req
    [ $polls -lt 100000 ] || break
done
echo "progress reported $polls times"
cat /tmp/req
sg_turs "$sg"
dd if="$sd" bs=1M count=8 iflag=direct 2>/dev/null | tr -d Z | wc -c >/tmp/n
check '[ "$(cat /tmp/n)" = 0 ]'
dd if="$sd" bs=1M skip=511 count=1 iflag=direct 2>/dev/null | tr -d Z | wc -c >/tmp/n
check '[ "$(cat /tmp/n)" = 0 ]'

# BLOCK ERASE with IMMED clear: sg_sanitize waits for the command.
sg_sanitize --quick --block --wait "$sg"
dd if="$sd" bs=1M count=8 iflag=direct 2>/dev/null | tr -d '\000' | wc -c >/tmp/n
check '[ "$(cat /tmp/n)" = 0 ]'
sg_get_lba_status --lba=0 "$sg" | tee /tmp/lbas
check 'grep -qi "deallocated\|unmapped" /tmp/lbas'

# (--early: without it sg_sanitize waits 60 s before its first poll.)
fails sg_sanitize --quick --crypto --early "$sg"
check 'grep -qi "illegal request\|invalid field" /tmp/out'
sg_sanitize --quick --fail --early "$sg"
echo SANITIZE-OK
G
)
# shellcheck disable=SC2046
boot_guest "$script" $(vhost_scsi_dev "$WORK/s0" c0) || fail "guest checks failed"
grep -a "progress reported" "$LOG_DIR/guest1.log" | tr -d '\r'
used=$(du -k "$disk" | cut -f1)
log "host file after BLOCK ERASE: ${used} KiB allocated"
[[ $used -le 64 ]] || fail "BLOCK ERASE left ${used} KiB allocated"
stop_daemon
