#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# Persistent reservations through two controllers (two I_T nexuses) to one
# shared backstore in one guest, driven with sg_persist as administrators
# do: register, reserve Exclusive Access, see it from the other path, get
# conflicts, release, preempt, unit attention, clear. Then every type's
# read/write access rules for a registered and an unregistered path.
. "$(dirname "$0")/../lib.sh"

shared=$(make_disk shared.img 64M)
start_daemon --socket "$WORK/a" --lun "file=$shared" --socket "$WORK/b" --lun "file=$shared"
script=$(guest_script pr <<'G'
A=$(disk_on_port 1); B=$(disk_on_port 2)
echo "path A: $A, path B: $B"
check '[ -n "$A" ] && [ -n "$B" ] && [ "$A" != "$B" ]'
mkfs.ext4 -q -F "$A"

sg_persist --out --register --param-sark=0xabc123 "$A"
sg_persist --out --reserve --param-rk=0xabc123 --prout-type=3 "$A"
sg_persist --in --read-keys "$B" | tee /tmp/k
check 'grep -q "0xabc123" /tmp/k'
sg_persist --in --read-reservation "$B" | tee /tmp/r
check 'grep -q "Key=0xabc123" /tmp/r'
check 'grep -qi "Exclusive Access" /tmp/r'
sg_persist --in --report-capabilities "$B" | tee /tmp/cap
check 'grep -q "Persist Through Power Loss Capable(PTPL_C): 1" /tmp/cap'
check 'grep -q "Compatible Reservation Handling(CRH): 1" /tmp/cap'
sg_persist --in --read-full-status "$B" | tee /tmp/fs
check 'grep -qi "reservation holder" /tmp/fs'
check 'grep -q "vhost-user-scsi" /tmp/fs'

echo "--- B cannot read or mount while A holds Exclusive Access"
check 'conflicts rd "$(sg_of $B)"'
check '! mount -t ext4 -o ro "$B" /mnt 2>/dev/null'
check '! conflicts rd "$(sg_of $A)"'

sg_persist --out --release --param-rk=0xabc123 --prout-type=3 "$A"
check '! conflicts rd "$(sg_of $B)"'

echo "--- B registers and preempts A"
sg_persist --out --register --param-sark=0x123abc "$B"
sg_persist --out --reserve --param-rk=0xabc123 --prout-type=3 "$A"
sg_persist --out --preempt --param-rk=0x123abc --param-sark=0xabc123 --prout-type=3 "$B"
wr "$(sg_of $A)" | tee /tmp/ua
check 'grep -qi "registrations preempted" /tmp/ua'
check 'conflicts wr "$(sg_of $A)"'
check '! conflicts wr "$(sg_of $B)"'
sg_persist --in --read-keys "$A" | tee /tmp/k2
check '! grep -q "0xabc123" /tmp/k2'

echo "--- clear, then nothing is left"
sg_persist --out --clear --param-rk=0x123abc "$B"
sg_persist --in --read-keys "$A" | tee /tmp/k3
check 'grep -qi "there are NO registered reservation keys" /tmp/k3'
check '! conflicts wr "$(sg_of $A)"'

echo "--- every type: B registered (R) and unregistered (U)"
# type: expected conflicts for B as "R-read R-write U-read U-write" (1 = conflict)
for spec in "1:0 1 0 1" "3:1 1 1 1" "5:0 0 0 1" "6:0 0 1 1" "7:0 0 0 1" "8:0 0 1 1"; do
    t=${spec%%:*}; set -- ${spec#*:}
    sg_persist --out --register-ignore --param-sark=0xa "$A" >/dev/null
    sg_persist --out --reserve --param-rk=0xa --prout-type=$t "$A" >/dev/null
    sg_persist --out --register-ignore --param-sark=0xb "$B" >/dev/null
    sgb=$(sg_of $B)
    got="$(conflicts rd $sgb && echo 1 || echo 0) $(conflicts wr $sgb && echo 1 || echo 0)"
    sg_persist --out --register --param-rk=0xb --param-sark=0 "$B" >/dev/null
    got="$got $(conflicts rd $sgb && echo 1 || echo 0) $(conflicts wr $sgb && echo 1 || echo 0)"
    echo "type $t: expected $*, got $got"
    check "[ '$got' = '$*' ]"
    check '! conflicts wr "$(sg_of $A)"'
    sg_persist --out --clear --param-rk=0xa "$A" >/dev/null
    # The clear raises RESERVATIONS PREEMPTED on B: consume it.
    sg_turs "$B" >/dev/null 2>&1 || true
done
G
)
# shellcheck disable=SC2046
boot_guest "$script" $(vhost_scsi_dev "$WORK/a" c0) $(vhost_scsi_dev "$WORK/b" c1) || fail "guest checks failed"
stop_daemon
