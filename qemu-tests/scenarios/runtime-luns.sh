#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# A LUN added to a running guest's controller appears by itself (hot-plug
# event), takes verified I/O that the daemon's statistics count exactly,
# is made read-only (writes fail with DATA PROTECT), and disappears once
# removed.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../runtime-lib.sh"

d0=$(make_disk d0.img 32M)
d1=$(make_disk d1.img 64M)
start_daemon --control "$CTL_SOCK" --socket "$WORK/s0" --lun "file=$d0"
script=$({ echo "$GUEST_RUNTIME_LIB"; cat <<'G'; } | guest_script runtime-luns
step booted
poll_until '[ -n "$(disk_for_lun :0:0:1)" ]' 30
lsscsi
sd1=$(disk_for_lun :0:0:1)
check '[ "$(blockdev --getsize64 $sd1)" = 67108864 ]'
step before-fio
# 2048 writes of 4 KiB, then 2048 reads verifying them (direct: one
# command each).
fio --name=v --filename=$sd1 --rw=write --bs=4k --size=8M --direct=1 \
    --ioengine=psync --verify=crc32c --do_verify=1 --output=/tmp/fio >/dev/null
check 'grep -q "err= 0" /tmp/fio'
step fio-done
poll_until '[ "$(cat /sys/block/${sd1#/dev/}/ro)" = 1 ]' 30
rc=0; wr "$(sg_of $sd1)" >/tmp/w || rc=$?
cat /tmp/w
check 'grep -qi "data protect" /tmp/w'
check 'grep -qi "write protected" /tmp/w'
step read-only
poll_until '[ -z "$(disk_for_lun :0:0:1)" ]' 30
lsscsi
check '[ -n "$(disk_for_lun :0:0:0)" ]'
G
)
# shellcheck disable=SC2046
boot_guest_bg "$script" $(vhost_scsi_dev "$WORK/s0" c0)
await_step booted
ctl lun-add controller="$WORK/s0" lun=1 file="$d1"
await_step before-fio 60
w0=$(stat_of "$WORK/s0" 1 writes)
r0=$(stat_of "$WORK/s0" 1 reads)
await_step fio-done 120
w1=$(stat_of "$WORK/s0" 1 writes)
r1=$(stat_of "$WORK/s0" 1 reads)
log "LUN 1: $((w1 - w0)) writes, $((r1 - r0)) reads during fio"
[[ $((w1 - w0)) == 2048 && $((r1 - r0)) == 2048 ]] || fail "statistics: $((w1 - w0)) writes, $((r1 - r0)) reads (2048 each expected)"
ctl stats controller="$WORK/s0" lun=1
ctl lun-set-read-only controller="$WORK/s0" lun=1
await_step read-only 60
ctl lun-remove controller="$WORK/s0" lun=1
guest_wait || fail "guest checks failed"
ctl controller-list | tee "$LOG_DIR/list.txt"
grep -q "LUN 1" "$LOG_DIR/list.txt" && fail "LUN 1 still listed"
stop_daemon
