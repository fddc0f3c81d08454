#!/usr/bin/env python3
"""Small-state parity: shardwise against stock DCP on 1 and 2 ranks, at a few
state sizes per rank, save and load, in one run (issue 15, part 4).

Every cell is one run of bench/compare.py (the DCP idiom: a new Writer and
Reader per call; stock FileSystemWriter/Reader beside it, methods
interleaved, page caches dropped before loads), so the figures are medians
of --runs rounds measured side by side. Prints a Markdown table of the
medians and of shardwise's time as a fraction of stock's (below 1.0: faster),
and writes every cell's JSON into --out.

The first save into a new root also measures the root's filesystem once
(docs/cpp-api.md, "I/O mode"); that round is part of the samples, not of the
median. Each cell's first sample is reported in the JSON.

Usage:
  bench/small_states.py --dir /tmp/small --out bench/results/DATE/small \\
      [--ranks 1,2] [--sizes 8MiB,64MiB,512MiB] [--runs 5]
Run it with the .venv python (scripts/setup.sh python).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compare import parse_size  # noqa: E402


def cell(args: argparse.Namespace, ranks: int, size: str) -> dict:
    per_rank = parse_size(size)
    out = os.path.join(args.out, f"small-r{ranks}-{per_rank >> 20}MiB.json")
    cmd = [sys.executable, os.path.join(HERE, "compare.py"), "--dir", args.dir,
           "--ranks", str(ranks), "--total-size", str(per_rank * ranks),
           "--runs", str(args.runs), "--threads", "1", "--json", out]
    print(f"== {ranks} rank(s), {size} per rank", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="scratch directory for the checkpoints")
    ap.add_argument("--out", required=True, help="directory for each cell's JSON")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--sizes", default="8MiB,64MiB,512MiB", help="state bytes per rank")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    for ranks in [int(r) for r in args.ranks.split(",")]:
        for size in args.sizes.split(","):
            d = cell(args, ranks, size)
            m, fr = d["medians"], d["fractions"]
            rows.append((ranks, size, m["shardwise save"], m["dcp default save"],
                         fr["save time, shardwise / dcp default"], m["shardwise load"],
                         m["dcp default load"], fr["load time, shardwise / dcp default"],
                         d["samples"]["shardwise save"][0]))
    print("| ranks | state per rank | save: shardwise s | stock s | fraction | "
          "load: shardwise s | stock s | fraction | shardwise first save s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:.2f} | {r[5]:.3f} | "
              f"{r[6]:.3f} | {r[7]:.2f} | {r[8]:.3f} |")


if __name__ == "__main__":
    main()
