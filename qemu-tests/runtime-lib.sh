# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Helpers for scenarios that change the daemon while a guest runs (source
# after lib.sh): the control socket, a guest booted in the background, and
# steps the guest announces on its console for the host to act on.

CTL_SOCK=$WORK/ctl.sock

# ctl METHOD ARGS...: `vhost-user-scsi ctl` on this scenario's daemon.
ctl() {
    "$VUS_BIN" ctl --control "$CTL_SOCK" "$@"
}

# boot_guest_bg SCRIPT [QEMU ARGS...]: boot_guest in the background;
# GUEST_LOG is its console, GUEST_BG its job. guest_wait waits for it.
boot_guest_bg() {
    GUEST_LOG=$LOG_DIR/guest$((GUEST_N + 1)).log
    boot_guest "$@" &
    GUEST_BG=$!
    GUEST_N=$((GUEST_N + 1))
}

guest_wait() {
    local rc=0
    wait "$GUEST_BG" || rc=$?
    return "$rc"
}

# await_step NAME [SECONDS]: wait until the guest printed "STEP: NAME"
# (default deadline 120 s: a guest boot on a busy machine included).
await_step() {
    local deadline=$((SECONDS + ${2:-120}))
    while ! grep -aq "STEP: $1" "$GUEST_LOG" 2>/dev/null; do
        kill -0 "$GUEST_BG" 2>/dev/null || fail "the guest ended before step $1"
        ((SECONDS < deadline)) || fail "the guest did not reach step $1"
        sleep 0.2
    done
    log "guest: $1"
}

# stat_of CONTROLLER LUN FIELD: one counter of `ctl stats`.
stat_of() {
    ctl stats controller="$1" lun="$2" --json |
        python3 -c "import json,sys; print(json.load(sys.stdin)['luns'][0]['$3'])"
}

# The guest side: poll_until 'CONDITION' SECONDS waits (in the guest) until
# CONDITION holds; step NAME tells the host.
GUEST_RUNTIME_LIB='
poll_until() {
    i=0
    while ! eval "$1"; do
        i=$((i + 1))
        [ $i -lt $(($2 * 10)) ] || { echo "TIMED OUT: $1"; return 1; }
        sleep 0.1
    done
}
step() { echo "STEP: $1"; }
'
