"""Per-rank metadata at load (issue 14, part 3): DCP's Metadata resolves each
entry from the format-2 index when asked, so a load reads the metadata of
the items it loads; format-1 checkpoints (and the "dcp" block of older
releases) still load and verify."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

import shardwise
from shardwise.dcp import Reader, Writer

from dist_util import read_manifest, reseal

N = 3000  # items: enough that the index spans many blocks


def _state(n: int = N) -> dict[str, torch.Tensor]:
    return {f"layers.{i}.w": torch.arange(16, dtype=torch.float32) + i for i in range(n)}


def _save(path: str, **engine_options) -> None:
    dcp.save(_state(), storage_writer=Writer(path, step=5, **engine_options), no_dist=True)


def test_a_load_reads_only_the_metadata_of_its_items(tmp_path):
    path = str(tmp_path / "step-000000000005")
    _save(path)
    index_bytes = os.path.getsize(os.path.join(path, "index.swi"))
    assert index_bytes > 32 * 4096
    # Opening reads the fixed part: manifest.json and the index's items table.
    reader = Reader(path)
    opened = reader._open().metadata_bytes_read()
    # Three items out of 3000: a few blocks each, not the chunk records of all.
    want = ["layers.7.w", "layers.1500.w", "layers.2999.w"]
    state = {k: torch.zeros(16) for k in want}
    dcp.load(state, storage_reader=reader, no_dist=True)
    for k in want:
        assert torch.equal(state[k], _state()[k])
    per_item = (reader._core.metadata_bytes_read() - opened) / len(want)
    assert per_item <= 4 * 4096, per_item
    whole = shardwise._core.Reader(path, {})
    whole.manifest_json()  # what a reader that needs everything reads
    assert whole.metadata_bytes_read() > opened + index_bytes / 2

    # keys(), len() and membership come from the items table: no records.
    md = Reader(path).read_metadata()
    sdm = md.state_dict_metadata
    core = sdm._reader
    before = core.metadata_bytes_read()
    assert len(sdm) == N and "layers.42.w" in sdm and "nope" not in sdm
    assert list(sdm)[:2] == ["layers.0.w", "layers.1.w"]
    assert core.metadata_bytes_read() == before
    entry = sdm["layers.42.w"]
    assert isinstance(entry, TensorStorageMetadata) and list(entry.size) == [16]
    assert core.metadata_bytes_read() - before <= 8 * 4096
    with pytest.raises(KeyError):
        sdm["nope"]


@pytest.mark.parametrize("version", [1, 2])
def test_a_read_finds_its_chunk_by_where_it_starts(tmp_path, version):
    path = str(tmp_path / "step-000000000005")
    _save(path, format_version=version)
    core = shardwise._core.Reader(path, {})
    out = torch.zeros(16)
    core.read([shardwise._core.ReadRequest("layers.7.w", 0, address=out.data_ptr(), nbytes=64,
                                           chunk_at=[0])])
    assert torch.equal(out, _state()["layers.7.w"])
    # A start where no chunk starts, or outside the shape: the checkpoint
    # lacks what the plan asked for, named with the directory.
    for at in ([5], [100], [0, 0]):
        with pytest.raises(shardwise.CorruptCheckpointError) as e:
            core.read([shardwise._core.ReadRequest("layers.7.w", 0, address=out.data_ptr(),
                                                   nbytes=64, chunk_at=at)])
        assert f"{path}: the checkpoint has no chunk of item 'layers.7.w' at offsets" in str(e.value)


def test_expected_parts_are_looked_up_together(tmp_path):
    path = str(tmp_path / "step-000000000005")
    _save(path)
    core = shardwise._core.Reader(path, {})
    found = core.item_parts([("layers.3.w", [4], [2]), ("nope", [0], [1]),
                             ("layers.3.w", [20], [1]), ("layers.3.w", [0, 0], [1, 1])])
    assert found[0]["name"] == "layers.3.w" and found[0]["chunks"] == [([0], [16])]
    assert found[1:] == [None, None, None]  # absent item, box outside, box of another rank
    # expect(): a part that fits is resolved now; one whose box does not fit
    # the saved shape (a state dict of another shape) resolves whole when
    # asked, so that DCP words the mismatch.
    sdm = Reader(path).read_metadata().state_dict_metadata
    sdm.expect({"layers.3.w": [([4], [2])], "layers.4.w": [([0], [2]), ([30], [4])]})
    assert "layers.3.w" in sdm._resolved and "layers.4.w" not in sdm._resolved
    assert [list(c.offsets) for c in sdm["layers.4.w"].chunks] == [[0]]


def test_allow_partial_load_and_missing_keys(tmp_path):
    path = str(tmp_path / "step-000000000005")
    _save(path)
    state = {"layers.3.w": torch.zeros(16), "not.saved": torch.zeros(2)}
    with pytest.raises(CheckpointException) as refused:
        dcp.load(state, storage_reader=Reader(path), no_dist=True)
    why = "".join(traceback.format_exception(refused.value)) + repr(
        getattr(refused.value, "failures", ""))
    assert "Missing key in checkpoint state_dict: not.saved" in why, why
    dcp.load(state, storage_reader=Reader(path), no_dist=True,
             planner=DefaultLoadPlanner(allow_partial_load=True))
    assert torch.equal(state["layers.3.w"], _state()["layers.3.w"])
    assert torch.equal(state["not.saved"], torch.zeros(2))



def _legacy_dcp_block(manifest: dict) -> dict:
    """The "dcp" block as releases before format 2 wrote it: every entry
    listed, with dtype, size and chunks."""
    sdm = {}
    for it in manifest["items"]:
        if it["kind"] == "bytes":
            sdm[it["name"]] = {"type": "bytes"}
        else:
            sdm[it["name"]] = {"type": "tensor", "dtype": it["dtype"], "requires_grad": False,
                               "size": it["shape"],
                               "chunks": [[c["offsets"], c["sizes"]] for c in it["chunks"]]}
    old = dict(manifest["dcp"])
    old.pop("requires_grad", None)
    old.update({"format": 1, "state_dict_metadata": sdm})
    return old


def test_format_1_checkpoints_still_load_inspect_and_verify(tmp_path):
    path = str(tmp_path / "step-000000000005")
    _save(path, format_version=1)
    assert not os.path.exists(os.path.join(path, "index.swi"))
    mpath = os.path.join(path, "manifest.json")
    text = open(mpath).read()
    assert json.loads(text)["format_version"] == 1 and '"files":[' in text
    state = {"layers.11.w": torch.zeros(16)}
    dcp.load(state, storage_reader=Reader(path), no_dist=True)
    assert torch.equal(state["layers.11.w"], _state()["layers.11.w"])

    # A manifest as an older release wrote it (format 1 with the old "dcp"
    # block), resealed with its self-checksum: it loads the same way.
    m = read_manifest(path)
    m["dcp"] = _legacy_dcp_block(m)
    reseal(path, m)
    state = {"layers.2000.w": torch.zeros(16)}
    dcp.load(state, storage_reader=Reader(path), no_dist=True)
    assert torch.equal(state["layers.2000.w"], _state()["layers.2000.w"])

    # inspect and verify, on this format-1 checkpoint and a format-2 one.
    path2 = str(tmp_path / "step-000000000006")
    dcp.save(_state(10), storage_writer=Writer(path2, step=6), no_dist=True)
    for p, version in ((path, 1), (path2, 2)):
        out = subprocess.run([sys.executable, "-m", "shardwise.cli", "inspect", p, "--json"],
                             capture_output=True, text=True, check=True).stdout
        info = json.loads(out)
        assert info["format_version"] == version
        assert len(info["items"]) == (N if version == 1 else 10)
        rc = subprocess.run([sys.executable, "-m", "shardwise.cli", "verify", p],
                            capture_output=True).returncode
        assert rc == 0, p



def test_a_tensor_the_chunks_fill_in_part_is_refused_before_reading(tmp_path):
    # A manifest whose tensor is larger than its one chunk: DCP plans a read
    # of the chunk and would leave the rest of the tensor as it was.
    path = str(tmp_path / "step-000000000005")
    dcp.save({"w": torch.arange(16, dtype=torch.float32), "b": torch.ones(4)},
             storage_writer=Writer(path, step=5, format_version=1), no_dist=True)
    m = read_manifest(path)
    next(it for it in m["items"] if it["name"] == "w")["shape"] = [32]
    reseal(path, m)
    state = {"w": torch.full((32,), -1.0), "b": torch.zeros(4)}
    with pytest.raises(CheckpointException) as refused:  # DCP wraps what read_data raised
        dcp.load(state, storage_reader=Reader(path), no_dist=True)
    assert "CorruptCheckpointError" in str(refused.value)
    assert "item 'w': its saved chunks hold 16 of the 32 elements" in str(refused.value)
    assert (state["w"] == -1).all() and (state["b"] == 0).all()  # nothing was read
    # A tensor no saved chunk reaches: DCP plans no read for it at all.
    w = next(it for it in m["items"] if it["name"] == "w")
    w["chunks"][0].update(sizes=[0], length=0, crc32c=[])
    reseal(path, m)
    with pytest.raises(CheckpointException) as refused:
        dcp.load(state, storage_reader=Reader(path), no_dist=True)
    assert "item 'w': its saved chunks hold 0 of the 32 elements" in str(refused.value)
    # What the chunks do hold still loads.
    state = {"b": torch.zeros(4)}
    dcp.load(state, storage_reader=Reader(path), no_dist=True)
    assert torch.equal(state["b"], torch.ones(4))


def test_import_dcp_writes_format_2(tmp_path):
    src = str(tmp_path / "stock")
    dcp.save(_state(50), storage_writer=dcp.FileSystemWriter(src), no_dist=True)
    dst = tmp_path / "sw" / "step-000000000001"
    shardwise.import_dcp(src, dst, step=1)
    assert json.load(open(dst / "manifest.json"))["format_version"] == 2
    assert (dst / "index.swi").exists()
    state = {"layers.49.w": torch.zeros(16)}
    dcp.load(state, storage_reader=Reader(dst), no_dist=True)
    assert torch.equal(state["layers.49.w"], _state()["layers.49.w"])
