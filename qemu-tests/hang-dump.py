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
import sys

from monitor import Monitor


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
