#!/usr/bin/env python3
"""shardwise's engine against the machine's limit: `shardwise bench` run
several times (medians), with its CPU time per GB and its figure beside the
limit it measures in the same run (one copy and one CRC32C pass of the
bytes; on tmpfs also the copy into new pages, which a filesystem in memory
pays for every page it stores).

Usage:
  bench/engine_limit.py --dir /dev/shm/sw-limit [--ranks 1,2] [--size-per-rank 1GiB]
      [--runs 5] [--json bench/results/engine_limit.json] [-- EXTRA BENCH FLAGS]

Needs build/release/shardwise (scripts/setup.sh release).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CLI = os.path.join(HERE, "..", "build", "release", "shardwise")

FIGURES = {
    "save s": ("save", "seconds"),
    "save cpu s/GB": ("save", "cpu_seconds_per_gb"),
    "save / limit": ("save", "of_machine_limit"),
    "save / new-page limit": ("save", "of_fresh_page_limit"),
    "load s": ("load", "seconds"),
    "load cpu s/GB": ("load", "cpu_seconds_per_gb"),
    "load / limit": ("load", "of_machine_limit"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--size-per-rank", default="1GiB")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json")
    ap.add_argument("extra", nargs="*", help="more `shardwise bench` flags (after --)")
    args = ap.parse_args()
    if args.runs < 3:
        ap.error("--runs must be at least 3 (medians)")
    if not os.access(CLI, os.X_OK):
        sys.exit(f"{CLI} is missing: run scripts/setup.sh release")
    out: dict = {"date": time.strftime("%Y-%m-%d"), "dir": args.dir,
                 "size_per_rank": args.size_per_rank, "runs": {}, "medians": {}}
    for ranks in (int(r) for r in args.ranks.split(",")):
        runs = []
        for i in range(args.runs):
            print(f"ranks {ranks}: run {i + 1}/{args.runs}", file=sys.stderr, flush=True)
            p = subprocess.run([CLI, "bench", "--dir", args.dir, "--ranks", str(ranks),
                                "--size-per-rank", args.size_per_rank, "--json", *args.extra],
                               capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"shardwise bench failed ({p.returncode}): {p.stderr.strip()}")
            runs.append(json.loads(p.stdout))
        shutil.rmtree(args.dir, ignore_errors=True)
        med = {k: statistics.median(r[a][b] for r in runs) for k, (a, b) in FIGURES.items()}
        med["machine copy GB/s"] = statistics.median(r["machine"]["copy_gb_per_s"] for r in runs)
        med["machine new-page copy GB/s"] = statistics.median(
            r["machine"]["fresh_page_copy_gb_per_s"] for r in runs)
        med["machine CRC32C GB/s"] = statistics.median(r["machine"]["crc32c_gb_per_s"]
                                                       for r in runs)
        out["runs"][ranks] = runs
        out["medians"][ranks] = med
        out["io_mode"] = runs[0]["io_mode"]["why"]
    print(f"\n{args.dir}: {out['io_mode']}\n")
    keys = list(next(iter(out["medians"].values())))
    print("| figure (median of %d) | %s |" % (args.runs, " | ".join(
        f"{r} rank(s) x {args.size_per_rank}" for r in out["medians"])))
    print("|---|" + "---:|" * len(out["medians"]))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{m[k]:.2f}" for m in out["medians"].values()) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
