"""shardwise.dcp with real multi-process torch.distributed (gloo)."""
from __future__ import annotations

import json
import os
import pickle
import time

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

import shardwise
from shardwise.dcp import Reader, Writer

from dist_util import flip_item_byte, read_manifest, run_ranks, start_ranks


def make_model(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Embedding(64, 32),
        nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True),
        nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True),
        nn.Linear(32, 64),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 64, (4, 8))
    for _ in range(2):  # create AdamW state
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    return model, opt


def flat(sd: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in sd.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        elif isinstance(v, (list, tuple)) and v and isinstance(v[0], dict):
            for i, x in enumerate(v):
                out.update(flat(x, f"{key}.{i}."))
        else:
            out[key] = v
    return out


def assert_same(a: dict, b: dict) -> None:
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        x, y = fa[k], fb[k]
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and torch.equal(x, y), k
        else:
            assert x == y, (k, x, y)


# -- round trip: model + AdamW of a small transformer, 4 ranks -----------------------
def _round_trip(rank: int, world: int, path: str) -> None:
    model, opt = make_model(0)
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd, "extra": {"step": 42, "note": "hi"}}
    dcp.save(state, storage_writer=Writer(path, step=42))
    model2, opt2 = make_model(1)  # different weights and optimizer state
    msd2, osd2 = get_state_dict(model2, opt2)
    state2 = {"model": msd2, "optim": osd2, "extra": {"step": 0, "note": ""}}
    dcp.load(state2, storage_reader=Reader(path))
    set_state_dict(model2, opt2, model_state_dict=state2["model"], optim_state_dict=state2["optim"])
    m3, o3 = get_state_dict(model2, opt2)
    assert_same({"model": msd, "optim": osd}, {"model": m3, "optim": o3})
    assert state2["extra"] == {"step": 42, "note": "hi"}


def test_round_trip_transformer_adamw_4_ranks(tmp_path):
    path = str(tmp_path / "ckpt" / "step-000000000042")
    run_ranks(4, _round_trip, path)
    manifest = read_manifest(path)
    assert manifest["world_size"] == 4 and manifest["step"] == 42
    # Replicated tensors are written once, spread across ranks by size.
    sizes = [f["size"] for f in manifest["files"]]
    one_copy = sum(c["length"] for it in manifest["items"] for c in it["chunks"])
    assert sum(sizes) < 2 * one_copy + 4 * 64 * 1024
    assert sum(1 for s in sizes if s > 8192) >= 2, sizes
    for it in manifest["items"]:
        assert len(it["chunks"]) == 1, it["name"]
    assert shardwise._core.Reader(path, {}).verify().problems == []


def _replicated_only(rank: int, world: int, path: str) -> None:
    state = {"w": torch.arange(4096, dtype=torch.float32)}  # the same on every rank
    w = Writer(path, step=3)
    dcp.save(state, storage_writer=w)
    if rank == 0:  # the coordinator committed from the gathered indexes
        assert w.last_commit is not None and w.last_commit.name == "step-000000000003"
    back = {"w": torch.zeros(4096)}
    dcp.load(back, storage_reader=Reader(path))
    assert torch.equal(back["w"], state["w"])


def test_gathered_commit_with_a_rank_that_saves_nothing(tmp_path):
    """DCP writes a replicated tensor once: the other rank has nothing to
    save, writes no shard and sends no index; the coordinator commits from
    what DCP gathered (there are no fragment files to wait for)."""
    path = str(tmp_path / "ckpt" / "step-000000000003")
    run_ranks(2, _replicated_only, path)
    manifest = read_manifest(path)
    assert manifest["world_size"] == 2
    assert len(manifest["files"]) == 1, manifest["files"]
    assert sorted(os.listdir(path)) == ["index.swi", "manifest.json", manifest["files"][0]["name"]]
    assert shardwise._core.Reader(path, {}).verify().problems == []


# -- DTensor resharding N -> M ------------------------------------------------------------
def _full(seed: int, shape: tuple) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def _dtensor_state(world: int):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    return {
        "w_rows": distribute_tensor(_full(1, (12, 6)), mesh, [Shard(0)]),
        "w_cols": distribute_tensor(_full(2, (5, 16)), mesh, [Shard(1)]),
        "bias": distribute_tensor(_full(3, (7,)), mesh, [Replicate()]),
        "plain": _full(4, (3, 3)),
    }


def _save_dtensors(rank: int, world: int, path: str) -> None:
    dcp.save(_dtensor_state(world), storage_writer=Writer(path))


def _overlaps(a: tuple, b: tuple) -> bool:
    (ao, az), (bo, bz) = a, b
    return all(x < y + w and y < x + v for x, v, y, w in zip(ao, az, bo, bz))


def _load_dtensors(rank: int, world: int, path: str) -> None:
    want = {"w_rows": _full(1, (12, 6)), "w_cols": _full(2, (5, 16)), "bias": _full(3, (7,)),
            "plain": _full(4, (3, 3))}
    saved = {k: [tuple(map(list, c)) for c in Reader(path)._open().item(k)["chunks"]]
             for k in want}
    # torch's dcp.load with its default planner, then shardwise.dcp.load
    # (shardwise's LoadPlanner): the same values; the latter resolves each
    # sharded entry to the saved chunks that overlap this rank's part only.
    for load in ("torch", "shardwise"):
        state = _dtensor_state(world)
        for v in state.values():
            (v.to_local() if hasattr(v, "to_local") else v).zero_()
        planner = shardwise.dcp.LoadPlanner() if load == "shardwise" else None
        reader = Reader(path)
        if planner is None:
            dcp.load(state, storage_reader=reader)
        else:
            shardwise.dcp.load(state, storage_reader=reader, planner=planner)
        for k, v in state.items():
            full = v.full_tensor() if hasattr(v, "full_tensor") else v
            assert torch.equal(full, want[k]), (load, k)
        if planner is None:
            continue
        for k in ("w_rows", "w_cols"):
            from torch.distributed.checkpoint.planner_helpers import _create_chunk_list
            mine = [(list(c.offsets), list(c.sizes)) for c in _create_chunk_list(state[k])]
            entry = planner.metadata.state_dict_metadata[k]
            got = sorted((list(c.offsets), list(c.sizes)) for c in entry.chunks)
            expect = sorted(c for c in saved[k] if any(_overlaps(c, m) for m in mine))
            assert got == expect and len(got) < len(saved[k]), (k, got, saved[k])
            # Pickled (DCP's process-based paths), the entries are whole.
            whole = pickle.loads(pickle.dumps(planner.metadata.state_dict_metadata))[k]
            assert sorted((list(c.offsets), list(c.sizes)) for c in whole.chunks) == \
                sorted(saved[k])


def _sharded_tensor(rank: int, world: int, path: str, fill: bool):
    import warnings

    from torch.distributed._shard import sharded_tensor
    from torch.distributed._shard.sharding_spec import ChunkShardingSpec

    with warnings.catch_warnings():  # ShardedTensor is deprecated; still supported by DCP
        warnings.simplefilter("ignore")
        spec = ChunkShardingSpec(dim=0, placements=[f"rank:{r}/cpu" for r in range(world)])
        st = sharded_tensor.zeros(spec, 8, 4)
    if fill:
        for shard in st.local_shards():
            rows = shard.metadata.shard_offsets[0]
            shard.tensor.copy_(_full(9, (8, 4))[rows:rows + shard.tensor.shape[0]])
    return {"st": st}


def _sharded_tensor_round_trip(rank: int, world: int, path: str) -> None:
    dcp.save(_sharded_tensor(rank, world, path, fill=True), storage_writer=Writer(path))
    state = _sharded_tensor(rank, world, path, fill=False)
    planner = shardwise.dcp.LoadPlanner()
    shardwise.dcp.load(state, storage_reader=Reader(path), planner=planner)
    for shard in state["st"].local_shards():
        rows = shard.metadata.shard_offsets[0]
        assert torch.equal(shard.tensor, _full(9, (8, 4))[rows:rows + shard.tensor.shape[0]])
    # Each rank's entry holds its own chunk of the `world` saved.
    got = planner.metadata.state_dict_metadata["st"].chunks
    assert [list(c.offsets) for c in got] == [[rank * 8 // world, 0]], got


def test_sharded_tensor_entries_are_narrowed(tmp_path):
    run_ranks(2, _sharded_tensor_round_trip, str(tmp_path / "root" / "step-000000000001"))


@pytest.mark.parametrize("n,m", [(4, 2), (2, 4)])
def test_reshard_dtensor(tmp_path, n, m):
    path = str(tmp_path / "root" / "step-000000000001")
    run_ranks(n, _save_dtensors, path)
    run_ranks(m, _load_dtensors, path)
    manifest = read_manifest(path)
    rows = next(it for it in manifest["items"] if it["name"] == "w_rows")
    assert len(rows["chunks"]) == n


def _staged_dtensors(rank: int, world: int) -> None:
    """Staging builds each DTensor from the original's spec (no from_local):
    the staged one must be what from_local would have made, over the
    staged bytes, for even and uneven shards and a replicated tensor."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    from shardwise import _staging

    state = _dtensor_state(world)
    mesh = init_device_mesh("cpu", (world,))
    state["uneven"] = distribute_tensor(_full(5, (7, 3)), mesh, [Shard(0)])  # 4 + 3 rows
    snap = _staging.stage(state)
    try:
        for k, v in state.items():
            got = snap.state_dict[k]
            if not isinstance(v, DTensor):
                continue
            want = DTensor.from_local(got.to_local(), v.device_mesh, v.placements,
                                      run_check=False, shape=v.shape, stride=v.stride())
            assert got._spec == want._spec, k
            assert got.to_local().data_ptr() != v.to_local().data_ptr(), k  # a copy
            assert torch.equal(got.to_local(), v.to_local()), k
            assert torch.equal(got.full_tensor(), v.full_tensor()), k
    finally:
        snap.release()


def test_staged_dtensors_keep_their_spec(tmp_path):
    run_ranks(2, _staged_dtensors)


# -- async_save in THREAD and PROCESS modes -------------------------------------------------
def _async(rank: int, world: int, root: str, mode: str) -> None:
    from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType

    kind = AsyncCheckpointerType.PROCESS if mode == "process" else AsyncCheckpointerType.THREAD
    writer = Writer(None)
    # Plain tensors are replicated in DCP: the same on every rank.
    state = {"t": torch.full((256, 64), 1.0), "r": _full(7, (33,))}
    for step in (1, 2):
        path = os.path.join(root, f"step-{step:012d}")
        fut = dcp.async_save(state, storage_writer=writer, checkpoint_id=path,
                             async_checkpointer_type=kind)
        state["t"].add_(100.0)  # training moves on; the staged copy is saved
        fut = getattr(fut, "upload_completion", fut)
        fut.result(timeout=120)
    back = {"t": torch.zeros(256, 64), "r": torch.zeros(33)}
    dcp.load(back, storage_reader=Reader(os.path.join(root, "step-000000000002")))
    # The save of step 2 holds the values of when it was staged.
    assert torch.equal(back["t"], torch.full((256, 64), 101.0))
    assert torch.equal(back["r"], _full(7, (33,)))


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_async_save_modes(tmp_path, mode):
    run_ranks(2, _async, str(tmp_path / "root"), mode)


def _process_dtensors(rank: int, world: int, root: str, shared: bool) -> None:
    """DTensors staged at an offset into staging memory reach DCP's
    checkpoint process: torch pickles such a DTensor through its wrapper's
    empty storage and crashes (SIGSEGV) unless the stager says otherwise."""
    from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    state = {"a": distribute_tensor(_full(1, (12, 6)), mesh, [Shard(0)]),
             "b": distribute_tensor(_full(2, (8, 10)), mesh, [Shard(1)])}
    path = os.path.join(root, "step-000000000001")
    fut = dcp.async_save(state, storage_writer=Writer(path, shared_memory=shared),
                         async_checkpointer_type=AsyncCheckpointerType.PROCESS)
    fut.result(timeout=120)
    back = {"a": torch.zeros(12, 6), "b": torch.zeros(8, 10)}
    dcp.load(back, storage_reader=Reader(path), no_dist=True)
    assert torch.equal(back["a"], _full(1, (12, 6))) and torch.equal(back["b"], _full(2, (8, 10)))


@pytest.mark.parametrize("shared", [False, True])
def test_process_mode_dtensors(tmp_path, shared):
    run_ranks(2, _process_dtensors, str(tmp_path / "root"), shared)


# -- process mode: torch commits from a child of the job's coordinator -----------------
def _process_mode(rank: int, world: int, root: str) -> None:
    ck = shardwise.Checkpointer(root, async_mode="process", keep_last=2)
    for step in (1, 2, 3):
        ck.save(step, {"x": torch.full((64,), float(step))})
    ck.wait()
    assert ck.steps() == [2, 3]
    back = {"x": torch.zeros(64)}
    assert ck.load(back) == 3 and torch.equal(back["x"], torch.full((64,), 3.0))
    ck.close()


def test_process_mode_shares_the_root_claim_with_its_child(tmp_path):
    """The trainer (rank 0) claims the root at its first save; torch's
    process-mode async_save commits from a child of it: one job, so commits
    and retention work (docs/format.md, "Writers")."""
    run_ranks(2, _process_mode, str(tmp_path / "root"))


# -- a rank killed mid-save leaves the previous checkpoint loadable --------------------
def _save_step(rank: int, world: int, root: str, step: int) -> None:
    # "x{rank}" is this rank's own: every rank writes (a replicated-only rank
    # would have nothing to save).
    state = {f"x{rank}": torch.full((1 << 16,), float(step + rank)), "y": _full(step, (128, 128))}
    dcp.save(state, storage_writer=Writer(os.path.join(root, f"step-{step:012d}")))


def test_rank_killed_mid_save(tmp_path):
    root = str(tmp_path / "root")
    run_ranks(4, _save_step, root, 1)
    procs = start_ranks(4, _save_step, root, 2, env_by_rank={2: {"SHARDWISE_FAULTS": "write@1=kill"}},
                        pg_timeout=20)
    procs[2].join(120)
    assert procs[2].exitcode == -9  # SIGKILL
    time.sleep(0.5)
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(30)
    repo = shardwise._core.Repository(root, {}, False)
    committed = [c.name for c in repo.list() if c.state == "committed"]
    assert committed == ["step-000000000001"]
    assert repo.latest() == "step-000000000001"
    back = {"x3": torch.zeros(1 << 16), "y": torch.zeros(128, 128)}
    dcp.load(back, storage_reader=Reader(os.path.join(root, "step-000000000001")), no_dist=True)
    assert torch.equal(back["y"], _full(1, (128, 128)))
    assert torch.equal(back["x3"], torch.full((1 << 16,), 4.0))
    report = repo.gc(grace_s=0)
    assert len(report.removed_staging) == 1


def _ckpt_cached_plans(rank: int, world: int, root: str) -> None:
    from torch.distributed.checkpoint.planner import SavePlanner

    ck = shardwise.Checkpointer(root)
    state = {f"own{rank}": torch.zeros(1024), "shared": torch.zeros(32, 32)}
    for step in (1, 2, 3):
        for t in state.values():
            t.fill_(float(step))
        ck.save(step, state).wait()
    # The Checkpointer's own planner class planned with caching on.
    keys = [k for k in SavePlanner._cached_save_plan if k.startswith("_ShardwiseCheckpointer")]
    assert len(keys) == 1, list(SavePlanner._cached_save_plan)
    ck.close()  # and forgets those plans
    for cache in (SavePlanner._cached_save_plan, SavePlanner._cached_final_save_plan,
                  SavePlanner._cached_all_plans, SavePlanner._cached_global_plan,
                  SavePlanner._cached_metadata):
        assert keys[0] not in cache
    saved_ids = set()
    for step in (1, 2, 3):
        back = {f"own{rank}": torch.zeros(1024), "shared": torch.zeros(32, 32)}
        reader = Reader(os.path.join(root, f"step-{step:012d}"))
        dcp.load(back, storage_reader=reader)
        assert all(torch.equal(t, torch.full_like(t, float(step))) for t in back.values()), step
        # Each save records its own id in its DCP metadata, cached plans or not.
        saved_ids.add(reader.read_metadata().storage_meta.save_id)
    assert len(saved_ids) == 3 and None not in saved_ids, saved_ids


def test_checkpointer_caches_save_plans(tmp_path):
    """Steady-state saves reuse DCP's cached plans (the second and third
    saves skip re-planning) and still save each step's values."""
    run_ranks(2, _ckpt_cached_plans, str(tmp_path / "root"))


# -- staging that fails on one rank: every rank raises, none waits in the save ------
class _Refuses:
    """A Stateful whose state_dict() raises on the steps it is told to."""

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse

    def state_dict(self):
        if self.refuse:
            raise MemoryError("no memory to stage this rank's state")
        return {"t": torch.ones(16)}

    def load_state_dict(self, sd) -> None:
        pass


def _staging_fails_on_one_rank(rank: int, world: int, root: str, mode: str) -> None:
    from torch.distributed.checkpoint.stateful import Stateful

    Stateful.register(_Refuses)
    ck = shardwise.Checkpointer(root, async_mode=mode)
    other = _Refuses(refuse=False)
    ck.save(1, {"w": torch.full((64,), 1.0), "o": other}).wait()
    other.refuse = rank == 1
    with pytest.raises((MemoryError, RuntimeError)) as e:
        ck.save(2, {"w": torch.full((64,), 2.0), "o": other})
    if rank == 1:
        assert isinstance(e.value, MemoryError)
    else:
        assert "staging of step 2 failed on another rank" in str(e.value)
    other.refuse = False
    ck.save(3, {"w": torch.full((64,), 3.0), "o": other}).wait()
    assert ck.steps() == [1, 3]
    ck.close()


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_staging_that_fails_on_one_rank_fails_the_save_on_every_rank(tmp_path, mode):
    """A rank whose staging fails (memory; a Stateful that raises) raises
    from save(); the others raise too, at once, instead of waiting in the
    save's collectives for it (until the process group's timeout); the next
    save works on every rank."""
    run_ranks(2, _staging_fails_on_one_rank, str(tmp_path / "root"), mode, timeout=120,
              pg_timeout=30)


# -- a corrupted shard: CorruptCheckpointError naming the item; Checkpointer falls back
def _ckpt_two_steps(rank: int, world: int, root: str) -> None:
    ck = shardwise.Checkpointer(root)
    for step in (1, 2):
        ck.save(step, {"w": torch.full((4096,), float(step)), "v": _full(step, (64, 64))})
    ck.close()


def _ckpt_load(rank: int, world: int, root: str) -> None:
    ck = shardwise.Checkpointer(root)
    state = {"w": torch.zeros(4096), "v": torch.zeros(64, 64)}
    assert ck.load(state) == 1
    assert torch.equal(state["w"], torch.full((4096,), 1.0))
    assert torch.equal(state["v"], _full(1, (64, 64)))
    ck.close()


def test_corrupt_shard_falls_back(tmp_path):
    root = str(tmp_path / "root")
    run_ranks(2, _ckpt_two_steps, root)
    step2 = os.path.join(root, "step-000000000002")
    shard = flip_item_byte(step2, "v")
    # Through DCP: wrapped in CheckpointException, which carries our error.
    from torch.distributed.checkpoint.api import CheckpointException

    with pytest.raises(CheckpointException) as wrapped:
        dcp.load({"w": torch.zeros(4096), "v": torch.zeros(64, 64)},
                 storage_reader=Reader(step2), no_dist=True)
    assert "CorruptCheckpointError" in str(wrapped.value) and "'v'" in str(wrapped.value)
    # Through the Checkpointer with an explicit step: CorruptCheckpointError.
    ck = shardwise.Checkpointer(root)
    with pytest.raises(shardwise.CorruptCheckpointError) as e:
        ck.load({"w": torch.zeros(4096), "v": torch.zeros(64, 64)}, step=2)
    assert "'v'" in str(e.value) and shard in str(e.value)
    assert e.value.path == shard
    # Without a step, every rank falls back to step 1.
    run_ranks(2, _ckpt_load, root)


# -- one rank's trouble is every rank's decision ------------------------------------
def _one_rank_cannot_open(rank: int, world: int, root: str) -> None:
    import errno

    ck = shardwise.Checkpointer(root)
    for step in (1, 2):
        ck.save(step, {"w": torch.full((64,), float(step))}, blocking=True)
    real_open = Reader._open

    def damaged_for_rank1(self):
        if rank == 1 and self.path.endswith("step-000000000002"):
            raise shardwise.CorruptCheckpointError(f"{self.path}/index.swi: damaged here")
        return real_open(self)

    Reader._open = damaged_for_rank1
    state = {"w": torch.zeros(64)}
    assert ck.load(state) == 1  # every rank falls back, rank 0 too
    assert torch.equal(state["w"], torch.full((64,), 1.0))
    with pytest.raises(shardwise.CorruptCheckpointError, match="damaged here") as e:
        ck.load(state, step=2)  # rank 0 gets rank 1's error, rebuilt
    assert rank == 1 or "(rank 1)" in str(e.value)
    Reader._open = real_open

    def listing_fails_on_rank0():
        raise PermissionError(errno.EACCES, "Permission denied", root)

    if rank == 0:
        ck.steps = listing_fails_on_rank0
    with pytest.raises(PermissionError):  # on every rank, none left waiting
        ck.load(state)
    ck.close()


def _discard_on_two_ranks(rank: int, world: int, root: str) -> None:
    ck = shardwise.Checkpointer(root)
    for step in (1, 2, 3):
        ck.save(step, {"w": torch.full((64,), float(step))})
    assert ck.discard_after(1) == [2, 3]  # the same answer on every rank
    assert ck.steps() == [1]
    ck.save(2, {"w": torch.full((64,), 20.0)}).wait()
    state = {"w": torch.zeros(64)}
    assert ck.load(state) == 2 and torch.equal(state["w"], torch.full((64,), 20.0))
    ck.close()


def test_discard_after_on_every_rank(tmp_path):
    run_ranks(2, _discard_on_two_ranks, str(tmp_path / "root"), timeout=120)


def test_one_ranks_failure_to_open_or_list_is_every_ranks(tmp_path):
    run_ranks(2, _one_rank_cannot_open, str(tmp_path / "root"), timeout=120)


# -- async saves while the training loop runs its own collectives ------------------
def _train_and_checkpoint(rank: int, world: int, root: str) -> None:
    ck = shardwise.Checkpointer(root, keep_last=2)
    w = torch.zeros(1024)
    for step in range(1, 21):
        g = torch.full((1024,), float(rank + step))
        dist.all_reduce(g)  # the training's collectives, on the default group
        w += g
        if step % 5 == 0:
            ck.save(step, {"w": w})  # background collectives on the checkpoint group
    ck.close()
    assert ck.steps() == [15, 20]
    back = {"w": torch.zeros(1024)}
    assert ck.load(back) == 20
    assert torch.equal(back["w"], w)


def test_async_saves_during_training_collectives(tmp_path):
    run_ranks(2, _train_and_checkpoint, str(tmp_path / "root"), timeout=120)
