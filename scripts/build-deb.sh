#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Build the Debian package: the binary, the systemd units, the man pages
# and shell completions (generated from the command-line definitions), the
# example configuration and the documentation. Prints the .deb's path.
#
# Usage: scripts/build-deb.sh [OUTDIR]   (default target/deb)
set -euo pipefail
cd "$(dirname "$0")/.."

out=$(realpath -m "${1:-target/deb}")
cargo build --release --quiet
bin=target/release/vhost-user-scsi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
root=$out/root
rm -rf "$root" "$out/assets"
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" \
    "$root/usr/share/man/man1" "$root/usr/share/doc/vhost-user-scsi/examples" \
    "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
    "$root/usr/share/fish/vendor_completions.d" "$root/etc/vhost-user-scsi"

install -m 0755 "$bin" "$root/usr/bin/vhost-user-scsi"
strip "$root/usr/bin/vhost-user-scsi"
"$bin" gen-assets --out "$out/assets"
for m in "$out"/assets/man/*.1; do gzip -9n <"$m" >"$root/usr/share/man/man1/$(basename "$m").gz"; done
install -m 0644 "$out/assets/completions/vhost-user-scsi.bash" \
    "$root/usr/share/bash-completion/completions/vhost-user-scsi"
install -m 0644 "$out/assets/completions/_vhost-user-scsi" "$root/usr/share/zsh/vendor-completions/"
install -m 0644 "$out/assets/completions/vhost-user-scsi.fish" "$root/usr/share/fish/vendor_completions.d/"
install -m 0644 contrib/systemd/*.service contrib/systemd/*.socket "$root/lib/systemd/system/"
install -m 0600 contrib/config/config.toml "$root/etc/vhost-user-scsi/config.toml"
install -m 0644 contrib/config/config.toml "$root/usr/share/doc/vhost-user-scsi/examples/"
install -m 0644 README.md docs/*.md "$root/usr/share/doc/vhost-user-scsi/"
cat >"$root/usr/share/doc/vhost-user-scsi/copyright" <<'C'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: vhost-user-scsi
License: Apache-2.0 OR BSD-3-Clause
C

cat >"$root/DEBIAN/control" <<C
Package: vhost-user-scsi
Version: $version
Architecture: $arch
Maintainer: vhost-user-scsi developers <vhost-user-scsi@localhost>
Depends: libc6 (>= 2.36)
Section: admin
Priority: optional
Description: vhost-user-scsi backend daemon for QEMU guests
 Serves SCSI disks (files, block devices, iSCSI LUNs) to QEMU's
 vhost-user-scsi-pci devices, with persistent reservations, a
 qemu-pr-helper replacement, a control socket (vhost-user-scsi ctl) and a
 load generator.
C
echo /etc/vhost-user-scsi/config.toml >"$root/DEBIAN/conffiles"
for s in postinst postrm; do
    cat >"$root/DEBIAN/$s" <<'S'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
S
    chmod 0755 "$root/DEBIAN/$s"
done
deb=$out/vhost-user-scsi_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
