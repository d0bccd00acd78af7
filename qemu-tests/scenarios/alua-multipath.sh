#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# run-once (the guest's multipath and the daemon decide; QEMU only carries)
#
# ALUA with dm-multipath in a guest: one LU behind two controllers, one
# active/optimized (relative target port 1), one active/non-optimized
# (port 2). multipath, with the alua prioritizer and paths grouped by
# priority, puts the optimized path in the active group, and I/O through
# the map goes to it alone (the non-optimized path's disk statistics do not
# move). sg_rtpg shows both groups from either path. Then the daemon starts
# again with the states the other way round, and a new boot's multipath
# follows: the optimized path is now the one through port 2.
. "$(dirname "$0")/../lib.sh"

shared=$(make_disk shared.img 64M)
template=$(guest_script alua <<'G'
modprobe dm_multipath; modprobe dm_round_robin
# The optimized path (A) comes through relative target port @OPT@, the
# other (B) through @NON@: both filled in per run below.
A=$(disk_on_port @OPT@); B=$(disk_on_port @NON@)
echo "optimized path $A, non-optimized path $B"
check '[ -n "$A" ] && [ -n "$B" ] && [ "$A" != "$B" ]'
sg_turs "$A" >/dev/null 2>&1 || true; sg_turs "$B" >/dev/null 2>&1 || true
sg_inq "$A" | tee /tmp/inq
check 'grep -q "TPGS=1" /tmp/inq'
sg_rtpg --decode "$B" | tee /tmp/rtpg
check 'grep -A1 "target port group id : 0x@OPT@" /tmp/rtpg | grep -qi "active/optimized"'
check 'grep -A1 "target port group id : 0x@NON@" /tmp/rtpg | grep -qi "active/non optimized"'
sg_vpd --page=0x83 "$B" | tee /tmp/vpd83
check 'grep -q "Target port group: 0x@NON@" /tmp/vpd83'

mkdir -p /etc/multipath
cat >/etc/multipath.conf <<'CONF'
defaults {
    user_friendly_names no
    find_multipaths no
    # No udev in this guest: the WWID comes from VPD page 83h in sysfs.
    uid_attribute ""
}
devices {
    device {
        vendor "VUSCSI"
        product "vhost-user-scsi"
        path_grouping_policy group_by_prio
        # The guest carries dm-round-robin, not dm-service-time.
        path_selector "round-robin 0"
        prio alua
        path_checker tur
        # The guest kernel has no SCSI device handlers (CONFIG_SCSI_DH
        # unset): the prioritizer reads the states in user space.
        hardware_handler "0"
        detect_prio no
        failback immediate
        no_path_retry fail
    }
}
CONF
export DM_DISABLE_UDEV=1
# No udevd either: multipath only takes devices udev has initialized, which
# libudev tells from a database entry per device. An empty entry will do.
mkdir -p /run/udev/data
for d in $A $B; do echo "I:1" >/run/udev/data/b$(cat /sys/block/${d#/dev/}/dev); done
multipath -v3 >/tmp/mp.log 2>&1 || true
grep -E "aas =|addmap|failed|error" /tmp/mp.log || true
multipath -ll | tee /tmp/ll
# The first (active) group holds the optimized path, alone.
group1=$(awk '/policy=/ {n++} n == 1 { for (i = 1; i <= NF; i++) if ($i ~ /^sd[a-z]+$/) print $i }' /tmp/ll)
echo "first path group: $group1"
check '[ "$group1" = "${A#/dev/}" ]'
check 'grep -m1 "policy=" /tmp/ll | grep -q "prio=50"'
map=/dev/$(ls /sys/block | grep '^dm-' | head -1)
dmsetup mknodes >/dev/null 2>&1 || true
check '[ -b "$map" ]'
# Sectors written (the seventh field of the disk's statistics).
writes() { awk '{print $7}' /sys/block/${1#/dev/}/stat; }
a0=$(writes $A); b0=$(writes $B)
dd if=/dev/urandom of=/tmp/data bs=1M count=16 2>/dev/null
dd if=/tmp/data of="$map" bs=1M count=16 oflag=direct 2>/dev/null
dd if="$map" bs=1M count=16 iflag=direct 2>/dev/null | cmp - /tmp/data
a1=$(writes $A); b1=$(writes $B)
echo "sectors written: optimized path $((a1 - a0)), non-optimized path $((b1 - b0))"
check '[ $((a1 - a0)) -ge 32768 ] && [ $((b1 - b0)) -eq 0 ]'
echo ALUA-OK
G
)
# run OPT NON STATE_A STATE_B: the daemon with those states on ports 1 and
# 2, and a guest that expects the optimized path through port OPT.
run() {
    sed "s/@OPT@/$1/g; s/@NON@/$2/g" "$template" >"$WORK/alua-$1.sh"
    start_daemon --socket "$WORK/a,alua-state=$3" --lun "file=$shared" \
        --socket "$WORK/b,alua-state=$4" --lun "file=$shared"
    # shellcheck disable=SC2046
    boot_guest "$WORK/alua-$1.sh" $(vhost_scsi_dev "$WORK/a" c0) $(vhost_scsi_dev "$WORK/b" c1) ||
        fail "ALUA checks failed (optimized port $1)"
    grep -a "sectors written" "$LOG_DIR/guest$GUEST_N.log" | tr -d '\r'
    stop_daemon
}
run 1 2 active-optimized active-non-optimized
run 2 1 active-non-optimized active-optimized
