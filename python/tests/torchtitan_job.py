"""A torchtitan training job on CPU for the integration test: torchtitan's
llama3 debug model, sharded with FSDP2 (fully_shard, as torchtitan
parallelizes it), torchtitan's optimizer and LR-scheduler containers, and
torchtitan's checkpoint manager built from a config, the one thing a user
changes. The trainer's data pipeline is replaced by seeded random tokens, and
torchtitan 0.3.0 needs two CPU-only patches (cpu_patches); both live here,
never in the product."""
from __future__ import annotations

import json
import os
import signal
import sys
import types
from typing import Any, Optional

import torch

SEQ = 32
BATCH = 2


def cpu_patches() -> None:
    """torchtitan 0.3.0 on a CPU-only torch:
    - its model package imports expert-parallel Triton kernels (GPU only,
      unused by a dense model): give it a module whose kernels refuse to run;
    - FlexAttention has no backward on CPU: with one document per row its
      mask is causal, which SDPA computes on CPU."""
    name = "torchtitan.distributed.minimal_async_ep.kernels"
    if name not in sys.modules:
        m = types.ModuleType(name)

        def _refuse(*a: Any, **k: Any) -> None:
            raise RuntimeError("torchtitan's Triton kernels are not available in this CPU test")

        for k in ["copy_full_counts_to_peers_kernel", "copy_rows_to_peers_kernel",
                  "expand_topk_grad_kernel", "fill_combine_metadata_kernel",
                  "fill_dispatch_metadata_kernel", "invert_flat_indices_kernel",
                  "reduce_topk_slots_kernel", "topk_scores_grad_kernel"]:
            setattr(m, k, _refuse)
        sys.modules[name] = m
    from torchtitan.models.common.attention import FlexAttention

    def _sdpa(self: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
              attention_masks: Any = None, scale: Optional[float] = None,
              enable_gqa: bool = False, **kw: Any) -> torch.Tensor:
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
            scale=scale, enable_gqa=enable_gqa)
        return out.transpose(1, 2)

    FlexAttention.forward = _sdpa


class TrainState:
    """torchtitan's Trainer keeps its step under "train_state" (Stateful)."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, Any]:
        return {"step": torch.tensor(self.step)}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.step = int(sd["step"])


class Loader:
    """Stands in for torchtitan's ParallelAwareDataloader, with the same
    state shape (its rank's position as bytes under dp_rank_N, and the
    world size): tokens for step s are drawn from a seed of (rank, s)."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world, self.position = rank, world, 0

    def next(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(1000 * self.rank + self.position)
        self.position += 1
        return torch.randint(0, 2048, (BATCH, SEQ + 1), generator=g)

    def state_dict(self) -> dict[str, Any]:
        return {f"dp_rank_{self.rank}": json.dumps({"position": self.position}).encode(),
                "world_size": self.world}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        assert sd["world_size"] == self.world, sd
        self.position = json.loads(sd[f"dp_rank_{self.rank}"])["position"]


def build(rank: int, world: int, folder: str, manager: str, **ckpt: Any) -> dict[str, Any]:
    """The job's parts, as torchtitan's Trainer builds them."""
    cpu_patches()
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torchtitan.components.optimizer.lr_scheduler import LRSchedulersContainer
    from torchtitan.components.optimizer.optimizer import default_adamw
    from torchtitan.models.llama3 import model_registry

    torch.manual_seed(0)  # the same initial weights on every rank
    model = model_registry("debugmodel", attn_backend="flex").model.build()
    mesh = init_device_mesh("cpu", (world,))
    for layer in model.layers.values():
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = default_adamw(lr=8e-4).build(model_parts=[model])
    lrs = LRSchedulersContainer.Config(warmup_steps=2, decay_ratio=0.8, decay_type="linear",
                                       min_lr_factor=0.0).build(optimizers=opt,
                                                                training_steps=100)
    job = {"model": model, "opt": opt, "lrs": lrs, "state": TrainState(),
           "loader": Loader(rank, world)}
    job["checkpointer"] = checkpoint_manager(job, manager, folder, **ckpt)
    return job


def checkpoint_manager(job: dict[str, Any], manager: str, folder: str, **ckpt: Any) -> Any:
    """A checkpoint manager over the job's state, built from its Config as
    torchtitan's Trainer builds it: "shardwise" (ShardwiseCheckpointManager)
    or "stock" (torchtitan's CheckpointManager)."""
    from torchtitan.components.checkpointer.dcp import CheckpointManager

    from shardwise.integrations.torchtitan import ShardwiseCheckpointManager

    cls = ShardwiseCheckpointManager if manager == "shardwise" else CheckpointManager
    config = cls.Config(enable=True, folder="checkpoint", **ckpt)
    return config.build(dataloader=job["loader"], model_parts=[job["model"]],
                        optimizers=job["opt"], lr_schedulers=job["lrs"],
                        states={"train_state": job["state"]}, sd_adapter=None,
                        base_folder=folder)


def step(job: dict[str, Any]) -> None:
    tokens = job["loader"].next()
    inp, labels = tokens[:, :-1], tokens[:, 1:]
    pos = torch.arange(SEQ).repeat(BATCH, 1)
    logits = job["model"](inp, positions=pos)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
    loss.backward()
    job["checkpointer"].maybe_wait_for_staging()  # as torchtitan's Trainer, before the step
    job["opt"].step()
    job["opt"].zero_grad()
    job["lrs"].step()


def full_state(job: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Model and optimizer state as whole tensors (collective: every rank)."""
    from torch.distributed.tensor import DTensor

    out: dict[str, torch.Tensor] = {}
    for prefix, sd in (("model.", job["model"].state_dict()), ("optim.", job["opt"].state_dict())):
        for k, v in sd.items():
            if isinstance(v, DTensor):
                v = v.full_tensor()
            if isinstance(v, torch.Tensor):
                out[prefix + k] = v.detach().clone()
    out["loader.position"] = torch.tensor(job["loader"].position)
    out["lr"] = torch.tensor(job["lrs"].schedulers[0].get_last_lr()[0])
    return out


def train(rank: int, world: int, folder: str, steps: int, out: Optional[str],
          kill_after: Optional[int], manager: str, ckpt: dict[str, Any]) -> None:
    """Loads the latest checkpoint in `folder` (if any), trains to `steps`
    saving every `ckpt["interval"]` (`ckpt`: the checkpoint manager's
    Config fields), and writes the whole state (rank 0) to `out`.
    With `kill_after`, the process kills itself (SIGKILL) once that step's
    training and save call are done."""
    job = build(rank, world, folder, manager, **ckpt)
    ckp = job["checkpointer"]
    ckp.load()  # the latest committed step, or nothing
    for s in range(job["state"].step + 1, steps + 1):
        step(job)
        job["state"].step = s
        ckp.save(s, last_step=(s == steps))
        if kill_after == s:
            os.kill(os.getpid(), signal.SIGKILL)
    ckp.maybe_wait_for_saving()
    state = full_state(job)
    ckp.close()
    if rank == 0 and out:
        torch.save(state, out)


def resave(rank: int, world: int, folder: str, from_step: int, to_step: int) -> None:
    """A job resumed from `from_step` (torchtitan's load_step) saves the
    steps after it again, over the checkpoints of the earlier run."""
    job = build(rank, world, folder, "shardwise", interval=2, last_save_model_only=False)
    ckp = job["checkpointer"]
    assert ckp.load(step=from_step)
    for s in range(from_step + 1, to_step + 1):
        step(job)
        job["state"].step = s
        ckp.save(s, last_step=(s == to_step))
    ckp.maybe_wait_for_saving()
    ckp.close()


def load_step(rank: int, world: int, folder: str, step_: int, out: str) -> None:
    """A fresh job of `world` ranks loads `step_` from `folder` (resharded
    when the world differs from the saving one's) and writes its state."""
    # A new data-parallel degree: the loader's per-rank state does not
    # carry over, so it is left out, as torchtitan users do.
    job = build(rank, world, folder, "shardwise", exclude_from_loading=["dataloader"])
    assert job["checkpointer"].load(step=step_)
    state = full_state(job)
    job["checkpointer"].close()
    if rank == 0:
        torch.save(state, out)
