#!/usr/bin/env python3
"""Many real processes (issue 14, part 5): S ranks (gloo, this machine) save
a sharded model (16 parameters of 262144 x 8 float32 rows split across the
ranks, plus a replicated tensor and a step: 128 MiB in all, a few MiB per
rank) through dcp.save with shardwise's Writer, twice (plan caching on), and
side by side through stock DCP's FileSystemWriter, then through
shardwise.Checkpointer; L ranks then load each, resharded, and check every
value. Where the time goes, per save: planning (the call until the writer's
write_data starts: local plans, gather, global plan, scatter; and of that,
the planner's own work), I/O
(write_data) and commit (the rest: gathering the results, finish), each the
slowest rank's. The job is python/tests/many_ranks_job.py, which
tests/test_many_ranks.py runs with 32 and 24 ranks in CI.

    .venv/bin/python bench/many_ranks.py [--savers 64] [--loaders 48] [--dir D] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python", "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--savers", type=int, default=64)
    ap.add_argument("--loaders", type=int, default=48)
    ap.add_argument("--dir", default=None, help="where to save (default: a temporary directory)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    from dist_util import run_ranks
    import many_ranks_job as job

    work = tempfile.mkdtemp(prefix="shardwise-many-", dir=a.dir)
    try:
        saved, loaded = os.path.join(work, "save.json"), os.path.join(work, "load.json")
        root = os.path.join(work, "root")
        t0 = time.monotonic()
        run_ranks(a.savers, job.save, root, saved, timeout=1800, pg_timeout=1200)
        t1 = time.monotonic()
        run_ranks(a.loaders, job.load, root, loaded, timeout=1800, pg_timeout=1200)
        t2 = time.monotonic()
        s, l = json.load(open(saved)), json.load(open(loaded))
        index = os.path.getsize(os.path.join(root, "dcp", "step-000000000002", "index.swi"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = {"command": f".venv/bin/python bench/many_ranks.py --savers {a.savers} "
                      f"--loaders {a.loaders} --json",
           "savers": a.savers, "loaders": a.loaders, "save": s, "load": l,
           "index_bytes": index, "save_job_wall_s": t1 - t0, "load_job_wall_s": t2 - t1}
    d, first, second = s["dcp"], s["dcp"][0], s["dcp"][1]
    out["cached_planning_over_first"] = second["planning_s"] / first["planning_s"]
    out["cached_planning_compute_over_first"] = (second["planning_compute_s"]
                                                 / first["planning_compute_s"])
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{a.savers} ranks save, {a.loaders} ranks load (resharded); slowest rank per phase")
    print("| save | total (s) | planning (s) | of which the planner (s) | I/O (s) | commit (s) |\n"
          "|---|---:|---:|---:|---:|---:|")
    for kind, label in (("dcp", "shardwise Writer"), ("stock_dcp", "stock FileSystemWriter")):
        for n, r in enumerate(s[kind]):
            print(f"| {label}, save {n + 1} | {r['total_s']:.3f} | {r['planning_s']:.3f} | "
                  f"{r['planning_compute_s']:.3f} | {r['io_s']:.3f} | {r['commit_s']:.3f} |")
    print(f"Checkpointer.save: {', '.join(f'{x:.3f}' for x in s['checkpointer_save_s'])} s")
    print(f"cached planning / first: {out['cached_planning_over_first']:.2f}x "
          f"(the planner's own work: {out['cached_planning_compute_over_first']:.2f}x)")
    print(f"load: shardwise {l['dcp_load_s']:.3f} s, stock {l['stock_dcp_load_s']:.3f} s, "
          f"Checkpointer {l['checkpointer_load_s']:.3f} s; metadata read per rank "
          f"<= {l['metadata_bytes_per_rank_max']:.0f} B (index {index} B)")
    print(f"wall: save job {t1 - t0:.0f} s, load job {t2 - t1:.0f} s (process start included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
