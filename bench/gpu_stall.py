#!/usr/bin/env python3
"""Async-save stall with the state on a CUDA GPU: shardwise against dcp.async_save.

One process (a gloo group of one) holds a transformer state on the GPU (bf16
parameters, fp32 AdamW moments) and saves it --saves times through
`dcp.async_save`, a new writer per save (the DCP idiom): shardwise copies
into the process's pinned staging memory on a side stream (allocated once,
reused), stock DCP into memory it allocates per save. The stall is the time
until async_save returns, that is, until the state is off the GPU; it is
compared with the pinned device-to-host bandwidth measured in the same run
(the same bytes, one non-blocking copy, timed by CUDA events). The first
save of each writer is a warm-up and is not counted. Then the lazy snapshot:
a Checkpointer(snapshot="lazy") save, followed at once by kernels on the
training stream; their events show whether they ran while the copy was in
flight (no whole-device synchronize). Without a CUDA GPU it prints why and
writes {"skipped": reason}. Untested where no GPU was available.

Usage:
  bench/gpu_stall.py --dir /tmp/gpu [--total-size 4GiB] [--saves 4] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compare import parse_size  # noqa: E402


def gpu_state(total: int):
    import torch

    hidden = 4096
    per_layer = 12 * hidden * hidden
    layers = max(1, (total // 10) // per_layer)
    state = {}
    for l in range(layers):
        for name, rows in (("qkv", 3 * hidden), ("out", hidden), ("up", 4 * hidden),
                           ("down", 4 * hidden)):
            w = torch.randn(rows, hidden, device="cuda")
            state[f"model.layers.{l}.{name}"] = w.to(torch.bfloat16)
            state[f"optim.layers.{l}.{name}.exp_avg"] = w * 0.1
            state[f"optim.layers.{l}.{name}.exp_avg_sq"] = w.abs() * 0.01
    torch.cuda.synchronize()
    return state


def d2h_seconds(state) -> float:
    """The limit: the state's bytes, device to pinned host, one copy each,
    non-blocking on one stream, best of 3 by CUDA events."""
    import torch

    host = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for k, v in state.items()}
    best = float("inf")
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for k, v in state.items():
            host[k].copy_(v, non_blocking=True)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return best


def lazy_overlap(state, root: str) -> dict:
    """A lazy save, then kernels on the training stream at once: if they end
    before the copy does, the copy did not block the device."""
    import torch

    import shardwise

    params = [v for v in state.values()]
    opt = torch.optim.SGD([torch.nn.Parameter(p) for p in params[:1]], lr=0.0)
    ck = shardwise.Checkpointer(root, snapshot="lazy")
    ck.save(0, state, optimizer=opt).wait()  # warm-up: the pinned pool
    a = torch.randn(4096, 4096, device="cuda")
    t0 = time.monotonic()
    h = ck.save(1, state, optimizer=opt)
    save_s = time.monotonic() - t0
    done = torch.cuda.Event()
    for _ in range(20):
        a = a @ a
        a = a / a.norm()
    done.record()
    done.synchronize()
    overlapped = not h.snapshot_done()
    h.wait()
    ck.close()
    return {"save_seconds": save_s, "kernels_overlapped_copy": overlapped}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--total-size", default="4GiB")
    ap.add_argument("--saves", type=int, default=4, help="saves per writer (first is warm-up)")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.saves < 4:
        ap.error("--saves must be at least 4 (a warm-up plus 3 measured)")

    def finish(result: dict) -> None:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)

    import torch

    if not torch.cuda.is_available():
        reason = (f"no CUDA GPU: torch {torch.__version__} reports "
                  f"cuda available = False (CUDA build: {torch.version.cuda or 'no'})")
        print(f"gpu_stall: skipped, {reason}")
        finish({"skipped": reason, "date": time.strftime("%Y-%m-%d")})
        return

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType

    from shardwise.dcp import Writer

    fd, store = tempfile.mkstemp(prefix="gpu-rdzv-")
    os.close(fd)
    os.unlink(store)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    group = dist.new_group(backend="gloo")
    state = gpu_state(parse_size(args.total_size))
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    samples: dict[str, list[float]] = {"shardwise async stall": [], "dcp async stall": [],
                                       "shardwise async total": [], "dcp async total": []}
    root = os.path.abspath(args.dir)
    for i in range(args.saves):
        for label in ("shardwise", "dcp"):
            path = os.path.join(root, label, f"step-{i:012d}")
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            writer, ckpt_id = ((Writer(path), None) if label == "shardwise"
                               else (dcp.FileSystemWriter(path), None))
            torch.cuda.synchronize()
            t0 = time.monotonic()
            fut = dcp.async_save(state, storage_writer=writer, checkpoint_id=ckpt_id,
                                 process_group=group,
                                 async_checkpointer_type=AsyncCheckpointerType.THREAD)
            stall = time.monotonic() - t0
            getattr(fut, "upload_completion", fut).result()
            total = time.monotonic() - t0
            if i > 0:
                samples[f"{label} async stall"].append(stall)
                samples[f"{label} async total"].append(total)
            print(f"save {i + 1}/{args.saves} {label}: stall {stall * 1e3:.0f} ms, "
                  f"total {total:.2f} s", file=sys.stderr, flush=True)
    d2h = d2h_seconds(state)
    lazy = lazy_overlap(state, os.path.join(root, "lazy"))
    shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    ratio = med["shardwise async stall"] / med["dcp async stall"]
    print(f"GPU {torch.cuda.get_device_name()}, {nbytes / 2**30:.2f} GiB on the device")
    print(f"stall: shardwise {med['shardwise async stall'] * 1e3:.0f} ms, "
          f"dcp.async_save {med['dcp async stall'] * 1e3:.0f} ms, ratio {ratio:.2f}; "
          f"pinned device-to-host copy {d2h * 1e3:.0f} ms: "
          f"{med['shardwise async stall'] / d2h:.2f}x")
    print(f"lazy: save() {lazy['save_seconds'] * 1e3:.1f} ms; training kernels ran during "
          f"the copy: {lazy['kernels_overlapped_copy']}")
    finish({"date": time.strftime("%Y-%m-%d"), "gpu": torch.cuda.get_device_name(),
            "bytes": nbytes, "samples": samples, "medians": med, "d2h_seconds": d2h,
            "lazy": lazy,
            "ratios": {"async stall, shardwise / dcp": ratio,
                       "async stall / pinned d2h": med["shardwise async stall"] / d2h,
                       "lazy save() / pinned d2h": lazy["save_seconds"] / d2h}})
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
