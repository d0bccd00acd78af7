#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
# run-only 7.2 (the guest's SCSI traffic is the same with either QEMU)
# The initiator against the Linux kernel's own iSCSI target (LIO), which
# runs in a guest of its own (qemu-tests/lio-target.sh): discovery; CHAP,
# one-way and mutual, with SHA-256, SHA-1 and MD5, and the errors of a wrong secret, of no credentials
# and of an ACL; header and data digests; data written and read back
# through the daemon in 4 KiB commands and in 1 MiB ones (R2T-driven
# Data-Out); then persistent reservations through two controllers (two
# sessions, two I_T nexuses), enforced by LIO and checked by a test guest.
. "$(dirname "$0")/../lib.sh"

start_lio
portal=127.0.0.1:$LIO_PORT
u=iscsi://$portal/$LIO_IQN

log "discovery"
"$VUS_BIN" discover "iscsi://$portal" >"$WORK/targets"
for t in plain chap mutual acl; do
    grep -q "^$LIO_IQN:$t " "$WORK/targets" || fail "discovery does not list $t: $(cat "$WORK/targets")"
done

# creds NAME LINES...: a credentials file.
creds() {
    local f=$WORK/$1.chap
    shift
    printf '%s\n' "$@" >"$f"
    chmod 600 "$f"
    echo "$f"
}
good=$(creds good "user = alice" "password = alicesecret12")
bad=$(creds bad "user = alice" "password = wrongsecret12")
mutual=$(creds mutual "user = alice" "password = alicesecret12" \
                      "target-user = lio-target" "target-password = targetsecret1")
impostor=$(creds impostor "user = alice" "password = alicesecret12" \
                          "target-user = lio-target" "target-password = othersecret1")

# refused SOCKET-ARGS LUN MESSAGE: the daemon does not start, and says why.
refused() {
    local out rc=0
    out=$(timeout 60 "$VUS_BIN" serve --socket "$WORK/r.sock$1" --lun "$2" 2>&1) || rc=$?
    [[ $rc -ne 0 && $rc -ne 124 ]] || fail "serve --lun $2 did not fail at start (status $rc)"
    grep -q "$3" <<<"$out" || fail "serve --lun $2: expected \"$3\", got: $(tail -1 <<<"$out")"
    log "refused as expected: $(tail -1 <<<"$out")"
}
refused "" "$u:chap/0" "probably requires CHAP"
refused "" "$u:chap/0,credentials=$bad" "Authentication failed"
refused "" "$u:mutual/0,credentials=$impostor" "The target failed mutual CHAP authentication"
refused "" "$u:acl/0" "not allowed to log in to this target (ACL)"

# verified SOCKET-ARGS LUN [LOGIN]: data written through the daemon and read
# back; LOGIN: what the daemon must say of how it logged in.
verified() {
    local before i how=
    before=$(grep -c "logged in to" "$DAEMON_LOG" 2>/dev/null || true)
    start_daemon --socket "$WORK/v.sock$1" --lun "$2"
    "$VUS_BIN" bench --socket "$WORK/v.sock" --verify --ios 500 --qd 8 --quiet \
        >"$LOG_DIR/bench.log" 2>&1 || fail "4 KiB verify through $2 failed (see $LOG_DIR/bench.log)"
    "$VUS_BIN" bench --socket "$WORK/v.sock" --verify --bs 1M --span 16M --ios 32 --qd 4 --quiet \
        >"$LOG_DIR/bench.log" 2>&1 || fail "1 MiB verify through $2 failed (see $LOG_DIR/bench.log)"
    if [[ -n ${3:-} ]]; then
        # The session logs in when a VM (here the load generator) uses it.
        how=$(grep "logged in to" "$DAEMON_LOG" | tail -n +$((before + 1)))
        grep -qF "$3" <<<"$how" || fail "login through $2: expected \"$3\", got: $how"
    fi
    stop_daemon
    log "verified: $2"
}
verified "" "$u:plain/0"
verified "" "$u:plain/0,header-digest,data-digest"
verified "" "$u:chap/0,credentials=$good" "(CHAP, SHA-256)"
verified "" "$u:mutual/0,credentials=$mutual,header-digest" "(mutual CHAP, SHA-256)"
verified "" "$u:mutual/0,credentials=$mutual,chap-algorithms=sha1" "(mutual CHAP, SHA-1)"
verified "" "$u:chap/0,credentials=$good,chap-algorithms=md5" "(CHAP, MD5)"
verified ",initiator=$LIO_IQN:allowed" "$u:acl/0"

log "persistent reservations through two sessions"
start_daemon --socket "$WORK/a,initiator=$LIO_IQN:path-a" --lun "$u:plain/0" \
             --socket "$WORK/b,initiator=$LIO_IQN:path-b" --lun "$u:plain/0"
script=$(pr_two_paths_script)
# shellcheck disable=SC2046
boot_guest "$script" $(vhost_scsi_dev "$WORK/a" c0) $(vhost_scsi_dev "$WORK/b" c1) || fail "guest checks failed"
stop_daemon
