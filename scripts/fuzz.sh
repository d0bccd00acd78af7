#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Run every fuzz target (fuzz/) coverage-guided for a bounded time, one after
# the other, starting from the committed corpus: FUZZ_SECONDS each, or by
# default what is left of FUZZ_BUDGET (220 s for the whole step, building
# included) once the targets are built (16 codegen units: quicker to build),
# shared out (3 to 10 s each). A crash, a leak or an input running over 20 s
# fails the run; the input is kept in fuzz/artifacts/TARGET/. Needs the nightly toolchain and cargo-fuzz
# (scripts/install-deps.sh installs cargo-fuzz when nightly exists); without
# nightly it says so and succeeds: `cargo test` still replays the corpora
# (tests/fuzz_corpora.rs). See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

budget=${FUZZ_BUDGET:-220}
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzzing skipped: no nightly toolchain ('cargo +nightly --version' fails);" \
         "the committed corpora were replayed by cargo test only"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzzing not possible: nightly is here but cargo-fuzz is not (run scripts/install-deps.sh)" >&2
    exit 1
fi

start=$SECONDS
work=$PWD/target/fuzz-ci
rm -rf "$work"
mkdir -p "$work"
cd fuzz
cargo +nightly fuzz build -O --codegen-units 16 2>&1 | tail -1
targets=$(cargo +nightly fuzz list)
n=$(wc -w <<<"$targets")
if [[ -n ${FUZZ_SECONDS:-} ]]; then
    secs=$FUZZ_SECONDS
else
    # About 2 s per target go to starting it and loading its corpus.
    secs=$(((budget - (SECONDS - start) - 2 * n) / n))
    secs=$((secs < 3 ? 3 : secs > 10 ? 10 : secs))
fi
echo "built in $((SECONDS - start)) s; fuzzing each of the $n targets for $secs s"
failed=()
for t in $targets; do
    # New inputs go to a scratch directory; the committed seeds stay as they are.
    mkdir -p "$work/$t"
    log=$work/$t.log
    if cargo +nightly fuzz run -O --codegen-units 16 "$t" "$work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=20 -jobs=1 -workers=1 -rss_limit_mb=2048 -max_len=4096 \
        -print_final_stats=1 >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)
        echo "fuzz $t: ${runs:-?} runs in ${secs} s, $cov"
    else
        echo "fuzz $t: FAILED (log: $log)"
        grep -E 'ERROR|panicked|SUMMARY|Test unit written|artifact' "$log" | head -20 || true
        failed+=("$t")
    fi
done
rm -f fuzz-*.log
echo "fuzzing took $((SECONDS - start)) s"
if ((${#failed[@]})); then
    echo "fuzz targets that failed: ${failed[*]}" >&2
    exit 1
fi
