"""PyTorch Lightning through shardwise (issue 15, part 2): Trainer.fit with
ModelCheckpoint writing shardwise checkpoints (synchronously and in the
background), then a resume from the middle that ends bit-exact with an
uninterrupted run, with the same metrics; top-k retention removes through
shardwise. Skips, saying why, where pytorch-lightning is not installed."""
from __future__ import annotations

import os

import pytest
import torch

pl = pytest.importorskip("pytorch_lightning", reason="pytorch-lightning is not installed "
                         "(scripts/setup.sh installs it)")

import shardwise  # noqa: E402
from shardwise.integrations.lightning import ShardwiseCheckpointIO  # noqa: E402


class Tiny(pl.LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        return [opt], [sched]


def _data() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = x.sum(dim=1, keepdim=True) * 0.3
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


def _trainer(root, epochs: int, io: ShardwiseCheckpointIO, **ckpt: object) -> pl.Trainer:
    cb = pl.callbacks.ModelCheckpoint(dirpath=str(root), every_n_epochs=1,
                                      **({"save_top_k": -1} | ckpt))
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[cb], plugins=[io], deterministic=True)


def _fit(root, epochs: int, io: ShardwiseCheckpointIO, ckpt_path=None, **ckpt: object):
    torch.manual_seed(1)
    model = Tiny()
    trainer = _trainer(root, epochs, io, **ckpt)
    trainer.fit(model, _data(), ckpt_path=ckpt_path)
    return model, trainer


@pytest.mark.parametrize("async_save", [False, True])
def test_fit_resume_is_bit_exact(tmp_path, async_save):
    full, t_full = _fit(tmp_path / "full", 4, ShardwiseCheckpointIO(async_save=async_save))
    _fit(tmp_path / "part", 2, ShardwiseCheckpointIO(async_save=async_save))
    names = sorted(n for n in os.listdir(tmp_path / "part") if n.endswith(".ckpt"))
    assert names == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt"], names
    mid = tmp_path / "part" / "epoch=1-step=8.ckpt"
    assert (mid / "manifest.json").is_file()  # a shardwise checkpoint directory
    assert shardwise._core.Reader(str(mid), {}).verify().problems == []
    resumed, t_res = _fit(tmp_path / "part", 4, ShardwiseCheckpointIO(async_save=async_save),
                          ckpt_path=str(mid))
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    assert t_res.global_step == t_full.global_step == 16
    assert torch.equal(t_res.callback_metrics["train_loss"], t_full.callback_metrics["train_loss"])
    # The loaded dict is the saved one: optimizer state keyed by integers,
    # hyper-parameters, loops.
    ck = ShardwiseCheckpointIO().load_checkpoint(str(mid))
    assert ck["epoch"] == 1 and ck["global_step"] == 8
    assert set(ck["optimizer_states"][0]["state"]) == {0, 1, 2, 3}
    assert ck["hyper_parameters"]["lr"] == 0.05
    assert isinstance(ck["optimizer_states"][0]["param_groups"][0]["betas"], tuple)


@pytest.mark.parametrize("async_save", [False, True])
def test_top_k_retention_removes_through_shardwise(tmp_path, async_save):
    _fit(tmp_path / "ck", 4, ShardwiseCheckpointIO(async_save=async_save), save_top_k=1,
         monitor="train_loss")
    left = sorted(os.listdir(tmp_path / "ck"))
    kept = [n for n in left if n.endswith(".ckpt")]
    assert len(kept) == 1, left
    assert not [n for n in left if n.startswith(".") and ".deleting-" in n], left
    with pytest.raises(FileNotFoundError):
        ShardwiseCheckpointIO().load_checkpoint(str(tmp_path / "ck" / "missing.ckpt"))


def test_async_retention_does_not_wait_for_the_save(tmp_path):
    """ModelCheckpoint removes the previous best right after each save:
    that must not make the save it just started a blocking one. Removing
    the checkpoint being written waits for it."""
    io = ShardwiseCheckpointIO(async_save=True)
    old, new = str(tmp_path / "old.ckpt"), str(tmp_path / "new.ckpt")
    io.save_checkpoint({"state_dict": {"w": torch.ones(4)}, "epoch": 0}, old)
    io.save_checkpoint({"state_dict": {"w": torch.full((4,), 2.0)}, "epoch": 1}, new)
    io.remove_checkpoint(old)
    assert io._pending is not None  # the save of `new` was not waited for
    io.teardown()
    assert not os.path.exists(old)
    assert torch.equal(io.load_checkpoint(new)["state_dict"]["w"], torch.full((4,), 2.0))
    io.save_checkpoint({"state_dict": {"w": torch.zeros(4)}, "epoch": 2}, old)
    io.remove_checkpoint(old)  # the checkpoint in flight: waited for, then removed
    assert io._pending is None and not os.path.exists(old)
    io.teardown()


def test_async_retention_keeps_the_old_best_when_the_new_save_fails(tmp_path, monkeypatch):
    """The previous best is removed only once its successor committed: when
    the background save fails, the old checkpoint stays, and the save's
    error surfaces at the next call. What is not a shardwise checkpoint (a
    link, a file) is removed as Lightning's own CheckpointIO removes it."""
    from shardwise import dcp as sdcp

    io = ShardwiseCheckpointIO(async_save=True)
    old, new = str(tmp_path / "old.ckpt"), str(tmp_path / "new.ckpt")
    io.save_checkpoint({"state_dict": {"w": torch.ones(4)}, "epoch": 0}, old)
    io.teardown()
    real = sdcp.save

    def failing(*args, **kwargs):
        raise OSError(28, "No space left on device", new)

    monkeypatch.setattr(sdcp, "save", failing)
    io.save_checkpoint({"state_dict": {"w": torch.full((4,), 2.0)}, "epoch": 1}, new)
    io.remove_checkpoint(old)
    with pytest.raises(OSError, match="No space left"):
        io.teardown()
    monkeypatch.setattr(sdcp, "save", real)
    assert torch.equal(io.load_checkpoint(old)["state_dict"]["w"], torch.ones(4))
    assert not os.path.exists(new)
    link = tmp_path / "last.ckpt"
    os.symlink(old, link)
    io.remove_checkpoint(str(link))  # the link goes, not what it points at
    assert not os.path.lexists(link) and os.path.isdir(old)
    single = tmp_path / "single.ckpt"
    torch.save({"w": torch.ones(1)}, single)
    io.remove_checkpoint(str(single))
    assert not single.exists()
    with pytest.raises(ValueError, match="async_staging"):
        ShardwiseCheckpointIO(async_save=True, async_staging=True)


_NCCL_LIKE = r"""
import os, sys, torch, torch.distributed as dist
from shardwise.integrations.lightning import ShardwiseCheckpointIO
# A default group without a CPU backend, as Lightning's DDP sets up NCCL
# alone on GPUs (here gloo standing in for the device backend).
dist.init_process_group("cuda:gloo", init_method="file://" + sys.argv[2], rank=0, world_size=1)
io = ShardwiseCheckpointIO(async_save=True)
io.save_checkpoint({"state_dict": {"w": torch.arange(6.0)}, "epoch": 3}, sys.argv[1])
io.teardown()
back = io.load_checkpoint(sys.argv[1])
assert torch.equal(back["state_dict"]["w"], torch.arange(6.0)) and back["epoch"] == 3
print("saved")
"""


def test_async_save_without_a_cpu_backend_in_the_default_group(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _NCCL_LIKE, str(tmp_path / "a.ckpt"),
                          str(tmp_path / "store")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "saved" in out.stdout, out.stderr[-3000:]


def test_clear_errors(tmp_path):
    import pathlib

    io = ShardwiseCheckpointIO()
    with pytest.raises(TypeError, match=r"'hyper_parameters\.cfg\.1'.*PosixPath"):
        io.save_checkpoint({"state_dict": {}, "hyper_parameters": {
            "cfg": [1, pathlib.Path("/x")]}}, str(tmp_path / "bad.ckpt"))
    single = tmp_path / "single.ckpt"
    torch.save({"state_dict": {}}, single)
    with pytest.raises(ValueError, match="single-file checkpoint"):
        io.load_checkpoint(str(single))
    # A checkpoint of the strategies (model values stored as values, not
    # tensors) is not the plugin's to load.
    import io as _io

    from shardwise import _values, dcp as sdcp

    strat = str(tmp_path / "strategy.ckpt")
    sdcp.save({"__lightning__": _io.BytesIO(_values.encode({})), "model": {"w": torch.ones(2),
                                                                          "n": 3}},
              storage_writer=sdcp.Writer(strat), no_dist=True)
    with pytest.raises(ValueError, match="'model.n' is a value.*Shardwise\\*Strategy"):
        io.load_checkpoint(strat)


def test_hpc_resume_past_an_unfinished_save(tmp_path):
    """SLURM auto-requeue: Lightning resumes from hpc_ckpt_N.ckpt, N the
    largest number in any name holding "hpc_ckpt_"; a save killed midway
    leaves a hidden staging entry whose digits make an N that names no
    checkpoint. The plugin then loads the newest committed HPC checkpoint."""
    from pytorch_lightning.trainer.connectors.checkpoint_connector import _CheckpointConnector

    io = ShardwiseCheckpointIO()
    for n in (1, 2):
        io.save_checkpoint({"state_dict": {"w": torch.full((2,), float(n))}, "epoch": n},
                           str(tmp_path / f"hpc_ckpt_{n}.ckpt"))
    (tmp_path / ".hpc_ckpt_3.ckpt.staging-0123456789abcdef").mkdir()
    n = _CheckpointConnector._CheckpointConnector__max_ckpt_version_in_folder(  # type: ignore
        str(tmp_path), "hpc_ckpt_")
    assert n > 3  # Lightning's own reading of the folder
    back = io.load_checkpoint(str(tmp_path / f"hpc_ckpt_{n}.ckpt"))
    assert back["epoch"] == 2 and torch.equal(back["state_dict"]["w"], torch.full((2,), 2.0))
    with pytest.raises(FileNotFoundError):  # any other missing checkpoint stays missing
        io.load_checkpoint(str(tmp_path / "hpc_ckpt_7.ckpt"))
    # No HPC checkpoint ever committed: the error names the leftover.
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / ".hpc_ckpt_1.ckpt.staging-0123456789abcdef").mkdir()
    n = _CheckpointConnector._CheckpointConnector__max_ckpt_version_in_folder(  # type: ignore
        str(alone), "hpc_ckpt_")
    with pytest.raises(FileNotFoundError, match=r"unfinished save \(\.hpc_ckpt_1\.ckpt\.staging"):
        io.load_checkpoint(str(alone / f"hpc_ckpt_{n}.ckpt"))
    # Lightning's SLURM save (the job is killed right after) commits before
    # it returns, even with async_save.
    background = ShardwiseCheckpointIO(async_save=True)
    background.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 5},
                               str(tmp_path / "hpc_ckpt_9.ckpt"))
    assert background._pending is None
    assert (tmp_path / "hpc_ckpt_9.ckpt" / "manifest.json").is_file()
    background.teardown()
