#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# fio random writes with crc32c verification at iodepth 32, 2 vCPUs and two
# request queues (num_queues=2): one fio job pinned to each vCPU, and blk-mq
# maps each vCPU to its own queue.
. "$(dirname "$0")/../lib.sh"

disk=$(make_disk d0.img 128M)
start_daemon --socket "$WORK/s0,queues=2" --lun "file=$disk"
script=$(guest_script fio <<'G'
sd=$(disk_for_lun :0:0:0)
check '[ "$(ls /sys/block/${sd#/dev/}/mq | wc -l)" = 2 ]'
for cpu in 0 1; do
    taskset -c $cpu fio --name=v$cpu --filename="$sd" --ioengine=io_uring --direct=1 \
        --rw=randwrite --bs=4k --iodepth=32 --size=32M --offset=$((cpu * 32))M \
        --verify=crc32c --verify_fatal=1 --do_verify=1 --randrepeat=0 \
        --output=/tmp/fio$cpu.log &
done
wait
cat /tmp/fio0.log /tmp/fio1.log
check '! grep -q "verify:.*bad\|err=" /tmp/fio0.log /tmp/fio1.log || grep -q "err= 0" /tmp/fio0.log'
check 'grep -q "err= 0" /tmp/fio0.log'
check 'grep -q "err= 0" /tmp/fio1.log'
G
)
# shellcheck disable=SC2046
SMP=2 boot_guest "$script" $(vhost_scsi_dev "$WORK/s0" c0 ,num_queues=2) || fail "fio verify failed"
stop_daemon
