#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Build the .deb, install it on this machine, start the installed daemon
# unit against a file LUN, check that it serves (a verified run of the load
# generator, the control socket, save-config), stop it and remove the
# package. Run as root. Ends with "N passed, N failed".
#
# Without systemd as PID 1 (containers, some CI machines) the unit cannot
# be started as a unit: its ExecStart line is run as systemd would, under
# the equivalents of its hardening this script can set up (a private mount
# namespace with /usr, /boot and /etc read-only but /etc/vhost-user-scsi,
# no_new_privs, the unit's capability bounding set); MemoryDenyWriteExecute,
# the Protect*/Restrict* sysctl, namespace and address-family filters are
# seccomp or kernel settings only systemd applies, and are not tried then.
# The unit's SystemCallFilter is checked instead against every system call
# the daemon makes (traced with strace) while it starts, serves, is changed
# at run time and stops.
set -uo pipefail
cd "$(dirname "$0")/.."

passed=0
failed=0
check() {
    if eval "$2"; then
        echo "PASS package: $1"
        passed=$((passed + 1))
    else
        echo "FAIL package: $1"
        failed=$((failed + 1))
    fi
}

deb=$(scripts/build-deb.sh) || { echo "0 passed, 1 failed"; exit 1; }
echo "built $deb ($(du -h "$deb" | cut -f1))"
work=$(mktemp -d /var/tmp/vus-pkg.XXXXXX)
pid=
cleanup() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
    if [[ ${mode:-} == systemd ]]; then systemctl stop vhost-user-scsi 2>/dev/null || true; fi
    dpkg --purge vhost-user-scsi >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

check "dpkg -i" 'dpkg -i "$deb" >"$work/dpkg.log" 2>&1'
check "files installed" '[[ -x /usr/bin/vhost-user-scsi && -f /lib/systemd/system/vhost-user-scsi.service &&
    -f /lib/systemd/system/vhost-user-scsi-pr-helper.socket &&
    -f /usr/share/man/man1/vhost-user-scsi-serve.1.gz &&
    -f /usr/share/bash-completion/completions/vhost-user-scsi &&
    -f /usr/share/zsh/vendor-completions/_vhost-user-scsi &&
    -f /usr/share/fish/vendor_completions.d/vhost-user-scsi.fish &&
    -f /etc/vhost-user-scsi/config.toml ]]'
check "man page renders" 'man -l /usr/share/man/man1/vhost-user-scsi-ctl.1.gz 2>/dev/null | grep -q "control socket" ||
    zcat /usr/share/man/man1/vhost-user-scsi-ctl.1.gz | grep -q "control socket"'

truncate -s 64M "$work/disk.img"
cat >/etc/vhost-user-scsi/config.toml <<TOML
[[controller]]
socket = "/run/vhost-user-scsi/pkg-test.sock"
queues = 2

[[controller.lun]]
file = "$work/disk.img"
TOML
sock=/run/vhost-user-scsi/pkg-test.sock
if [[ -d /run/systemd/system ]]; then
    mode=systemd
    echo "systemd is running: starting vhost-user-scsi.service"
    systemctl daemon-reload
    check "unit starts" 'systemctl start vhost-user-scsi'
else
    mode=exec
    echo "systemd is not PID 1 here: running the unit's ExecStart under its hardening equivalents"
    exec_start=$(sed -n 's/^ExecStart=//p' /lib/systemd/system/vhost-user-scsi.service)
    caps=$(sed -n 's/^CapabilityBoundingSet=//p' /lib/systemd/system/vhost-user-scsi.service |
        tr ' ' '\n' | sed 's/^CAP_//' | tr 'A-Z' 'a-z' | sed 's/^/+/' | paste -sd,)
    mkdir -p /run/vhost-user-scsi
    # shellcheck disable=SC2016
    unshare --mount --propagation private sh -c '
        set -e
        for d in /usr /boot /etc; do [ -d $d ] && mount -o bind,ro $d $d && mount -o remount,bind,ro $d; done
        mount --bind /etc/vhost-user-scsi /etc/vhost-user-scsi
        mount -o remount,bind,rw /etc/vhost-user-scsi
        exec setpriv --no-new-privs --bounding-set -all,'"$caps"' \
            strace -f -qq -o '"$work/strace.log"' '"$exec_start" \
        >"$work/daemon.log" 2>&1 &
    pid=$!
fi
for _ in $(seq 200); do [[ -S $sock ]] && break; sleep 0.05; done
check "it listens" '[[ -S $sock ]]'
check "verified I/O" 'vhost-user-scsi bench --socket $sock --verify --ios 2000 --quiet >"$work/bench.log" 2>&1'
check "control socket" 'vhost-user-scsi ctl controller-list | grep -q "pkg-test.sock"'
check "control socket mode 0600" '[[ $(stat -c %a /run/vhost-user-scsi/control.sock) == 600 ]]'
check "lun-add at run time" 'vhost-user-scsi ctl lun-add controller=$sock lun=1 null=1G >/dev/null'
check "save-config under the hardening" 'vhost-user-scsi ctl save-config >/dev/null && grep -q "null = 1073741824" /etc/vhost-user-scsi/config.toml'
if [[ $mode == systemd ]]; then
    check "unit stops" 'systemctl stop vhost-user-scsi'
else
    # $pid is strace (unshare, sh and setpriv exec'ed into it): stop the
    # daemon it traces; strace exits with the daemon's status.
    daemon=$(pgrep -P "$pid" | head -1)
    kill -TERM "${daemon:-$pid}"
    rc=0
    wait "$pid" || rc=$?
    pid=
    check "stops cleanly on SIGTERM" '[[ $rc == 0 ]]'
    check "no error logged" '! grep -E "ERROR|panicked" "$work/daemon.log"'
    check "no capability kept, seccomp enforced" \
        'grep -q "Running as uid 0 gid 0, capabilities none, seccomp enforce" "$work/daemon.log"'
    # Every system call made must pass the unit's SystemCallFilter.
    expand() {
        local item
        for item in "$@"; do
            if [[ $item == @* ]]; then
                # shellcheck disable=SC2046
                expand $(systemd-analyze syscall-filter --no-pager "$item" |
                    tail -n +2 | grep -v '^ *#' | awk 'NF {print $1}')
            else
                echo "$item"
            fi
        done
    }
    # shellcheck disable=SC2046
    allowed=$(expand $(sed -n 's/^SystemCallFilter=//p' /lib/systemd/system/vhost-user-scsi.service) | sort -u)
    used=$(grep -oE '^[0-9]+ +[a-z0-9_]+\(' "$work/strace.log" | sed -E 's/^[0-9]+ +//; s/\($//' | sort -u)
    missing=$(comm -23 <(echo "$used") <(echo "$allowed") | paste -sd' ')
    check "SystemCallFilter allows the $(echo "$used" | wc -l) system calls made" '[[ -n $used && -z $missing ]]'
    [[ -z $missing ]] || echo "not allowed by the unit: $missing"
    [[ $rc == 0 ]] || cat "$work/daemon.log"
fi
check "dpkg --purge" 'dpkg --purge vhost-user-scsi >/dev/null 2>&1 && [[ ! -e /usr/bin/vhost-user-scsi ]]'
echo "$passed passed, $failed failed"
((failed == 0))
