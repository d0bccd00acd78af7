#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Build the test guest: Debian's cloud kernel (unpacked, never installed) and a
# busybox initramfs carrying sg3_utils, lsscsi, e2fsprogs, fio and libiscsi's
# conformance suite (iscsi-test-cu) with their libraries. The guest's /init runs the script handed in by fw_cfg
# (opt/test) and powers off, printing "GUEST-RESULT: <rc>".
#
# Usage: qemu-tests/build-guest.sh OUTDIR [minimal]
#   writes OUTDIR/vmlinuz and OUTDIR/initrd; "minimal" carries only
#   sg3_utils' sg_persist/sg_inq/sg_turs (the inner guest of nested tests).
set -euo pipefail

out=${1:?usage: build-guest.sh OUTDIR [minimal]}
minimal=${2:-}
mkdir -p "$out"
out=$(cd "$out" && pwd)
here=$(cd "$(dirname "$0")" && pwd)

if [[ -s $out/vmlinuz && -s $out/initrd && $out/initrd -nt $here/build-guest.sh ]]; then
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- kernel ---------------------------------------------------------------
kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
if [[ -z $kpkg ]]; then
    echo "build-guest: cannot resolve the cloud kernel package (run apt-get update)" >&2
    exit 1
fi
(cd "$work" && apt-get download "$kpkg" >/dev/null)
dpkg-deb -x "$work"/"$kpkg"_*.deb "$work/kernel"
kver=${kpkg#linux-image-}
cp "$work/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"

# --- initramfs ------------------------------------------------------------
root=$work/root
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,mnt,lib/modules,usr/bin,usr/sbin,run,var/tmp}
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
    [[ -e $root/bin/$applet ]] || ln -s busybox "$root/bin/$applet"
done

# Programs and every library they load.
if [[ $minimal == minimal ]]; then
    progs=(sg_persist sg_inq sg_turs)
else
progs=(sg_inq sg_vpd sg_readcap sg_luns sg_opcodes sg_modes sg_unmap sg_write_same sg_sync
       sg_compare_and_write sg_get_lba_status sg_reset sg_turs sg_rtpg sg_requests sg_verify
       sg_raw sg_dd sg_persist sg_rep_zones sg_start sg_prevent sg_wr_mode sg_rdcap
       sg_xcopy sg_copy_results sg_sanitize sg_seek sg_write_x sg_write_verify sg_stpg
       iscsi-test-cu multipath lsscsi fio mkfs.ext4 fsck.ext4 e2fsck resize2fs blkdiscard blockdev sha256sum
       qemu-pr-helper dmsetup)
fi
for p in "${progs[@]}"; do
    path=$(command -v "$p" 2>/dev/null || true)
    [[ -n $path ]] || continue
    rm -f "$root/bin/$p"
    cp -L "$path" "$root/bin/$p"
    ldd "$path" 2>/dev/null | awk '/=>/ {print $3} /^\t\/lib/ {print $1}' | while read -r lib; do
        [[ -n $lib && -e $lib ]] || continue
        mkdir -p "$root$(dirname "$lib")"
        cp -Ln "$lib" "$root$lib" 2>/dev/null || true
    done
done
# multipath's path checkers and prioritizers, loaded at run time.
if [[ $minimal != minimal && -d /lib/multipath ]]; then
    mkdir -p "$root/lib/multipath"
    cp -L /lib/multipath/lib{checktur,prioalua,prioconst}.so "$root/lib/multipath/"
fi
# The dynamic loader at its canonical path.
mkdir -p "$root/lib64"
cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
# fio loads its io engines and libaio at run time; keep the synchronous ones.

# Kernel modules the guest needs, with their dependencies resolved by modprobe.
mods=(virtio_pci virtio_scsi sd_mod sg qemu_fw_cfg)
[[ $minimal == minimal ]] || mods+=(dm_mod dm_multipath dm_round_robin
                                    virtio_net configfs target_core_mod target_core_file iscsi_target_mod)
kmod_root=$work/kernel
depmod -b "$kmod_root" "$kver"
for m in "${mods[@]}"; do
    modprobe -d "$kmod_root" -S "$kver" --show-depends "$m" 2>/dev/null |
        awk '/^insmod/ {print $2}' | while read -r ko; do
            dest=$root/lib/modules/$kver/${ko#"$kmod_root"/lib/modules/"$kver"/}
            mkdir -p "$(dirname "$dest")"
            cp "$ko" "$dest"
        done
done
cp "$kmod_root/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$root/lib/modules/$kver/" 2>/dev/null || true
depmod -b "$root" "$kver"

cat > "$root/init" <<'INIT'
#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts /run /var/run
for m in virtio_pci virtio_scsi sd_mod sg qemu_fw_cfg; do modprobe "$m" 2>/dev/null; done
echo 0 > /proc/sys/kernel/printk 2>/dev/null
# vus_watchdog=N on the command line: if the test still runs after N s,
# put the kernel log and what every process waits in on the console (the
# harness kills the guest soon after).
wd=$(sed -n 's/.*vus_watchdog=\([0-9]*\).*/\1/p' /proc/cmdline)
if [ -n "$wd" ]; then
    (sleep "$wd"; echo "=== guest watchdog after $wd s"; dmesg | tail -40
     for p in /proc/[0-9]*; do
         echo "$(basename $p) $(cat $p/comm 2>/dev/null) $(cat $p/wchan 2>/dev/null)"
     done) &
fi
raw=/sys/firmware/qemu_fw_cfg/by_name/opt/test/raw
i=0
while [ ! -e "$raw" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
if [ -e "$raw" ]; then
    cat "$raw" > /test.sh
    # Give SCSI scanning a moment to create the disks.
    # (vus_nodisk on the command line: a guest without disks.)
    i=0
    grep -q vus_nodisk /proc/cmdline && i=100
    while [ -z "$(ls /sys/class/scsi_disk 2>/dev/null)" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
    sh -e /test.sh
    rc=$?
else
    echo "no test script in fw_cfg"
    rc=99
fi
echo "GUEST-RESULT: $rc"
sync
poweroff -f
INIT
chmod +x "$root/init"

(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet) | lz4 -l -9 -q > "$out/initrd"
echo "build-guest: kernel $kver, initrd $(du -h "$out/initrd" | cut -f1)"
