"""Tiered checkpoints against the root alone (issue 17), side by side in one run.

4 ranks (gloo) as 2 simulated nodes (SHARDWISE_NODE), a model-and-optimizer
state sharded over them (DTensor Shard(0), as compare.py builds it). Per
round, methods interleaved, every save blocking (it returns once committed
on its tier), as the docs teach:

- ``root``: ``Checkpointer(ROOT)``, the save to the root (the disk here,
  Lustre in production);
- ``stock``: stock DCP, ``dcp.save`` with ``FileSystemWriter`` to the root
  (what users would otherwise use);
- ``local+replica``: ``Checkpointer(ROOT, local_root=LOCAL,
  persist_every=1000, replicas=1)``: the local tier and the partner's
  replica, not the root;
- ``local``: the same with ``replicas=0``: the local tier alone;
- both again with ``recycle_files=0``: retention unlinks the local files
  instead of keeping them for the next save to overwrite (docs/tiers.md),
  so every save writes into new tmpfs pages;
- loads: ``root`` (page caches dropped first, as after a restart),
  ``local`` (the tiered Checkpointer's ``load``: every rank from its local
  tier).

Each figure is the slowest rank's (barriers around each operation); medians
over the rounds; the ratios are ratios of medians. Also reported: the
machine's copy bandwidth (one memcpy of the rank's bytes), the floor of a
local save.

    .venv/bin/python bench/tiers.py --root /tmp/tiers-root --local /dev/shm/tiers \\
        --total-size 1GiB --runs 5 --json bench/results/DATE/tiers.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from datetime import timedelta

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import drop_caches, make_state, mem_available, spawn  # noqa: E402

WORLD, NODES = 4, 2


def rank_main(rank: int, world: int, store: str, args: dict, out: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["LOCAL_WORLD_SIZE"] = str(world // NODES)  # as torchrun sets it per node
    os.environ["SHARDWISE_NODE"] = f"node{rank // (world // NODES)}"
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    import shardwise

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=1800))
    state = make_state(args["total"], world)
    root, local = args["root"], args["local"]
    plain = shardwise.Checkpointer(os.path.join(root, "sw"), keep_last=1)
    tiered = shardwise.Checkpointer(os.path.join(root, "tiered"), local_root=local,
                                    persist_every=1000, keep_local=1, replicas=1)
    alone = shardwise.Checkpointer(os.path.join(root, "alone"),
                                   local_root=os.path.join(local, "alone"),
                                   persist_every=1000, keep_local=1)
    tiered_new = shardwise.Checkpointer(os.path.join(root, "tiered-new"),
                                        local_root=os.path.join(local, "tiered-new"),
                                        persist_every=1000, keep_local=1, replicas=1,
                                        recycle_files=0)
    alone_new = shardwise.Checkpointer(os.path.join(root, "alone-new"),
                                       local_root=os.path.join(local, "alone-new"),
                                       persist_every=1000, keep_local=1, recycle_files=0)
    samples: dict[str, list[float]] = {}
    tiers_seen: list[list[str]] = []

    def timed(label, fn):
        dist.barrier()
        t0 = time.monotonic()
        fn()
        dist.barrier()
        samples.setdefault(label, []).append(time.monotonic() - t0)

    def fresh(label):
        d = os.path.join(root, label)
        if rank == 0:
            shutil.rmtree(d, ignore_errors=True)
        dist.barrier()
        return d

    def target():
        return {k: (torch.zeros_like(v) if isinstance(v, torch.Tensor) else v)
                for k, v in state.items()}

    local_bytes = sum(v.to_local().numel() * v.to_local().element_size()
                      for v in state.values() if hasattr(v, "to_local"))
    src = torch.empty(local_bytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault the pages in
    t0 = time.monotonic()
    dst.copy_(src)
    copy_s = time.monotonic() - t0

    for i in range(args["runs"]):
        step = i + 1
        timed("save root", lambda: plain.save(step, state, blocking=True))
        stock_dir = fresh("stock")
        timed("save stock DCP", lambda: dcp.save(state, checkpoint_id=stock_dir))
        timed("save local+replica", lambda: tiered.save(step, state, blocking=True))
        timed("save local", lambda: alone.save(step, state, blocking=True))
        timed("save local+replica, files not recycled",
              lambda: tiered_new.save(step, state, blocking=True))
        timed("save local, files not recycled", lambda: alone_new.save(step, state, blocking=True))
        if rank == 0:
            drop_caches()
        dist.barrier()
        t = target()
        timed("load root", lambda: plain.load(t))
        t = target()
        timed("load local", lambda: tiered.load(t))
        tiers_seen.append(tiered.last_restore.tiers)
    for c in (plain, tiered, alone, tiered_new, alone_new):
        c.close()
    gathered: list = [None] * world
    dist.all_gather_object(gathered, {"bytes": local_bytes, "copy_s": copy_s})
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"samples": samples, "ranks": gathered, "tiers": tiers_seen}, f)
    dist.barrier()
    dist.destroy_process_group()


def parse_size(text: str) -> int:
    import shardwise._core as core

    return core.parse_size(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="the root (the disk: Lustre's stand-in)")
    ap.add_argument("--local", required=True, help="the local tier (e.g. /dev/shm/...)")
    ap.add_argument("--total-size", default="1GiB", help="the whole state, over 4 ranks")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", help="write samples, medians and ratios here")
    args = ap.parse_args()
    if args.runs < 3:
        ap.error("--runs must be at least 3")
    total = parse_size(args.total_size)
    # the state, the staging pool, and on tmpfs the local copies and replicas
    # of the two tiered Checkpointers (each: 2 kept, 1 in the recycle bin)
    need = 7.5 * total
    if mem_available() < need:
        sys.exit(f"tiers.py: needs about {need / 2**30:.1f} GiB of memory, "
                 f"MemAvailable is {mem_available() / 2**30:.1f} GiB")
    for d in (args.root, args.local):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    params = {"root": os.path.abspath(args.root), "local": os.path.abspath(args.local),
              "total": total, "runs": args.runs}
    data = spawn(rank_main, WORLD, params)
    med = {k: statistics.median(v) for k, v in data["samples"].items()}
    ratios = {
        "save local+replica / save root": med["save local+replica"] / med["save root"],
        "save local+replica / save stock DCP": med["save local+replica"] / med["save stock DCP"],
        "save local / save root": med["save local"] / med["save root"],
        "save local+replica / same, files not recycled":
            med["save local+replica"] / med["save local+replica, files not recycled"],
        "save local / same, files not recycled":
            med["save local"] / med["save local, files not recycled"],
        "load local / load root": med["load local"] / med["load root"],
    }
    copy_floor = max(r["copy_s"] for r in data["ranks"])
    print(f"state {total / 2**30:.2f} GiB over {WORLD} ranks as {NODES} nodes; "
          f"one memcpy of a rank's bytes: {copy_floor:.3f} s")
    for k in sorted(data["samples"]):
        v = data["samples"][k]
        print(f"  {k:<40} median {med[k]:.3f} s  (min {min(v):.3f}, max {max(v):.3f})")
    for k, v in ratios.items():
        print(f"  {k:<48} {v:.2f}")
    print(f"  tiers that served the local loads: {data['tiers'][-1]}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({**data, "medians": med, "ratios": ratios, "total_bytes": total,
                       "copy_floor_s": copy_floor}, f, indent=1)
    for d in (args.root, args.local):
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
