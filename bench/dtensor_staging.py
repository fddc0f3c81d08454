"""The stall of a non-blocking ``Checkpointer.save`` of a DTensor state, with
staged DTensors built from the original's spec (what shardwise does) against
the same save built through ``to_local``/``DTensor.from_local`` (what it did
until 2026-12-06), alternating in one run.

R ranks (gloo) hold a model-and-optimizer state sharded over them (DTensor
Shard(0), as compare.py builds it: 96 DTensors per rank). Each save is
timed from the call until ``save()`` returns (the stall), on the slowest
rank; the first two saves (allocation) are left out; medians over the rest.

    .venv/bin/python bench/dtensor_staging.py --ranks 4 --total-size 1GiB --saves 12 \\
        --json bench/results/DATE/dtensor_staging.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import timedelta

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import make_state, parse_size, spawn  # noqa: E402


def rank_main(rank: int, world: int, store: str, args: dict, out: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["LOCAL_WORLD_SIZE"] = str(world)  # one node, as under torchrun
    import torch.distributed as dist

    import shardwise
    from shardwise import _staging

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=600))
    state = make_state(args["total"], world)
    spec_way = (_staging.local_tensor, _staging._same_spec)

    def through_from_local(t):
        return t.to_local() if isinstance(t, _staging.DTensor) else t

    ways = {"from spec": spec_way, "from_local": (through_from_local, lambda view, like: None)}
    ckpt = shardwise.Checkpointer(args["root"], keep_last=1)
    stalls: dict[str, list[float]] = {k: [] for k in ways}
    for i in range(args["saves"]):
        way = "from_local" if i % 2 == 0 else "from spec"
        _staging.local_tensor, _staging._same_spec = ways[way]
        dist.barrier()
        t0 = time.monotonic()
        handle = ckpt.save(i + 1, state)
        stall = time.monotonic() - t0
        handle.wait()
        if i >= 2:
            stalls[way].append(stall)
    _staging.local_tensor, _staging._same_spec = spec_way
    ckpt.close()
    gathered: list = [None] * world
    dist.all_gather_object(gathered, stalls)
    if rank == 0:
        slowest = {w: [max(r[w][k] for r in gathered) for k in range(len(stalls[w]))]
                   for w in ways}
        with open(out, "w") as f:
            json.dump(slowest, f)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/tmp/sw-dtensor-staging")
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--total-size", default="1GiB", help="the whole state, over the ranks")
    ap.add_argument("--saves", type=int, default=12)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.saves < 6:
        ap.error("--saves must be at least 6 (the first two are left out)")
    import shutil

    shutil.rmtree(args.root, ignore_errors=True)
    data = spawn(rank_main, args.ranks, {"root": os.path.abspath(args.root),
                                          "total": parse_size(args.total_size),
                                          "saves": args.saves})
    med = {w: statistics.median(v) for w, v in data.items()}
    for w, v in data.items():
        print(f"  stall, staged DTensors {w:<11} median {1e3 * med[w]:.1f} ms  "
              f"(samples {', '.join(f'{1e3 * x:.0f}' for x in v)})")
    print(f"  from spec / from_local: {med['from spec'] / med['from_local']:.2f}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"samples_s": data, "medians_s": med,
                       "ratio": med["from spec"] / med["from_local"]}, f, indent=1)
    shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()
