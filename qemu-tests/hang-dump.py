#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# A guest did not finish in time: record what QEMU and the daemon were doing
# before the harness kills them, so a hang seen once in CI can be told apart
# (guest stuck in firmware, the kernel or user space; a thread blocked in
# the daemon). The guest's own view (kernel log, what each process waits
# in) is on its console: its init prints it shortly before the timeout.
#
# Usage: hang-dump.py MONITOR_SOCKET QEMU_PID [DAEMON_PID...]
# Writes the report to stdout.
import os
import re
import socket
import sys


class Monitor:
    """QEMU's human monitor on a unix socket."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(5)
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


def monitor_report(path):
    print("=== QEMU monitor")
    try:
        m = Monitor(path)
    except OSError as e:
        print(f"monitor unavailable: {e}")
        return
    # Only commands that are safe on every QEMU we test: 7.2 crashes on
    # "info virtio-status" and "info virtio-queue-status" for
    # vhost-user-scsi devices.
    try:
        print("--- info status")
        print(m.run("info status"))
        # Where the vCPU is (firmware, kernel, user space) and whether it
        # halted waiting for an interrupt.
        print("--- info registers (first lines)")
        print("\n".join(m.run("info registers").splitlines()[:6]))
    except OSError as e:
        print(f"monitor error: {e}")


def threads_report(pid):
    try:
        comm = open(f"/proc/{pid}/comm").read().strip()
    except OSError:
        print(f"=== process {pid}: gone")
        return
    print(f"=== process {pid} ({comm}): threads")
    for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        base = f"/proc/{pid}/task/{tid}"
        try:
            name = open(f"{base}/comm").read().strip()
            wchan = open(f"{base}/wchan").read().strip()
            state = open(f"{base}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        print(f"{tid} {name} state={state} wchan={wchan}")
        try:
            for line in open(f"{base}/stack"):
                print(f"    {line.rstrip()}")
        except OSError:
            pass


def main():
    monitor_report(sys.argv[1])
    for pid in filter(None, sys.argv[2:]):
        threads_report(pid)


if __name__ == "__main__":
    main()
