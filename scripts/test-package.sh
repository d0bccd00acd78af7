#!/bin/bash
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Build the .deb, install it on this machine, start the installed daemon
# unit against a file LUN, check that it serves (a verified run of the load
# generator, the control socket, save-config), stop it and remove the
# package. Run as root. Ends with "N passed, N failed".
#
# Without systemd as PID 1 (containers, some CI machines) the script does
# two things. It runs the unit's ExecStart line itself, traced with strace,
# under the hardening it can set up (a private mount namespace with /usr,
# /boot and /etc read-only but /etc/vhost-user-scsi, no_new_privs, the
# unit's capability bounding set), and checks every system call the daemon
# makes while it starts, serves, is changed at run time and stops against
# the unit's SystemCallFilter. Then it boots systemd in a container
# (systemd-nspawn, from systemd-container) sharing this machine's /usr, and
# starts the installed units there with every directive applied by systemd:
# the daemon's unit, the pr-helper's socket and service, the per-VM
# template. With systemd as PID 1 it starts the units here.
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
container=
stop_container() {
    [[ -n $container ]] || return 0
    # SIGTERM asks the container's systemd to halt; a second ends it at once.
    kill -TERM "$container" 2>/dev/null
    for _ in $(seq 300); do kill -0 "$container" 2>/dev/null || break; sleep 0.1; done
    kill -TERM "$container" 2>/dev/null
    wait "$container" 2>/dev/null
    container=
}
cleanup() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
    stop_container
    if [[ -d /run/systemd/system ]]; then
        systemctl stop vhost-user-scsi vhost-user-scsi-pr-helper.socket \
            vhost-user-scsi-pr-helper.service 2>/dev/null || true
    fi
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
# The configuration each run starts from (save-config rewrites it).
write_config() {
    cat >/etc/vhost-user-scsi/config.toml <<TOML
[[controller]]
socket = "/run/vhost-user-scsi/pkg-test.sock"
queues = 2

[[controller.lun]]
file = "$work/disk.img"
TOML
}
sock=/run/vhost-user-scsi/pkg-test.sock
unit=/lib/systemd/system/vhost-user-scsi.service

# The checks of a running daemon, whoever started it. $in runs a command
# where the daemon runs (nothing, or nsenter into the container).
serving_checks() {
    for _ in $(seq 600); do $in test -S $sock && break; sleep 0.1; done
    check "it listens ($1)" '$in test -S $sock'
    check "verified I/O ($1)" '$in vhost-user-scsi bench --socket $sock --verify --ios 2000 --quiet >"$work/bench.log" 2>&1'
    check "control socket ($1)" '$in vhost-user-scsi ctl controller-list | grep -q "pkg-test.sock"'
    check "control socket mode 0600 ($1)" '[[ $($in stat -c %a /run/vhost-user-scsi/control.sock) == 600 ]]'
    check "lun-add at run time ($1)" '$in vhost-user-scsi ctl lun-add controller=$sock lun=1 null=1G >/dev/null'
    check "save-config under the hardening ($1)" '$in vhost-user-scsi ctl save-config >/dev/null && grep -q "null = 1073741824" /etc/vhost-user-scsi/config.toml'
}

# Without systemd: the unit's ExecStart under the hardening equivalents
# this script can set up, traced, and every system call it makes checked
# against the unit's SystemCallFilter.
run_exec_start() {
    in=
    write_config
    echo "running the unit's ExecStart under its hardening equivalents, traced"
    exec_start=$(sed -n 's/^ExecStart=//p' $unit)
    caps=$(sed -n 's/^CapabilityBoundingSet=//p' $unit |
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
    serving_checks traced
    # $pid is strace (unshare, sh and setpriv exec'ed into it): stop the
    # daemon it traces; strace exits with the daemon's status.
    daemon=$(pgrep -P "$pid" | head -1)
    kill -TERM "${daemon:-$pid}"
    rc=0
    wait "$pid" || rc=$?
    pid=
    check "stops cleanly on SIGTERM (traced)" '[[ $rc == 0 ]]'
    check "no error logged (traced)" '! grep -E "ERROR|panicked" "$work/daemon.log"'
    check "no capability kept, seccomp enforced (traced)" \
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
    allowed=$(expand $(sed -n 's/^SystemCallFilter=//p' $unit) | sort -u)
    used=$(grep -oE '^[0-9]+ +[a-z0-9_]+\(' "$work/strace.log" | sed -E 's/^[0-9]+ +//; s/\($//' | sort -u)
    missing=$(comm -23 <(echo "$used") <(echo "$allowed") | paste -sd' ')
    check "SystemCallFilter allows the $(echo "$used" | wc -l) system calls made" '[[ -n $used && -z $missing ]]'
    [[ -z $missing ]] || echo "not allowed by the unit: $missing"
    [[ $rc == 0 ]] || cat "$work/daemon.log"
}

# With systemd (PID 1 here, or booted in a container): the installed units
# themselves, every directive applied by systemd.
run_units() {
    local where=$1
    write_config
    $in systemctl daemon-reload
    check "unit starts ($where)" '$in systemctl start vhost-user-scsi'
    main=$($in systemctl show -p MainPID --value vhost-user-scsi)
    serving_checks "$where"
    status=$($in cat /proc/"$main"/status 2>/dev/null)
    check "no_new_privs, seccomp filter, no capability ($where)" \
        'grep -qx "NoNewPrivs:[[:space:]]*1" <<<"$status" && grep -qx "Seccomp:[[:space:]]*2" <<<"$status" &&
         grep -qx "CapEff:[[:space:]]*0*" <<<"$status"'
    check "its own mount namespace ($where)" \
        '[[ $($in readlink /proc/"$main"/ns/mnt) != $($in readlink /proc/1/ns/mnt) ]]'
    check "unit stops ($where)" '$in systemctl stop vhost-user-scsi'
    check "it exited with status 0 ($where)" \
        '[[ $($in systemctl show -p Result --value vhost-user-scsi) == success &&
            $($in systemctl show -p ExecMainStatus --value vhost-user-scsi) == 0 ]]'
    $in journalctl -q -o cat -u vhost-user-scsi >"$work/journal.log" 2>&1
    check "no capability kept, seccomp enforced, no error ($where)" \
        'grep -q "Running as uid 0 gid 0, capabilities none, seccomp enforce" "$work/journal.log" &&
         ! grep -E "ERROR|panicked" "$work/journal.log"'
}

# The pr-helper's socket unit starts its service on the first connection,
# which answers the protocol's handshake (4 bytes of feature flags).
run_pr_helper_units() {
    local where=$1
    check "pr-helper socket unit starts ($where)" '$in systemctl start vhost-user-scsi-pr-helper.socket'
    # shellcheck disable=SC2016
    check "pr-helper activated by a connection answers ($where)" \
        '$in python3 -c "import socket; s = socket.socket(socket.AF_UNIX); s.settimeout(30); s.connect(\"/run/qemu-pr-helper.sock\"); assert len(s.recv(4)) == 4" &&
         [[ $($in systemctl is-active vhost-user-scsi-pr-helper.service) == active ]]'
    $in systemctl stop vhost-user-scsi-pr-helper.socket vhost-user-scsi-pr-helper.service
}

# The per-VM template: the socket belongs to group libvirt-qemu, mode 0660.
run_template_unit() {
    local where=$1
    $in sh -c 'getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu'
    $in mkdir -p /var/lib/images
    $in truncate -s 64M /var/lib/images/pkgvm.img
    check "template unit starts ($where)" '$in systemctl start vhost-user-scsi@pkgvm'
    check "its socket is group libvirt-qemu, mode 0660 ($where)" \
        '[[ $($in stat -c "%G %a" /run/vhost-user-scsi/pkgvm.sock) == "libvirt-qemu 660" ]]'
    check "verified I/O through the template ($where)" \
        '$in vhost-user-scsi bench --socket /run/vhost-user-scsi/pkgvm.sock --verify --ios 500 --quiet >"$work/bench.log" 2>&1'
    check "template unit stops ($where)" '$in systemctl stop vhost-user-scsi@pkgvm'
}

if [[ -d /run/systemd/system ]]; then
    echo "systemd is PID 1: starting the installed units"
    in=
    run_units systemd
    run_pr_helper_units systemd
else
    echo "systemd is not PID 1 here"
    run_exec_start
    if command -v systemd-nspawn >/dev/null; then
        # Boot systemd in a container whose /usr is this machine's (the
        # package just installed) and whose other directories start empty;
        # /etc/vhost-user-scsi and the work directory are bound in. A
        # machine id makes it a regular boot (no first-boot presets, which
        # would enable and start every installed unit). The container keeps
        # every capability, as a host would: the units' bounding sets are
        # the limit under test.
        echo "booting systemd in a container (systemd-nspawn) to start the installed units"
        systemd-id128 new >"$work/machine-id"
        systemd-nspawn -D / --volatile=yes --boot --register=no --keep-unit --console=pipe \
            --capability=all \
            --machine="vus-pkg-$$" --bind-ro="$work/machine-id:/etc/machine-id" \
            --bind=/etc/vhost-user-scsi --bind="$work" >"$work/container.log" 2>&1 &
        container=$!
        leader=
        state=
        for _ in $(seq 600); do
            leader=$(pgrep -P $container | head -1)
            if [[ -n $leader ]]; then
                state=$(nsenter -t "$leader" -a systemctl is-system-running 2>/dev/null)
                [[ $state == running || $state == degraded ]] && break
            fi
            sleep 0.1
        done
        # Whether systemd boots in a container is the machine's matter (its
        # kernel and cgroups), not the package's: none of its units is
        # enabled. So a machine where it cannot is said plainly, not failed.
        if [[ $state == running || $state == degraded ]]; then
            echo "systemd booted in the container ($state)"
            in="nsenter -t $leader -a"
            run_units container
            run_pr_helper_units container
            run_template_unit container
            in=
        else
            echo "SKIP package: systemd did not boot in a container here (state '${state:-none}'):" \
                "the units' directives are untested"
            tail -20 "$work/container.log"
        fi
        stop_container
    else
        echo "systemd-nspawn is not here: the units' directives are untested (install systemd-container)"
    fi
fi
check "dpkg --purge" 'dpkg --purge vhost-user-scsi >/dev/null 2>&1 && [[ ! -e /usr/bin/vhost-user-scsi ]]'
echo "$passed passed, $failed failed"
((failed == 0))
