#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# QEMU's human monitor (HMP) on a unix socket, for the guest scenarios.
#
# Usage: monitor.py SOCKET COMMAND...        run each command, print output
#        monitor.py SOCKET --migrate URI [--timeout S]
#                                            migrate and wait until it
#                                            completed (exit 0) or failed
#        monitor.py SOCKET --migrate-and-cancel URI
#                                            start migrating, cancel it
#                                            (exit 0 once cancelled)
import re
import socket
import sys
import time


class Monitor:
    """QEMU's human monitor on a unix socket."""

    def __init__(self, path, timeout=5):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self._read_prompt()

    def _read_prompt(self):
        buf = b""
        while not buf.endswith(b"(qemu) "):
            chunk = self.s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf.decode(errors="replace")

    def run(self, cmd):
        self.s.sendall(cmd.encode() + b"\n")
        out = self._read_prompt()
        # The monitor echoes the command (with terminal escapes) first.
        out = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out)
        lines = [l.rstrip("\r") for l in out.split("\n")]
        lines = [l for l in lines if l and not l.startswith("(qemu)")]
        return "\n".join(lines[1:] if lines and cmd in lines[0] else lines)


def migrate(m, uri, timeout):
    """Migrate to `uri`; return (ok, last `info migrate` output)."""
    # No bandwidth cap, a generous downtime: convergence under TCG.
    m.run("migrate_set_parameter max-bandwidth 1G")
    m.run("migrate_set_parameter downtime-limit 2000")
    out = m.run(f"migrate -d {uri}")
    if out.strip():
        return False, out
    deadline = time.time() + timeout
    info = ""
    while time.time() < deadline:
        info = m.run("info migrate")
        status = re.search(r"[Mm]igration status:\s*(\S+)", info)
        state = status.group(1) if status else ""
        if state == "completed":
            return True, info
        if state in ("failed", "cancelled"):
            return False, info
        time.sleep(0.2)
    m.run("migrate_cancel")
    return False, "timed out\n" + info


def migrate_and_cancel(m, uri, timeout):
    """Start migrating to `uri`, cancel it once it is under way; return
    (ok, last `info migrate` output): ok if it ended cancelled."""
    m.run("migrate_set_parameter max-bandwidth 1M")
    out = m.run(f"migrate -d {uri}")
    if out.strip():
        return False, out
    deadline = time.time() + timeout
    cancelled = False
    info = ""
    while time.time() < deadline:
        info = m.run("info migrate")
        status = re.search(r"[Mm]igration status:\s*(\S+)", info)
        state = status.group(1) if status else ""
        if state == "active" and not cancelled:
            time.sleep(0.5)
            m.run("migrate_cancel")
            cancelled = True
        elif state == "cancelled":
            return True, info
        elif state in ("completed", "failed"):
            return False, info
        time.sleep(0.1)
    return False, "timed out\n" + info


def main():
    path, args = sys.argv[1], sys.argv[2:]
    m = Monitor(path)
    if args and args[0] == "--migrate-and-cancel":
        ok, info = migrate_and_cancel(m, args[1], 60)
        print(info)
        sys.exit(0 if ok else 1)
    if args and args[0] == "--migrate":
        timeout = float(args[args.index("--timeout") + 1]) if "--timeout" in args else 120
        ok, info = migrate(m, args[1], timeout)
        print(info)
        sys.exit(0 if ok else 1)
    for cmd in args:
        print(m.run(cmd))


if __name__ == "__main__":
    main()
