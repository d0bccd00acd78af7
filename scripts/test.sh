#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Every test: formatting, lints, unit tests (the fuzz corpora replayed
# included), a short coverage-guided run of every fuzz target when the
# nightly toolchain is here, then real QEMU guests (both QEMU versions). Run
# scripts/install-deps.sh once first on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --quiet --all-targets -- -D warnings
echo "== cargo test"
cargo test --quiet 2>&1 | tee target/unit-tests.log
echo "== fuzzing"
scripts/fuzz.sh
echo "== guest tests"
qemu-tests/run.sh
echo "== package: build, install, start the installed daemon, remove"
scripts/test-package.sh
