# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Guest side of start_lio (lib.sh): the Linux kernel's iSCSI target (LIO),
# configured through configfs, in a test guest whose port 3260 QEMU forwards
# to a loopback port of the host. Prints LIO-READY, then serves until the
# guest is killed. Targets (backstores are files on the guest's tmpfs):
#   $P:plain   64 MiB, any initiator, no authentication
#   $P:chap    16 MiB, CHAP: alice / alicesecret12
#   $P:mutual  16 MiB, CHAP as above, and the target proves itself as
#              lio-target / targetsecret1
#   $P:acl     16 MiB, only the initiator $P:allowed
set -e
P=iqn.2026-12.org.vhost-user-scsi.lio
for m in virtio_net configfs target_core_mod target_core_file iscsi_target_mod; do
    modprobe "$m"
done
grep -q " /sys/kernel/config " /proc/mounts || mount -t configfs none /sys/kernel/config
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0
ip link set eth0 up
C=/sys/kernel/config/target
# LIO keeps reservation state in a file per device (written on every
# PERSISTENT RESERVE OUT, APTPL or not), named after the unit serial.
mkdir -p /var/target/pr

# target NAME SIZE_MIB: a target with one fileio LUN 0 (a backstore of its
# own); sets t to its TPG directory.
n=0
target() {
    dev=$C/core/fileio_$n/d$n
    truncate -s "$2M" "/tmp/d$n.img"
    mkdir -p "$dev"
    echo "fd_dev_name=/tmp/d$n.img,fd_dev_size=$(($2 << 20))" > "$dev/control"
    echo "lio-$1" > "$dev/wwn/vpd_unit_serial"
    echo 1 > "$dev/enable"
    t=$C/iscsi/$P:$1/tpgt_1
    mkdir -p "$t/lun/lun_0"
    ln -s "$dev" "$t/lun/lun_0/d$n"
    mkdir "$t/np/0.0.0.0:3260"
    n=$((n + 1))
}
demo() { # demo TPG AUTH: every initiator gets the LUNs
    echo 1 > "$1/attrib/generate_node_acls"
    echo 1 > "$1/attrib/cache_dynamic_acls"
    echo 0 > "$1/attrib/demo_mode_write_protect"
    echo "$2" > "$1/attrib/authentication"
    echo 1 > "$1/enable"
}

# auth TPG KEY VALUE: without a newline, which LIO would keep in the secret.
auth() { printf %s "$3" > "$1/auth/$2"; }

target plain 64; demo "$t" 0

target chap 16
auth "$t" userid alice; auth "$t" password alicesecret12
demo "$t" 1

target mutual 16
auth "$t" userid alice; auth "$t" password alicesecret12
auth "$t" userid_mutual lio-target; auth "$t" password_mutual targetsecret1
demo "$t" 1

target acl 16
echo 0 > "$t/attrib/generate_node_acls"
echo 0 > "$t/attrib/authentication"
a=$t/acls/$P:allowed
mkdir -p "$a/lun_0"
ln -s "$t/lun/lun_0" "$a/lun_0/lun0"
echo 1 > "$t/enable"

echo LIO-READY
while true; do sleep 3600; done
