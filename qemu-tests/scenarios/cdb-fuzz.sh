#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# run-only 10.0 (the guest's SCSI traffic is the same with either QEMU)
# The guest sends every opcode with random CDB bytes, random transfer
# directions and lengths, to real and absent LUNs. The daemon answers each
# (any status) and still serves correct data afterwards.
. "$(dirname "$0")/../lib.sh"

disk=$(make_disk d0.img 16M)
start_daemon --socket "$WORK/s0" --lun "file=$disk"
script=$(guest_script fuzz <<'G'
sd=$(disk_for_lun :0:0:0)
sg=$(sg_for_lun :0:0:0)
dd if=/dev/urandom of=/tmp/out bs=4096 count=1 2>/dev/null
op=0
while [ $op -lt 256 ]; do
    # Skip nothing: hex opcode plus 15 random bytes.
    bytes=$(printf '%02x' $op; dd if=/dev/urandom bs=15 count=1 2>/dev/null | od -An -tx1 | tr -d '\n')
    case $((op % 3)) in
        0) timeout 20 sg_raw -t 10 -r 4096 "$sg" $bytes >/dev/null 2>&1 || true ;;
        1) timeout 20 sg_raw -t 10 -s 4096 -i /tmp/out "$sg" $bytes >/dev/null 2>&1 || true ;;
        2) timeout 20 sg_raw -t 10 "$sg" $bytes >/dev/null 2>&1 || true ;;
    esac
    op=$((op + 1))
done
echo "fuzzed 256 opcodes"
# Restart the unit in case a START STOP UNIT stopped it, then check data.
sg_start --start "$sd" || true
sg_turs "$sd" || sg_turs "$sd"
dd if=/dev/urandom of=/tmp/x bs=4096 count=8 2>/dev/null
dd if=/tmp/x of="$sd" bs=4096 oflag=direct 2>/dev/null
dd if="$sd" bs=4096 count=8 iflag=direct 2>/dev/null | cmp - /tmp/x
G
)
# shellcheck disable=SC2046
boot_guest "$script" $(vhost_scsi_dev "$WORK/s0" c0) || fail "guest checks failed"
kill -0 "$DAEMON_PID" || fail "daemon died"
stop_daemon
