#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# run-only 7.2 (the guest's SCSI traffic is the same with either QEMU)
# Two VMs (two QEMU processes, two sockets) share a disk served by one
# daemon: a reservation made by VM1 with APTPL is seen and enforced in VM2,
# and still there after the daemon restarts (the state file is loaded).
. "$(dirname "$0")/../lib.sh"

shared=$(make_disk shared.img 64M)
args=(--socket "$WORK/vm1,initiator=iqn.2026-11.org.example:vm1" --lun "file=$shared"
      --socket "$WORK/vm2,initiator=iqn.2026-11.org.example:vm2" --lun "file=$shared")
start_daemon "${args[@]}"
vm1=$(guest_script vm1 <<'G'
sd=$(disk_for_lun :0:0:0)
sg_persist --out --register --param-sark=0x1111 --param-aptpl "$sd"
sg_persist --out --reserve --param-rk=0x1111 --prout-type=1 "$sd"
sg_persist --in --read-reservation "$sd"
G
)
vm2=$(guest_script vm2 <<'G'
sd=$(disk_for_lun :0:0:0)
sg_persist --in --read-full-status "$sd" | tee /tmp/fs
check 'grep -q "iqn.2026-11.org.example:vm1" /tmp/fs'
sg_persist --in --read-reservation "$sd" | tee /tmp/r
check 'grep -q "Key=0x1111" /tmp/r'
check 'grep -qi "Write Exclusive" /tmp/r'
sg_turs "$sd" >/dev/null 2>&1 || true
check '! conflicts rd "$(sg_of $sd)"'
check 'conflicts wr "$(sg_of $sd)"'
G
)
clear1=$(guest_script clear <<'G'
sd=$(disk_for_lun :0:0:0)
sg_persist --out --clear --param-rk=0x1111 "$sd"
sg_persist --in --read-keys "$sd" | grep -qi "NO registered"
G
)
# shellcheck disable=SC2046
boot_guest "$vm1" $(vhost_scsi_dev "$WORK/vm1" c0) || fail "VM1 could not reserve"
# shellcheck disable=SC2046
boot_guest "$vm2" $(vhost_scsi_dev "$WORK/vm2" c0) || fail "VM2 did not see VM1's reservation"
stop_daemon
[[ -s $shared.pr ]] || fail "no APTPL state file"
log "daemon restarted"
start_daemon "${args[@]}"
grep -q "restored 1 registration(s) and a reservation" "$DAEMON_LOG" || fail "state not restored"
# shellcheck disable=SC2046
boot_guest "$vm2" $(vhost_scsi_dev "$WORK/vm2" c0) || fail "reservation lost across the restart"
# shellcheck disable=SC2046
boot_guest "$clear1" $(vhost_scsi_dev "$WORK/vm1" c0) || fail "VM1 could not clear"
stop_daemon
[[ ! -e $shared.pr ]] || fail "state file left after CLEAR"

# A corrupt state file stops the daemon at start with one clear line.
echo garbage > "$shared.pr"
if "$VUS_BIN" serve "${args[@]}" 2>"$WORK/err"; then fail "daemon started on a corrupt state file"; fi
grep -q "is corrupt" "$WORK/err" || fail "no clear error for a corrupt state file: $(cat "$WORK/err")"
