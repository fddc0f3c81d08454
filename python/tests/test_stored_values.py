"""Non-tensor values and hostile metadata through the DCP reader, in one
process: what is stored comes back as it was, what cannot be stored is
refused naming the key, and a damaged checkpoint is a CorruptCheckpointError
naming the file (never another error, never data made up)."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

import shardwise
from shardwise import _core
from shardwise import dcp as swdcp
from shardwise.dcp import Reader, Writer


def _hand_written(root: Path, items: list[tuple[str, str, str, list[int], bytes]],
                  dcp_json: str | None = None) -> Path:
    """A committed checkpoint written through the C++ API: each item one
    chunk at offset 0 of `data`'s length, whatever its declared shape."""
    repo = _core.Repository(str(root), {}, True)
    kw = {} if dcp_json is None else {"dcp_json": dcp_json}
    spec = _core.SaveSpec(name="step-000000000001", step=1, save_id="h1", **kw)
    keep, writes = [], []
    for name, kind, dtype, shape, data in items:
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        keep.append(buf)
        size = len(data) // torch.empty(0, dtype=getattr(torch, dtype)).element_size()
        writes.append(_core.WriteItem(name, kind, dtype, shape, [0] * len(shape),
                                      [size] + shape[1:], buf.data_ptr(), len(data)))
    repo.write_rank(spec, writes)
    repo.commit(spec)
    return root / "step-000000000001"


def _load_error(state: dict, ck: Path) -> BaseException:
    """What shardwise.dcp.load raised, from inside DCP's CheckpointException."""
    with pytest.raises(BaseException) as e:
        swdcp.load(state, checkpoint_id=ck, no_dist=True)
    if isinstance(e.value, CheckpointException):
        return next(iter(e.value.failures.values()))[0]  # (exception, its traceback)
    return e.value


def test_sets_frozensets_and_numpy_scalars_round_trip(tmp_path):
    # (DCP flattens nested dicts into keys of their own; a tuple it stores whole.)
    value = (frozenset({1, 2}), {frozenset({3}), (4, 5)}, {frozenset({"a"}): 1, (1, 2): 2},
             np.int64(7))
    ck = shardwise.Checkpointer(tmp_path)
    ck.save(1, {"v": value, "fs": frozenset({"x"}), "w": torch.ones(2)}, blocking=True)
    back = {"v": None, "fs": None, "w": torch.zeros(2)}
    assert ck.load(back) == 1
    assert back["v"] == (frozenset({1, 2}), {frozenset({3}), (4, 5)},
                         {frozenset({"a"}): 1, (1, 2): 2}, 7)
    assert type(back["v"][0]) is frozenset and type(back["fs"]) is frozenset


@pytest.mark.parametrize("array", [np.array([5]), np.zeros((2, 3)), np.array(5)])
def test_a_numpy_array_is_refused_naming_its_key(tmp_path, array):
    """An array's item() would store one element (or fail): never stored."""
    ck = shardwise.Checkpointer(tmp_path)
    with pytest.raises(TypeError, match=r"'rng'.*ndarray"):
        ck.save(1, {"rng": ("MT19937", array), "w": torch.ones(2)}, blocking=True)


def test_a_value_nested_too_deeply_is_refused_naming_its_key(tmp_path):
    deep: tuple = ()
    for _ in range(100_000):
        deep = (deep,)  # (DCP's own flattening recurses into lists, not tuples)
    with pytest.raises(TypeError, match="'deep'.*nested too deeply"):
        shardwise.Checkpointer(tmp_path).save(1, {"deep": deep, "w": torch.ones(2)},
                                              blocking=True)


def test_a_hostile_deeply_nested_value_is_corrupt_not_a_crash(tmp_path):
    data = b"SWJSON1\n" + b"[" * 200_000 + b"]" * 200_000
    ck = _hand_written(tmp_path / "r", [("v", "bytes", "uint8", [len(data)], data)])
    e = _load_error({"v": None}, ck)
    assert isinstance(e, shardwise.CorruptCheckpointError)
    assert "'v': malformed stored value" in str(e) and e.path == str(ck)


@pytest.mark.parametrize("shape", [[1 << 50], [64]])
def test_a_stored_value_not_held_by_its_one_chunk_is_corrupt(tmp_path, shape):
    """The index declares a value's size; one chunk must hold all of it
    (else the reader would allocate what the index says, or read a part)."""
    data = b"SWJSON1\n1234"
    ck = _hand_written(tmp_path / "r", [("v", "bytes", "uint8", shape, data)])
    e = _load_error({"v": None}, ck)
    assert isinstance(e, shardwise.CorruptCheckpointError)
    assert f"'v' is a stored value of {shape[0]} bytes" in str(e) and e.path == str(ck)


def test_malformed_dcp_metadata_is_corrupt_naming_the_manifest(tmp_path):
    w = torch.arange(4, dtype=torch.float32)
    ck = _hand_written(tmp_path / "r", [("w", "tensor", "float32", [4], w.numpy().tobytes())],
                       dcp_json=json.dumps({"format": 2, "planner_data": {"__sw__": "nope"}}))
    with pytest.raises(shardwise.CorruptCheckpointError, match="manifest.json: its DCP metadata"):
        swdcp.load({"w": torch.zeros(4)}, checkpoint_id=ck, no_dist=True)
    # torch's own dcp.load keeps only the message (documented).
    with pytest.raises(CheckpointException, match="manifest.json: its DCP metadata"):
        dcp.load({"w": torch.zeros(4)}, storage_reader=Reader(ck), no_dist=True)


def test_keys_load_of_a_checkpoint_written_without_dcp(tmp_path):
    """_load_state_dict_from_keys(keys=...) asks planner_data about every
    key; a C++-written checkpoint has no DCP block."""
    a, b = torch.arange(4, dtype=torch.float32), torch.ones(3, dtype=torch.float32)
    ck = _hand_written(tmp_path / "r", [("a", "tensor", "float32", [4], a.numpy().tobytes()),
                                        ("b", "tensor", "float32", [3], b.numpy().tobytes())])
    got = _load_state_dict_from_keys(keys={"b"}, storage_reader=Reader(ck))
    assert list(got) == ["b"] and torch.equal(got["b"], b)
    got = _load_state_dict_from_keys(storage_reader=Reader(ck))
    assert sorted(got) == ["a", "b"] and torch.equal(got["a"], a)


def test_a_writer_that_committed_still_pickles(tmp_path):
    """PROCESS-mode async_save pickles the Writer; a blocking save through
    the same Writer before it must not make that fail."""
    w = Writer(tmp_path / "a")
    dcp.save({"x": torch.ones(3)}, storage_writer=w, no_dist=True)
    assert w.last_commit is not None
    again = pickle.loads(pickle.dumps(w))
    assert again.last_commit is None and again.path == w.path


def test_reads_that_need_a_copy_are_held_a_batch_at_a_time(tmp_path, monkeypatch):
    """Targets of another dtype than the saved one are read into host memory
    then copied; with batches of one tensor, every value still lands."""
    monkeypatch.setattr(swdcp, "_READ_BATCH_BYTES", 1)
    sd = {f"t{i}": torch.randn(64, 8) for i in range(5)}
    sd["direct"] = torch.randn(16)
    sd["step"] = 3
    dcp.save(sd, storage_writer=Writer(tmp_path / "c"), no_dist=True)
    back = {f"t{i}": torch.zeros(64, 8, dtype=torch.float64) for i in range(5)}
    back["direct"] = torch.zeros(16)
    back["step"] = 0
    seen = []
    dcp.load(back, storage_reader=Reader(tmp_path / "c", progress=lambda d, t: seen.append(d)),
             no_dist=True)
    for i in range(5):
        assert torch.equal(back[f"t{i}"], sd[f"t{i}"].double())
    assert torch.equal(back["direct"], sd["direct"]) and back["step"] == 3
    assert len(seen) >= 6 and seen[-1] == 5 * 64 * 8 * 4 + 16 * 4


def test_replace_never_removes_what_is_not_a_checkpoint(tmp_path):
    """replace=True swaps a checkpoint for the new one; a checkpoint root,
    a file or a link given as the checkpoint's path stays as it is."""
    root = tmp_path / "root"
    dcp.save({"w": torch.ones(2)}, storage_writer=Writer(root / "step-000000000001"), no_dist=True)
    (tmp_path / "file").write_text("keep")
    (tmp_path / "link").symlink_to(root)
    for target in (root, tmp_path / "file", tmp_path / "link"):
        with pytest.raises(BaseException) as e:
            dcp.save({"w": torch.zeros(2)}, storage_writer=Writer(target, replace=True),
                     no_dist=True)
        assert "is not a checkpoint" in str(e.value), e.value
    assert (root / "step-000000000001" / "manifest.json").is_file()
    assert (tmp_path / "file").read_text() == "keep" and (tmp_path / "link").is_symlink()
    # An empty directory, a checkpoint and a stock DCP checkpoint are replaced.
    (tmp_path / "empty").mkdir()
    stock = tmp_path / "stock"
    dcp.save({"w": torch.ones(2)}, storage_writer=dcp.FileSystemWriter(stock), no_dist=True)
    for target in (tmp_path / "empty", root / "step-000000000001", stock):
        dcp.save({"w": torch.full((2,), 3.0)}, storage_writer=Writer(target, replace=True),
                 no_dist=True)
        back = {"w": torch.zeros(2)}
        dcp.load(back, storage_reader=Reader(target), no_dist=True)
        assert torch.equal(back["w"], torch.full((2,), 3.0))
