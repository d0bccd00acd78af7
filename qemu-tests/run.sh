#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Run every guest scenario against every available QEMU (Debian's 7.2 and
# the 10.0 unpacked by scripts/install-deps.sh), and end with the line
# "N passed, N failed". Exit status is non-zero if anything failed.
#
# Usage: qemu-tests/run.sh [SCENARIO...]   (names from qemu-tests/scenarios)
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

cargo build --release --quiet || exit 1
export VUS_BIN=$root/target/release/vhost-user-scsi
export GUEST_DIR=$root/target/guest
qemu-tests/build-guest.sh "$GUEST_DIR" || exit 1

# name|binary|extra args|module dir
qemus=("7.2|qemu-system-x86_64||")
q10=$root/target/qemu10
if [[ -x $q10/usr/bin/qemu-system-x86_64 ]]; then
    qemus+=("10.0|$q10/usr/bin/qemu-system-x86_64|-L $q10/usr/share/qemu -L /usr/share/seabios|$q10/usr/lib/x86_64-linux-gnu/qemu")
elif [[ ${CI:-} == true ]]; then
    echo "QEMU 10.0 is missing (run scripts/install-deps.sh)" >&2
    exit 1
fi

if (($#)); then
    scenarios=("$@")
else
    scenarios=()
    for f in qemu-tests/scenarios/*.sh; do scenarios+=("$(basename "$f" .sh)"); done
fi

logs=$root/target/qemu-tests/logs
rm -rf "$logs"
passed=0
failed=0
failures=()
first_qemu=1
for q in "${qemus[@]}"; do
    IFS='|' read -r qname qbin qargs qmods <<<"$q"
    for s in "${scenarios[@]}"; do
        # Nested-QEMU scenarios take minutes and test the inner QEMU, which
        # is the same for every outer one: run them once.
        # So are scenarios marked "# run-once" (their QEMU is not the one
        # under test).
        if [[ ($s == *-nested || -n $(grep -m1 '^# run-once' "qemu-tests/scenarios/$s.sh")) &&
              $first_qemu == 0 ]]; then
            continue
        fi
        # "# run-only VERSION": scenarios about one QEMU (the newest, say)
        # where running them on the other adds nothing.
        only=$(sed -n 's/^# run-only \([0-9.]*\).*/\1/p' "qemu-tests/scenarios/$s.sh" | head -1)
        if [[ -n $only && $only != "$qname" ]]; then
            continue
        fi
        dir=$logs/qemu-$qname/$s
        mkdir -p "$dir"
        start=$(date +%s)
        if QEMU=$qbin QEMU_ARGS=$qargs QEMU_MODULE_DIR=$qmods LOG_DIR=$dir \
            bash "qemu-tests/scenarios/$s.sh" >"$dir/output.log" 2>&1; then
            echo "PASS qemu-$qname $s ($(($(date +%s) - start)) s)"
            passed=$((passed + 1))
        else
            echo "FAIL qemu-$qname $s ($(($(date +%s) - start)) s), logs in $dir"
            sed 's/^/    /' "$dir/output.log" | tail -20
            for g in "$dir"/guest*.log; do
                [[ -e $g ]] || continue
                echo "    --- $(basename "$g") (last lines)"
                tr -d '\r' <"$g" | grep -av '^$' | tail -25 | sed 's/^/    /'
            done
            for g in "$dir"/guest*.log.qemu; do
                [[ -s $g ]] || continue
                echo "    --- $(basename "$g") (last lines)"
                tail -10 "$g" | sed 's/^/    /'
            done
            for g in "$dir"/guest*.log.hang; do
                [[ -e $g ]] || continue
                echo "    --- $(basename "$g") (kernel stacks in the file)"
                grep -v '^    ' "$g" | head -60 | sed 's/^/    /'
            done
            echo "    --- daemon.log (last lines)"
            tail -15 "$dir/daemon.log" 2>/dev/null | sed 's/^/    /'
            failed=$((failed + 1))
            failures+=("qemu-$qname/$s")
        fi
    done
    first_qemu=0
done
if ((failed)); then
    echo "failed: ${failures[*]}"
fi
echo "$passed passed, $failed failed"
((failed == 0))
