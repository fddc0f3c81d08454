"""The many-process job behind tests/test_many_ranks.py and
bench/many_ranks.py (issue 14, part 5): W real processes (gloo) each hold a
few MiB of a model sharded along its rows (DTensor, Shard(0)), save it
through ``dcp.save`` with shardwise's Writer (twice, with plan caching) and
through ``shardwise.Checkpointer`` (and, side by side, through stock DCP's
FileSystemWriter); then L processes load them, resharded, and check every
value.

Every rank stamps the phases of its saves (DCP calls the writer's
``write_data`` once planning is done, and returns once the commit is):
planning = call to write_data, I/O = write_data, commit = the rest; and,
within planning, the planner's own work (local, global and final plans,
without the collectives between them). The figures kept are the slowest
rank's."""
from __future__ import annotations

import json
import os
import time
from typing import Any

PARAMS = 16
COLS = 8
ROWS = 262144  # global rows of each parameter: 128 MiB of state in all


def _expected(p: int, row0: int, rows: int) -> Any:
    import torch

    base = torch.arange(row0 * COLS, (row0 + rows) * COLS, dtype=torch.float32)
    return (base + 1000.0 * p).reshape(rows, COLS)


def _mesh(world: int) -> Any:
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (world,))


def _local_rows(mesh: Any) -> tuple[int, int]:
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset((ROWS, COLS), mesh, [Shard(0)])
    return int(offset[0]), int(shape[0])


def _state(mesh: Any, fill: bool) -> dict[str, Any]:
    import torch
    from torch.distributed.tensor import DTensor, Shard

    row0, rows = _local_rows(mesh)
    state: dict[str, Any] = {}
    for p in range(PARAMS):
        local = _expected(p, row0, rows) if fill else torch.zeros(rows, COLS)
        state[f"model.layers.{p}.w"] = DTensor.from_local(
            local, mesh, [Shard(0)], run_check=False, shape=(ROWS, COLS), stride=(COLS, 1))
    # A replicated tensor (written once, by one rank) and a plain value.
    state["model.norm"] = torch.arange(64, dtype=torch.float32) if fill else torch.zeros(64)
    state["step"] = 100 if fill else 0
    return state


def _check(state: dict[str, Any], mesh: Any) -> None:
    import torch

    row0, rows = _local_rows(mesh)
    for p in range(PARAMS):
        got = state[f"model.layers.{p}.w"].to_local()
        if not torch.equal(got, _expected(p, row0, rows)):
            raise AssertionError(f"parameter {p}: rows {row0}..{row0 + rows} differ after load")
    if not torch.equal(state["model.norm"], torch.arange(64, dtype=torch.float32)):
        raise AssertionError("model.norm differs after load")
    if state["step"] != 100:
        raise AssertionError(f"step is {state['step']!r} after load")


def _slowest(value: float) -> float:
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _warm_up(state: dict[str, Any], root: str, load: bool) -> None:
    """A stock DCP save (or load) of the same state, untimed, so that the
    first measured method does not pay the job's first-time costs alone:
    with 64 processes on 2 cores, whichever method ran first took 15 s
    longer to save and 7 s longer to load, and a warm-up with a tiny state
    did not take that away (docs/PERFORMANCE.md)."""
    import torch.distributed.checkpoint as dcp

    path = os.path.join(root, "warm-up")
    if load:
        dcp.load(state, checkpoint_id=path)
    else:
        dcp.save(state, checkpoint_id=path)


def save(rank: int, world: int, root: str, out: str) -> None:
    """W ranks: two dcp.save calls (plan caching on, as the Checkpointer
    uses it), then Checkpointer.save."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    import shardwise
    from shardwise.dcp import Writer

    def timed(base: Any) -> Any:
        class Timed(base):  # type: ignore[misc, valid-type]
            def write_data(self, plan, planner):  # type: ignore[no-untyped-def]
                self.planned_at = time.monotonic()
                fut = super().write_data(plan, planner)
                fut.wait()
                self.written_at = time.monotonic()
                return fut
        return Timed

    class TimedPlanner(DefaultSavePlanner):
        """DCP's planner, timing its own work (not the collectives around
        it): local plan, global plan (coordinator), final plan."""

        compute_s = 0.0

        def _timed(self, fn: Any, *args: Any) -> Any:
            t = time.monotonic()
            try:
                return fn(*args)
            finally:
                self.compute_s += time.monotonic() - t

        def create_local_plan(self):  # type: ignore[no-untyped-def]
            return self._timed(super().create_local_plan)

        def create_global_plan(self, all_plans):  # type: ignore[no-untyped-def]
            return self._timed(super().create_global_plan, all_plans)

        def finish_plan(self, new_plan):  # type: ignore[no-untyped-def]
            return self._timed(super().finish_plan, new_plan)

    mesh = _mesh(world)
    state = _state(mesh, fill=True)
    _warm_up(state, root, load=False)
    report: dict[str, Any] = {"world": world, "dcp": [], "stock_dcp": []}
    for kind in ("dcp", "stock_dcp"):
        # DCP keys its plan cache by the planner's class name: one class per
        # writer, or the stock writer would get plans cached for ours.
        planner_cls = type(f"ManyRanks{kind.title()}Planner", (TimedPlanner,), {})
        for n in range(2):
            path = os.path.join(root, kind, f"step-{n + 1:012d}")
            if kind == "dcp":
                w = timed(Writer)(path, step=n + 1)
            else:  # what DCP users would otherwise pick, in the same run
                w = timed(dcp.FileSystemWriter)(path)
            dist.barrier()
            planner = planner_cls(enable_plan_caching=True)
            t0 = time.monotonic()
            dcp.save(state, storage_writer=w, planner=planner)
            t1 = time.monotonic()
            report[kind].append({"total_s": _slowest(t1 - t0),
                                 "planning_s": _slowest(w.planned_at - t0),
                                 "planning_compute_s": _slowest(planner.compute_s),
                                 "io_s": _slowest(w.written_at - w.planned_at),
                                 "commit_s": _slowest(t1 - w.written_at)})
    ck = shardwise.Checkpointer(os.path.join(root, "ckpt"))
    for step in (1, 2):
        dist.barrier()
        t0 = time.monotonic()
        ck.save(step, state, blocking=True)
        report.setdefault("checkpointer_save_s", []).append(_slowest(time.monotonic() - t0))
    ck.close()
    if rank == 0:
        with open(out, "w") as f:
            json.dump(report, f)


def load(rank: int, world: int, root: str, out: str) -> None:
    """L ranks: load the dcp checkpoint and the Checkpointer's, resharded."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    import shardwise
    from shardwise.dcp import Reader

    mesh = _mesh(world)
    report: dict[str, Any] = {"world": world}
    state = _state(mesh, fill=False)
    _warm_up(state, root, load=True)
    reader = Reader(os.path.join(root, "dcp", "step-000000000002"))
    dist.barrier()
    t0 = time.monotonic()
    dcp.load(state, storage_reader=reader)
    report["dcp_load_s"] = _slowest(time.monotonic() - t0)
    _check(state, mesh)
    report["metadata_bytes_per_rank_max"] = _slowest(reader._core.metadata_bytes_read())
    state = _state(mesh, fill=False)
    dist.barrier()
    t0 = time.monotonic()
    dcp.load(state, storage_reader=dcp.FileSystemReader(
        os.path.join(root, "stock_dcp", "step-000000000002")))
    report["stock_dcp_load_s"] = _slowest(time.monotonic() - t0)
    _check(state, mesh)
    state = _state(mesh, fill=False)
    ck = shardwise.Checkpointer(os.path.join(root, "ckpt"))
    dist.barrier()
    t0 = time.monotonic()
    got = ck.load(state)
    report["checkpointer_load_s"] = _slowest(time.monotonic() - t0)
    if got != 2:
        raise AssertionError(f"Checkpointer.load returned step {got!r}, expected 2")
    _check(state, mesh)
    ck.close()
    if rank == 0:
        with open(out, "w") as f:
            json.dump(report, f)
