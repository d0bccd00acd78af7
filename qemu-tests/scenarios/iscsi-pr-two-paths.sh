#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Persistent reservations passed through to an iSCSI target: two controllers
# on one tgtd LUN are two iSCSI sessions with their own initiator names, so
# tgt sees two I_T nexuses and enforces the reservation itself.
. "$(dirname "$0")/../lib.sh"

img=$(make_disk tgt.img 64M)
start_tgtd
tgt_target 1 iqn.2026-11.test:shared "$img"
url="iscsi://127.0.0.1:$TGT_PORT/iqn.2026-11.test:shared/1"
start_daemon --socket "$WORK/a,initiator=iqn.2026-11.test:path-a" --lun "$url" \
             --socket "$WORK/b,initiator=iqn.2026-11.test:path-b" --lun "$url"
script=$(guest_script ipr <<'G'
A=$(disk_for_lun /0:0:0:0); B=$(disk_for_lun /1:0:0:0)
echo "path A: $A, path B: $B"
check '[ -n "$A" ] && [ -n "$B" ] && [ "$A" != "$B" ]'
# tgt's first command of each session may carry a unit attention.
sg_turs "$A" >/dev/null 2>&1 || true; sg_turs "$B" >/dev/null 2>&1 || true
sg_persist --out --register --param-sark=0xabc123 "$A"
sg_persist --out --reserve --param-rk=0xabc123 --prout-type=3 "$A"
sg_persist --in --read-keys "$B" | tee /tmp/k
check 'grep -q 0xabc123 /tmp/k'
sg_persist --in --read-reservation "$B" | tee /tmp/r
check 'grep -qi "Exclusive Access" /tmp/r'
check 'conflicts rd "$(sg_of $B)"'
check '! conflicts rd "$(sg_of $A)"'
sg_persist --out --release --param-rk=0xabc123 --prout-type=3 "$A"
check '! conflicts rd "$(sg_of $B)"'
sg_persist --out --register --param-sark=0x123abc "$B"
sg_persist --out --reserve --param-rk=0xabc123 --prout-type=1 "$A"
sg_persist --out --preempt --param-rk=0x123abc --param-sark=0xabc123 --prout-type=1 "$B"
check 'conflicts wr "$(sg_of $A)" || conflicts wr "$(sg_of $A)"'
sg_persist --out --clear --param-rk=0x123abc "$B"
sg_persist --in --read-keys "$A" | tee /tmp/k2
check 'grep -qi "there are NO registered reservation keys" /tmp/k2'
G
)
# shellcheck disable=SC2046
boot_guest "$script" $(vhost_scsi_dev "$WORK/a" c0) $(vhost_scsi_dev "$WORK/b" c1) || fail "guest checks failed"
stop_daemon
