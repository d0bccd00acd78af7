#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# LOGICAL UNIT RESET from the guest (sg_reset -d) while fio writes with
# verification: the resets succeed and I/O continues with no errors.
. "$(dirname "$0")/../lib.sh"

disk=$(make_disk d0.img 64M)
start_daemon --socket "$WORK/s0" --lun "file=$disk"
script=$(guest_script reset <<'G'
sd=$(disk_for_lun :0:0:0)
fio --name=r --filename="$sd" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
    --iodepth=32 --size=48M --verify=crc32c --verify_fatal=1 --do_verify=1 \
    --output=/tmp/fio.log &
pid=$!
sleep 1
n=0
while [ $n -lt 5 ]; do
    sg_reset -d "$sd"
    n=$((n + 1))
    sleep 0.3
done
wait $pid
cat /tmp/fio.log
check 'grep -q "err= 0" /tmp/fio.log'
# After the resets the disk still answers and data reads back.
sg_turs "$sd" || sg_turs "$sd"
dd if=/dev/urandom of=/tmp/x bs=4096 count=4 2>/dev/null
dd if=/tmp/x of="$sd" bs=4096 oflag=direct 2>/dev/null
dd if="$sd" bs=4096 count=4 iflag=direct 2>/dev/null | cmp - /tmp/x
G
)
# shellcheck disable=SC2046
boot_guest "$script" $(vhost_scsi_dev "$WORK/s0" c0) || fail "guest checks failed"
stop_daemon
grep -q "logical unit reset" "$DAEMON_LOG" || fail "daemon saw no LUN reset"
