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


def test_top_k_retention_removes_through_shardwise(tmp_path):
    _fit(tmp_path / "ck", 4, ShardwiseCheckpointIO(), save_top_k=1, monitor="train_loss")
    left = sorted(os.listdir(tmp_path / "ck"))
    kept = [n for n in left if n.endswith(".ckpt")]
    assert len(kept) == 1, left
    assert not [n for n in left if n.startswith(".") and ".deleting-" in n], left
    with pytest.raises(FileNotFoundError):
        ShardwiseCheckpointIO().load_checkpoint(str(tmp_path / "ck" / "missing.ckpt"))
