"""Training with shardwise checkpoints, under torchrun (GPUs with NCCL, else CPUs with gloo).

    torchrun --nproc-per-node 2 examples/python/train_demo.py --root /tmp/ckpt --steps 300

Each rank trains a small transformer language model on synthetic data (DDP
style: gradients all-reduced, weights replicated). Every --save-every steps
the state (model, AdamW, step, data position) is checkpointed
asynchronously with shardwise.Checkpointer: the loop only waits for the copy
into host memory. On start, the job resumes from the newest valid
checkpoint. At the end it prints the stall of each save and the share of the
training time that checkpointing cost.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

import shardwise


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 512, dim: int = 128, layers: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=4 * dim,
                                           batch_first=True)
        self.body = nn.TransformerEncoder(layer, layers)
        self.head = nn.Linear(dim, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.embed(x)))


class TrainState(Stateful):
    """What a resumed job needs: model, optimizer, step."""

    def __init__(self, model: nn.Module, optim: torch.optim.Optimizer) -> None:
        self.model, self.optim, self.step = model, optim, 0

    def state_dict(self):
        msd, osd = get_state_dict(self.model, self.optim)
        return {"model": msd, "optim": osd, "step": self.step}

    def load_state_dict(self, sd) -> None:
        set_state_dict(self.model, self.optim, model_state_dict=sd["model"],
                       optim_state_dict=sd["optim"])
        self.step = sd["step"]


def batch(step: int, rank: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step * 1000 + rank)  # data position = step
    x = torch.randint(0, 512, (8, 64), generator=g).to(device)
    return x[:, :-1], x[:, 1:]


def pick_backend(choice: str) -> tuple[str, torch.device]:
    """NCCL on this process's GPU when there is one (over EFA where the
    image has aws-ofi-nccl), gloo on the CPU otherwise."""
    if choice == "auto":
        choice = "nccl" if torch.cuda.is_available() else "gloo"
    if choice == "nccl":
        if not torch.cuda.is_available():
            raise SystemExit("--backend nccl: this process sees no GPU")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return "nccl", torch.device("cuda", local)
    return "gloo", torch.device("cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="checkpoint root directory")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--save-every", type=int, default=25)
    ap.add_argument("--keep-last", type=int, default=3)
    ap.add_argument("--backend", choices=("auto", "nccl", "gloo"), default="auto",
                    help="collectives: auto = nccl when a GPU is visible, else gloo")
    args = ap.parse_args()

    backend, device = pick_backend(args.backend)
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # same initial weights on every rank
    model = TinyLM().to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-4)
    state = TrainState(model, optim)

    ckpt = shardwise.Checkpointer(args.root, keep_last=args.keep_last)
    t0 = time.monotonic()
    resumed = ckpt.load({"train": state})
    if rank == 0:
        how = f"resumed from step {resumed}" if resumed is not None else "starting from scratch"
        print(f"[demo] {world} ranks ({backend}), {how} ({time.monotonic() - t0:.2f} s)",
              flush=True)

    stalls: list[float] = []
    ckpt_time = 0.0
    start = time.monotonic()
    steps_run = 0
    while state.step < args.steps:
        x, y = batch(state.step, rank, device)
        optim.zero_grad()
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        loss.backward()
        for p in model.parameters():  # data parallel: average gradients
            dist.all_reduce(p.grad)
            p.grad /= world
        optim.step()
        state.step += 1
        steps_run += 1
        if state.step % args.save_every == 0:
            t = time.monotonic()
            handle = ckpt.save(state.step, {"train": state})
            dt = time.monotonic() - t  # includes waiting for the previous save
            ckpt_time += dt
            stalls.append(handle.stall_seconds)
            if rank == 0:
                print(f"[demo] step {state.step} loss {loss.item():.3f} "
                      f"checkpoint stall {1000 * handle.stall_seconds:.1f} ms", flush=True)
    t = time.monotonic()
    ckpt.close()
    ckpt_time += time.monotonic() - t
    elapsed = time.monotonic() - start
    if rank == 0 and steps_run:
        share = 100 * ckpt_time / elapsed
        stall_list = ", ".join(f"{1000 * s:.1f}" for s in stalls)
        print(f"[demo] done: {steps_run} steps in {elapsed:.1f} s; {len(stalls)} async saves, "
              f"stall per save (ms): {stall_list}", flush=True)
        print(f"[demo] checkpointing cost {share:.1f}% of training time "
              f"(training throughput {100 - share:.1f}% of what it would be without)",
              flush=True)
        print(f"[demo] checkpoints: {ckpt.steps()}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
