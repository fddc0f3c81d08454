#!/usr/bin/env python3
"""What one rank of a DCP restart reads of the metadata, at 1,024 to 16,384
saved ranks (issue 14, part 3), through the Python path DCP takes.

`build/release/scale_commit --keep` makes a format-2 checkpoint of R ranks x
ITEMS row-sharded items (sparse shards: metadata only). Then, in this
process, the shardwise `Reader`'s `read_metadata()` and one lookup of
each item in its `state_dict_metadata`, as DCP's load planning makes them
for the rank in the middle of the world, two ways:

  torch planner:     what `DefaultLoadPlanner` resolves, every saved chunk
                     of each item (R records per item);
  shardwise planner: what `shardwise.dcp.LoadPlanner` resolves, after it told
                     the metadata this rank's part of each item (`expect`):
                     the chunks that overlap it, from a box lookup.

Each is timed cold (`manifest.json` and `index.swi` dropped from the page
cache first, as a rank on another node finds them) and cached, and reports
the metadata bytes read. A real restart runs this on every rank at once.

    .venv/bin/python bench/metadata_per_rank.py [--ranks 1024,4096,16384]
        [--items 200] [--runs 3] [--dir /tmp/sw-mpr] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SCALE_COMMIT = os.path.join(HERE, "..", "build", "release", "scale_commit")
ROWS, COLS = 64, 256  # scale_commit's chunk of rank r: rows [64r, 64r + 64)


def _drop_cached(ckpt: str) -> None:
    for name in ("manifest.json", "index.swi"):
        fd = os.open(os.path.join(ckpt, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _lookup(ckpt: str, ranks: int, part: bool) -> tuple[float, int, int]:
    """(seconds, metadata bytes read, chunks resolved) for rank ranks // 2."""
    from shardwise.dcp import Reader

    t0 = time.perf_counter()
    reader = Reader(ckpt)
    sdm = reader.read_metadata().state_dict_metadata
    names = list(sdm)
    if part:
        box = ([ROWS * (ranks // 2), 0], [ROWS, COLS])
        sdm.expect({name: [box] for name in names})
    chunks = sum(len(sdm[name].chunks) for name in names)
    return time.perf_counter() - t0, reader._core.metadata_bytes_read(), chunks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", default="1024,4096,16384")
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/sw-mpr")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()
    if not os.access(SCALE_COMMIT, os.X_OK):
        raise SystemExit(f"{SCALE_COMMIT} is missing: run scripts/setup.sh release first")
    rows = []
    print("| saved ranks | planner | cold (s) | cached (s) | metadata bytes read | chunks resolved |")
    print("|---:|---|---:|---:|---:|---:|")
    for ranks in (int(x) for x in a.ranks.split(",")):
        subprocess.run([SCALE_COMMIT, "--runs", "1", "--ranks", str(ranks), "--items",
                        str(a.items), "--gathered", "--dir", a.dir, "--keep"],
                       check=True, stdout=subprocess.DEVNULL)
        ckpt = os.path.join(a.dir, "step-000000000001")
        for part in (False, True):
            cold, cached = [], []
            for _ in range(a.runs):
                _drop_cached(ckpt)
                s, nbytes, chunks = _lookup(ckpt, ranks, part)
                cold.append(s)
                cached.append(_lookup(ckpt, ranks, part)[0])
            row = {"ranks": ranks, "items": a.items,
                   "planner": "shardwise" if part else "torch",
                   "cold_s": statistics.median(cold), "cached_s": statistics.median(cached),
                   "metadata_bytes": nbytes, "chunks": chunks}
            rows.append(row)
            print(f"| {ranks} | {row['planner']} | {row['cold_s']:.4f} | {row['cached_s']:.4f} "
                  f"| {nbytes / 2**20:.2f} MiB | {chunks} |", flush=True)
    shutil.rmtree(a.dir, ignore_errors=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
