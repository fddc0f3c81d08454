#!/usr/bin/env python3
"""shardwise against stock PyTorch DCP and torch.save, on the same state.

R real processes (gloo) hold a transformer state sharded with DTensor:
bf16 parameters plus fp32 AdamW moments (10 bytes per parameter), TOTAL
bytes over all ranks. For each of --runs rounds (methods interleaved, so
noise hits all alike) every method saves into its own fresh directory and
loads back; times are wall clock from a barrier to the slowest rank. Page
caches are dropped (as root) before every load, so loads read the device.

Methods
  shardwise         dcp.save / dcp.load with shardwise.dcp.Writer/Reader
  shardwise async   dcp.async_save with the Writer: stall (until it returns)
                    and total (until the save is committed)
  dcp default       FileSystemWriter() / FileSystemReader()
  dcp threads=N     FileSystemWriter(thread_count=N), N in 2, 4, 8 (best kept)
  dcp async         dcp.async_save with FileSystemWriter: stall and total
  torch.save        each rank's local state to its own file, with fsync
  shardwise load R->M  (with --reload-ranks M) a shardwise checkpoint saved
                    by the R ranks, loaded by a fresh group of M ranks that
                    shard the same state M ways (resharding on load); the
                    loaded values are checked against the saved ones

Each writer and reader is new per call, as the DCP docs teach. Besides the
wall time, every method's CPU time is reported per GB: user + system
seconds of every thread of every rank (getrusage), summed over the ranks.

The async methods need host memory for the state plus two staged copies (ours
and DCP's); when MemAvailable is short of that, they are skipped and the JSON
says why.

Usage:
  bench/compare.py --dir /tmp/cmp --ranks 2 --total-size 4GiB --runs 3 \\
      [--reload-ranks 1,4] [--json bench/results/compare.json]
Run it with the .venv python (scripts/setup.sh python).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from datetime import timedelta

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30,
             "gib": 1 << 30}
    t = text.strip().lower()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    return int(num) * units.get(t[len(num):], 1)


def make_state(total: int, world: int):
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    params_total = total // 10  # bf16 param + fp32 exp_avg + fp32 exp_avg_sq
    hidden = 2048  # narrower for small states, so that they still hold >= 4 layers
    while hidden > 64 and 4 * 12 * hidden * hidden > params_total:
        hidden //= 2
    per_layer = 12 * hidden * hidden
    layers = max(1, params_total // per_layer)
    shapes = [("qkv", 3 * hidden, hidden), ("out", hidden, hidden), ("up", 4 * hidden, hidden),
              ("down", 4 * hidden, hidden)]  # down stored transposed: rows shard evenly
    state = {}
    g = torch.Generator().manual_seed(0)
    for l in range(layers):
        for name, rows, cols in shapes:
            full = torch.randn(rows, cols, generator=g)
            key = f"layers.{l}.{name}"
            state[f"model.{key}"] = distribute_tensor(full.to(torch.bfloat16), mesh, [Shard(0)])
            state[f"optim.{key}.exp_avg"] = distribute_tensor(full * 0.1, mesh, [Shard(0)])
            state[f"optim.{key}.exp_avg_sq"] = distribute_tensor(full.abs() * 0.01, mesh, [Shard(0)])
    state["optim.step"] = 1000
    return state


def drop_caches() -> None:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass  # not root: loads may be served from the page cache


def rank_main(rank: int, world: int, store: str, args: dict, out: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("LOCAL_WORLD_SIZE", str(world))  # as torchrun sets it, one node
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType

    from shardwise.dcp import Reader, Writer

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=1800))
    ckpt_group = dist.new_group(backend="gloo")
    state = make_state(args["total"], world)
    local_bytes = sum(v.to_local().numel() * v.to_local().element_size()
                      for v in state.values() if hasattr(v, "to_local"))
    totals = [0] * world
    dist.all_gather_object(totals, local_bytes)
    root = args["dir"]
    samples: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}  # CPU seconds of the whole job (every rank)

    def cpu_seconds() -> float:
        ru = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this rank
        return ru.ru_utime + ru.ru_stime

    def timed(label, fn):
        dist.barrier()
        c0 = cpu_seconds()
        t0 = time.monotonic()
        extra = fn()
        c1 = cpu_seconds()
        dist.barrier()
        samples.setdefault(label, []).append(time.monotonic() - t0)
        used = [0.0] * world
        dist.all_gather_object(used, c1 - c0)
        cpu.setdefault(label, []).append(sum(used))
        return extra

    def fresh(name):
        path = os.path.join(root, name)
        if rank == 0:
            shutil.rmtree(path, ignore_errors=True)
            os.makedirs(os.path.dirname(path), exist_ok=True)
        dist.barrier()
        return path

    def clean(path):
        dist.barrier()
        if rank == 0:
            shutil.rmtree(path, ignore_errors=True)
        dist.barrier()

    def load_with(reader_factory, path):
        target = {k: v for k, v in state.items()}
        if rank == 0:
            drop_caches()
        return lambda: dcp.load(target, storage_reader=reader_factory(path))

    for run in range(args["runs"]):
        if rank == 0:
            print(f"run {run + 1}/{args['runs']}", file=sys.stderr, flush=True)
        # shardwise sync
        p = fresh(f"sw/step-{run:012d}")
        timed("shardwise save", lambda: dcp.save(state, storage_writer=Writer(p)))
        timed("shardwise load", load_with(Reader, p))
        clean(os.path.dirname(p))
        # stock DCP, defaults and thread counts
        for threads in args["threads"]:
            label = "dcp default" if threads == 1 else f"dcp threads={threads}"
            p = fresh(f"dcp{threads}/ckpt")
            timed(f"{label} save", lambda: dcp.save(
                state, storage_writer=dcp.FileSystemWriter(p, thread_count=threads)))
            if threads == 1:
                timed("dcp default load", load_with(dcp.FileSystemReader, p))
            clean(p)
        # async: shardwise Writer vs stock FileSystemWriter
        # Both as the DCP docs teach: a new writer per async_save.
        async_methods = (("shardwise async", lambda path: Writer(path)),
                         ("dcp async", lambda path: dcp.FileSystemWriter(path)))
        for label, make in () if args["skip_async"] else async_methods:
            p = fresh(f"async/{label.split()[0]}/step-{run:012d}")
            writer, ckpt_id = make(p), None
            dist.barrier()
            t0 = time.monotonic()
            fut = dcp.async_save(state, storage_writer=writer, checkpoint_id=ckpt_id,
                                 process_group=ckpt_group,
                                 async_checkpointer_type=AsyncCheckpointerType.THREAD)
            stall = time.monotonic() - t0
            getattr(fut, "upload_completion", fut).result()
            dist.barrier()
            samples.setdefault(f"{label} stall", []).append(stall)
            samples.setdefault(f"{label} total", []).append(time.monotonic() - t0)
            clean(os.path.dirname(p) if label.startswith("shardwise") else p)
        # torch.save of the local shards, fsynced
        p = fresh(f"torchsave/run{run}")
        local = {k: (v.to_local() if hasattr(v, "to_local") else v) for k, v in state.items()}

        def tsave():
            os.makedirs(p, exist_ok=True)
            f = os.path.join(p, f"rank{rank}.pt")
            with open(f, "wb") as fh:
                torch.save(local, fh)
                fh.flush()
                os.fsync(fh.fileno())

        timed("torch.save save", tsave)
        if rank == 0:
            drop_caches()
        timed("torch.save load", lambda: torch.load(os.path.join(p, f"rank{rank}.pt"),
                                                    weights_only=True))
        clean(p)
    if args["reload_ranks"]:
        # kept for the reshard loads, which run in fresh process groups
        p = fresh("reshard/step-000000000001")
        dcp.save(state, storage_writer=Writer(p))
        dist.barrier()
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"samples": samples, "cpu": cpu, "bytes": sum(totals)}, f)
    dist.barrier()
    dist.destroy_process_group()


def local_sums(state) -> dict:
    """Per-tensor float64 sums of this rank's shards: a cheap equality check."""
    return {k: float(v.to_local().double().sum()) for k, v in state.items()
            if hasattr(v, "to_local")}


def reload_main(rank: int, world: int, store: str, args: dict, out: str) -> None:
    """A fresh group of `world` ranks loads the checkpoint saved by another world size."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("LOCAL_WORLD_SIZE", str(world))  # as torchrun sets it, one node
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    from shardwise.dcp import Reader

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=1800))
    state = make_state(args["total"], world)
    expected = local_sums(state)
    path = os.path.join(args["dir"], "reshard/step-000000000001")
    seconds = []
    for _ in range(args["runs"]):
        for v in state.values():
            if hasattr(v, "to_local"):
                v.to_local().zero_()
        if rank == 0:
            drop_caches()
        dist.barrier()
        t0 = time.monotonic()
        dcp.load(state, storage_reader=Reader(path))
        dist.barrier()
        seconds.append(time.monotonic() - t0)
        got = local_sums(state)
        bad = [k for k in expected if got[k] != expected[k]]
        if bad:
            raise SystemExit(f"rank {rank}: resharded load differs in {len(bad)} tensors, "
                             f"first {bad[0]}")
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"seconds": seconds}, f)
    dist.barrier()
    dist.destroy_process_group()


def spawn(target, world: int, params: dict) -> dict:
    """Runs target(rank, world, store, params, out) in `world` processes; returns out's JSON."""
    import torch.multiprocessing as mp

    fd, store = tempfile.mkstemp(prefix="cmp-rdzv-")
    os.close(fd)
    os.unlink(store)
    out = store + ".json"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(r, world, store, params, out))
             for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        sys.exit(f"a rank failed: exit codes {[p.exitcode for p in procs]}")
    with open(out) as f:
        data = json.load(f)
    os.unlink(out)
    return data


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--total-size", default="4GiB")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", default="1,2,4,8", help="FileSystemWriter thread counts")
    ap.add_argument("--reload-ranks", default="",
                    help="also load the shardwise checkpoint with these world sizes (e.g. 1,4)")
    ap.add_argument("--json", help="write samples, medians and ratios here")
    args = ap.parse_args()
    if args.runs < 3:
        ap.error("--runs must be at least 3")
    if args.ranks < 1:
        ap.error("--ranks must be at least 1")
    total = parse_size(args.total_size)
    reload_ranks = [int(r) for r in args.reload_ranks.split(",") if r.strip()]
    skipped = {}
    # state + our staging pool + DCP's staged copy, with 10% to spare
    if mem_available() < 3.3 * total:
        skipped["async"] = (f"host memory: async needs the state plus two staged copies "
                            f"({3 * total / 2**30:.1f} GiB), MemAvailable is "
                            f"{mem_available() / 2**30:.1f} GiB")
        print(f"skipping the async methods: {skipped['async']}", file=sys.stderr)
    params = {"dir": os.path.abspath(args.dir), "total": total, "runs": args.runs,
              "threads": [int(t) for t in args.threads.split(",")],
              "skip_async": "async" in skipped, "reload_ranks": reload_ranks}
    data = spawn(rank_main, args.ranks, params)
    for m in reload_ranks:
        print(f"load {args.ranks} -> {m} ranks", file=sys.stderr, flush=True)
        data["samples"][f"shardwise load {args.ranks}->{m}"] = spawn(reload_main, m,
                                                                     params)["seconds"]
    if reload_ranks:
        shutil.rmtree(os.path.join(params["dir"], "reshard"), ignore_errors=True)
    nbytes = data["bytes"]
    med = {k: statistics.median(v) for k, v in data["samples"].items()}
    cpu_per_gb = {k: statistics.median(v) / (nbytes / 1e9) for k, v in data.get("cpu", {}).items()}
    gbps = {k: nbytes / v / 1e9 for k, v in med.items()}
    dcp_saves = {k: v for k, v in med.items() if k.startswith("dcp ") and k.endswith(" save")}
    best_dcp = min(dcp_saves, key=dcp_saves.get)
    ratios = {
        "save vs dcp default": med["dcp default save"] / med["shardwise save"],
        "save vs best dcp": med[best_dcp] / med["shardwise save"],
        "save vs torch.save": med["torch.save save"] / med["shardwise save"],
        "load vs dcp": med["dcp default load"] / med["shardwise load"],
        "load vs torch.load": med["torch.save load"] / med["shardwise load"],
    }
    if "async" not in skipped:
        ratios["async stall, shardwise / dcp"] = (med["shardwise async stall"] /
                                                  med["dcp async stall"])
    # The other way round: shardwise's time or CPU as a fraction of stock's.
    fractions = {
        "save time, shardwise / dcp default": med["shardwise save"] / med["dcp default save"],
        "load time, shardwise / dcp default": med["shardwise load"] / med["dcp default load"],
        "save cpu/GB, shardwise / dcp default": (cpu_per_gb["shardwise save"] /
                                                 cpu_per_gb["dcp default save"]),
        "load cpu/GB, shardwise / dcp default": (cpu_per_gb["shardwise load"] /
                                                 cpu_per_gb["dcp default load"]),
    }
    print(f"\n{args.ranks} ranks, {nbytes / 2**30:.2f} GiB total, medians of {args.runs} runs "
          f"in {params['dir']}\n")
    print("| method | seconds | GB/s | CPU s/GB (all ranks) |\n|---|---:|---:|---:|")
    for k in sorted(med):
        c = f"{cpu_per_gb[k]:.2f}" if k in cpu_per_gb else ""
        print(f"| {k} | {med[k]:.3f} | {gbps[k]:.2f} | {c} |")
    print("\n| ratio (higher is better for shardwise, except the stall) | value |\n|---|---:|")
    for k, v in ratios.items():
        print(f"| {k} | {v:.2f} |")
    print("\n| fraction (lower is better for shardwise) | value |\n|---|---:|")
    for k, v in fractions.items():
        print(f"| {k} | {v:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "ranks": args.ranks, "bytes": nbytes,
                       "runs": args.runs, "best_dcp": best_dcp[:-5], "skipped": skipped,
                       "samples": data["samples"], "cpu_seconds": data.get("cpu", {}),
                       "medians": med, "cpu_seconds_per_gb": cpu_per_gb, "ratios": ratios,
                       "fractions": fractions}, f, indent=2)


if __name__ == "__main__":
    main()
