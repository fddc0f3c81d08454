"""Storage plugins for ``torch.distributed.checkpoint`` (DCP).

::

    import torch.distributed.checkpoint as dcp
    from shardwise.dcp import Reader, Writer

    dcp.save(state_dict, storage_writer=Writer("/fsx/ckpt/step-000000001000"))
    future = dcp.async_save(state_dict, storage_writer=Writer(path))  # THREAD or PROCESS
    dcp.load(state_dict, storage_reader=Reader("/fsx/ckpt/step-000000001000"))

or, with DCP's own signatures and shardwise's storage filled in::

    from shardwise import dcp

    dcp.save(state_dict, checkpoint_id="/fsx/ckpt/step-000000001000")
    dcp.load(state_dict, checkpoint_id="/fsx/ckpt/step-000000001000")

The checkpoint path is a directory inside a checkpoint root; it becomes
visible only when the save is committed (see docs/format.md). Tensor bytes go
through the C++ engine with the GIL released; every byte is checksummed, and
verified on load. The reader rebuilds DCP ``Metadata`` from the manifest and
the checkpoint's index, and never unpickles anything; non-tensor values are
stored as JSON.
"""
from __future__ import annotations

import collections
import dataclasses
import errno
import io
import json
import logging
import math
import os
import secrets
import threading
import time
import uuid
from concurrent.futures import Future as _ConcurrentFuture
from typing import Any, Callable, NamedTuple, Optional, Union

import torch
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    SavePlan,
    SavePlanner,
    WriteItemType,
)
from torch.distributed.checkpoint.storage import StorageReader, StorageWriter, WriteResult
from torch.futures import Future

from . import _core, _metadata, _staging, _values, metrics
from ._progress import Progress, ProgressArg

try:  # the AsyncStager protocol (torch >= 2.3)
    from torch.distributed.checkpoint.staging import AsyncStager
except ImportError:  # pragma: no cover
    AsyncStager = object  # type: ignore[misc,assignment]

log = logging.getLogger("shardwise")

__all__ = ["Writer", "Reader", "LoadPlanner", "save", "async_save", "load"]

PathLike = Union[str, "os.PathLike[str]"]


def _split(path: str) -> tuple[str, str]:
    path = os.path.abspath(os.fspath(path)).rstrip("/")
    root, name = os.path.dirname(path), os.path.basename(path)
    if not name:
        raise ValueError(f"{path!r} is not a checkpoint directory path")
    return root, name


def _options(**kw: Any) -> dict[str, Any]:
    """Engine options as the core takes them, checked now (ValueError
    naming a bad one), not at the first save or load."""
    options = {k: v for k, v in kw.items() if v is not None}
    _core.check_options(options)
    return options


_repos: "collections.OrderedDict[tuple[Any, ...], Any]" = collections.OrderedDict()
_repos_lock = threading.Lock()
_REPOS_KEPT = 8


def _repository(root: str, options: dict[str, Any]) -> Any:
    """One C++ repository handle per root, options and SHARDWISE_*
    environment, for the process: DCP users build a new Writer per save, and
    opening a repository reads the environment, probes the filesystem and
    sets up io_uring. The newest few are kept. A kept handle keeps this
    process's claim on the root it committed to (format.md, "Writers")
    until the process exits; a forked child opens its own."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("SHARDWISE_")))
    key = (os.getpid(), root, tuple(sorted((k, repr(v)) for k, v in options.items())), env)
    with _repos_lock:
        repo = _repos.get(key)
        if repo is not None and not os.path.isdir(root):
            repo = None  # the root was removed since: open (and create) it again
        if repo is None:
            repo = _core.Repository(root, options, True)
        _repos[key] = repo
        _repos.move_to_end(key)
        while len(_repos) > _REPOS_KEPT:
            _repos.popitem(last=False)
        return repo


def _new_id() -> str:
    """A save or load id, as DCP's stock storage layers draw them."""
    return uuid.uuid4().hex


def _corrupt(message: str, path: Optional[str]) -> BaseException:
    """A CorruptCheckpointError naming the file or directory, as the core's do."""
    e = _core.CorruptCheckpointError(message)
    e.path = path
    return e


class Writer(StorageWriter, AsyncStager):  # type: ignore[misc]
    """DCP storage writer: saves into a shardwise checkpoint directory.

    Args:
        path: the checkpoint directory (``ROOT/NAME``); DCP's ``checkpoint_id``
            overrides it.
        replace: allow replacing an existing checkpoint of that name (atomic).
        step: recorded in the manifest (``shardwise ls`` shows it).
        user_metadata: a JSON-compatible dict stored in the manifest.
        io_backend, queue_depth, io_unit, checksum_block, direct_io,
        commit_timeout_s, threads: engine options (docs/cpp-api.md);
            ``SHARDWISE_*`` environment variables apply when not given.
            ``direct_io="auto"`` (the default) lets the root's filesystem
            decide (docs/cpp-api.md, "I/O mode").
        progress: True for a progress bar (tqdm when installed, else log
            lines), or a callable ``(done_bytes, total_bytes)``.
        pin_memory, shared_memory, async_staging, non_blocking_copy: what
            DCP's ``StagingOptions`` says, for :meth:`stage` (``async_save``).
            ``pin_memory`` defaults to whether CUDA is available;
            ``shared_memory`` (for ``AsyncCheckpointerType.PROCESS``: the
            staged tensors reach DCP's checkpoint process without a copy)
            defaults to False; with ``async_staging`` the copy runs in the
            background and ``async_save`` returns an ``AsyncSaveResponse``
            whose ``staging_completion`` says when the state may change.
            ``staging_options`` (a DCP ``StagingOptions``) sets all four.
        staging_threads: threads for the staging copy (default: this rank's
            share of the CPUs).
        overwrite, thread_count, sync_files, single_file_per_rank,
            per_thread_copy_ahead: ``FileSystemWriter``'s keywords, so that
            switching is one class name. ``overwrite`` is ``replace``;
            ``thread_count`` is ``threads``; ``sync_files=True`` is what
            shardwise always does (``False`` is refused: shardwise never
            skips durability); ``single_file_per_rank`` and
            ``per_thread_copy_ahead`` are accepted and change nothing (every
            rank writes one shard, or ``files_per_rank`` parts; staging
            copies are the engine's).

    ``stage()`` copies into the process's staging memory, which every Writer
    shares (a new Writer per save allocates nothing); ``write_data`` writes
    staged tensors straight from it. The writer holds configuration only, so
    DCP's PROCESS mode can pickle it.
    """

    _synchronize_after_execute = False
    # Set on a Writer whose staged bytes are written again after it (the
    # local tier's): write_data leaves them staged.
    _keep_staged = False
    # How a caller replaces an existing checkpoint (the Checkpointer's own).
    _exists_hint = ("and overwrite is False (pass overwrite=True, or replace=True, to replace "
                    "it atomically)")
    # Per process: the coordinator's current save nonce of each series of
    # saves whose plans DCP caches together (a Checkpointer's; None: plain
    # DCP's), and per series the saves written under each of its newest
    # nonces (see prepare_global_plan).
    _nonces: dict[Optional[str], str] = {}
    _saves_under: "dict[Optional[str], collections.OrderedDict[str, int]]" = {}
    _NONCES_KEPT = 64  # per series
    _series: Optional[str] = None

    def __init__(self, path: Optional[PathLike] = None, *, replace: bool = False,
                 step: Optional[int] = None, user_metadata: Optional[dict[str, Any]] = None,
                 io_backend: Optional[str] = None, queue_depth: Optional[int] = None,
                 io_unit: Optional[Union[int, str]] = None,
                 checksum_block: Optional[Union[int, str]] = None,
                 direct_io: Optional[str] = None, commit_timeout_s: Optional[float] = None,
                 threads: Optional[int] = None,
                 progress: ProgressArg = None, pin_memory: Optional[bool] = None,
                 shared_memory: bool = False, async_staging: bool = False,
                 non_blocking_copy: bool = True, staging_threads: Optional[int] = None,
                 staging_options: Any = None, overwrite: Optional[bool] = None,
                 thread_count: Optional[int] = None, sync_files: bool = True,
                 single_file_per_rank: bool = True, per_thread_copy_ahead: Optional[int] = None,
                 **engine_options: Any) -> None:
        super().__init__()
        if not sync_files:
            raise ValueError("shardwise.dcp.Writer: sync_files=False is not supported: shardwise "
                             "always makes a checkpoint durable (fsync) before it commits it")
        if overwrite is not None and replace and not overwrite:
            raise ValueError("shardwise.dcp.Writer: replace=True and overwrite=False disagree")
        if thread_count is not None and threads is None:
            if thread_count < 1:
                raise ValueError("shardwise.dcp.Writer: thread_count must be >= 1")
            threads = thread_count
        del single_file_per_rank, per_thread_copy_ahead  # accepted, see the docstring
        self.path = os.fspath(path) if path is not None else None
        self.replace = bool(replace or overwrite)
        # Named as FileSystemWriter names it: storage_meta() carries it.
        self.save_id = _new_id()
        self.step = step
        self.user_json = json.dumps(user_metadata or {})
        # This save's start and stall (wall clock: a PROCESS-mode commit
        # runs in another process), for shardwise.metrics.
        self._t_start: Optional[float] = None
        self._stall: Optional[float] = None
        self._waves = 0  # 1 once stage() staged this save in full
        self.options = _options(io_backend=io_backend, queue_depth=queue_depth, io_unit=io_unit,
                                checksum_block=checksum_block, direct_io=direct_io,
                                commit_timeout_s=commit_timeout_s, threads=threads,
                                **engine_options)
        self.progress = progress
        if staging_options is not None:  # DCP's StagingOptions
            pin_memory = staging_options.use_pinned_memory
            shared_memory = staging_options.use_shared_memory
            async_staging = staging_options.use_async_staging
            non_blocking_copy = staging_options.use_non_blocking_copy
        if pin_memory and not torch.cuda.is_available():
            pin_memory = False  # pinning is for device copies; nothing to pin for here
        self.pin_memory = pin_memory
        self.shared_memory = bool(shared_memory)
        self.async_staging = bool(async_staging)
        self.non_blocking_copy = bool(non_blocking_copy)
        if staging_threads is not None and staging_threads < 1:
            raise ValueError("staging_threads must be >= 1")
        self.staging_threads = staging_threads
        self._init_runtime()

    # -- pickling (PROCESS mode): configuration only --------------------------
    _RUNTIME = ("_snapshot", "_lazy", "_storage_data", "_save_id", "_adopted", "_hold", "_held",
                "_budget", "_stream", "_held_state", "last_commit", "_prestaged")

    def _init_runtime(self) -> None:
        # The coordinator's last commit in this process
        # (shardwise._core.CommitResult: name, dir, bytes, latest_updated,
        # export_error), or None. Not pickled: DCP's checkpoint process
        # commits its own.
        self.last_commit: Optional[Any] = None
        self._snapshot: Optional[_staging.Snapshot] = None  # the last stage()
        self._lazy: Optional[Callable[[torch.Tensor], bool]] = None  # set by Checkpointer
        self._storage_data: Optional[dict[str, Any]] = None
        self._save_id: Optional[str] = None
        self._adopted: Any = None  # in DCP's checkpoint process: the parent's memory
        # Set by the Checkpointer: stage() hands DCP a future that the
        # Checkpointer completes (_release_held) just before save() returns,
        # so DCP's background thread does not compete for the GIL with the
        # end of save().
        self._hold = False
        self._held: Optional[tuple[Any, Optional[_staging.Snapshot]]] = None
        # Set by the Checkpointer: a state over this many bytes is not staged
        # but streamed (write_data copies it into I/O buffers and sets
        # _stream once done reading it; save() waits for that).
        self._budget: Optional[int] = None
        self._stream: Any = None
        self._held_state: Any = None
        self._shared_staging: Optional[dict[str, Any]] = None
        # Set by the Checkpointer, which stages before DCP's async_save (to
        # decide with every rank whether staging worked): what the next
        # stage() returns without staging again.
        self._prestaged: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in self._RUNTIME}
        snap = self._snapshot
        # PROCESS mode: the checkpoint process gets the staged tensors as
        # views of our shared memory, and through this record knows they
        # are staged extents, written without a copy.
        state["_shared_staging"] = (
            {"size": snap.lease.size, "extents": snap.extents}
            if snap is not None and snap.kind.startswith("shared") else None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        shared = state.pop("_shared_staging", None)
        self.__dict__.update(state)
        self._init_runtime()
        self._shared_staging = shared

    # -- StorageWriter ---------------------------------------------------------
    def reset(self, checkpoint_id: Optional[PathLike] = None) -> None:
        if checkpoint_id is not None:
            self.path = os.fspath(checkpoint_id)
        if self.path is None:
            raise ValueError("shardwise.dcp.Writer needs a checkpoint directory "
                             "(Writer(path) or checkpoint_id=...)")
        self.save_id = _new_id()

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        # The coordinator is whoever DCP calls finish() on. A synchronous
        # save starts here (an async one started in stage()).
        if self._t_start is None:
            self._t_start = time.time()

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        # Refused at planning time, as FileSystemWriter refuses, before any
        # rank writes a byte.
        if self.path is None:
            return plan
        try:  # what is at path may be replaced: never a root or a file, replace or not
            _core.check_target(os.path.abspath(self.path), self.replace)
        except FileExistsError:
            if not self.replace and os.path.isfile(os.path.join(self.path, _core.MANIFEST_NAME)):
                raise FileExistsError(errno.EEXIST, "Checkpoint already exists " +
                                      self._exists_hint, self.path) from None
            raise
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        # The coordinator names the attempt; every rank learns it (and its
        # rank and the world size) through its plan. With plan caching
        # (DefaultSavePlanner(enable_plan_caching=True)) a rank whose plan did
        # not change gets no new plan: it reuses its cached one, storage_data
        # included. So a nonce drawn while some plans are cached could not
        # reach every rank: then the previous nonce is kept, and every rank
        # tells saves apart by counting them (write_data).
        cached = any(not getattr(p, "usable", True) for p in plans)
        if len(plans) == 1 and not cached:
            # One rank alone (no_dist: a node-local tier's save) keeps the
            # series of collective saves' nonce as it is.
            nonce = secrets.token_hex(8)
        else:
            if not cached or self._series not in Writer._nonces:
                Writer._nonces[self._series] = secrets.token_hex(8)
            nonce = Writer._nonces[self._series]
        return [dataclasses.replace(p, storage_data={"nonce": nonce, "rank": i,
                                                     "world_size": len(plans)})
                for i, p in enumerate(plans)]

    def _spec(self, sd: dict[str, Any], save_id: str) -> Any:
        assert self.path is not None
        _, name = _split(self.path)
        return _core.SaveSpec(name=name, step=self.step if self.step is not None else -1,
                              save_id=save_id, world_size=sd["world_size"], rank=sd["rank"],
                              replace=self.replace, user_json=self.user_json, gathered=True)

    def _repo(self) -> Any:
        assert self.path is not None
        root, _ = _split(self.path)
        return _repository(root, self.options)

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        sd = plan.storage_data
        if not isinstance(sd, dict) or "nonce" not in sd:
            raise RuntimeError("shardwise.dcp.Writer: the plan carries no save nonce; "
                               "prepare_global_plan did not run")
        # Every rank counts the saves it wrote under this nonce: the same
        # count on every rank, so the save id is the same everywhere.
        under = Writer._saves_under.setdefault(self._series, collections.OrderedDict())
        count = under.pop(sd["nonce"], 0)
        under[sd["nonce"]] = count + 1  # the newest at the end
        while len(under) > Writer._NONCES_KEPT:
            under.popitem(last=False)
        self._save_id = f"{sd['nonce']}-{count}"
        self._storage_data = sd
        addresses: list[int] = []
        copied = [0]
        try:
            return self._write_data(plan, planner, sd, addresses, copied)
        finally:
            # This save no longer needs its staged memory: the next save may
            # reuse it. (A rank whose items hold none of it lets it go when
            # the staged tensors are freed.) Not when the staged bytes have
            # another write ahead (a tier's local save, then the root's):
            # their owner releases them after the last.
            for a in ([] if self._keep_staged else _core.release_staged(addresses)):
                snap = _staging.snapshot_at(a)
                if snap is not None:
                    snap.write_copied += copied[0]
            self._adopted = None

    def _write_data(self, plan: SavePlan, planner: SavePlanner, sd: dict[str, Any],
                    addresses: list[int], copied: list[int]) -> Future[list[WriteResult]]:
        snap = self._snapshot
        if snap is not None and not snap.done():
            snap.wait()  # a lazy snapshot's copies (its device copies, too)
        items: list[Any] = []  # _core.WriteItem
        keep: list[Any] = []  # keeps the memory alive during the call
        results: list[WriteResult] = []
        attempt = {"save_id": self._save_id}  # every result names the attempt it wrote
        for item in plan.items:
            fqn = item.index.fqn
            if item.type == WriteItemType.BYTE_IO:
                lookup = getattr(planner, "lookup_object", None)
                if lookup is not None:
                    value = lookup(item.index)
                else:  # our own in-memory serialization, never checkpoint bytes
                    data = planner.resolve_data(item)
                    if isinstance(data, io.IOBase):
                        data.seek(0)  # DCP's transform_object leaves it at its end
                    value = torch.load(data, weights_only=True)
                try:
                    data = _values.encode(value)
                except TypeError as e:
                    raise TypeError(f"state dict entry {fqn!r}: {e}") from None
                except RecursionError:
                    raise TypeError(f"state dict entry {fqn!r}: nested too deeply (or holds "
                                    "itself) to be stored") from None
                buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
                keep.append(buf)
                n = len(data)
                items.append(_core.WriteItem(fqn, "bytes", "uint8", [n], [0], [n],
                                             buf.data_ptr(), n))
            else:
                t = _staging.local_tensor(planner.resolve_data(item)).detach()
                if t.device.type != "cpu":
                    t = t.cpu()
                t = t.contiguous()
                if self._shared_staging is not None and self._adopted is None and t.numel():
                    self._adopted = _staging.adopt(self._shared_staging, [t])
                keep.append(t)
                td = item.tensor_data
                n = t.numel() * t.element_size()
                addresses.append(t.data_ptr())
                items.append(_core.WriteItem(fqn, "tensor", _metadata.dtype_name(t.dtype),
                                             list(td.size), list(td.chunk.offsets),
                                             list(td.chunk.sizes), t.data_ptr(), n))
            results.append(WriteResult(index=item.index, size_in_bytes=items[-1].nbytes,
                                       storage_data=attempt))
        spec = self._spec(sd, self._save_id or "")
        if not items:
            # Nothing to save on this rank: no shard; the coordinator learns
            # it from the absence of an index among the gathered results.
            if self._stream is not None:
                self._stream.set()
            self.last_write_copied_bytes = 0
            fut0: Future[list[WriteResult]] = Future()
            fut0.set_result(results)
            return fut0
        total = sum(i.nbytes for i in items)
        with Progress(self.progress, total, "save") as bar:
            r = self._repo().write_rank(spec, items, self._stream)
            bar.update(total)
        # This rank's shard index travels to the coordinator with its first
        # result: DCP gathers the results, finish() commits from them.
        results[0] = dataclasses.replace(
            results[0], storage_data={**attempt, "rank": sd["rank"], "index": r.index})
        copied[0] = r.copied_bytes
        self.last_write_copied_bytes = copied[0]
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        # finish() runs on the coordinator, whose own write_data (same
        # Writer) recorded the attempt's save id and world size.
        sd = self._storage_data
        if sd is None or self._save_id is None:
            raise RuntimeError("shardwise.dcp.Writer.finish: write_data did not run here")
        # Every rank must have written under the same save id, or the commit
        # would wait for shards that went elsewhere: say so instead.
        ids = {r.storage_data["save_id"] for rs in results for r in rs
               if isinstance(r.storage_data, dict) and "save_id" in r.storage_data}
        if ids - {self._save_id}:
            raise RuntimeError(
                f"shardwise.dcp.Writer: ranks wrote this checkpoint under different save ids "
                f"({', '.join(sorted(ids | {self._save_id}))}): their cached save plans "
                f"(enable_plan_caching) come from different save series; use one planner "
                f"instance class per series, or no plan caching")
        spec = self._spec(sd, self._save_id)
        spec.rank = 0
        # The checkpoint records this save's id, so that a load can tell
        # saves apart. On a copy: with plan caching, DCP hands every save the
        # same cached Metadata, which must not keep the first save's id.
        own = (StorageMeta(checkpoint_id=self.path, save_id=self.save_id)
               if metadata.storage_meta is None else
               dataclasses.replace(metadata.storage_meta, checkpoint_id=self.path,
                                   save_id=self.save_id))
        metadata = dataclasses.replace(metadata, storage_meta=own)
        spec.dcp_json = json.dumps(_metadata.to_json(metadata))
        # Each rank's shard index, from the results DCP gathered: no fragment
        # files, no polling. A rank that saved nothing sent none.
        indexes = [b""] * sd["world_size"]
        for rs in results:
            for r in rs:
                d = r.storage_data
                if isinstance(d, dict) and "index" in d:
                    indexes[d["rank"]] = d["index"]
        result = self._repo().commit_gathered(spec, indexes)
        self.last_commit = result
        if result.latest_error:
            log.warning("checkpoint %s is committed, but `latest` still names an older one: %s",
                        result.name, result.latest_error)
        if result.export_error:
            log.warning("checkpoint %s is committed, but its export to S3 was not requested: %s",
                        result.name, result.export_error)
        self._record(result)

    def _record(self, result: Any) -> None:
        """The committed save's figures, for shardwise.metrics."""
        now = time.time()
        persist = now - (self._t_start if self._t_start is not None else now)
        export = str(self.options.get("export", os.environ.get("SHARDWISE_EXPORT", "off")))
        metrics.record_save(
            os.path.dirname(os.path.abspath(result.dir)), step=self.step,
            stall_s=persist if self._stall is None else self._stall, persist_s=persist,
            nbytes=result.bytes, waves=self._waves,
            export_state=("request_failed" if result.export_error
                          else "off" if export == "off" else "requested"))
        self._t_start = self._stall = None
        self._waves = 0

    def storage_meta(self) -> Optional[StorageMeta]:
        return StorageMeta(checkpoint_id=self.path, save_id=self.save_id)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: PathLike) -> bool:
        try:
            _split(os.fspath(checkpoint_id))
            return True
        except (TypeError, ValueError):
            return False

    # -- AsyncStager -------------------------------------------------------------
    def stage(self, state_dict: dict[str, Any]) -> Any:
        """Copies the state into the process's staging memory (see
        :meth:`_stage`); times it for the save's metrics."""
        pre, self._prestaged = self._prestaged, None
        if pre is not None:
            return pre
        t0 = time.time()
        staged = self._stage(state_dict)
        self._t_start, self._stall = t0, time.time() - t0
        self._waves = 0 if self._snapshot is None else 1  # None: streamed
        return staged

    def _stage(self, state_dict: dict[str, Any]) -> Any:
        """Copies the state into the process's staging memory (one parallel
        copy in C++; device tensors on a side stream); the save then runs
        from the copy while training changes the originals. With
        ``async_staging``, returns a Future that completes when the copy is
        done."""
        self._stream = None
        if self._budget is not None and _staging.tensor_bytes(state_dict) > self._budget:
            # Over the staging budget: nothing is staged; the state is copied
            # once, into the I/O buffers, by write_data (bounded memory, and
            # a stall until the last byte is copied).
            self._snapshot = None
            self._stream = _core.Event()
            if self._hold:
                held_s: Future[Any] = _ConcurrentFuture()
                self._held = (held_s, None)
                self._held_state = state_dict
                return held_s
            return state_dict
        pin = self.pin_memory if self.pin_memory is not None else torch.cuda.is_available()
        snap = _staging.stage(state_dict, pin_memory=bool(pin), shared_memory=self.shared_memory,
                              background=self.async_staging and self._lazy is None,
                              lazy=self._lazy, non_blocking=self.non_blocking_copy,
                              threads=self.staging_threads or 0)
        # The previous save's memory goes back to the pool when nothing uses
        # it any more (its write_data released it, or its tensors are gone).
        self._snapshot = snap
        if self._hold:
            held: Future[Any] = _ConcurrentFuture()
            self._held = (held, snap)
            return held
        if not self.async_staging:
            return snap.state_dict
        fut: Future[Any] = _ConcurrentFuture()
        _complete_when_staged(fut, snap)
        return fut

    def _release_held(self, error: Optional[BaseException] = None) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        fut, snap = held
        if error is not None:
            fut.set_exception(error)
        elif snap is None:  # streamed: the state itself
            state, self._held_state = self._held_state, None
            fut.set_result(state)
        else:
            _complete_when_staged(fut, snap)

    @property
    def copied_bytes(self) -> Optional[int]:
        """Bytes of state the CPU copied for the last save this writer staged
        (complete once it persisted): the staging copy, once, since
        ``write_data`` writes staged tensors straight from the pool. None
        before any ``stage()``."""
        return None if self._snapshot is None else self._snapshot.copied_bytes

    def synchronize_staging(self) -> None:
        if self._snapshot is not None:
            self._snapshot.wait()

    def close(self) -> None:
        """Waits for this writer's staging copy and lets its memory go."""
        snap, self._snapshot = self._snapshot, None
        if snap is not None:
            snap.wait()


def _complete_when_staged(fut: Any, snap: _staging.Snapshot) -> None:
    """Completes ``fut`` with the staged state dict once every copy is done
    (at once, or from a helper thread)."""
    if snap.done():
        fut.set_result(snap.state_dict)
        return

    def complete() -> None:
        try:
            snap.wait()
            fut.set_result(snap.state_dict)
        except BaseException as e:  # surfaces through staging_completion
            fut.set_exception(e)

    threading.Thread(target=complete, name="shardwise-staging", daemon=True).start()


# A load reads in batches of about this many bytes: parallel inside a batch,
# progress between them, and host memory for reads that cannot land in their
# target held one batch at a time.
_READ_BATCH_BYTES = 256 << 20


class LoadPlanner(DefaultLoadPlanner):
    """DCP's ``DefaultLoadPlanner`` that plans from this rank's part only.

    The default planner intersects each sharded tensor's local part with
    every saved chunk of it, so with a stock reader each rank of an R-rank
    restart reads R chunk records per item. With a shardwise :class:`Reader`
    this planner first tells the metadata which part of each DTensor (or
    ShardedTensor) the rank loads; each entry then resolves to the saved
    chunks that overlap it, found with a box lookup in the index (a few
    4 KiB blocks per item, however many ranks saved it). The plan is the
    same as the default planner's. ``shardwise.dcp.load`` and
    ``shardwise.Checkpointer`` use it unless given a planner; with torch's
    ``dcp.load``, pass ``planner=shardwise.dcp.LoadPlanner()``. Takes the
    ``DefaultLoadPlanner`` arguments.
    """

    def set_up_planner(self, state_dict: dict[str, Any], metadata: Optional[Metadata] = None,
                       is_coordinator: bool = False) -> None:
        super().set_up_planner(state_dict, metadata, is_coordinator)
        saved = getattr(metadata, "state_dict_metadata", None)
        if isinstance(saved, _metadata.LazyStateDictMetadata):
            saved.expect(_local_parts(self.state_dict))


def _local_parts(state_dict: dict[str, Any]) -> dict[str, list[tuple[list[int], list[int]]]]:
    """The boxes of its global shape that each sharded tensor holds here
    (DCP's own chunk list of it, which its planning intersects)."""
    try:
        from torch.distributed._shard.sharded_tensor import ShardedTensor
        from torch.distributed.checkpoint.planner_helpers import _create_chunk_list
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - a torch without them
        return {}
    parts: dict[str, list[tuple[list[int], list[int]]]] = {}
    for fqn, obj in state_dict.items():
        # Plain tensors (parameters too) are whole: every chunk is theirs.
        if not (isinstance(obj, ShardedTensor) or hasattr(obj, "__create_chunk_list__")):
            continue
        # Not on this rank's mesh, or no shard here: DCP checks the size,
        # then plans nothing. An empty box resolves the shape alone.
        nothing = [([0] * len(obj.size()), [0] * len(obj.size()))]
        if isinstance(obj, DTensor) and obj.device_mesh.get_coordinate() is None:
            parts[fqn] = nothing
            continue
        parts[fqn] = [([int(x) for x in c.offsets], [int(x) for x in c.sizes])
                      for c in _create_chunk_list(obj)] or nothing
    return parts


class _TensorRead(NamedTuple):
    req: Any  # DCP's ReadItem
    chunk_at: list[int]  # where the saved chunk it reads from starts
    target: torch.Tensor
    saved_dtype: torch.dtype
    direct: bool  # read straight into target (else into host memory, then copied)
    nbytes: int


class Reader(StorageReader):
    """DCP storage reader for shardwise checkpoints.

    Rebuilds DCP ``Metadata`` from manifest.json and the checkpoint's index
    (never pickle), one entry at a time as DCP asks for it. Every
    byte read is verified against its CRC32C; a mismatch raises
    :class:`shardwise.CorruptCheckpointError` naming the item and the file.
    Reading a slice of a saved chunk (resharding) reads only the checksum
    blocks it touches.

    Args:
        path: the checkpoint directory; DCP's ``checkpoint_id`` overrides it.
        progress: as for :class:`Writer`.
        io_backend, queue_depth, io_unit, direct_io, threads: engine options.
    """

    def __init__(self, path: Optional[PathLike] = None, *, progress: ProgressArg = None,
                 io_backend: Optional[str] = None, queue_depth: Optional[int] = None,
                 io_unit: Optional[Union[int, str]] = None,
                 direct_io: Optional[str] = None, threads: Optional[int] = None,
                 **engine_options: Any) -> None:
        super().__init__()
        self.path = os.fspath(path) if path is not None else None
        self.progress = progress
        self.options = _options(io_backend=io_backend, queue_depth=queue_depth, io_unit=io_unit,
                                direct_io=direct_io, threads=threads, **engine_options)
        self.load_id = _new_id()  # as FileSystemReader draws it
        # Why the last read_metadata() failed, or None.
        self.metadata_error: Optional[BaseException] = None
        self._core: Any = None
        self._header: Optional[dict[str, Any]] = None
        # Every item's kind, dtype and shape, from the items table (no chunk
        # records): filled on first use.
        self._headers: dict[str, tuple[str, str, list[int]]] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_core", "metadata_error")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._core = None
        self.metadata_error = None

    def reset(self, checkpoint_id: Optional[PathLike] = None) -> None:
        if checkpoint_id is not None:
            self.path = os.fspath(checkpoint_id)
        if self.path is None:
            raise ValueError("shardwise.dcp.Reader needs a checkpoint directory")
        self._core = None
        self._header = None
        self._headers = {}
        self.load_id = _new_id()

    def _open(self) -> Any:
        # Opening reads manifest.json and, in format 2, the index's items
        # table: no chunk records until an item is asked for.
        if self._core is None:
            if self.path is None:
                raise ValueError("shardwise.dcp.Reader needs a checkpoint directory")
            self._core = _core.Reader(os.fspath(self.path), self.options)
            self._header = self._core.header()
            self._headers = {}
        return self._core

    def _item_header(self, fqn: str) -> tuple[str, str, list[int]]:
        """The item's kind, dtype and shape (no chunk records are read)."""
        if not self._headers:
            self._headers = {name: (kind, dtype, list(shape))
                             for name, kind, dtype, shape in self._open().item_headers()}
        hit = self._headers.get(fqn)
        if hit is None:
            raise _corrupt(f"{self.path}: the checkpoint has no item {fqn!r}", self.path)
        return hit

    def _value_size(self, fqn: str) -> int:
        """The byte count of a stored value, which one chunk must hold whole
        (the validator checks a value's dtype and rank, not that one chunk
        holds it: its size must not come from the shape alone)."""
        _, _, shape = self._item_header(fqn)
        it = self._open().item(fqn)  # a value is one record
        if [[[int(x) for x in o], [int(x) for x in z]] for o, z in it["chunks"]] != \
                [[[0], [int(x) for x in shape]]]:
            raise _corrupt(f"{self.path}: item {fqn!r} is a stored value of {shape[0]} bytes "
                           "that is not one chunk holding all of them", self.path)
        return int(shape[0])

    def read_metadata(self, *args: Any) -> Metadata:
        """DCP ``Metadata`` whose ``state_dict_metadata`` resolves each entry
        from the checkpoint's index when DCP first asks for it, so a rank
        reads the metadata of the items it loads and no more. (No
        ``**kwargs``: DCP would then retry a failed read with ``rank=`` and,
        if that succeeded, skip its collectives on this rank alone.)"""
        self.metadata_error = None
        try:
            core = self._open()
            assert self._header is not None and self.path is not None
            try:
                md = _metadata.lazy(core, self._header, self.path)
            except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
                where = os.path.join(self.path, _core.MANIFEST_NAME)
                raise _corrupt(f"{where}: its DCP metadata (\"dcp\") is malformed: {e}",
                               where) from None
        except Exception as e:
            # torch's dcp.load replaces any error of read_metadata with an
            # AssertionError ("metadata is None"); shardwise.dcp.load raises
            # this one instead.
            self.metadata_error = e
            raise
        md.storage_meta.load_id = self.load_id  # as FileSystemReader sets it
        return md

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any,
                              **kwargs: Any) -> None:
        self._open()

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        try:
            return self._read_data(plan, planner)
        except _core.CorruptCheckpointError:
            if self.path is not None:
                metrics.record_verify_failure(os.path.dirname(os.path.abspath(self.path)))
            raise

    def _check_filled(self, plan: LoadPlan, planner: LoadPlanner) -> None:
        """Raises CorruptCheckpointError, before anything is read, when the
        plan leaves part of a tensor this rank loads unfilled. DCP plans a
        read for each saved chunk that overlaps the rank's part of a tensor
        and checks nothing more: chunks that leave part of it out (or miss
        it altogether) would leave that part as it was. The reader has
        refused chunks that overlap (format.md, "Validation"), so the
        elements planned add up to the part's exactly when they cover it.
        Checked for DCP's default planning only: a planner that plans its
        own reads may fill a tensor in part on purpose."""
        if (not isinstance(planner, DefaultLoadPlanner)
                or type(planner).create_local_plan is not DefaultLoadPlanner.create_local_plan):
            return
        try:
            from torch.distributed.checkpoint.planner_helpers import _create_chunk_list
        except ImportError:  # pragma: no cover - a torch without it
            return
        planned: dict[tuple[str, tuple[int, ...]], int] = {}
        for req in plan.items:
            if req.type != LoadItemType.BYTE_IO:
                key = (req.dest_index.fqn, tuple(req.dest_index.offset or ()))
                planned[key] = planned.get(key, 0) + math.prod(int(x) for x in req.lengths)
        saved = planner.metadata.state_dict_metadata if planner.metadata is not None else {}
        for fqn, obj in planner.state_dict.items():
            # DCP planned (or refused) exactly these: tensors the checkpoint has.
            if not isinstance(obj, torch.Tensor) or fqn not in saved:
                continue
            if not isinstance(saved[fqn], TensorStorageMetadata):
                continue
            for chunk in _create_chunk_list(obj):
                want = math.prod(int(x) for x in chunk.sizes)
                got = planned.get((fqn, tuple(int(x) for x in chunk.offsets)), 0)
                if want and got != want:
                    raise _corrupt(f"{self.path}: item {fqn!r}: its saved chunks hold {got} of "
                                   f"the {want} elements this rank loads into (at offsets "
                                   f"{[int(x) for x in chunk.offsets]}): a part is in no chunk",
                                   self.path)

    def _read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        core = self._open()
        self._check_filled(plan, planner)
        reads: list[_TensorRead] = []
        values: list[tuple[Any, torch.Tensor]] = []  # (request, its bytes)
        for req in plan.items:
            fqn = req.storage_index.fqn
            if req.type == LoadItemType.BYTE_IO:
                values.append((req, self._value_buffer(fqn, self._value_size(fqn))))
                continue
            _, dtype, _ = self._item_header(fqn)
            saved_dtype = _metadata.dtype_from_name(dtype)
            target = planner.resolve_tensor(req).detach()
            direct = (target.device.type == "cpu" and target.is_contiguous()
                      and target.dtype == saved_dtype)
            nbytes = math.prod(int(x) for x in req.lengths) * saved_dtype.itemsize
            # The engine finds the saved chunk by where it starts (a box
            # lookup in the index: a few blocks, not the item's every chunk).
            reads.append(_TensorRead(req, [int(x) for x in req.storage_index.offset], target,
                                     saved_dtype, direct, nbytes))
        with Progress(self.progress, sum(r.nbytes for r in reads), "load") as bar:
            # Batches of about 256 MiB: parallel inside, progress between.
            # A batch goes to the planner as soon as it is read, so what
            # lands in host memory first (a GPU target's, another dtype's) is
            # held a batch at a time, never the rank's whole state.
            start, size = 0, 0
            for i in range(len(reads)):
                size += reads[i].nbytes
                if size >= _READ_BATCH_BYTES or i == len(reads) - 1:
                    self._read_batch(core, reads[start:i + 1], planner)
                    bar.update(size)
                    start, size = i + 1, 0
        if values:
            # Non-tensor values (an optimizer's steps and hyper-parameters:
            # hundreds of small items): one call reads them all.
            core.read([_core.ReadRequest(r.storage_index.fqn, address=b.data_ptr(),
                                         nbytes=b.numel()) for r, b in values])
            for req, buf in values:
                what = f"{self.path}: item {req.storage_index.fqn!r}"
                try:
                    value = _values.decode(buf.numpy().tobytes(), what)
                except ValueError as e:
                    raise _corrupt(str(e), self.path) from None
                planner.load_bytes(req, _values.as_torch_bytes(value))
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    @staticmethod
    def _read_batch(core: Any, reads: list[_TensorRead], planner: LoadPlanner) -> None:
        """Reads into each target, or into host memory of the saved dtype and
        then copies into the target; commits each to the planner."""
        dsts = [r.target if r.direct else torch.empty(list(r.req.lengths), dtype=r.saved_dtype)
                for r in reads]
        core.read([_core.ReadRequest(r.req.storage_index.fqn, 0, list(r.req.storage_offsets),
                                     list(r.req.lengths), dst.data_ptr(), r.nbytes,
                                     chunk_at=r.chunk_at)
                   for r, dst in zip(reads, dsts)])
        for r, dst in zip(reads, dsts):
            if not r.direct:
                r.target.copy_(dst)
            planner.commit_tensor(r.req, r.target)

    def _value_buffer(self, fqn: str, n: int) -> torch.Tensor:
        try:
            return torch.empty(n, dtype=torch.uint8)
        except RuntimeError:  # the index claims more than this process can hold
            raise _corrupt(f"{self.path}: item {fqn!r}: a stored value of {n} bytes, more than "
                           "this process can allocate", self.path) from None

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: PathLike) -> bool:
        try:
            return os.path.isfile(os.path.join(os.fspath(checkpoint_id), _core.MANIFEST_NAME))
        except TypeError:
            return False


# -- DCP's entry points, with shardwise's storage filled in ---------------------
# `from shardwise import dcp` in place of `import torch.distributed.checkpoint
# as dcp` is the whole switch: same signatures, same return values. Given a
# storage_writer or storage_reader of its own, each call uses it as it is.

def _writer_for(checkpoint_id: Optional[PathLike], storage_writer: Optional[StorageWriter]
                ) -> StorageWriter:
    if storage_writer is not None:
        return storage_writer
    if checkpoint_id is None:
        raise ValueError("shardwise.dcp.save needs a checkpoint_id (a checkpoint directory "
                         "ROOT/NAME) or a storage_writer")
    return Writer(checkpoint_id)


def save(state_dict: dict[str, Any], *, checkpoint_id: Optional[PathLike] = None,
         storage_writer: Optional[StorageWriter] = None, **kwargs: Any) -> Metadata:
    """``torch.distributed.checkpoint.save`` writing a shardwise checkpoint.

    Takes DCP's keywords (``planner``, ``process_group``, ``no_dist``...)."""
    import torch.distributed.checkpoint as _dcp

    return _dcp.save(state_dict, checkpoint_id=checkpoint_id,
                     storage_writer=_writer_for(checkpoint_id, storage_writer), **kwargs)


def async_save(state_dict: dict[str, Any], *, checkpoint_id: Optional[PathLike] = None,
               storage_writer: Optional[StorageWriter] = None, **kwargs: Any) -> Any:
    """``torch.distributed.checkpoint.async_save`` writing a shardwise
    checkpoint: the state is staged once into shardwise's staging memory and
    persisted in the background. Takes DCP's keywords
    (``async_checkpointer_type``, ``async_stager``, ``planner``...)."""
    import torch.distributed.checkpoint as _dcp

    return _dcp.async_save(state_dict, checkpoint_id=checkpoint_id,
                           storage_writer=_writer_for(checkpoint_id, storage_writer), **kwargs)


def load(state_dict: dict[str, Any], *, checkpoint_id: Optional[PathLike] = None,
         storage_reader: Optional[StorageReader] = None, **kwargs: Any) -> None:
    """``torch.distributed.checkpoint.load`` reading a shardwise checkpoint
    (verified as it is read). Takes DCP's keywords (``planner``,
    ``process_group``, ``no_dist``...)."""
    import torch.distributed.checkpoint as _dcp

    if storage_reader is None:
        if checkpoint_id is None:
            raise ValueError("shardwise.dcp.load needs a checkpoint_id (a checkpoint directory "
                             "ROOT/NAME) or a storage_reader")
        storage_reader = Reader(checkpoint_id)
    if kwargs.get("planner") is None:
        kwargs["planner"] = LoadPlanner()
    try:
        _dcp.load(state_dict, checkpoint_id=checkpoint_id, storage_reader=storage_reader,
                  **kwargs)
    except (AssertionError, CheckpointException) as e:
        # torch's load turns a failed read_metadata() into an
        # AssertionError("metadata is None; ...") inside its
        # CheckpointException: where this rank's read failed, its own error
        # (CorruptCheckpointError naming the file...) is the one to raise.
        cause = getattr(storage_reader, "metadata_error", None)
        if cause is None or "metadata is None" not in str(e):
            raise
        raise cause from e
