#!/usr/bin/env python3
"""The async engine as PyTorch users meet it, against what they would use instead.

Every figure is a ratio of medians measured in this run (docs/PERFORMANCE.md,
"Async saves from Python").

  idiom     R ranks (gloo) x SIZE each. Saves 1..N through dcp.async_save,
            a new shardwise.dcp.Writer per save (as DCP users write it),
            interleaved with the same saves through a new stock
            FileSystemWriter per save. Stall = time in dcp.async_save on the
            slowest rank; saves 2..N count. Also checks that shardwise's CPU
            copied each state byte once (Writer.copied_bytes).
  eager     The same state through shardwise.Checkpointer: stall against the
            machine's copy limit, the best plain memcpy of the rank's bytes
            into pre-faulted memory on 1 thread and on every core, measured
            (a) by one rank alone and (b) by all ranks at once, as they stage.
  training  A training loop on one compute thread (T layers of HxH with
            AdamW, batch B) checkpointing its own state: the interval from
            one save to the next (enough steps to cover the persist) against
            the same steps without checkpointing, eager and lazy snapshot.
  lazy      The same loop: the extra time of the step a save is called in
            (and of the step after, whose optimizer step may wait for the
            copy), against the median un-checkpointed step, with
            snapshot="lazy", beside the eager stall of the same state.

Usage:
  bench/async_engine.py --dir /tmp/ae [--ranks 2] [--size-per-rank 1GiB]
      [--saves 5] [--parts idiom,eager,training,lazy] [--json out.json]
Run it with the .venv python (scripts/setup.sh python).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import sys
import threading
import time
from datetime import timedelta

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compare import parse_size, spawn  # noqa: E402


def median(v):
    return statistics.median(v) if v else float("nan")


def rank_state(rank: int, nbytes: int):
    """A transformer-like shard, nested as a model and optimizer state dict:
    bf16 weights and biases, fp32 moments; names carry the rank, so every
    rank writes all of its own bytes."""
    import torch

    g = torch.Generator().manual_seed(rank)
    model, optim, left, layer, hidden = {}, {}, nbytes, 0, 1024
    while left > 0:
        rows = max(1, min(4 * hidden, left // (10 * hidden)))
        w = torch.randn(rows, hidden, generator=g)
        p = f"r{rank}.layers.{layer}"
        model[f"{p}.weight"] = w.to(torch.bfloat16)
        model[f"{p}.bias"] = torch.randn(rows, generator=g).to(torch.bfloat16)
        optim[p] = {"exp_avg": w * 0.1, "exp_avg_sq": w.abs() * 0.01}
        left -= rows * hidden * 10 + rows * 2
        layer += 1
    return {"model": model, "optim": optim, "step": 1000}


def tensor_bytes(state) -> int:
    import torch

    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(v) for v in state.values())
    return 0


def copy_limit(nbytes: int, threads: int) -> float:
    """Best of 3: seconds for plain memcpy of nbytes into pre-faulted memory,
    split over `threads` threads (ctypes.memmove releases the GIL)."""
    import torch

    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.zeros(nbytes, dtype=torch.uint8)  # faulted in
    chunk = (nbytes + threads - 1) // threads
    best = float("inf")
    for _ in range(3):
        def part(i):
            n = max(0, min(chunk, nbytes - i * chunk))
            ctypes.memmove(dst.data_ptr() + i * chunk, src.data_ptr() + i * chunk, n)
        t0 = time.monotonic()
        ts = [threading.Thread(target=part, args=(i,)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        best = min(best, time.monotonic() - t0)
    return best


def _max_over_ranks(x: float) -> float:
    import torch
    import torch.distributed as dist

    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _as_torchrun(world: int) -> None:
    # torchrun tells each rank how many share its node; shardwise gives each
    # rank its share of the cores from it.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["LOCAL_WORLD_SIZE"] = str(world)


def idiom_and_eager(rank: int, world: int, store: str, args: dict, out: str) -> None:
    _as_torchrun(world)
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    import shardwise
    from shardwise.dcp import Writer

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=1800))
    group = dist.new_group(backend="gloo")
    state = rank_state(rank, args["size"])
    nbytes = tensor_bytes(state)
    root = args["dir"]
    res: dict = {"bytes_per_rank": nbytes, "ranks": world, "samples": {}}
    samples = res["samples"]

    def fresh(path):
        dist.barrier()
        if rank == 0:
            shutil.rmtree(path, ignore_errors=True)
            os.makedirs(path, exist_ok=True)
        dist.barrier()
        return path

    def timed_async(make_writer, path):
        dist.barrier()
        t0 = time.monotonic()
        w = make_writer(path)
        fut = dcp.async_save(state, storage_writer=w, process_group=group)
        stall = time.monotonic() - t0
        fut.result()
        total = time.monotonic() - t0
        return _max_over_ranks(stall), _max_over_ranks(total), w

    if "idiom" in args["parts"]:
        base = fresh(os.path.join(root, "idiom"))
        for i in range(args["saves"]):
            for label, make in (("shardwise", lambda p: Writer(p)),
                                ("dcp", lambda p: dcp.FileSystemWriter(p))):
                path = os.path.join(base, label, f"step-{i:012d}")
                stall, total, w = timed_async(make, path)
                if i > 0:  # save 1 allocates (both) and is not counted
                    samples.setdefault(f"idiom {label} stall", []).append(stall)
                    samples.setdefault(f"idiom {label} total", []).append(total)
                if label == "shardwise":
                    samples.setdefault("idiom shardwise copied bytes", []).append(w.copied_bytes)
                if rank == 0:
                    shutil.rmtree(os.path.dirname(path) if label == "dcp" else path,
                                  ignore_errors=True)
        res["idiom allocations"] = shardwise._core.staging_stats().allocations
    if "eager" in args["parts"]:
        ckroot = fresh(os.path.join(root, "eager"))
        ck = shardwise.Checkpointer(ckroot, keep_last=1, process_group=group)
        for i in range(args["saves"]):
            dist.barrier()
            h = ck.save(i + 1, state)
            stall = _max_over_ranks(h.stall_seconds)
            h.wait()
            copy_s = _max_over_ranks(h._snapshot.copy_seconds)
            if i > 0:
                samples.setdefault("eager stall", []).append(stall)
                samples.setdefault("eager copy", []).append(copy_s)
                samples.setdefault("eager copied bytes", []).append(h.copied_bytes)
        ck.close()
        # The copy limit: one rank alone, then every rank at once.
        cores = os.cpu_count() or 1
        for threads in sorted({1, cores}):
            alone = copy_limit(nbytes, threads) if rank == 0 else 0.0
            dist.barrier()
            res[f"memcpy alone {threads}t seconds"] = _max_over_ranks(alone)
            dist.barrier()
            together = copy_limit(nbytes, max(1, threads // world))
            res[f"memcpy together {threads}t seconds"] = _max_over_ranks(together)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(res, f)
    dist.barrier()
    dist.destroy_process_group()


# -- the training loop ---------------------------------------------------------------------
def make_model(layers: int, hidden: int):
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    blocks = []
    for _ in range(layers):
        blocks += [nn.Linear(hidden, hidden), nn.ReLU()]
    model = nn.Sequential(*blocks)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return model, opt


def training(rank: int, world: int, store: str, args: dict, out: str) -> None:
    _as_torchrun(world)
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import get_state_dict

    import shardwise

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=1800))
    model, opt = make_model(args["layers"], args["hidden"])
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(args["batch"], args["hidden"], generator=g)

    def step():
        opt.zero_grad(set_to_none=False)
        model(x).pow(2).mean().backward()
        opt.step()

    def fwd_bwd_seconds():
        t0 = time.monotonic()
        opt.zero_grad(set_to_none=False)
        model(x).pow(2).mean().backward()
        return time.monotonic() - t0

    for _ in range(3):
        step()  # AdamW state exists, caches warm
    msd, osd = get_state_dict(model, opt)
    state_bytes = sum(v.numel() * v.element_size() for v in
                      list(msd.values()) + [t for s in osd["state"].values()
                                            for t in s.values() if torch.is_tensor(t)])
    res: dict = {"state_bytes": state_bytes, "ranks": world, "samples": {}}
    samples = res["samples"]
    res["fwd_bwd_seconds"] = median([fwd_bwd_seconds() for _ in range(3)])
    res["copy_1t_seconds"] = copy_limit(state_bytes, 1)
    interval = args["interval"]
    root = os.path.join(args["dir"], "training")
    if rank == 0:
        shutil.rmtree(root, ignore_errors=True)
    dist.barrier()

    def state():
        m, o = get_state_dict(model, opt)
        return {"model": m, "optim": o}

    saved = [0]

    def run(ck, rounds, label):
        """Rounds of `interval` steps, a save at the start of each (ck None:
        no save). Returns per-round seconds and per-step seconds."""
        rounds_s, steps_s = [], []
        for r in range(rounds):
            t_round = time.monotonic()
            handle = None
            for s in range(interval):
                t0 = time.monotonic()
                if s == 0 and ck is not None:
                    saved[0] += 1
                    handle = ck.save(saved[0], state(), optimizer=opt)
                    samples.setdefault(f"{label} save() seconds", []).append(handle.stall_seconds)
                step()
                steps_s.append((s, time.monotonic() - t0))
            if handle is not None:
                done_in_time = handle.done()
                handle.wait()
                samples.setdefault(f"{label} persist done within the interval", []).append(
                    done_in_time)
                samples.setdefault(f"{label} copied bytes", []).append(handle.copied_bytes)
            rounds_s.append(time.monotonic() - t_round)
        return rounds_s, steps_s

    # Modes interleaved round by round, so that the machine's noise hits
    # all three alike.
    cks = {mode: shardwise.Checkpointer(os.path.join(root, mode), keep_last=1, snapshot=mode)
           for mode in ("eager", "lazy")}
    for mode, ck in cks.items():
        run(ck, 1, f"warmup {mode}")  # the pool is allocated here
    for _ in range(args["rounds"]):
        for mode in ("none", "eager", "lazy"):
            dist.barrier()
            r_s, st = run(cks.get(mode), 1, mode)
            samples.setdefault(f"{mode} round seconds", []).extend(r_s)
            samples.setdefault(f"{mode} step0 seconds", []).extend(t for s, t in st if s == 0)
            samples.setdefault(f"{mode} step1 seconds", []).extend(t for s, t in st if s == 1)
            samples.setdefault(f"{mode} other step seconds", []).extend(
                t for s, t in st if s >= 2)
    for ck in cks.values():
        ck.close()
    if rank == 0:
        with open(out, "w") as f:
            json.dump(res, f)
    dist.barrier()
    dist.destroy_process_group()


def report(idiom: dict, train: dict, train2: dict) -> dict:
    """Medians and the ratios docs/PERFORMANCE.md quotes."""
    r: dict = {}
    if idiom:
        s = idiom["samples"]
        n = idiom["bytes_per_rank"]
        if "idiom shardwise stall" in s:
            r["idiom: shardwise stall s"] = median(s["idiom shardwise stall"])
            r["idiom: stock dcp stall s"] = median(s["idiom dcp stall"])
            r["idiom: stall shardwise / stock"] = (r["idiom: shardwise stall s"] /
                                                  r["idiom: stock dcp stall s"])
            r["idiom: total shardwise / stock"] = (median(s["idiom shardwise total"]) /
                                                  median(s["idiom dcp total"]))
            r["idiom: copied bytes / state bytes"] = max(s["idiom shardwise copied bytes"]) / n
            r["idiom: staging allocations (rank 0)"] = idiom["idiom allocations"]
        if "eager stall" in s:
            stall = median(s["eager stall"])
            alone = min(v for k, v in idiom.items() if k.startswith("memcpy alone"))
            together = min(v for k, v in idiom.items() if k.startswith("memcpy together"))
            r["eager: stall s"] = stall
            r["eager: of which the copy s"] = median(s["eager copy"])
            r["eager: copy limit, one rank alone s"] = alone
            r["eager: copy limit, all ranks at once s"] = together
            r["eager: stall / limit (one rank alone)"] = stall / alone
            r["eager: stall / limit (all ranks at once)"] = stall / together
            r["eager: copied bytes / state bytes"] = max(s["eager copied bytes"]) / n
    for tag, t in (("1 rank", train), (f"{train2.get('ranks', 2)} ranks", train2)):
        if not t:
            continue
        s = t["samples"]
        base_step = median(s["none step0 seconds"] + s["none step1 seconds"] +
                           s["none other step seconds"])
        r[f"training ({tag}): state MiB"] = t["state_bytes"] / 2**20
        r[f"training ({tag}): fwd+bwd / copy (1 thread)"] = (t["fwd_bwd_seconds"] /
                                                            t["copy_1t_seconds"])
        r[f"training ({tag}): median step s"] = base_step
        for mode in ("eager", "lazy"):
            r[f"training ({tag}): rate kept, {mode}"] = (median(s["none round seconds"]) /
                                                        median(s[f"{mode} round seconds"]))
            r[f"training ({tag}): persists done within the interval, {mode}"] = (
                f"{sum(s[f'{mode} persist done within the interval'])}/"
                f"{len(s[f'{mode} persist done within the interval'])}")
        eager_stall = median(s["eager save() seconds"])
        lazy_extra0 = median(s["lazy step0 seconds"]) - base_step
        lazy_extra1 = median(s["lazy step1 seconds"]) - base_step
        r[f"lazy ({tag}): eager stall s"] = eager_stall
        r[f"lazy ({tag}): lazy save() s"] = median(s["lazy save() seconds"])
        r[f"lazy ({tag}): extra s, step with save"] = lazy_extra0
        r[f"lazy ({tag}): extra s, next step"] = lazy_extra1
        r[f"lazy ({tag}): extra per checkpointed step / eager stall"] = (
            (lazy_extra0 + max(0.0, lazy_extra1)) / eager_stall)
        eager_extra = (median(s["eager step0 seconds"]) - base_step +
                       max(0.0, median(s["eager step1 seconds"]) - base_step))
        r[f"lazy ({tag}): eager's extra of the same steps s"] = eager_extra
        r[f"lazy ({tag}): lazy extra / eager extra"] = (
            (lazy_extra0 + max(0.0, lazy_extra1)) / eager_extra)
        r[f"lazy ({tag}): copied bytes / state bytes"] = (max(s["lazy copied bytes"]) /
                                                         t["state_bytes"])
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--size-per-rank", default="1GiB")
    ap.add_argument("--saves", type=int, default=5)
    ap.add_argument("--parts", default="idiom,eager,training,lazy")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--interval", type=int, default=12, help="steps from one save to the next")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.saves < 3:
        ap.error("--saves must be at least 3 (the first is not counted)")
    parts = set(args.parts.split(","))
    params = {"dir": os.path.abspath(args.dir), "size": parse_size(args.size_per_rank),
              "saves": args.saves, "parts": sorted(parts), "layers": args.layers,
              "hidden": args.hidden, "batch": args.batch, "interval": args.interval,
              "rounds": args.rounds}
    os.makedirs(params["dir"], exist_ok=True)
    idiom = spawn(idiom_and_eager, args.ranks, params) if parts & {"idiom", "eager"} else {}
    train = spawn(training, 1, params) if parts & {"training", "lazy"} else {}
    train2 = spawn(training, args.ranks, params) if parts & {"training", "lazy"} else {}
    ratios = report(idiom, train, train2)
    for k, v in ratios.items():
        print(f"{k:60s} {v:.3f}" if isinstance(v, float) else f"{k:60s} {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "params": params, "idiom": idiom,
                       "training_1": train, "training_n": train2, "report": ratios}, f,
                      indent=2)
    shutil.rmtree(params["dir"], ignore_errors=True)


if __name__ == "__main__":
    main()
