#!/usr/bin/env python3
"""torchtitan's checkpoints: ShardwiseCheckpointManager against torchtitan's
own CheckpointManager (stock DCP), on the same job, in one run.

R real processes (gloo) hold torchtitan's llama3 debug model sharded with
FSDP2, its AdamW and LR scheduler (python/tests/torchtitan_job.py; about
73 MiB of checkpoint over all ranks). Both managers are built from their
Config over the same state, as torchtitan's Trainer builds one, and save
synchronously (async_mode="disabled"), every round one step each, methods
interleaved; then a fresh manager of each kind loads every saved step, page
caches dropped first (as root). Times: from a barrier to the slowest rank.
Prints medians and shardwise's time as a fraction of stock's (below 1.0:
faster); --json keeps the samples.

Usage (the .venv python, with torchtitan installed by scripts/setup.sh):
  bench/torchtitan_ckpt.py --dir /tmp/tt --ranks 2 --runs 5 [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "python", "tests"))
sys.path.insert(0, HERE)

KINDS = ("stock", "shardwise")


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    import time

    import torch
    import torch.distributed as dist

    dist.barrier()
    t0 = time.perf_counter()
    fn()
    dist.barrier()
    t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def rank_main(rank: int, world: int, root: str, runs: int, out: str) -> None:
    import torch.distributed as dist

    import torchtitan_job as tj
    from compare import drop_caches

    job = tj.build(rank, world, os.path.join(root, "stock"), "stock", interval=1,
                   keep_latest_k=0)
    managers = {"stock": job["checkpointer"],
                "shardwise": tj.checkpoint_manager(job, "shardwise",
                                                   os.path.join(root, "shardwise"),
                                                   interval=1, keep_latest_k=0)}
    tj.step(job)
    samples: dict[str, list[float]] = {f"{k} {op}": [] for k in KINDS for op in ("save", "load")}
    for r in range(runs):
        for k in KINDS:
            samples[f"{k} save"].append(_timed(lambda: managers[k].save(r + 1)))
    for r in range(runs):
        for k in KINDS:
            fresh = tj.checkpoint_manager(job, k, os.path.join(root, k), interval=1,
                                          keep_latest_k=0)
            if rank == 0:
                drop_caches()
            dist.barrier()
            samples[f"{k} load"].append(_timed(lambda: fresh.load(step=r + 1)))
            fresh.close()
    for m in managers.values():
        m.close()
    if rank == 0:
        with open(out, "w") as f:
            json.dump(samples, f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.runs < 3:
        ap.error("--runs must be at least 3")
    from dist_util import run_ranks

    os.makedirs(args.dir, exist_ok=True)
    root = tempfile.mkdtemp(dir=args.dir)
    out = os.path.join(root, "samples.json")
    run_ranks(args.ranks, rank_main, root, args.runs, out, timeout=1800)
    with open(out) as f:
        samples = json.load(f)
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"torchtitan llama3 debug model, {args.ranks} ranks, medians of {args.runs}\n")
    print("| | stock CheckpointManager s | ShardwiseCheckpointManager s | fraction |")
    print("|---|---:|---:|---:|")
    for op in ("save", "load"):
        s, w = med[f"stock {op}"], med[f"shardwise {op}"]
        print(f"| {op} | {s:.3f} | {w:.3f} | {w / s:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ranks": args.ranks, "runs": args.runs, "samples": samples,
                       "medians": med}, f, indent=1)


if __name__ == "__main__":
    main()
