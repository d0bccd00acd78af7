#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Install what building and testing needs on a Debian 12 machine (run as
# root): QEMU 7.2 from Debian, the guest's tools, and QEMU 10.0 from
# bookworm-backports unpacked into target/qemu10 (so both versions exist side
# by side; only one can be installed by apt), and cargo-fuzz when the nightly
# toolchain is here (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(busybox-static sg3-utils fio lsscsi kmod cpio lz4 e2fsprogs
          util-linux coreutils dmsetup tgt libiscsi-bin multipath-tools
          strace systemd systemd-container)
# The system QEMU is Debian 12's 7.2, whatever the machine came with: an image
# may carry qemu-utils from bookworm-backports, which Breaks qemu-system-common
# 7.2, so both are taken from bookworm (a downgrade there).
qemu_packages=(qemu-system-x86 qemu-utils)

backports=/etc/apt/sources.list.d/bookworm-backports.sources
if [[ ! -e $backports ]] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d; then
    cat > "$backports" <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
for p in "${qemu_packages[@]}"; do
    [[ $(dpkg-query -W -f='${Status} ${Version}' "$p" 2>/dev/null) == "install ok installed 1:7.2"* ]] ||
        missing+=("$p/bookworm")
done
if ((${#missing[@]})); then
    apt-get install -y -qq --allow-downgrades "${missing[@]}" >/dev/null
fi

# QEMU 10.0, unpacked (not installed) into target/qemu10.
q10=target/qemu10
if [[ ! -x $q10/usr/bin/qemu-system-x86_64 ]]; then
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download -qq qemu-system-x86/bookworm-backports \
        qemu-system-common/bookworm-backports qemu-system-data/bookworm-backports 2>/dev/null)
    mkdir -p "$q10"
    for d in "$tmp"/*.deb; do dpkg-deb -x "$d" "$q10"; done
    rm -rf "$tmp"
fi
# cargo-fuzz, from crates.io, for the fuzz step of scripts/test.sh: only with
# a nightly toolchain (libFuzzer builds need it), and only if missing.
if cargo +nightly --version >/dev/null 2>&1 && ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --quiet
fi

"$q10/usr/bin/qemu-system-x86_64" --version | head -1
qemu-system-x86_64 --version | head -1
