#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
"""Measure the daemon with `vhost-user-scsi bench` next to fio on the same
file, and regenerate docs/performance.md's results table and
docs/performance.svg. Python standard library only.

With rust-vmm's vhost-device-scsi (crates.io, built once into
target/vhost-device-scsi by `cargo install`), the same load-generator cases
on a file of the same size, alternating runs with the daemon's.

Every figure is the median of --repeat runs. CPU per I/O is process CPU time
(user + system, all threads: /proc/PID/stat for the daemon, getrusage of
the child for fio, so io_uring's io-wq workers are counted on both sides)
divided by the I/Os done.

Usage: scripts/bench.py [--seconds 4] [--repeat 3] [--no-docs] [--only-iscsi]
                        [--only-vhost-device-scsi]
       scripts/bench.py --from-json docs/performance-results.json  (redraw only)
"""
import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "vhost-user-scsi")
WAKEUP_FLOOR = os.path.join(ROOT, "target", "release", "examples", "wakeup_floor")
DOC = os.path.join(ROOT, "docs", "performance.md")
SVG = os.path.join(ROOT, "docs", "performance.svg")
VDS_ROOT = os.path.join(ROOT, "target", "vhost-device-scsi")
VDS_BIN = os.path.join(VDS_ROOT, "bin", "vhost-device-scsi")


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


class Daemon:
    """A vhost-user-scsi backend serving a socket in a fresh directory on
    /dev/shm: ours (`serve` with `args`), or, with `argv` (a function of the
    socket path giving a command line), another binary, whose stderr is
    kept for `first_error`."""

    def __init__(self, args=(), socket_opts="", argv=None):
        self.dir = tempfile.mkdtemp(prefix="vus-bench-", dir="/dev/shm")
        self.sock = os.path.join(self.dir, "s.sock")
        self.log = None
        if argv is None:
            cmd = [BIN, "serve", "--socket", self.sock + ",queues=2" + socket_opts, *args]
            self.proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        else:
            cmd, self.log = argv(self.sock), os.path.join(self.dir, "stderr")
            with open(self.log, "w") as err:
                self.proc = subprocess.Popen(cmd, stderr=err)
        for _ in range(200):
            if os.path.exists(self.sock):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        why = self.first_error()
        self.stop()
        raise RuntimeError(f"{os.path.basename(cmd[0])} did not start" + (f": {why}" if why else ""))

    def first_error(self):
        """The first line of the other binary's stderr that says ERROR."""
        if not self.log or not os.path.exists(self.log):
            return None
        with open(self.log, errors="replace") as f:
            return next((l.strip() for l in f if "ERROR" in l), None)

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        subprocess.run(["rm", "-rf", self.dir])


def bench(d, seconds, extra):
    out = sh(BIN, "bench", "--socket", d.sock, "--time", str(seconds), "--json",
             "--pid", str(d.proc.pid), *extra, capture_output=True, text=True).stdout
    return json.loads(out)


def try_bench(d, seconds, extra):
    """bench(), or None and why the backend refused the load: the load
    generator's error line, and the backend's first logged error."""
    r = subprocess.run([BIN, "bench", "--socket", d.sock, "--time", str(seconds), "--json",
                        "--pid", str(d.proc.pid), *extra], capture_output=True, text=True)
    if r.returncode == 0:
        return json.loads(r.stdout), None
    lines = r.stderr.strip().splitlines()
    why = lines[-1].removeprefix("vhost-user-scsi: ") if lines else f"bench exited {r.returncode}"
    logged = d.first_error()
    return None, why + (f" (its log: {logged})" if logged else "")


def image(path, size=1 << 30):
    """A file of `size` bytes, every byte written (tmpfs: in memory). Written,
    not fallocated: tmpfs reads a fallocated page it never wrote as its one
    shared zero page, which stays in the CPU's caches, so reads of such a
    file cost less than reads of a file with data, and a comparison between
    two files is only fair when both were written alike."""
    if not os.path.exists(path) or os.path.getsize(path) != size:
        sh("rm", "-f", path)
        chunk = bytes(1 << 20)
        with open(path, "wb") as f:
            for _ in range(size // len(chunk)):
                f.write(chunk)
            f.write(bytes(size % len(chunk)))


def build_vhost_device_scsi():
    """rust-vmm's vhost-device-scsi from crates.io, built once into
    target/vhost-device-scsi: its path and version, or None after one line
    saying why its rows are left out."""
    if not os.access(VDS_BIN, os.X_OK):
        print("building rust-vmm's vhost-device-scsi (cargo install, once)", file=sys.stderr)
        try:
            r = subprocess.run(["cargo", "install", "vhost-device-scsi", "--locked", "--root", VDS_ROOT],
                               capture_output=True, text=True)
            errors = [l for l in r.stderr.splitlines() if l.startswith("error")]
            why = errors[0] if errors else f"cargo install exited {r.returncode}"
        except OSError as e:
            why = f"cannot run cargo: {e}"
        if not os.access(VDS_BIN, os.X_OK):
            print(f"vhost-device-scsi rows left out: {why}", file=sys.stderr)
            return None
    r = subprocess.run(["cargo", "install", "--list", "--root", VDS_ROOT], capture_output=True, text=True)
    m = re.search(r"^vhost-device-scsi v(\S+):", r.stdout, re.M)
    return VDS_BIN, m.group(1) if m else "(version unknown)"


# The file cases of main() that vhost-device-scsi can serve: all of them
# (4 KiB random at QD1 and QD32, 128 KiB and 1 MiB sequential at QD4).
VDS_CASES = [("randread", 1, "4096"), ("randread", 32, "4096"), ("randwrite", 1, "4096"),
             ("randwrite", 32, "4096"), ("read", 4, "128K"), ("write", 4, "128K"),
             ("read", 4, "1M"), ("write", 4, "1M")]


def vhost_device_scsi_rows(a, img):
    """Our daemon on the file `img` next to rust-vmm's vhost-device-scsi on
    a file of the same size, the same load-generator cases in alternating
    runs. vhost-device-scsi serves one connection and exits: each of its
    runs gets a fresh process."""
    built = build_vhost_device_scsi()
    if built is None:
        return []
    binary, version = built
    theirs_img = "/dev/shm/vus-bench-vds.img"
    # A byte-for-byte copy: the same data, every page written, as ours.
    shutil.copyfile(img, theirs_img)
    base = f"rust-vmm vhost-device-scsi {version} (crates.io), same-size file"
    rows = []
    d = Daemon(["--lun", f"file={img}"])
    try:
        for rw, qd, bs in VDS_CASES:
            extra = ["--rw", rw, "--qd", str(qd), "--bs", bs]
            ours, theirs, refused = [], [], None
            for _ in range(a.repeat):
                ours.append(bench(d, a.seconds, extra))
                if refused:
                    continue
                try:
                    t = Daemon(argv=lambda sock: [binary, "--socket-path", sock, theirs_img])
                except RuntimeError as e:
                    refused = str(e)
                    continue
                try:
                    r, refused = try_bench(t, a.seconds, extra)
                finally:
                    t.stop()
                if r:
                    theirs.append(r)
            size = "4 KiB" if bs == "4096" else bs
            kind = "" if rw.startswith("rand") else " sequential"
            row = {"case": f"{size}{kind} {rw} QD{qd}, /dev/shm file, vs vhost-device-scsi", "vds": True,
                   "cpu": median(ours, "backend_cpu_us_per_io"), "base": base}
            rate = "iops" if bs == "4096" else "mib_s"
            row[rate] = median(ours, rate)
            if refused:
                row["refused"] = refused
            else:
                row.update({f"base_{rate}": median(theirs, rate),
                            "base_cpu": median(theirs, "backend_cpu_us_per_io")})
            rows.append(row)
    finally:
        d.stop()
        sh("rm", "-f", theirs_img)
    return rows


def fio(path, seconds, rw, bs, qd):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = sh("fio", "--name=b", f"--filename={path}", "--ioengine=io_uring", f"--rw={rw}",
             f"--bs={bs}", f"--iodepth={qd}", "--time_based", f"--runtime={seconds}",
             "--output-format=json", capture_output=True, text=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    j = json.loads(out)["jobs"][0]
    ios = j["read"]["total_ios"] + j["write"]["total_ios"]
    secs = j["job_runtime"] / 1000
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"iops": ios / secs, "mib_s": (j["read"]["io_bytes"] + j["write"]["io_bytes"]) / secs / 2**20,
            "cpu_us_per_io": cpu * 1e6 / ios}


class Tgtd:
    """tgtd with a 1 TiB null LUN (reads zeros, drops writes) on loopback."""
    IQN = "iqn.2026-11.org.vhost-user-scsi:bench-null"

    def __init__(self):
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.dir = tempfile.mkdtemp(prefix="vus-tgt-")
        self.env = dict(os.environ, TGT_IPC_SOCKET=os.path.join(self.dir, "ipc"))
        self.proc = subprocess.Popen(["tgtd", "-f", "-C", "9", "--iscsi", f"portal=127.0.0.1:{self.port}"],
                                     env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            if self.adm("--mode", "sys", "--op", "show", check=False):
                break
            time.sleep(0.05)
        self.adm("--mode", "target", "--op", "new", "--tid", "1", "--targetname", self.IQN)
        self.adm("--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1",
                 "--bstype", "null", "--backing-store", "null_bench")
        self.adm("--mode", "target", "--op", "bind", "--tid", "1", "--initiator-address", "ALL")
        self.url = f"iscsi://127.0.0.1:{self.port}/{self.IQN}/1"

    def adm(self, *args, check=True):
        r = subprocess.run(["tgtadm", "-C", "9", "--lld", "iscsi", *args], env=self.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise RuntimeError(f"tgtadm {args} failed")
        return r.returncode == 0

    def stop(self):
        self.adm("--mode", "sys", "--op", "update", "--name", "State", "-v", "offline", check=False)
        self.proc.kill()
        self.proc.wait()
        subprocess.run(["rm", "-rf", self.dir])


def iscsi_perf(url, seconds, qd, blocks=8):
    """libiscsi's iscsi-perf: random reads of `blocks` 512-byte blocks (8:
    4 KiB). It only reads; on a null LUN random and sequential offsets are
    the same work."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = sh("iscsi-perf", "-t", str(int(seconds)), "-b", str(blocks), "-m", str(qd), "-r", url,
             capture_output=True, text=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    iops = float(re.findall(r"iops average (\d+)", out)[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"iops": iops, "cpu_us_per_io": cpu * 1e6 / (iops * int(seconds))}


def qemu_img_bench(url, count, qd, bs, write=False):
    """QEMU's block layer on libiscsi: `qemu-img bench` (sequential offsets;
    the LUN is a null device, so the pattern does not matter to it)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = sh("qemu-img", "bench", "-f", "raw", "-c", str(count), "-d", str(qd), "-s", str(bs),
             *(["-w"] if write else []), url, capture_output=True, text=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    secs = float(re.search(r"Run completed in ([0-9.]+) seconds", out).group(1))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"iops": count / secs, "mib_s": count * bs / secs / 2**20, "cpu_us_per_io": cpu * 1e6 / count}


def iscsi_rows(a):
    """The daemon passing a tgtd null LUN through (guest side: the load
    generator) next to libiscsi's iscsi-perf on the same LUN."""
    rows = []
    # The machine's floor under any QD1 figure: one sleep/wake round trip
    # between two processes (examples/wakeup_floor.rs).
    trips = [json.loads(sh(WAKEUP_FLOOR, capture_output=True, text=True).stdout)
             for _ in range(a.repeat)]
    rows.append({"case": "machine floor: one round trip between two processes, each sleeping in "
                         "epoll_wait for an eventfd (examples/wakeup_floor.rs)", "floor": True,
                 "cpu": median(trips, "echo_cpu_us"), "driver_cpu": median(trips, "driver_cpu_us")})
    # The daemon's cost without iSCSI (its virtio side: kicks, interrupts,
    # request parsing) at the same queue depths: a null LUN, same run.
    d = Daemon(["--lun", "null,size=1T"])
    try:
        floor = {qd: median([bench(d, a.seconds, ["--rw", "randread", "--qd", str(qd)])
                             for _ in range(a.repeat)], "backend_cpu_us_per_io") for qd in (1, 32)}
    finally:
        d.stop()
    t = Tgtd()
    try:
        d = Daemon(["--lun", t.url])
        try:
            for qd in (1, 32):
                ours = [bench(d, a.seconds, ["--rw", "randread", "--qd", str(qd)]) for _ in range(a.repeat)]
                base = [iscsi_perf(t.url, a.seconds, qd) for _ in range(a.repeat)]
                count = int(median(ours, "iops") * a.seconds)
                qimg = [qemu_img_bench(t.url, count, qd, 4096) for _ in range(a.repeat)]
                rows.append({"case": f"4 KiB randread QD{qd}, tgtd null LUN via iSCSI",
                             "iops": median(ours, "iops"), "cpu": median(ours, "backend_cpu_us_per_io"),
                             "base": "libiscsi iscsi-perf, same LUN", "base_iops": median(base, "iops"),
                             "base_cpu": median(base, "cpu_us_per_io"),
                             "base2": "qemu-img bench (libiscsi), same LUN",
                             "base2_iops": median(qimg, "iops"), "base2_cpu": median(qimg, "cpu_us_per_io"),
                             "floor_cpu": floor[qd]})
            # Coalescing at QD32, alternating runs on the same target: the
            # default (both kinds), notifications not coalesced (the
            # guest's side), and the target's answers not coalesced (the
            # daemon's receive side).
            off = Daemon(["--lun", t.url], ",coalesce-us=0")
            rx_off = Daemon(["--lun", t.url + ",coalesce-us=0"])
            try:
                coalesced, uncoalesced, rx_uncoalesced = [], [], []
                for _ in range(a.repeat):
                    coalesced.append(bench(d, a.seconds, ["--rw", "randread", "--qd", "32"]))
                    uncoalesced.append(bench(off, a.seconds, ["--rw", "randread", "--qd", "32"]))
                    rx_uncoalesced.append(bench(rx_off, a.seconds, ["--rw", "randread", "--qd", "32"]))
            finally:
                off.stop()
                rx_off.stop()
            for rw in ("read", "write"):
                ours = [bench(d, a.seconds, ["--rw", rw, "--qd", "4", "--bs", "1M"]) for _ in range(a.repeat)]
                count = int(median(ours, "iops") * a.seconds)
                base = [qemu_img_bench(t.url, count, 4, 1 << 20, rw == "write") for _ in range(a.repeat)]
                row = {"case": f"1M sequential {rw} QD4, tgtd null LUN via iSCSI",
                       "mib_s": median(ours, "mib_s"), "cpu": median(ours, "backend_cpu_us_per_io"),
                       "base": "qemu-img bench (libiscsi), same LUN",
                       "base_mib_s": median(base, "mib_s"), "base_cpu": median(base, "cpu_us_per_io")}
                if rw == "read":
                    perf = [iscsi_perf(t.url, a.seconds, 4, blocks=2048) for _ in range(a.repeat)]
                    row.update({"base2": "libiscsi iscsi-perf (1 MiB random reads), same LUN",
                                "base2_mib_s": median(perf, "iops"), "base2_cpu": median(perf, "cpu_us_per_io")})
                rows.append(row)
            # Big reads with the target's data coalesced (the default) and
            # not, alternating runs on the same target.
            rx_off = Daemon(["--lun", t.url + ",coalesce-us=0"])
            try:
                on, off = [], []
                for _ in range(a.repeat):
                    on.append(bench(d, a.seconds, ["--rw", "read", "--qd", "4", "--bs", "1M"]))
                    off.append(bench(rx_off, a.seconds, ["--rw", "read", "--qd", "4", "--bs", "1M"]))
            finally:
                rx_off.stop()
            rows.append({"case": "1M sequential read QD4 via iSCSI, target's data coalesced (default)",
                         "rx": True, "mib_s": median(on, "mib_s"),
                         "iops": median(on, "iops"), "cpu": median(on, "backend_cpu_us_per_io"),
                         "lat": statistics.median(r["lat_us"]["mean"] for r in on),
                         "off_mib_s": median(off, "mib_s"), "off_iops": median(off, "iops"),
                         "off_cpu": median(off, "backend_cpu_us_per_io"),
                         "off_lat": statistics.median(r["lat_us"]["mean"] for r in off)})
        finally:
            d.stop()
        rows.append({"case": "4 KiB randread QD32 via iSCSI, notifications coalesced (default)",
                     "notif": median(coalesced, "notifications_per_io"),
                     "bench_cpu": median(coalesced, "bench_cpu_us_per_io"),
                     "iops": median(coalesced, "iops"), "cpu": median(coalesced, "backend_cpu_us_per_io"),
                     "off_notif": median(uncoalesced, "notifications_per_io"),
                     "off_bench_cpu": median(uncoalesced, "bench_cpu_us_per_io"),
                     "off_iops": median(uncoalesced, "iops"),
                     "off_cpu": median(uncoalesced, "backend_cpu_us_per_io")})
        rows.append({"case": "4 KiB randread QD32 via iSCSI, target's answers coalesced (default)",
                     "rx": True,
                     "iops": median(coalesced, "iops"), "cpu": median(coalesced, "backend_cpu_us_per_io"),
                     "lat": statistics.median(r["lat_us"]["mean"] for r in coalesced),
                     "off_iops": median(rx_uncoalesced, "iops"),
                     "off_cpu": median(rx_uncoalesced, "backend_cpu_us_per_io"),
                     "off_lat": statistics.median(r["lat_us"]["mean"] for r in rx_uncoalesced)})
    finally:
        t.stop()
    return rows


def median(runs, key):
    return statistics.median(r[key] for r in runs)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--only-iscsi", action="store_true",
                    help="measure only the iSCSI rows and print them (implies --no-docs)")
    ap.add_argument("--only-vhost-device-scsi", action="store_true",
                    help="measure only the rows against rust-vmm's vhost-device-scsi and print them "
                         "(implies --no-docs)")
    ap.add_argument("--from-json", help="regenerate the docs from a saved result instead of measuring")
    a = ap.parse_args()
    if a.from_json:
        with open(a.from_json) as f:
            write_docs(json.load(f))
        return 0
    sh("cargo", "build", "--release", "--quiet", "--bins", "--example", "wakeup_floor", cwd=ROOT)
    if a.only_iscsi:
        print(json.dumps(iscsi_rows(a), indent=1))
        return 0
    img = "/dev/shm/vus-bench.img"
    image(img)
    if a.only_vhost_device_scsi:
        print(json.dumps(vhost_device_scsi_rows(a, img), indent=1))
        return 0
    rows = []

    d = Daemon(["--lun", f"file={img}", "--lun", "null,size=1T"])
    try:
        for rw, qd in [("randread", 1), ("randread", 32), ("randwrite", 1), ("randwrite", 32)]:
            ours = [bench(d, a.seconds, ["--rw", rw, "--qd", str(qd), "--bs", "4096"]) for _ in range(a.repeat)]
            base = [fio(img, a.seconds, rw, "4k", qd) for _ in range(a.repeat)]
            rows.append({"case": f"4 KiB {rw} QD{qd}, /dev/shm file",
                         "iops": median(ours, "iops"), "cpu": median(ours, "backend_cpu_us_per_io"),
                         "base": "fio io_uring, same file", "base_iops": median(base, "iops"),
                         "base_cpu": median(base, "cpu_us_per_io")})
        for rw, bs in [("read", "128K"), ("write", "128K"), ("read", "1M"), ("write", "1M")]:
            ours = [bench(d, a.seconds, ["--rw", rw, "--qd", "4", "--bs", bs]) for _ in range(a.repeat)]
            base = [fio(img, a.seconds, rw, bs, 4) for _ in range(a.repeat)]
            rows.append({"case": f"{bs} sequential {rw} QD4, /dev/shm file",
                         "mib_s": median(ours, "mib_s"), "cpu": median(ours, "backend_cpu_us_per_io"),
                         "base": "fio io_uring, same file", "base_mib_s": median(base, "mib_s"),
                         "base_cpu": median(base, "cpu_us_per_io")})
        null = {}
        for q in (1, 2):
            runs = [bench(d, a.seconds, ["--lun", "1", "--qd", "32", "--queues", str(q)]) for _ in range(a.repeat)]
            null[q] = runs
            rows.append({"case": f"4 KiB randread QD32, null LUN, {q} queue(s)",
                         "iops": median(runs, "iops"), "cpu": median(runs, "backend_cpu_us_per_io"),
                         "bench_cpu": median(runs, "bench_cpu_us_per_io")})
    finally:
        d.stop()

    rows += vhost_device_scsi_rows(a, img)
    rows += iscsi_rows(a)

    # Memory: 16 LUNs (null, 1 TiB each), idle and under load.
    luns = sum((["--lun", "null,size=1T"] for _ in range(16)), [])
    d = Daemon(luns)
    try:
        idle = d.rss_kib()
        p = subprocess.Popen([BIN, "bench", "--socket", d.sock, "--time", "3", "--quiet",
                              "--queues", "2", "--qd", "32"], stdout=subprocess.DEVNULL)
        time.sleep(2)
        load = d.rss_kib()
        p.wait()
        after = d.rss_kib()
    finally:
        d.stop()
    mem = {"idle_kib": idle, "load_kib": load, "after_kib": after}

    result = {"date": time.strftime("%Y-%m-%d"), "kernel": os.uname().release,
              "cpus": os.cpu_count(), "seconds": a.seconds, "repeat": a.repeat,
              "rows": rows, "memory": mem}
    print(json.dumps(result, indent=1))
    if not a.no_docs:
        with open(os.path.join(ROOT, "docs", "performance-results.json"), "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        write_docs(result)


def fmt_row(r):
    if "vds" in r:
        # Ratio: CPU per I/O, then the rate, both ours over theirs.
        rate, unit, scale, name = (("iops", "k IOPS", 1000, "IOPS") if "iops" in r
                                   else ("mib_s", " MiB/s", 1, "bandwidth"))
        ours = f"{r[rate]/scale:.0f}{unit}"
        if "refused" in r:
            return f"| {r['case']} | {ours} | {r['cpu']:.2f} | {r['base']}: refused: {r['refused']} | | |"
        theirs = r["base_" + rate]
        return (f"| {r['case']} | {ours} | {r['cpu']:.2f} | {r['base']}: {theirs/scale:.0f}{unit} | "
                f"{r['base_cpu']:.2f} | {r['cpu']/r['base_cpu']:.2f}x ({name} {r[rate]/theirs:.2f}x) |")
    if "floor" in r:
        return (f"| {r['case']} | | {r['cpu']:.2f} (the other side {r['driver_cpu']:.2f}) | "
                f"| | |")
    if "rx" in r:
        rate, off_rate = ((f"{r['mib_s']:.0f} MiB/s", f"{r['off_mib_s']:.0f} MiB/s") if "mib_s" in r
                          else (f"{r['iops']/1000:.0f}k IOPS", f"{r['off_iops']/1000:.0f}k IOPS"))
        return (f"| {r['case']} | {rate}, mean latency {r['lat']:.0f} µs | "
                f"{r['cpu']:.2f} | not coalesced (`coalesce-us=0` on the LUN), same LUN: "
                f"{off_rate}, mean latency {r['off_lat']:.0f} µs | "
                f"{r['off_cpu']:.2f} | {r['cpu']/r['off_cpu']:.2f}x |")
    if "notif" in r:
        return (f"| {r['case']} | {r['iops']/1000:.0f}k IOPS; {r['notif']:.2f} notifications/IO, "
                f"load generator {r['bench_cpu']:.2f} µs/IO | {r['cpu']:.2f} | coalescing off "
                f"(`coalesce-us=0`), same LUN: {r['off_iops']/1000:.0f}k IOPS; {r['off_notif']:.2f} "
                f"notifications/IO, load generator {r['off_bench_cpu']:.2f} µs/IO | {r['off_cpu']:.2f} | "
                f"{r['cpu']/r['off_cpu']:.2f}x (load generator {r['bench_cpu']/r['off_bench_cpu']:.2f}x) |")
    if "base" not in r:
        return (f"| {r['case']} | {r['iops']/1000:.0f}k IOPS | {r['cpu']:.2f} | "
                f"bench's own CPU {r['bench_cpu']:.2f} µs/IO | | |")
    if "mib_s" in r:
        line = (f"| {r['case']} | {r['mib_s']:.0f} MiB/s | {r['cpu']:.2f} | {r['base']}: "
                f"{r['base_mib_s']:.0f} MiB/s | {r['base_cpu']:.2f} | {r['cpu']/r['base_cpu']:.2f}x |")
        if "base2" in r:
            line += (f"\n| (same) | | | {r['base2']}: {r['base2_mib_s']:.0f} MiB/s | "
                     f"{r['base2_cpu']:.2f} | {r['cpu']/r['base2_cpu']:.2f}x |")
        return line
    line = (f"| {r['case']} | {r['iops']/1000:.0f}k IOPS | {r['cpu']:.2f} | {r['base']}: "
            f"{r['base_iops']/1000:.0f}k IOPS | {r['base_cpu']:.2f} | {r['cpu']/r['base_cpu']:.2f}x |")
    if "base2" in r:
        line += (f"\n| (same) | | | {r['base2']}: {r['base2_iops']/1000:.0f}k IOPS | "
                 f"{r['base2_cpu']:.2f} | {r['cpu']/r['base2_cpu']:.2f}x |")
    if "floor_cpu" in r:
        own = r["cpu"] - r["floor_cpu"]
        line += (f"\n| (same), iSCSI share: daemon minus its null-LUN cost ({r['floor_cpu']:.2f}) "
                 f"at this QD | | {own:.2f} | {r['base']} | {r['base_cpu']:.2f} | "
                 f"{own/r['base_cpu']:.2f}x |")
    return line


def write_docs(res):
    lines = [f"Measured {res['date']} on this project's CI machine kind ({res['cpus']} vCPUs, "
             f"kernel {res['kernel']}), {res['seconds']:.0f} s per run, median of {res['repeat']} runs.",
             "",
             "| case | daemon | daemon CPU µs/IO | baseline (same run) | baseline CPU µs/IO | ratio |",
             "|---|---|---|---|---|---|"]
    lines += [fmt_row(r) for r in res["rows"]]
    m = res["memory"]
    lines += ["", f"Resident memory with 16 LUNs: {m['idle_kib']/1024:.1f} MiB idle, "
              f"{m['load_kib']/1024:.1f} MiB under load (2 queues, QD32), "
              f"{m['after_kib']/1024:.1f} MiB after the load generator disconnected."]
    with open(DOC) as f:
        doc = f.read()
    block = "<!-- BEGIN RESULTS (scripts/bench.py) -->\n" + "\n".join(lines) + "\n<!-- END RESULTS -->"
    doc = re.sub(r"<!-- BEGIN RESULTS.*?<!-- END RESULTS -->", lambda _: block, doc, flags=re.S)
    with open(DOC, "w") as f:
        f.write(doc)
    write_svg([r for r in res["rows"] if "base_cpu" in r])


def write_svg(rows):
    """Bars of the daemon's CPU per I/O as a multiple of fio's, with the
    1.0 (parity) and 1.5 (goal) lines; absolute values as labels."""
    w, bar, gap, left = 760, 16, 10, 300
    vds = any("vds" in r for r in rows)
    h = 80 + 14 * vds + len(rows) * (bar + gap)
    top = max(2.0, max(r["cpu"] / r["base_cpu"] for r in rows) * 1.1)
    scale = (w - left - 150) / top
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           '<text x="10" y="18" font-size="14">Daemon CPU per I/O as a multiple of the baseline measured in the same run (lower is better)</text>',
           '<text x="10" y="34" font-size="11">files: fio io_uring on the same file; iSCSI: libiscsi iscsi-perf (4 KiB) or qemu-img bench (1 MiB) on the same LUN</text>']
    y0, y1 = 44 + 14 * vds, h - 10
    if vds:
        out.append('<text x="10" y="48" font-size="11">"vs vhost-device-scsi": rust-vmm\'s vhost-device-scsi '
                   '(crates.io) on a file of the same size</text>')
    for ref, label in ((1.0, "parity"), (1.5, "goal 1.5x")):
        x = left + ref * scale
        out.append(f'<line x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y1}" stroke="#c33" stroke-dasharray="4,3"/>')
        out.append(f'<text x="{x+3:.1f}" y="{y0+8}" fill="#c33">{label}</text>')
    y = y0 + 16
    for r in rows:
        ratio = r["cpu"] / r["base_cpu"]
        out.append(f'<text x="{left-6}" y="{y+bar-4}" text-anchor="end">{r["case"].replace(", /dev/shm file", "").replace(", vs ", " vs ")}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{ratio*scale:.1f}" height="{bar}" fill="#2a6fdb"/>')
        out.append(f'<text x="{left + ratio*scale + 4:.1f}" y="{y+bar-4}">{ratio:.2f}x ({r["cpu"]:.2f} vs {r["base_cpu"]:.2f} µs)</text>')
        y += bar + gap
    out.append("</svg>")
    with open(SVG, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    sys.exit(main())
