"""Lightning's DCP-based ModelParallelStrategy through shardwise (issue 15,
part 2): 2 gloo processes run Trainer.fit with the model sharded by FSDP2
(fully_shard over the strategy's data-parallel mesh); ModelCheckpoint
writes shardwise checkpoints through ShardwiseModelParallelStrategy; a
second job resumes from the middle and ends bit-exact, with the same
metrics, as an uninterrupted run. Skips, saying why, where pytorch-lightning
is not installed."""
from __future__ import annotations

import os

import pytest
import torch

pl = pytest.importorskip("pytorch_lightning", reason="pytorch-lightning is not installed "
                         "(scripts/setup.sh installs it)")

import shardwise  # noqa: E402
from dist_util import run_ranks  # noqa: E402


def _lightning_env(rank: int, world: int) -> None:
    # The processes exist already (dist_util made them and their process
    # group): tell Lightning so, as torchrun would.
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      GROUP_RANK="0", LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT="1", TORCHELASTIC_RUN_ID="shardwise-test")


def _fsdp1_on_cpu() -> None:
    """CPU-only patch, for this test: torch 2.13's FSDP1 looks for an
    accelerator when it is given no device, and Lightning gives it none on
    the CPU (device_id=root_device.index, None); give it the CPU."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    init = FSDP.__init__

    def cpu_init(self, module, *args, device_id=None, **kwargs):  # type: ignore[no-untyped-def]
        init(self, module, *args, device_id=torch.device("cpu") if device_id is None
             else device_id, **kwargs)

    FSDP.__init__ = cpu_init


def _fit(rank: int, world: int, kind: str, root: str, epochs: int, ckpt_path: str,
         out: str, extra_state: object = None) -> None:
    _lightning_env(rank, world)
    from torch.distributed.fsdp import fully_shard

    from shardwise.integrations.lightning import (ShardwiseFSDPStrategy,
                                                  ShardwiseModelParallelStrategy)

    class Net(pl.LightningModule):
        def __init__(self, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(),
                                           torch.nn.Linear(32, 1))

        def configure_model(self) -> None:
            if kind != "model_parallel":
                return  # FSDPStrategy wraps the model itself
            mesh = self.device_mesh["data_parallel"]
            for m in self.net:
                if isinstance(m, torch.nn.Linear):
                    fully_shard(m, mesh=mesh)
            fully_shard(self.net, mesh=mesh)

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
            return loss

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)

    class RankState(pl.Callback):
        """State that differs per rank: the checkpoint keeps rank 0's, as
        Lightning's meta.pt does."""

        def state_dict(self) -> dict:
            return {"rank": rank, "tensor": torch.full((2,), float(rank)),
                    **({} if extra_state is None else {"extra": extra_state})}

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True) * 0.3), batch_size=8)
    torch.manual_seed(1)
    model = Net()
    cb = pl.callbacks.ModelCheckpoint(dirpath=root, every_n_epochs=1, save_top_k=2,
                                      monitor="train_loss", mode="min")
    if kind == "model_parallel":
        strategy: object = ShardwiseModelParallelStrategy(data_parallel_size=world,
                                                          tensor_parallel_size=1)
    else:
        _fsdp1_on_cpu()
        strategy = ShardwiseFSDPStrategy(state_dict_type="sharded",
                                         auto_wrap_policy={torch.nn.Linear})
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=world, num_nodes=1,
                         strategy=strategy,
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[cb, RankState()], deterministic=True)
    trainer.fit(model, data, ckpt_path=ckpt_path or None)
    # This rank's shards of the parameters and of AdamW's moments (DTensors
    # with FSDP2, flat parameters with FSDP1).
    def local(t: torch.Tensor) -> torch.Tensor:
        return (t.to_local() if hasattr(t, "to_local") else t).detach().clone()

    opt = trainer.optimizers[0]
    params = list(trainer.strategy.model.parameters())
    torch.save({"params": [local(p) for p in params],
                # (FSDP1 keeps no state for a parameter with no elements here)
                "moments": [local(opt.state[p][m]) for p in params if p in opt.state
                            for m in ("exp_avg", "exp_avg_sq")],
                "step": trainer.global_step,
                "loss": trainer.callback_metrics["train_loss"]}, f"{out}.{rank}")


@pytest.mark.parametrize("kind", ["model_parallel", "fsdp"])
def test_fit_resume_bit_exact(tmp_path, kind):
    whole, part, resumed = (str(tmp_path / n) for n in ("whole.pt", "part.pt", "resumed.pt"))
    run_ranks(2, _fit, kind, str(tmp_path / "a"), 4, "", whole)
    run_ranks(2, _fit, kind, str(tmp_path / "b"), 2, "", part)
    mid = tmp_path / "b" / "epoch=1-step=8.ckpt"
    assert (mid / "manifest.json").is_file()  # a shardwise checkpoint, no meta.pt
    assert not (mid / "meta.pt").exists()
    assert shardwise._core.Reader(str(mid), {}).verify().problems == []
    from shardwise.integrations.lightning import _read_structured

    rest = _read_structured(str(mid), lambda name: name.startswith("meta."))
    (state,) = [v for k, v in rest["callbacks"].items() if "RankState" in k]
    assert state["rank"] == 0 and torch.equal(state["tensor"], torch.zeros(2))
    run_ranks(2, _fit, kind, str(tmp_path / "b"), 4, str(mid), resumed)
    for rank in range(2):
        a, b = torch.load(f"{whole}.{rank}"), torch.load(f"{resumed}.{rank}")
        assert a["step"] == b["step"] == 16
        assert len(a["params"]) == len(b["params"]) > 0
        assert len(a["moments"]) == len(b["moments"]) > 0
        for x, y in zip(a["params"] + a["moments"], b["params"] + b["moments"]):
            assert torch.equal(x, y)
        assert torch.equal(a["loss"], b["loss"])
    # Top-2 retention removed the others through shardwise; what is left is
    # committed and verified.
    kept = sorted(n for n in os.listdir(tmp_path / "a") if n.endswith(".ckpt"))
    assert len(kept) == 2, kept
    for n in kept:
        assert shardwise._core.Reader(str(tmp_path / "a" / n), {}).verify().problems == []


def _fit_with_a_value_the_checkpoint_cannot_hold(rank: int, world: int, root: str) -> None:
    import pathlib

    with pytest.raises(TypeError) as e:
        _fit(rank, world, "model_parallel", root, 1, "", os.path.join(root, "out"),
             extra_state=pathlib.Path("/x"))
    assert "PosixPath" in str(e.value), e.value


def test_a_value_rank_0_cannot_encode_fails_every_rank(tmp_path):
    """Only rank 0 encodes the checkpoint's non-tensor state: a value it
    cannot store (a Path, an OmegaConf node) is raised on every rank before
    the save's collectives, not on rank 0 alone while the others wait in
    them until the process group's timeout."""
    run_ranks(2, _fit_with_a_value_the_checkpoint_cannot_hold, str(tmp_path / "c"),
              timeout=240, pg_timeout=60)
