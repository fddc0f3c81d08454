#!/usr/bin/env python3
"""What DCP's save planning costs with shardwise's writer, and what plan
caching saves (issue 14, part 4).

R real processes (gloo on this machine) each hold ITEMS tensors of their own
(a sharded model's shape: every rank a different slice) and save S steps
through `dcp.save` with shardwise's Writer: once with the stock
DefaultSavePlanner, once with DefaultSavePlanner(enable_plan_caching=True)
(what shardwise.Checkpointer uses). Planning is timed on every rank from
the call until the writer's write_data starts (local plan, gather, global
plan, scatter, finish plan); the figure is the slowest rank's, per save.
Reported: the first save and the median of the later ones, for each.

    .venv/bin/python bench/planning.py [--ranks 8] [--items 200] [--saves 4] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python", "tests"))


def _rank(rank: int, world: int, root: str, items: int, saves: int, out: str) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    from shardwise.dcp import Writer

    class TimedWriter(Writer):
        def write_data(self, plan, planner):  # type: ignore[no-untyped-def]
            self.planned_at = time.monotonic()
            return super().write_data(plan, planner)

    state = {f"layers.{i}.rank{rank}.w": torch.full((64, 64), float(i)) for i in range(items)}
    times: dict[str, list[float]] = {}
    for mode in ("stock", "cached"):
        # A class per mode: DCP keys its plan cache by the planner's class name.
        planner_cls = type(f"Bench{mode.title()}Planner", (DefaultSavePlanner,), {})
        times[mode] = []
        for s in range(saves):
            w = TimedWriter(os.path.join(root, f"{mode}-{s:04d}"))
            planner = planner_cls(enable_plan_caching=(mode == "cached"))
            dist.barrier()
            t0 = time.monotonic()
            dcp.save(state, storage_writer=w, planner=planner)
            planned = torch.tensor([w.planned_at - t0], dtype=torch.float64)
            dist.all_reduce(planned, op=dist.ReduceOp.MAX)
            times[mode].append(float(planned))
    if rank == 0:
        with open(out, "w") as f:
            json.dump(times, f)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--saves", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.saves < 2:
        ap.error("--saves must be at least 2 (the first save fills the cache)")
    from dist_util import run_ranks

    with tempfile.TemporaryDirectory(prefix="shardwise-planning-") as d:
        out = os.path.join(d, "times.json")
        run_ranks(a.ranks, _rank, os.path.join(d, "root"), a.items, a.saves, out)
        times = json.load(open(out))
    res = {"ranks": a.ranks, "items_per_rank": a.items, "saves": a.saves}
    for mode, t in times.items():
        res[mode] = {"first_s": t[0], "later_median_s": statistics.median(t[1:]), "all_s": t}
    res["cached_later_over_stock_later"] = (res["cached"]["later_median_s"] /
                                            res["stock"]["later_median_s"])
    res["cached_later_over_cached_first"] = (res["cached"]["later_median_s"] /
                                             res["cached"]["first_s"])
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"planning, {a.ranks} ranks x {a.items} items (slowest rank; seconds)")
        for mode in ("stock", "cached"):
            print(f"  {mode:7s} first {res[mode]['first_s']:.3f}, later (median) "
                  f"{res[mode]['later_median_s']:.3f}")
        print(f"  later saves: cached / stock {res['cached_later_over_stock_later']:.2f}; "
              f"cached later / cached first {res['cached_later_over_cached_first']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
