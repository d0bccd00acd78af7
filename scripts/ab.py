#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Compare builds of the daemon on the same LUN (a tgtd null LUN by
default; `--target null` a null LUN of the daemon, `--target file` a file
on /dev/shm), in alternating runs (A, B, A, B, ...), so that a slow spell
of a shared machine hits both. Python standard library only; uses
scripts/bench.py's helpers.

Each case is BS:QD:RW (`vhost-user-scsi bench` options); each build is
NAME=PATH to a daemon binary, optionally followed by options for its
`serve` (to compare settings of one binary, e.g.
`--build "off=target/release/vhost-user-scsi --seccomp off"`). For every case and build it prints the
median daemon CPU per I/O and IOPS, then every run (CPU per I/O, IOPS,
mean latency in microseconds).

Example (the build before a change against the working tree):
  git worktree add /tmp/before HEAD~1
  (cd /tmp/before && cargo build --release)
  cargo build --release
  scripts/ab.py --build before=/tmp/before/target/release/vhost-user-scsi \\
                --build after=target/release/vhost-user-scsi 1M:4:randread 4K:32:randread
"""
import argparse
import os
import shlex
import statistics

import bench


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--lun-options", default="", help="appended to the --lun, e.g. ,coalesce-us=0")
    ap.add_argument("--target", choices=["iscsi", "null", "file"], default="iscsi")
    ap.add_argument("cases", nargs="+", metavar="BS:QD:RW")
    a = ap.parse_args()
    builds = {name: shlex.split(spec) for name, spec in (b.split("=", 1) for b in a.build)}
    cases = [c.split(":") for c in a.cases]
    t = bench.Tgtd() if a.target == "iscsi" else None
    disk = None
    if a.target == "iscsi":
        lun = t.url
    elif a.target == "null":
        lun = "null,size=64G"
    else:
        disk = "/dev/shm/vus-ab.img"
        with open(disk, "wb") as f:
            f.truncate(1 << 30)
        lun = "file=" + disk
    try:
        for bs, qd, rw in cases:
            runs = {name: [] for name in builds}
            for _ in range(a.repeat):
                for name, (path, *extra) in builds.items():
                    bench.BIN = path
                    d = bench.Daemon(["--lun", lun + a.lun_options] + extra)
                    try:
                        runs[name].append(bench.bench(d, a.seconds, ["--rw", rw, "--bs", bs, "--qd", qd]))
                    finally:
                        d.stop()
            for name, rs in runs.items():
                each = " ".join(f"{r['backend_cpu_us_per_io']:.1f}/{r['iops']:.0f}/{r['lat_us']['mean']:.0f}"
                                for r in rs)
                print(f"{bs} QD{qd} {rw} {name}: {bench.median(rs, 'backend_cpu_us_per_io'):.1f} us/IO, "
                      f"{bench.median(rs, 'iops'):.0f} IOPS (runs: {each})", flush=True)
    finally:
        if t:
            t.stop()
        if disk:
            os.unlink(disk)


if __name__ == "__main__":
    main()
