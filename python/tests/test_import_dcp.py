"""Importing a stock DCP checkpoint (FileSystemWriter) into shardwise."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
import torch.distributed.checkpoint as dcp

import shardwise
from shardwise.dcp import Reader

from dist_util import run_ranks, read_manifest


def _stock_state():
    g = torch.Generator().manual_seed(5)
    return {"model": {"w": torch.randn(32, 16, generator=g),
                      "b": torch.randn(16, generator=g).to(torch.bfloat16)},
            "step": 11, "hp": {"lr": 3e-4, "betas": (0.9, 0.95)}}


def _stock_save(rank: int, world: int, path: str) -> None:
    dcp.save(_stock_state(), storage_writer=dcp.FileSystemWriter(path))


def _check(state):
    want = _stock_state()
    assert torch.equal(state["model"]["w"], want["model"]["w"])
    assert torch.equal(state["model"]["b"], want["model"]["b"])
    assert state["step"] == 11 and state["hp"] == want["hp"]


def _empty():
    return {"model": {"w": torch.zeros(32, 16), "b": torch.zeros(16, dtype=torch.bfloat16)},
            "step": 0, "hp": {"lr": 0.0, "betas": None}}


def test_import_function_and_cli(tmp_path):
    src = str(tmp_path / "stock")
    run_ranks(2, _stock_save, src)
    dst = tmp_path / "sw" / "step-000000000011"
    summary = shardwise.import_dcp(src, dst, step=11)
    assert summary["items"] == 5
    state = _empty()
    dcp.load(state, storage_reader=Reader(dst), no_dist=True)
    _check(state)
    manifest = read_manifest(dst)
    assert manifest["step"] == 11
    assert all(it["kind"] in ("tensor", "bytes") for it in manifest["items"])
    # The console command does the same.
    dst2 = tmp_path / "sw" / "step-000000000012"
    r = subprocess.run([sys.executable, "-m", "shardwise.cli", "import-dcp", src, str(dst2),
                        "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    state = _empty()
    dcp.load(state, storage_reader=Reader(dst2), no_dist=True)
    _check(state)
    bad = subprocess.run([sys.executable, "-m", "shardwise.cli", "import-dcp",
                          str(tmp_path / "nope"), str(tmp_path / "x" / "y")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not a DCP checkpoint" in bad.stderr  # unreadable: 2
    # Into an existing DST: one line naming it and the flag, not a traceback.
    again = subprocess.run([sys.executable, "-m", "shardwise.cli", "import-dcp", src, str(dst2)],
                           capture_output=True, text=True)
    assert again.returncode == 2, again.stderr
    assert again.stderr.strip() == (f"shardwise import-dcp: {dst2} exists (pass --replace to "
                                    "replace it)"), again.stderr
    # A root given as DST is never replaced, --replace or not: refused before
    # anything is read, and the root's checkpoints stay.
    root = tmp_path / "sw"
    before = sorted(os.listdir(root))
    for extra in ([], ["--replace"]):
        r = subprocess.run([sys.executable, "-m", "shardwise.cli", "import-dcp", src, str(root)]
                           + extra, capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        assert "is not a checkpoint" in r.stderr and "checkpoint root" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert sorted(os.listdir(root)) == before
    assert os.path.isdir(tmp_path / "sw")
