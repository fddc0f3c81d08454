#!/usr/bin/env python3
"""shardwise bench against fio on the same directory, in one go.

For each of --runs rounds (interleaved, so drift and noise hit every tool
alike) it runs `shardwise bench` (save through the full commit protocol, then
load with checksum verification) and fio writing and reading the same total
bytes with R jobs, O_DIRECT and an fsync at the end, in each configuration
below. fio's figure is its best configuration by median; the ratios are of
medians.

    fio configs: psync; io_uring at iodepth 16, with and without registered
    buffers (--fixedbufs, which shardwise uses too: on some VMs pinning pages
    per I/O halves throughput); 4 MiB and 8 MiB blocks

Usage:
    bench/vs_fio.py --dir /mnt/fsx/bench [--ranks 2] [--size-per-rank 2GiB]
                    [--runs 3] [--json results.json]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIO_CONFIGS = [
    ("psync", 1, "4m"),
    ("psync", 1, "8m"),
    ("io_uring", 16, "4m"),
    ("io_uring", 16, "8m"),
    ("io_uring_fixed", 16, "4m"),
    ("io_uring_fixed", 16, "8m"),
]


def parse_size(text):
    units = {"k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20,
             "g": 1 << 30, "gib": 1 << 30}
    t = text.strip().lower()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    return int(num) * units.get(t[len(num):], 1)


def run_shardwise(binary, directory, ranks, size, extra):
    out = subprocess.run(
        [binary, "bench", "--dir", directory, "--ranks", str(ranks),
         "--size-per-rank", str(size), "--json"] + extra,
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def run_fio(directory, ranks, size_per_job, engine, depth, bs, rw):
    workdir = tempfile.mkdtemp(prefix="fio-", dir=directory)
    try:
        out_file = os.path.join(workdir, "out.json")
        cmd = ["fio", "--name=sw", f"--directory={workdir}", f"--numjobs={ranks}",
               f"--size={size_per_job}", f"--bs={bs}", "--direct=1", f"--rw={rw}",
               f"--ioengine={engine.replace('_fixed', '')}", f"--iodepth={depth}",
               "--group_reporting",
               "--output-format=json", f"--output={out_file}"]
        if rw == "write":
            cmd.append("--end_fsync=1")
        if engine.endswith("_fixed"):
            cmd.append("--fixedbufs=1")
        subprocess.run(cmd, check=True, capture_output=True)
        with open(out_file) as f:
            job = json.load(f)["jobs"][0]
        side = job["write" if rw == "write" else "read"]
        # bytes over wall time of the group, end fsync included for writes.
        seconds = job["elapsed"] if side["runtime"] == 0 else side["runtime"] / 1000.0
        return side["io_bytes"] / seconds / 1e9
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="directory to test (same for all tools)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--size-per-rank", default="2GiB")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--shardwise", default=os.path.join(ROOT, "build/release/shardwise"))
    ap.add_argument("--json", help="write all samples and medians here")
    ap.add_argument("--shardwise-args", default="", help="extra flags for shardwise bench")
    args = ap.parse_args()
    if args.runs < 3:
        ap.error("--runs must be at least 3 (medians of fewer mean little)")
    if not shutil.which("fio"):
        sys.exit("fio is not installed (scripts/setup.sh installs it)")
    os.makedirs(args.dir, exist_ok=True)
    size = parse_size(args.size_per_rank)
    size_arg = f"{size // (1 << 20)}m"
    samples = {"shardwise_save": [], "shardwise_load": []}
    meta = {}
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}: shardwise", file=sys.stderr, flush=True)
        r = run_shardwise(args.shardwise, args.dir, args.ranks, args.size_per_rank,
                          args.shardwise_args.split())
        samples["shardwise_save"].append(r["save"]["gb_per_s"])
        samples["shardwise_load"].append(r["load"]["gb_per_s"])
        meta = {k: r[k] for k in ("backend", "direct_io", "queue_depth", "io_unit_bytes", "items")}
        for engine, depth, bs in FIO_CONFIGS:
            for rw in ("write", "read"):
                key = f"fio_{rw}_{engine}_qd{depth}_{bs}"
                print(f"run {run + 1}/{args.runs}: {key}", file=sys.stderr, flush=True)
                samples.setdefault(key, []).append(
                    run_fio(args.dir, args.ranks, size_arg, engine, depth, bs, rw))
    med = {k: statistics.median(v) for k, v in samples.items()}
    best_w = max((k for k in med if k.startswith("fio_write")), key=med.get)
    best_r = max((k for k in med if k.startswith("fio_read")), key=med.get)
    save_ratio = med["shardwise_save"] / med[best_w]
    load_ratio = med["shardwise_load"] / med[best_r]
    print()
    print(f"{args.ranks} ranks x {args.size_per_rank} in {args.dir}; medians of {args.runs} runs; "
          f"shardwise backend {meta['backend']}, O_DIRECT {meta['direct_io']}")
    print()
    print("| | shardwise GB/s | fio best GB/s (config) | ratio | target |")
    print("|---|---:|---:|---:|---:|")
    print(f"| save (durable) | {med['shardwise_save']:.2f} | {med[best_w]:.2f} ({best_w[10:]}) "
          f"| {save_ratio:.2f} | >= 0.90 {'met' if save_ratio >= 0.9 else 'MISSED'} |")
    print(f"| load + verify | {med['shardwise_load']:.2f} | {med[best_r]:.2f} ({best_r[9:]}) "
          f"| {load_ratio:.2f} | >= 0.90 {'met' if load_ratio >= 0.9 else 'MISSED'} |")
    print()
    print("all medians (GB/s): " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(med.items())))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "ranks": args.ranks,
                       "size_per_rank": size, "dir": args.dir, "shardwise": meta,
                       "samples": samples, "medians": med, "fio_best_write": best_w,
                       "fio_best_read": best_r, "save_ratio": save_ratio,
                       "load_ratio": load_ratio}, f, indent=2)


if __name__ == "__main__":
    main()
