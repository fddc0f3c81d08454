"""DCP parity (issue 15, part 3), case by case as DCP's own suite covers
them, each beside what stock DCP does in the same situation: BytesIO
values, overwrite refused at planning time, storage_meta and the save/load
ids, FileSystemWriter's keywords, and shardwise.dcp.save/async_save/load."""
from __future__ import annotations

import io
import os
import re

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

import shardwise
from shardwise import dcp as sdcp
from shardwise.dcp import Reader, Writer

RAW = b"\x00raw bytes \xff" * 300


def _failure(e: BaseException) -> BaseException:
    """The rank's own exception inside DCP's CheckpointException."""
    assert isinstance(e, CheckpointException), e
    f = next(iter(e.failures.values()))
    return f[0] if isinstance(f, tuple) else f


def test_bytesio_values_round_trip_like_stock(tmp_path):
    state = {"blob": io.BytesIO(RAW), "x": torch.arange(3.0)}
    ours, stock = str(tmp_path / "r" / "step-1"), str(tmp_path / "stock")
    sdcp.save(state, checkpoint_id=ours, no_dist=True)
    dcp.save(state, checkpoint_id=stock, no_dist=True)
    # The raw bytes are in the shard as they are (no base64, no pickle).
    shard = open(os.path.join(ours, "rank-00000.shard"), "rb").read()
    assert RAW in shard
    back_ours = {"blob": io.BytesIO(), "x": torch.zeros(3)}
    back_stock = {"blob": io.BytesIO(), "x": torch.zeros(3)}
    sdcp.load(back_ours, checkpoint_id=ours, no_dist=True)
    dcp.load(back_stock, checkpoint_id=stock, no_dist=True)
    assert type(back_ours["blob"]) is type(back_stock["blob"]) is io.BytesIO
    assert back_ours["blob"].getvalue() == back_stock["blob"].getvalue() == RAW
    assert torch.equal(back_ours["x"], torch.arange(3.0))
    # Nested inside a value too.
    nested = {"meta": {"tokenizer": io.BytesIO(b"abc"), "n": 3}}
    p2 = str(tmp_path / "r" / "step-2")
    sdcp.save(nested, checkpoint_id=p2, no_dist=True)
    back = {"meta": {"tokenizer": io.BytesIO(), "n": 0}}
    sdcp.load(back, checkpoint_id=p2, no_dist=True)
    assert back["meta"]["tokenizer"].getvalue() == b"abc" and back["meta"]["n"] == 3


def test_overwrite_false_is_refused_at_planning_time(tmp_path):
    path = str(tmp_path / "r" / "step-1")
    sdcp.save({"x": torch.ones(4)}, checkpoint_id=path, no_dist=True)

    class Watched(Writer):
        wrote = False

        def write_data(self, plan, planner):  # type: ignore[no-untyped-def]
            Watched.wrote = True
            return super().write_data(plan, planner)

    with pytest.raises(CheckpointException) as e:
        dcp.save({"x": torch.zeros(4)}, storage_writer=Watched(path), no_dist=True)
    err = _failure(e.value)
    assert isinstance(err, FileExistsError) and err.filename == path
    assert "Checkpoint already exists" in str(err)  # DCP's words
    assert "overwrite=True" in str(err)  # and how to replace
    assert not Watched.wrote  # refused before any rank wrote
    assert not [n for n in os.listdir(tmp_path / "r") if ".staging-" in n]  # nothing staged
    # Stock refuses at the same stage, with the same words.
    stock = str(tmp_path / "stock")
    dcp.save({"x": torch.ones(4)}, storage_writer=dcp.FileSystemWriter(stock), no_dist=True)
    with pytest.raises(CheckpointException) as s:
        dcp.save({"x": torch.ones(4)}, no_dist=True,
                 storage_writer=dcp.FileSystemWriter(stock, overwrite=False))
    assert "Checkpoint already exists" in str(_failure(s.value))
    # overwrite=True replaces, atomically.
    sdcp.save({"x": torch.zeros(4)}, storage_writer=Writer(path, overwrite=True), no_dist=True)
    back = {"x": torch.ones(4)}
    sdcp.load(back, checkpoint_id=path, no_dist=True)
    assert torch.equal(back["x"], torch.zeros(4))


def test_storage_meta_and_ids(tmp_path):
    path = str(tmp_path / "r" / "step-1")
    w = Writer(path)
    meta = w.storage_meta()
    assert meta.checkpoint_id == path and re.fullmatch(r"[0-9a-f]{32}", meta.save_id)
    first = w.save_id
    w.reset(path)
    assert w.save_id != first  # a new id per save, as FileSystemWriter draws them
    dcp.save({"x": torch.ones(2)}, storage_writer=w, no_dist=True)
    r = Reader(path)
    md = r.read_metadata()
    assert md.storage_meta.save_id == w.save_id
    assert md.storage_meta.checkpoint_id == path
    assert re.fullmatch(r"[0-9a-f]{32}", r.load_id) and md.storage_meta.load_id == r.load_id
    before = r.load_id
    r.reset(path)
    assert r.load_id != before
    stock_r = dcp.FileSystemReader(str(tmp_path))
    stock_w = dcp.FileSystemWriter(str(tmp_path / "s"))
    assert hasattr(stock_r, "load_id") and stock_w.storage_meta().save_id  # the same surface


def test_filesystemwriter_keywords(tmp_path):
    path = str(tmp_path / "r" / "step-1")
    w = Writer(path, overwrite=True, thread_count=2, sync_files=True,
               single_file_per_rank=True, per_thread_copy_ahead=10_000_000)
    assert w.replace and w.options["threads"] == 2
    sdcp.save({"x": torch.ones(8)}, storage_writer=w, no_dist=True)
    sdcp.save({"x": torch.ones(8)}, storage_writer=w, no_dist=True)  # overwrite=True
    with pytest.raises(ValueError, match="durable"):
        Writer(path, sync_files=False)
    with pytest.raises(ValueError, match="thread_count"):
        Writer(path, thread_count=0)
    with pytest.raises(ValueError, match="disagree"):
        Writer(path, replace=True, overwrite=False)


def test_save_async_save_and_load_helpers(tmp_path):
    root = tmp_path / "r"
    state = {"w": torch.arange(10.0), "step": 5}
    sdcp.save(state, checkpoint_id=str(root / "step-1"), no_dist=True)
    assert os.path.exists(root / "step-1" / "manifest.json")
    assert not os.path.exists(root / "step-1" / ".metadata")  # not FileSystemWriter's
    fut = sdcp.async_save(state, checkpoint_id=str(root / "step-2"), no_dist=True)
    fut.result()
    for name in ("step-1", "step-2"):
        back = {"w": torch.zeros(10), "step": 0}
        sdcp.load(back, checkpoint_id=str(root / name), no_dist=True)
        assert torch.equal(back["w"], state["w"]) and back["step"] == 5
    assert shardwise._core.Reader(str(root / "step-2"), {}).verify().problems == []
    with pytest.raises(ValueError, match="checkpoint_id"):
        sdcp.save(state, no_dist=True)
    with pytest.raises(ValueError, match="checkpoint_id"):
        sdcp.load(state, no_dist=True)
