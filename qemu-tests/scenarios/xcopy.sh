#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# run-once (QEMU only carries the commands; the copy happens in the daemon)
#
# EXTENDED COPY from a guest with sg3_utils' sg_xcopy: a whole LU copied to
# an LU of the same controller and, through it, to an LU that only another
# controller serves; the copies are compared on the host. sg_copy_results
# reads the operating parameters and a held copy's status; sg_vpd decodes
# the Third-party Copy page.
. "$(dirname "$0")/../lib.sh"

img_a=$(make_disk a.img 64M)
img_b=$(make_disk b.img 64M)
img_c=$(make_disk c.img 64M)
start_daemon --socket "$WORK/s0" --lun "0:file=$img_a" --lun "1:file=$img_b" \
    --socket "$WORK/s1" --lun "0:file=$img_c"
script=$(guest_script xcopy <<'G'
A=$(sg_for_lun 0:0:0:0); B=$(sg_for_lun 0:0:0:1); C=$(sg_for_lun 1:0:0:0)
echo "A=$A B=$B C=$C"
check '[ -c "$A" ] && [ -c "$B" ] && [ -c "$C" ]'
for d in $A $B $C; do sg_turs "$d" >/dev/null 2>&1 || true; done
sg_inq "$A" | tee /tmp/inq
check 'grep -q "3PC=1" /tmp/inq'
sg_vpd --page=tpc "$A" | tee /tmp/tpc
check 'grep -qi "Extended copy" /tmp/tpc'
check 'grep -q "Maximum CSCD descriptor count: 2" /tmp/tpc'
sg_copy_results --params "$A" | tee /tmp/params
check 'grep -qi "Maximum segment length: 33550336" /tmp/params'

# 64 MiB of data on A: 8 MiB of random bytes, eight times.
dd if=/dev/urandom of=/tmp/r bs=1M count=8 2>/dev/null
for i in 0 1 2 3 4 5 6 7; do
    dd if=/tmp/r of="$(disk_for_lun 0:0:0:0)" bs=1M seek=$((i * 8)) count=8 oflag=direct 2>/dev/null
done
# The whole of A to B (sent to B, the default) in 8 MiB commands, then A to
# C, which only the other controller serves, sent to A.
sg_xcopy if="$A" of="$B" bs=512 bpt=16384
sg_xcopy if="$A" of="$C" bs=512 bpt=16384 --on_src
# A held copy (list ID 5) and its status.
sg_xcopy if="$A" of="$B" bs=512 count=8 bpt=8 list_id=5 id_usage=hold
sg_copy_results --status --list_id=5 "$B" | tee /tmp/status
check 'grep -qi "operation completed without errors" /tmp/status'
echo XCOPY-DONE
G
)
# shellcheck disable=SC2046
boot_guest "$script" $(vhost_scsi_dev "$WORK/s0" c0) $(vhost_scsi_dev "$WORK/s1" c1) ||
    fail "guest checks failed"
cmp "$img_a" "$img_b" || fail "B differs from A"
cmp "$img_a" "$img_c" || fail "C differs from A"
[[ $(tr -d '\000' <"$img_a" | head -c 1 | wc -c) == 1 ]] || fail "A holds no data"
log "A, B and C are identical (64 MiB)"
stop_daemon
