#!/bin/bash
# Run the unit tests that exercise the unsafe code (guest memory and
# descriptor chains, the vhost-user layer, io_uring and bounce buffers,
# SG_IO, the device queues, the iSCSI receiving half) under
# AddressSanitizer, with the nightly toolchain. A documented check, not
# part of CI (a sanitized build takes about ten minutes on two cores); see
# docs/security.md.
#
# Leak detection is off: the test harnesses leak their guest memory on
# purpose (Box::leak gives it the 'static lifetime the rings want). The
# daemon's own leaks are measured by tests/soak.rs (descriptors, memory)
# instead.
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(rustc +nightly -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Zsanitizer=address" RUSTDOCFLAGS="-Zsanitizer=address"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:detect_stack_use_after_return=1"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/asan}
exec cargo +nightly test --lib --target "$target" -- \
    vhost:: virtio:: backstore:: device:: prhelper:: scsi::writes iscsi::gather \
    iscsi::client::halves "$@"
