#!/usr/bin/env python3
"""Where a shardwise load through DCP spends its time (one process).

Saves a transformer state once (bf16 parameters + fp32 AdamW moments, plain
tensors), then, with page caches dropped before each (as root), times for
--runs rounds:
  fio read      the device: fio, one job, O_DIRECT, the same bytes
  core read     shardwise's reader alone: every chunk read and verified into
                preallocated tensors in one batch (no DCP)
  dcp.load      the same through torch.distributed.checkpoint with
                shardwise.dcp.Reader (planning, metadata, the same reads)
  read_data     the time DCP spends inside Reader.read_data (our reads)
and reports the DCP overhead (dcp.load - read_data) and each figure in GB/s.

  .venv/bin/python bench/profile_load.py --dir /tmp/prof --size 2GiB --runs 3
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compare import drop_caches, parse_size  # noqa: E402
from vs_fio import run_fio  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--size", default="2GiB")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    import torch
    import torch.distributed.checkpoint as dcp

    import shardwise
    from shardwise import _core
    from shardwise.dcp import Reader, Writer

    total = parse_size(args.size)
    hidden = 2048
    layers = max(1, total // 10 // (12 * hidden * hidden))
    g = torch.Generator().manual_seed(0)
    state = {}
    for l in range(layers):
        for name, rows in (("qkv", 3 * hidden), ("out", hidden), ("up", 4 * hidden),
                           ("down", 4 * hidden)):
            w = torch.randn(rows, hidden, generator=g)
            state[f"model.{l}.{name}"] = w.to(torch.bfloat16)
            state[f"optim.{l}.{name}.exp_avg"] = w * 0.1
            state[f"optim.{l}.{name}.exp_avg_sq"] = w.abs() * 0.01
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    root = os.path.abspath(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    path = os.path.join(root, "step-000000000001")
    dcp.save(state, storage_writer=Writer(path))

    inner: list[float] = []
    original = Reader.read_data

    def timed_read_data(self, plan, planner):
        t0 = time.monotonic()
        out = original(self, plan, planner)
        inner.append(time.monotonic() - t0)
        return out

    Reader.read_data = timed_read_data
    samples: dict[str, list[float]] = {"fio read": [], "core read": [], "dcp.load": [],
                                       "read_data": []}
    targets = {k: torch.empty_like(v) for k, v in state.items()}
    for t in targets.values():
        t.zero_()
    for run in range(args.runs):
        print(f"run {run + 1}/{args.runs}", file=sys.stderr, flush=True)
        drop_caches()
        samples["fio read"].append(nbytes / 1e9 / run_fio(root, 1, f"{nbytes >> 20}m",
                                                          "io_uring_fixed", 8, "8m", "read"))
        drop_caches()
        reader = _core.Reader(path, {})
        manifest = json.loads(reader.manifest_json())
        requests = []
        for it in manifest["items"]:
            dst = targets[it["name"]]
            requests.append(_core.ReadRequest(it["name"], address=dst.data_ptr(),
                                              nbytes=dst.numel() * dst.element_size()))
        t0 = time.monotonic()
        reader.read(requests)
        samples["core read"].append(time.monotonic() - t0)
        del reader
        drop_caches()
        t0 = time.monotonic()
        dcp.load(targets, storage_reader=Reader(path))
        samples["dcp.load"].append(time.monotonic() - t0)
        samples["read_data"].append(inner[-1])
    for k, v in targets.items():
        if not torch.equal(v, state[k]):
            sys.exit(f"loaded {k} differs")
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"\none process, {nbytes / 2**30:.2f} GiB, {len(state)} tensors, medians of "
          f"{args.runs}\n\n| step | seconds | GB/s |\n|---|---:|---:|")
    for k in ("fio read", "core read", "read_data", "dcp.load"):
        print(f"| {k} | {med[k]:.3f} | {nbytes / med[k] / 1e9:.2f} |")
    overhead = med["dcp.load"] - med["read_data"]
    print(f"| DCP outside read_data (planning, metadata, commit_tensor) | {overhead:.3f} | |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "bytes": nbytes, "samples": samples,
                       "medians": med, "dcp_overhead_s": overhead}, f, indent=2)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
