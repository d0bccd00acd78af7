#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# run-once (the daemon's configuration, not QEMU, is under test)
# Controllers and LUNs added over the control socket, save-config, a
# restart with --config: the guest sees the same disks (LUNs, sizes,
# serials) and the data written before the restart.
. "$(dirname "$0")/../lib.sh"
. "$(dirname "$0")/../runtime-lib.sh"

d0=$(make_disk d0.img 32M)
d1=$(make_disk d1.img 48M)
conf=$WORK/vus.toml
cat >"$conf" <<TOML
control = "$CTL_SOCK"

[[controller]]
socket = "$WORK/s0"

[[controller.lun]]
file = "$d0"
TOML
start_daemon --config "$conf" --socket "$WORK/s-cli" --lun null,size=16M
ctl controller-add socket="$WORK/s1" queues=2
ctl lun-add controller="$WORK/s1" lun=0 file="$d1" serial=RUNTIME1
ctl lun-add controller="$WORK/s0" lun=2 null=16M
ctl controller-remove controller="$WORK/s-cli"
ctl save-config | tee "$LOG_DIR/save.txt"
[[ $(stat -c %a "$conf") == 600 ]] || fail "the saved file is not mode 0600"
cp "$conf" "$LOG_DIR/saved.toml"
printf 'written-before-restart' | dd of="$d1" bs=1 seek=4096 conv=notrunc 2>/dev/null
stop_daemon
RUST_LOG=info "$VUS_BIN" serve --config "$conf" >>"$DAEMON_LOG" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 100); do [[ -S $WORK/s1 && -S $WORK/s0 ]] && break; sleep 0.05; done
[[ -e $WORK/s-cli ]] && fail "the removed controller came back"
script=$(guest_script runtime-config <<'G'
lsscsi
check '[ "$(ls /sys/class/scsi_disk | wc -l)" = 3 ]'
a0=$(disk_for_lun 0:0:0:0); a2=$(disk_for_lun 0:0:0:2); b0=$(disk_for_lun 1:0:0:0)
check '[ "$(blockdev --getsize64 $a0)" = 33554432 ]'
check '[ "$(blockdev --getsize64 $a2)" = 16777216 ]'
check '[ "$(blockdev --getsize64 $b0)" = 50331648 ]'
check 'sg_vpd --page=0x80 "$b0" | grep -q RUNTIME1'
check 'dd if=$b0 bs=4096 skip=1 count=1 2>/dev/null | grep -q written-before-restart'
G
)
# shellcheck disable=SC2046
boot_guest "$script" $(vhost_scsi_dev "$WORK/s0" c0) $(vhost_scsi_dev "$WORK/s1" c1) ||
    fail "guest checks failed"
stop_daemon
