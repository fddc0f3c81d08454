"""A small checkpoint manager for training loops, on top of DCP.

::

    ckpt = shardwise.Checkpointer("/fsx/ckpt", keep_last=3)
    step = ckpt.load(state) or 0           # newest valid checkpoint, or None
    while step < total_steps:
        train_step()
        step += 1                          # a checkpoint is named by the step it completes
        if step % 1000 == 0:
            ckpt.save(step, state)         # returns after staging; persists in the background
    ckpt.close()

``state`` is a DCP state dict: plain tensors, DTensors, nested dicts, and
``Stateful`` objects (``torch.distributed.checkpoint.stateful``), e.g. an
``AppState`` built with ``torch.distributed.checkpoint.state_dict.get_state_dict``
for model and optimizer (see examples/python/).
"""
from __future__ import annotations

import errno
import json
import logging
import operator
import os
import secrets
import threading
import time
import warnings
from concurrent.futures import Future as ConcurrentFuture
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Union

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner
from torch.distributed.checkpoint.planner import SavePlanner
from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType
from torch.distributed.checkpoint.stateful import Stateful

from . import _core, _staging, metrics, tiers
from ._progress import ProgressArg
from .dcp import LoadPlanner, Reader, Writer, _corrupt

log = logging.getLogger("shardwise")

__all__ = ["Checkpointer", "SaveHandle"]


class _CheckpointerPlanner(DefaultSavePlanner):
    """DCP's default save planner with plan caching on, so a steady-state
    save skips re-planning. DCP keys its plan cache by the planner's class
    name; each Checkpointer gets a key of its own instead, so two
    Checkpointers saving different states never share plans. A module-level
    class: DCP's process mode pickles the planner to its checkpoint process,
    which plans (and caches) there."""

    def __init__(self, key: str) -> None:
        super().__init__(enable_plan_caching=True)
        self._cached_plans_key = key


def _caching_planner_key() -> Optional[str]:
    """A plan-cache key of this Checkpointer's own; None when this torch has
    no plan caching."""
    import inspect

    if "enable_plan_caching" not in inspect.signature(DefaultSavePlanner.__init__).parameters:
        return None
    global _planners
    _planners += 1
    return f"_ShardwiseCheckpointer{_planners}"


_planners = 0


def _corruption(e: BaseException) -> Optional[BaseException]:
    """The CorruptCheckpointError behind a failed load, if that is why it
    failed (DCP wraps storage errors in CheckpointException)."""
    if isinstance(e, _core.CorruptCheckpointError):
        return e
    if isinstance(e, CheckpointException):
        for f in e.failures.values():
            exc = f[0] if isinstance(f, tuple) else f
            if isinstance(exc, BaseException):
                found = _corruption(exc)
                if found is not None:
                    return found
    cause = e.__cause__ or e.__context__
    return _corruption(cause) if cause is not None and cause is not e else None


def _underlying(e: BaseException) -> BaseException:
    """The first rank's own error inside DCP's CheckpointException, so that
    callers see TypeError, FileExistsError, CorruptCheckpointError... rather
    than a wrapper; other exceptions are returned unchanged."""
    if isinstance(e, CheckpointException):
        for f in e.failures.values():
            exc = f[0] if isinstance(f, tuple) else f
            if isinstance(exc, Exception):
                return exc
    return e


def _problem_of(e: BaseException) -> tuple[str, str, Optional[str], Optional[int]]:
    """An error as it travels to other ranks: (kind, message, path, errno)."""
    if isinstance(e, _core.CorruptCheckpointError):
        return ("corrupt", str(e), getattr(e, "path", None), None)
    if isinstance(e, OSError):
        return ("os", e.strerror or str(e), e.filename, e.errno)
    return ("other", f"{type(e).__name__}: {e}", None, None)


# Failures of a tier (damage, a missing or unreadable file, a replica that
# could not be installed): a tiered load tries the next tier. Anything else
# is the caller's or the machine's, raised on every rank.
_TIER_FAILURES = ("corrupt", "os", "tier")


def _is_damage(problem: Optional[tuple[str, str, Optional[str], Optional[int]]]) -> bool:
    """A damaged or missing checkpoint (load falls back), as opposed to
    an error of the machine or the caller."""
    return problem is not None and (problem[0] == "corrupt" or
                                    (problem[0] == "os" and problem[3] == errno.ENOENT))


def _rebuilt(problem: tuple[str, str, Optional[str], Optional[int]],
             where: str) -> BaseException:
    """Another rank's error, rebuilt with its type, errno and path."""
    kind, text, path, err = problem
    if kind == "corrupt":
        return _corrupt(f"{text} {where}", path)
    if kind == "os" and err is not None:
        return OSError(err, f"{text} {where}", path)  # FileNotFoundError for ENOENT...
    return RuntimeError(f"{text} {where}")


def _as_raised(e: BaseException) -> BaseException:
    """``e`` as callers see it: the rank's own error out of DCP's wrapper,
    caused by the wrapper."""
    inner = _underlying(e)
    if inner is not e:
        inner.__cause__ = e
    return inner


def _reraise(e: BaseException) -> None:
    raise _as_raised(e)


class SaveHandle:
    """One save. ``wait()`` blocks until it is committed and raises its error.

    Attributes:
        step: the step saved.
        stall_seconds: how long ``save()`` blocked the caller.
        skipped: True when ``overlap="skip"`` skipped this save because the
            previous one was still persisting (nothing was saved).
    """

    def __init__(self, step: int, future: Optional[ConcurrentFuture], stall_s: float,
                 snapshot: Optional[_staging.Snapshot] = None, skipped: bool = False) -> None:
        self.step = step
        self.stall_seconds = stall_s
        self.skipped = skipped
        self._future = future
        self._snapshot = snapshot
        self._hooks: list[Any] = []
        self._error_seen = False  # wait() raised it: the next save does not again
        # Whether an optimizer step found the lazy snapshot still copying (and
        # so waited for it).
        self.step_waited = False
        # Retention after this save (rank 0, in the background): done, and
        # why it failed if it did (the save is committed regardless).
        self._retained = threading.Event()
        self._retained.set()
        self.retention_error: Optional[BaseException] = None

    @property
    def copied_bytes(self) -> Optional[int]:
        """Bytes of state the CPU copied for this save (the staging copy,
        once: the writer writes from it). None for a synchronous save, which
        copies while writing."""
        return None if self._snapshot is None else self._snapshot.copied_bytes

    def done(self) -> bool:
        return self._future is None or self._future.done()

    def snapshot_done(self) -> bool:
        return self._snapshot is None or self._snapshot.done()

    def wait_snapshot(self) -> None:
        """Blocks until the lazy snapshot is complete: after this the state
        may change. Needed only by loops that change parameters or optimizer
        state other than through ``optimizer.step()`` (which waits by
        itself). Also removes the step hooks."""
        self._unhook()
        if self._snapshot is not None:
            self._snapshot.wait()

    def _unhook(self) -> None:
        hooks, self._hooks = self._hooks, []
        for h in hooks:
            h.remove()

    def wait(self, timeout: Optional[float] = None) -> None:
        """Blocks until the save is committed; raises its error (once: a save
        whose error was raised here is not reported again by the next
        ``Checkpointer.save``)."""
        if self._future is not None:
            try:
                self._future.result(timeout=timeout)
            except BaseException as e:  # DCP's CheckpointException is a BaseException
                if self._future.done():
                    self._error_seen = True
                _reraise(e)
            finally:
                if self._future.done():
                    self._unhook()
            self._retained.wait(timeout)

    def _unseen_error(self) -> Optional[BaseException]:
        """Waits until the save is done (not for its retention); the error
        ``wait()`` would raise, unless it raised it already (then None)."""
        if self._error_seen or self._future is None:
            return None
        try:
            self._future.result()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:
            return _as_raised(e)
        finally:
            if self._future.done():
                self._unhook()
        return None

    def _report_failure(self, leaving: Optional[BaseException]) -> None:
        """For a save abandoned by a with-block left on ``leaving``: its
        error, unless already raised, is noted on ``leaving`` when the save
        has failed by now, else logged once it fails."""
        future = self._future
        if future is None or self._error_seen:
            return

        def text(e: BaseException) -> str:
            e = _underlying(e)
            return (f"shardwise: the save of step {self.step}, in flight when the "
                    f"Checkpointer's with-block was left on an error, failed: "
                    f"{type(e).__name__}: {e}")

        if future.done():
            e = future.exception()
            note = getattr(leaving, "add_note", None)  # Python 3.11+
            if e is not None and note is not None:
                note(text(e))
            elif e is not None:
                log.error("%s", text(e))
            return

        def report(f: ConcurrentFuture) -> None:
            e = f.exception()
            if e is not None:
                log.error("%s", text(e))

        future.add_done_callback(report)

    def exception(self) -> Optional[BaseException]:
        """The save's error (the rank's own, as ``wait()`` raises it), or
        None while it runs or when it committed."""
        if self._future is None or not self._future.done():
            return None
        e = self._future.exception()
        return None if e is None else _underlying(e)


def _as_step(step: Any) -> int:
    """A step as an int: any integer (numpy's, a 0-d integer tensor), not a
    bool, not negative."""
    tensor = isinstance(step, torch.Tensor)
    try:
        value = (None if isinstance(step, bool) or
                 (tensor and (step.dtype == torch.bool or step.dim() != 0))
                 else operator.index(step))
    except TypeError:
        value = None
    if value is None or value < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    return value


def _as_list(optimizer: Any) -> list[Any]:
    if optimizer is None:
        return []
    return list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]


def _storage_of(t: torch.Tensor) -> int:
    return _staging.local_tensor(t).untyped_storage().data_ptr()


def _changed_only_by_step(optimizers: list[Any]) -> Callable[[torch.Tensor], bool]:
    """Tensors that only ``optimizer.step()`` changes: the parameters and
    the per-parameter state of these optimizers, by storage (state dicts
    hold views of them)."""
    storages = set()
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                storages.add(_storage_of(p))
        for st in opt.state.values():
            for v in st.values():
                if isinstance(v, torch.Tensor):
                    storages.add(_storage_of(v))
    storages.discard(0)
    return lambda t: t.untyped_storage().data_ptr() in storages


_EXISTS_HINT = ("(a job resumed from an older step: Checkpointer.discard_after(step) "
                "removes the abandoned run's later steps; or Checkpointer(..., "
                "replace=True) replaces a step atomically)")


def _max_over(group: Any, *values: int) -> tuple[int, ...]:
    """Each value's maximum over the ranks of ``group``, in one all_reduce
    of a CPU tensor (every rank calls it); without a group, the values."""
    if group is None:
        return tuple(values)
    t = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return tuple(int(x) for x in t.tolist())


def _new_save_token() -> int:
    """A tiered save's token (tiers.SAVE_TOKEN): the time in milliseconds
    above 20 random bits, so that of two saves of one step the later one
    has the larger token (a restore takes the newest complete save)."""
    return (time.time_ns() // 1_000_000) << 20 | secrets.randbits(20)


def _raise_gc_errors(report: Any, root: str) -> None:
    """OSError naming what gc could not remove in ``root`` (it went on past
    each; the checkpoints saved stand), if anything."""
    if report.errors:
        n = len(report.errors)
        raise OSError(f"retention in {root} left {n} entr{'y' if n == 1 else 'ies'} in place: "
                      + "; ".join(report.errors))


class Checkpointer:
    """Saves and loads a training job's state under ``root``.

    Args:
        root: the checkpoint root (created if missing); checkpoints are named
            ``step-%012d``.
        keep_last: after each save, keep only the N newest checkpoints.
        keep_every: also keep those whose step is a multiple of K.
        async_mode: ``"thread"`` (default) or ``"process"`` for
            ``dcp.async_save``'s executor, or ``None`` to always save
            synchronously.
        snapshot: ``"eager"`` (default): ``save()`` returns once the state
            is copied to host memory. ``"lazy"``: ``save(..., optimizer=opt)``
            returns at once; parameters and optimizer state are copied in the
            background while the next forward and backward run, and
            ``opt.step()`` waits for that copy (see docs/python.md, "Lazy
            snapshot", for the contract).
        overlap: when a save is requested while the previous one still
            persists: ``"wait"`` (default) for it, or ``"skip"`` this save
            (the handle says ``skipped``).
        process_group: the group whose ranks checkpoint together. By default,
            when torch.distributed is initialized, a new gloo group over all
            ranks, created here (so every rank must construct the
            Checkpointer): background saves run collectives, and on the
            training's own group they would interleave with the training's
            collectives and deadlock. Works without torch.distributed too.
            With ``overlap="skip"`` the Checkpointer makes one more gloo group
            over the same ranks; for a group of part of the job, only its
            ranks make it, and they must then belong to equally many groups.
        progress: True for progress bars/log lines, or a callable
            ``(done_bytes, total_bytes)``.
        staging_budget: bytes (or a size such as ``"8GiB"``) of staging
            memory one save may use. A state over the budget is not staged:
            ``save()`` returns once the writer has copied its last byte into
            the I/O buffers (bounded memory, at the price of a stall of
            about the write time; in process mode, of the whole save).
            Default: no limit.
        local_root: a node-local directory (NVMe, ``/dev/shm``) for the
            local tier: every save goes there first, as a checkpoint per
            rank (``LOCAL_ROOT/rank-RRRRR/step-N``), and only every
            ``persist_every``-th save also to ``root``. Only as durable as
            its node: see docs/tiers.md. Default: no local tier.
        persist_every: with ``local_root``, every K-th save (counted from the
            first save of this Checkpointer) also goes to ``root``, from the
            same staged bytes. Default 1: every save.
        keep_local: with ``local_root``, keep the N newest local checkpoints
            (and replicas) per rank. Default 2. The shard files retention
            removes are overwritten by the next local save instead of new
            ones (on tmpfs: no new pages); ``recycle_files=0`` turns that
            off (docs/tiers.md).
        replicas: with ``local_root``, 1 to send each rank's local
            checkpoint to a partner rank on the next node (a fixed ring over
            nodes), which keeps it in its own local tier: losing one node
            loses no local checkpoint. Default 0.
        replace: False (default): saving a step that already exists (on
            the root, or on this rank's local tier) raises
            ``FileExistsError``. True: the save replaces it atomically. A
            job resumed from an older step had better ``discard_after`` it:
            the abandoned run's later steps would still be loaded and kept.
        pin_memory, staging_threads: as for :class:`shardwise.dcp.Writer`.
        **engine_options: ``io_backend``, ``queue_depth``, ``io_unit``,
            ``checksum_block``, ``direct_io``, ``commit_timeout_s``,
            ``recycle_files`` (the local tier's).

    Staging memory belongs to the process (``shardwise.release_staging()``
    frees it). Retention never deletes what ``latest`` names, or anything
    newer than the newest valid checkpoint.
    """

    def __init__(self, root: Union[str, "os.PathLike[str]"], *, keep_last: Optional[int] = None,
                 keep_every: Optional[int] = None, async_mode: Optional[str] = "thread",
                 snapshot: str = "eager", overlap: str = "wait",
                 process_group: Optional[Any] = None, progress: ProgressArg = None,
                 pin_memory: Optional[bool] = None, staging_threads: Optional[int] = None,
                 staging_budget: Optional[Union[int, str]] = None,
                 local_root: Optional[Union[str, "os.PathLike[str]"]] = None,
                 persist_every: int = 1, keep_local: int = 2, replicas: int = 0,
                 replace: bool = False, **engine_options: Any) -> None:
        if keep_last is not None and keep_last < 1:
            raise ValueError("keep_last must be >= 1")
        if keep_every is not None and keep_every < 1:
            raise ValueError("keep_every must be >= 1")
        if async_mode not in ("thread", "process", None):
            raise ValueError("async_mode must be 'thread', 'process' or None")
        if snapshot not in ("eager", "lazy"):
            raise ValueError("snapshot must be 'eager' or 'lazy'")
        if overlap not in ("wait", "skip"):
            raise ValueError("overlap must be 'wait' or 'skip'")
        if snapshot == "lazy" and async_mode is None:
            raise ValueError("snapshot='lazy' needs an async_mode: a synchronous save has "
                             "nothing to overlap the copy with")
        if persist_every < 1:
            raise ValueError("persist_every must be >= 1")
        if keep_local < 1:
            raise ValueError("keep_local must be >= 1")
        if replicas not in (0, 1):
            raise ValueError("replicas must be 0 or 1")
        if local_root is None and (replicas or persist_every != 1):
            raise ValueError("replicas and persist_every need a local_root")
        if local_root is not None and (snapshot == "lazy" or async_mode == "process"):
            raise ValueError("a local tier (local_root) works with snapshot='eager' and "
                             "async_mode 'thread' or None")
        if (local_root is not None and process_group is not None and dist.is_initialized()
                and dist.get_world_size(process_group) != dist.get_world_size()):
            # Partners and the step decision span the job (a group of their
            # own over every rank): a part of the job cannot tier alone.
            raise ValueError("a local tier (local_root) needs the whole job: process_group "
                             f"has {dist.get_world_size(process_group)} of the "
                             f"{dist.get_world_size()} ranks; pass none (every rank)")
        self.root = os.path.abspath(os.fspath(root))
        self.keep_last, self.keep_every = keep_last, keep_every
        self.async_mode = async_mode
        self.snapshot = snapshot
        self.overlap = overlap
        if process_group is None and dist.is_available() and dist.is_initialized():
            process_group = self._new_group(None)
        self.process_group = process_group
        # Before each save the ranks decide together whether to skip it
        # (overlap="skip") and whether the previous save failed anywhere (then
        # every rank raises), in an all_reduce of a CPU tensor. A group of its
        # own with overlap="skip" (the previous save's collectives may still
        # run on process_group), or where process_group has no CPU backend
        # (a caller's NCCL group, with which synchronous saves work).
        self._decide_group = process_group
        if process_group is not None and (overlap == "skip" or
                                          "gloo" not in str(dist.get_backend(process_group))):
            self._decide_group = self._new_group(process_group)
        self.progress = progress
        self.engine_options = engine_options
        # In process mode the staged tensors go to DCP's checkpoint process:
        # in shared memory, they get there without a copy.
        self._writer = Writer(None, progress=progress, pin_memory=pin_memory,
                              shared_memory=async_mode == "process", replace=replace,
                              staging_threads=staging_threads, **engine_options)
        self._writer._exists_hint = _EXISTS_HINT
        self._replace = replace
        # Steps a load() skipped because their checkpoint failed
        # verification: the resumed run's save of such a step replaces it
        # (else it would fail there, on every rank, at each restart).
        self._damaged_steps: set[int] = set()
        if isinstance(staging_budget, str):
            staging_budget = _core.parse_size(staging_budget)
        if staging_budget is not None and staging_budget < 0:
            raise ValueError("staging_budget must be >= 0")
        self._writer._budget = staging_budget
        self._planner_key = _caching_planner_key()
        self._writer._series = self._planner_key  # its save ids (dcp.Writer.prepare_global_plan)
        self._pending: Optional[SaveHandle] = None
        self._repo = None
        self._repo_lock = threading.Lock()
        self._claimed = False
        if self._rank() == 0:
            self._core_repo()  # creates the root, each new directory durable in its parent
        # The local tier (docs/tiers.md).
        self.local_root = None if local_root is None else os.path.abspath(os.fspath(local_root))
        self._foreign_local: Optional[str] = None
        self.persist_every, self.keep_local, self.replicas = persist_every, keep_local, replicas
        self.last_restore: Optional[tiers.TierReport] = None
        self._tier_saves = 0
        if self.local_root is not None:
            # Each rank's local checkpoint is a save of its own (no_dist), on
            # which DCP warns every time that it assumes a single process.
            warnings.filterwarnings("ignore", message=r"torch\.distributed is disabled, "
                                    r"unavailable or uninitialized, assuming the intent is to "
                                    r"(save|load) in a single process")
            # Retention on the local tier keeps the removed checkpoints' files
            # for the next save to overwrite: on tmpfs that saves allocating
            # new pages (docs/tiers.md).
            self.local_options = {"recycle_files": 1, **engine_options}
            self._local_writer = Writer(None, replace=replace, **self.local_options)
            self._local_writer._keep_staged = True
            self._local_writer._exists_hint = _EXISTS_HINT
            # A new save id every local save: a series of its own, so that
            # they never push the root's series out of the count.
            self._local_writer._series = f"{self._planner_key}:local"
            self._topology = tiers.Topology.gather(self.process_group)
            # Replicas travel on a group of their own, so that they never
            # interleave with a save's collectives.
            self._replica_group = (self._new_group(None)
                                   if dist.is_available() and dist.is_initialized() else None)
            if replicas and len(self._topology.nodes) < 2:
                log.warning("replicas=1: all ranks are on one node (%s); no replica is made",
                            tiers.node_name())
            self._background = ThreadPoolExecutor(1, thread_name_prefix="shardwise-tiers")
            self._buffers = tiers.Buffers()
            _core.Repository(tiers.rank_dir(self.local_root, self._rank()), self.local_options,
                             True)  # creates it (as the root)
            # Another job's local tier is never read nor written: loads skip
            # it (warning), saves fail on every rank saying why.
            self._foreign_local = tiers.mark_local_root(self.local_root, self.root)

    # -- helpers -------------------------------------------------------------------
    @staticmethod
    def _new_group(like: Any) -> Any:
        """A gloo group over the ranks of ``like`` (None, or a group of every
        rank: all of them, made as any group, which every rank constructs).
        For a group of part of the ranks only its ranks take part in making
        it (torch names such a group from each rank's own count of groups,
        so those ranks must belong to as many groups as each other)."""
        if like is None or dist.get_world_size(like) == dist.get_world_size():
            return dist.new_group(backend="gloo")
        return dist.new_group(ranks=dist.get_process_group_ranks(like), backend="gloo",
                              use_local_synchronization=True)

    def _rank(self) -> int:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(self.process_group)
        return 0

    def _planner(self) -> Any:
        """DCP's default save planner, with plan caching where torch has it."""
        return _CheckpointerPlanner(self._planner_key) if self._planner_key else None

    def _core_repo(self) -> Any:
        with self._repo_lock:  # retention uses it from the background
            if self._repo is None:
                self._repo = _core.Repository(self.root, self.engine_options, True)
            return self._repo

    def _apply_retention(self) -> None:
        """Rank 0: the retention policy, once a save committed."""
        if not (self.keep_last or self.keep_every) or self._rank() != 0:
            return
        report = self._core_repo().gc(keep_last=self.keep_last, keep_every=self.keep_every)
        if report.removed_checkpoints:
            log.info("retention removed %s", ", ".join(report.removed_checkpoints))
        if report.kept_unexported:
            log.info("retention kept %s: not exported to S3 yet",
                     ", ".join(report.kept_unexported))
        _raise_gc_errors(report, self.root)

    def _record_failure(self) -> None:
        # Committed saves are recorded by the coordinator's commit; a failed
        # one here, once per job.
        if self._rank() == 0:
            metrics.record_save_failure(self.root)

    def _retain(self, handle: SaveHandle) -> None:
        """Retention once ``handle``'s save committed. A failure is logged
        and kept in ``handle.retention_error``: the save stands, and no rank
        leaves the collective sequence for it."""
        try:
            self._apply_retention()
        except Exception as e:
            handle.retention_error = e
            log.warning("retention after step %d failed: %s", handle.step, e)

    def _retain_after(self, handle: SaveHandle, future: ConcurrentFuture) -> None:
        # In the background, as part of the save: the training loop never
        # waits for deletions.
        handle._retained.clear()

        def after(f: ConcurrentFuture) -> None:
            try:
                if f.exception() is not None:
                    self._record_failure()
                else:
                    self._retain(handle)
            finally:
                handle._retained.set()

        future.add_done_callback(after)

    def _before_save(self, step: int) -> bool:
        """Settles the previous save before saving ``step``, on every rank
        together; True when this save is to be skipped. One all_reduce
        decides two things (on process_group, where each rank issues it
        after its own previous save is done, so after that save's
        collectives; on a gloo group of its own with overlap="skip" or a
        process_group without a CPU backend):

        - overlap="skip": whether the previous save still persists on any
          rank; then every rank skips, and the previous save stays pending;
        - whether the previous save failed on a rank that has not raised
          that error yet (through its handle's ``wait()``); then every rank
          raises, so that no rank goes on alone into the save's collectives
          while another stops.
        """
        pending = self._pending
        busy = self.overlap == "skip" and pending is not None and not pending.done()
        error = None if busy or pending is None else pending._unseen_error()
        flags = _max_over(self._decide_group, int(busy), int(error is not None))
        if flags[0]:
            return True
        if pending is not None:
            pending._retained.wait()  # rank 0's retention of it, before the next save
            pending._error_seen = True  # raised below, here or by every rank
        self._pending = None
        if flags[1]:  # alone (no process group), this rank's own error
            self._raise_everywhere(error, f", in the save before step {step}")
        return False

    def _barrier(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.barrier(group=self.process_group)

    def _claim(self) -> None:
        """One job writes a root: fail before staging anything if another
        job writes here (its coordinator holds ROOT/.writer.lock). Rank 0
        claims; the first time, every rank learns how that went, so that a
        refusal stops every rank rather than leave the others waiting in
        the save's collectives."""
        error: Optional[Exception] = None
        if self._rank() == 0:
            try:
                self._core_repo().lock_for_writing()
            except Exception as e:
                error = e
        if not self._claimed and self.process_group is not None:
            box: list[Any] = [None if error is None else str(error)]
            dist.broadcast_object_list(box, group=self.process_group, group_src=0)
            if error is None and box[0] is not None:
                raise _core.AbortedError(f"rank 0 could not claim {self.root}: {box[0]}")
        if error is not None:
            raise error
        if not self._claimed and self._rank() == 0:
            # where the shards go, and whether Lustre layouts apply
            log.info("checkpoint root %s: %s", self.root, self._core_repo().filesystem_summary())
        self._claimed = True

    # -- public API ----------------------------------------------------------------
    def save(self, step: int, state_dict: dict[str, Any], *, blocking: bool = False,
             optimizer: Any = None) -> SaveHandle:
        """Saves ``state_dict`` as checkpoint ``step``.

        Non-blocking (the default): returns once the state is staged in host
        memory (eager snapshot), or at once (lazy snapshot); the save
        persists in the background. ``blocking=True`` returns once the
        checkpoint is committed.

        optimizer: the optimizer(s) whose ``step()`` changes the parameters
            and optimizer state; needed with ``snapshot="lazy"``: their next
            ``step()`` waits until the copy of those is complete.
        """
        step = _as_step(step)
        optimizers = _as_list(optimizer)
        lazy = self.snapshot == "lazy" and not blocking
        if lazy and not optimizers:
            raise ValueError("snapshot='lazy' needs save(..., optimizer=opt): the copy of "
                             "parameters and optimizer state runs until opt.step()")
        if lazy:
            for opt in optimizers:
                if not callable(getattr(opt, "register_step_pre_hook", None)):
                    raise TypeError(f"snapshot='lazy': optimizer {type(opt).__name__} has no "
                                    "register_step_pre_hook (a torch.optim.Optimizer has)")
        # Every rank joins the decision, whatever its own state.
        t0 = time.monotonic()
        if self._before_save(step):
            log.info("skipped step %d: the previous save is still persisting", step)
            return SaveHandle(step, None, 0.0, skipped=True)
        if self.local_root is not None:
            return self._save_tiered(step, state_dict, blocking, t0)
        self._claim()
        path = os.path.join(self.root, tiers.step_name(step))
        self._writer.step = step
        # The previous save is done (or this one was skipped): the writer's
        # flags are this save's.
        self._writer.replace = self._replace or step in self._damaged_steps
        if step in self._damaged_steps:
            self._damaged_steps.discard(step)
            log.warning("step %d: its checkpoint failed verification when the job loaded an "
                        "older one; this save replaces it", step)
        if blocking or self.async_mode is None:
            try:
                dcp.save(state_dict, storage_writer=self._writer, checkpoint_id=path,
                         process_group=self.process_group, planner=self._planner())
            except BaseException as e:
                self._record_failure()
                _reraise(e)
            stall = time.monotonic() - t0
            handle = SaveHandle(step, None, stall)
            self._retain(handle)
            if self.keep_last or self.keep_every:
                self._barrier()  # a blocking save returns with every rank seeing the same steps
            log.info("saved %s in %.3f s", path, stall)
            return handle
        kind = (AsyncCheckpointerType.PROCESS if self.async_mode == "process"
                else AsyncCheckpointerType.THREAD)
        self._writer._lazy = _changed_only_by_step(optimizers) if lazy else None
        # stage() hands DCP a future, completed below once this save's
        # foreground work is done (and, for a lazy snapshot, once its copy is
        # done: in process mode the staged tensors are sent to the checkpoint
        # process only then).
        self._writer._hold = True
        try:
            state_dict = self._stage_together(step, state_dict)
            response = dcp.async_save(state_dict, storage_writer=self._writer,
                                      checkpoint_id=path, process_group=self.process_group,
                                      async_checkpointer_type=kind, planner=self._planner())
        except BaseException as e:
            self._writer._release_held(error=e)
            raise
        finally:
            self._writer._lazy = None
            self._writer._hold = False
            self._writer._prestaged = None  # async_save may have failed before its stage()
        future = getattr(response, "upload_completion", response)
        snap = self._writer._snapshot
        handle = SaveHandle(step, future, 0.0, snap)
        try:
            if lazy and snap is not None and not snap.done():
                handle._hooks = [opt.register_step_pre_hook(self._step_hook(handle))
                                 for opt in optimizers]
        except BaseException as e:
            # DCP's thread waits for the held future: fail the save there too.
            handle._unhook()
            self._writer._release_held(error=e)
            raise
        if snap is not None:
            # Once persisted, its staged memory may serve the next save (in
            # process mode the checkpoint process is done with it then).
            future.add_done_callback(lambda _f, s=snap: s.release())
        self._retain_after(handle, future)
        self._pending = handle
        stream = self._writer._stream
        self._writer._release_held()
        if stream is not None:
            # Over the staging budget: the state is read while it is written;
            # return once the writer is done reading it (or the save failed).
            while not stream.wait(0.05) and not future.done():
                pass
        handle.stall_seconds = time.monotonic() - t0
        log.debug("staged %s in %.3f s; persisting in the background", path,
                  handle.stall_seconds)
        return handle

    def _stage_together(self, step: int, state_dict: dict[str, Any]) -> dict[str, Any]:
        """Stages the state on this rank (what DCP's ``async_save`` would do
        first: ``Stateful`` objects give their state dicts, then the
        writer's ``stage()``), then decides with every rank whether staging
        worked everywhere, before any rank starts the save's collectives
        (DCP's planning, or in process mode its checkpoint process's set-up):
        a rank that failed alone (memory, a ``Stateful`` that raises) would
        leave the others waiting there. Returns the state dict to pass to
        ``async_save``, whose ``stage()`` then hands back what was staged."""
        error: Optional[Exception] = None
        try:
            plain = {k: v.state_dict() if isinstance(v, Stateful) else v
                     for k, v in state_dict.items()}
            self._writer._prestaged = self._writer.stage(plain)
        except Exception as e:  # decided together below
            error = e
        (failed,) = _max_over(self._decide_group, int(error is not None))
        if not failed:
            return plain
        snap = self._writer._snapshot if error is None else None
        raised = error or RuntimeError(f"staging of step {step} failed on another rank: "
                                       "nothing was saved (that rank raised why)")
        self._writer._prestaged = None
        self._writer._release_held(error=raised)
        if snap is not None:
            snap.release()
        self._record_failure()
        raise raised

    @staticmethod
    def _step_hook(handle: SaveHandle) -> Callable[..., None]:
        def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
            # One shot: the first step after a lazy save waits for its copy
            # (device copies: ordered before the step's kernels, no host wait).
            handle._unhook()
            if handle._snapshot is not None:
                handle.step_waited = not handle._snapshot.done()
                handle._snapshot.wait_on_device()
        return hook

    def _wait_previous(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not pending._error_seen:  # else the caller saw it fail
            pending.wait()

    def wait(self) -> None:
        """Waits for the save in flight (and, on rank 0, its retention);
        raises its error. With retention on and torch.distributed
        initialized, this is collective (call it on every rank, as close()
        does): every rank then sees the same steps."""
        error: Optional[BaseException] = None
        try:
            self._wait_previous()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # every rank still reaches the barrier
            error = e
        if self.keep_last or self.keep_every:
            self._barrier()
        if error is not None:
            raise error

    def steps(self) -> list[int]:
        """Steps of the committed checkpoints, oldest first."""
        return sorted(tiers.steps_in(self._core_repo().list()))

    def latest_step(self) -> Optional[int]:
        steps = self.steps()
        return steps[-1] if steps else None

    def discard_after(self, step: int) -> list[int]:
        """Deletes every checkpoint of a step after ``step``: on the root,
        and with a local tier each rank's local copies and the replicas it
        holds. For a job resumed from an older step: the abandoned run's
        later steps would otherwise be what a restart loads, what retention
        keeps, and what the resumed run's saves of those steps collide with.
        Damaged ones go too (a directory named as a later step whose
        manifest does not check out, which ``steps()`` does not list; each
        is logged). Collective (call it on every rank). Returns, on every
        rank, the steps deleted from the root."""
        step = _as_step(step)
        self._settle("waiting for the previous save")
        self._claim()

        def later_in(repo: Any) -> tuple[list[int], list[int]]:
            listing = repo.list()
            return (sorted(s for s in tiers.steps_in(listing) if s > step),
                    sorted(s for s in tiers.damaged_steps_in(listing) if s > step))

        later, damaged = self._of_rank0(lambda: later_in(self._core_repo()),
                                        "listing the checkpoints")
        error: Optional[BaseException] = None
        try:
            if self._rank() == 0:
                self._discard(self._core_repo(), later, damaged)
            if self.local_root is not None and self._foreign_local is None:
                for root in self._local_roots():
                    if os.path.isdir(root):
                        repo = _core.Repository(root, self.local_options, True)
                        self._discard(repo, *later_in(repo))
        except Exception as e:
            error = e
        self._raise_everywhere(error, f", discarding the steps after {step}")
        if later or damaged:
            log.info("discarded steps %s of %s", ", ".join(map(str, later + damaged)), self.root)
        return sorted(later + damaged)

    @staticmethod
    def _discard(repo: Any, steps: list[int], damaged: list[int]) -> None:
        for s in steps:
            repo.delete(tiers.step_name(s))
        for s in damaged:
            log.warning("discarding damaged checkpoint %s", os.path.join(repo.root,
                                                                         tiers.step_name(s)))
            repo.delete(tiers.step_name(s), damaged_too=True)

    def _settle(self, what: str) -> None:
        """wait(), whose error (a failed save) every rank raises, before a
        collective that follows: a rank that saw the error already through
        its handle does not raise it again, and must not go on alone."""
        error: Optional[BaseException] = None
        try:
            self.wait()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:
            error = e
        self._raise_everywhere(error, f", {what}")

    def load(self, state_dict: dict[str, Any], step: Optional[int] = None) -> Optional[int]:
        """Loads checkpoint ``step`` (default: the newest valid one) into
        ``state_dict`` in place; returns the step loaded, or None when there
        is no checkpoint.

        When the newest checkpoint fails verification, the reason is logged
        and the previous one is tried, and so on; when every one fails,
        :class:`CorruptCheckpointError` lists them. With an explicit
        ``step`` its error is raised instead: ``FileNotFoundError`` when
        there is no such checkpoint, :class:`CorruptCheckpointError` (naming
        the item and the file) when it is damaged. A load that fails may
        have written part of ``state_dict``: a fallback overwrites it all.
        All ranks take the same decisions: rank 0 lists the checkpoints,
        and every rank's errors reach every rank.
        """
        step = None if step is None else _as_step(step)
        self._settle("waiting for the previous save before loading")
        if self.local_root is not None:
            return self._load_tiered(state_dict, step)
        candidates = [step] if step is not None else list(reversed(self._steps_of_rank0()))
        failed: list[str] = []
        for s in candidates:
            path = os.path.join(self.root, tiers.step_name(s))
            reader = Reader(path, progress=self.progress)
            try:
                self._open_everywhere(reader)
                dcp.load(state_dict, storage_reader=reader, process_group=self.process_group,
                         planner=LoadPlanner())
                log.info("loaded %s", path)
                return s
            except BaseException as e:  # DCP's CheckpointException is a BaseException
                corrupt = None if isinstance(e, (KeyboardInterrupt, SystemExit)) else _corruption(e)
                if corrupt is None and step is None and isinstance(e, FileNotFoundError):
                    corrupt = e  # removed since it was listed (gc): the next one
                if corrupt is None:
                    _reraise(e)
                if step is not None:
                    if corrupt is e:
                        raise
                    raise corrupt from e
                failed.append(f"step {s}: {corrupt}")
                if not isinstance(corrupt, FileNotFoundError):  # (gone is not damaged)
                    self._damaged_steps.add(s)
                log.warning("checkpoint %s failed verification, falling back to an older "
                            "one: %s", path, corrupt)
        if failed:
            raise _corrupt(f"no checkpoint under {self.root} could be loaded, every one failed "
                           "verification: " + "; ".join(failed), self.root)
        return None

    def _steps_of_rank0(self) -> list[int]:
        """``steps()`` as rank 0 lists them, on every rank: the ranks try the
        same checkpoints in the same order whatever each one's view of the
        root (and only one rank reads every manifest)."""
        return list(self._of_rank0(self.steps, "listing the checkpoints"))

    def _of_rank0(self, what: Callable[[], Any], doing: str) -> Any:
        """``what()`` as rank 0 computes it, on every rank. Rank 0's error
        is every rank's."""
        if self.process_group is None:
            return what()
        box: list[Any] = [None]
        mine: Optional[BaseException] = None
        if self._rank() == 0:
            try:
                box[0] = ("ok", what())
            except Exception as e:
                mine, box[0] = e, ("error", _problem_of(e))
        dist.broadcast_object_list(box, group=self.process_group, group_src=0)
        kind, value = box[0]
        if mine is not None:
            raise mine
        if kind == "error":
            raise _rebuilt(value, f"(rank 0, {doing})")
        return value

    def _open_everywhere(self, reader: Reader) -> None:
        """Opens ``reader`` (its manifest, index and DCP metadata) on every rank, and
        raises on every rank if it failed on any: DCP would replace such an
        error by an AssertionError that drops it, and a rank alone would
        then fall back. Every rank raises an error of the same kind, so
        that load() takes the same branch everywhere."""
        mine: Optional[BaseException] = None
        try:
            reader.read_metadata()  # the manifest, the index's items, the "dcp" block
        except Exception as e:
            mine = e
        self._raise_everywhere(mine)

    def _raise_everywhere(self, mine: Optional[BaseException], what: str = "") -> None:
        """Gathers every rank's error (None: none) and raises on every rank
        if any rank has one. What every rank raises is of one kind: damage
        (CorruptCheckpointError, or a missing checkpoint: FileNotFoundError)
        only when every error is damage; any other error otherwise. A rank
        raises its own error when it is of that kind, else the first such
        rank's, rebuilt with its type, errno and path."""
        problem = None if mine is None else _problem_of(mine)
        everyone = [problem]
        if self.process_group is not None:
            everyone = [None] * dist.get_world_size(self.process_group)
            dist.all_gather_object(everyone, problem, group=self.process_group)
        failed = [(r, p) for r, p in enumerate(everyone) if p is not None]
        if not failed:
            return
        serious = [(r, p) for r, p in failed if not _is_damage(p)]
        chosen = serious or failed
        if mine is not None and (not serious or not _is_damage(problem)):
            raise mine
        r, p = chosen[0]
        raise _rebuilt(p, f"(rank {r}{what})")

    def close(self) -> None:
        """Waits for the save in flight (collective, as ``wait()``). The
        Checkpointer can still list and load after. The staging memory stays
        with the process for the next save; ``shardwise.release_staging()``
        frees it. Its gloo groups live until the process group is destroyed
        (``dist.destroy_process_group()``)."""
        try:
            self.wait()
        finally:
            self._writer.close()
            if self.local_root is not None:
                self._background.shutdown(wait=True)
                self._buffers.clear()
            self._drop_plan_cache()

    def _drop_plan_cache(self) -> None:
        """Forgets this Checkpointer's cached save plans (DCP keeps them in
        class-level dicts, on rank 0 every rank's plans and the metadata)
        and its save-id series: a job that makes a Checkpointer per phase
        does not keep every old one's. A later save plans anew."""
        key = self._planner_key
        if key is None:
            return
        for name in ("_cached_save_plan", "_cached_final_save_plan", "_cached_all_plans",
                     "_cached_global_plan", "_cached_metadata"):
            cache = getattr(SavePlanner, name, None)
            if isinstance(cache, dict):
                cache.pop(key, None)
        for series in (key, f"{key}:local"):
            Writer._nonces.pop(series, None)
            Writer._saves_under.pop(series, None)

    # -- tiers (docs/tiers.md) -----------------------------------------------------
    def _save_tiered(self, step: int, state_dict: dict[str, Any], blocking: bool,
                     t0: float) -> SaveHandle:
        """Stages once; in the background, writes this rank's local
        checkpoint, sends it to the partner, and every K-th time saves to
        the root from the same staged bytes."""
        self._tier_saves += 1
        persist = self._tier_saves % self.persist_every == 0
        if persist:
            self._claim()
        self._writer.step = self._local_writer.step = step
        # What DCP's save does first: Stateful objects give their state dicts.
        stage_error: Optional[BaseException] = None
        staged: Any = None
        try:
            plain = {k: v.state_dict() if isinstance(v, Stateful) else v
                     for k, v in state_dict.items()}
            staged = self._writer.stage(plain)
        except Exception as e:  # decided together below: no rank goes on alone
            stage_error = e
        snap = self._writer._snapshot if stage_error is None else None
        handle = SaveHandle(step, None, 0.0, snap)

        def work() -> None:
            try:
                self._persist_tiers(step, staged, persist, handle, save_token)
            finally:
                if snap is not None:
                    snap.release()

        # snap None: over the staging budget, the live state is written as
        # it is, so the caller waits. Decided together: a failure must come
        # out of the same call on every rank.
        # Rank 0 draws the save's token (tiers.SAVE_TOKEN), in the same
        # all_reduce: every copy of this save, on every tier, records it.
        wait, failed, token = self._max_over_ranks(
            int(blocking or self.async_mode is None or snap is None), int(stage_error is not None),
            _new_save_token() if self._rank() == 0 else 0)
        save_token = f"{token:016x}"
        if failed:
            self._record_failure()
            if snap is not None:
                snap.release()
            if stage_error is not None:
                raise stage_error
            raise RuntimeError(f"staging of step {step} failed on another rank")
        if wait:
            try:
                work()
            except BaseException as e:
                self._record_failure()
                _reraise(e)
            handle._snapshot = None
            handle.stall_seconds = time.monotonic() - t0
            return handle
        future = self._background.submit(work)
        handle._future = future
        handle.stall_seconds = time.monotonic() - t0
        future.add_done_callback(lambda f: f.exception() is not None and self._record_failure())
        self._pending = handle
        return handle

    def _persist_tiers(self, step: int, staged: Any, persist: bool,
                       handle: SaveHandle, save_token: str) -> None:
        name = tiers.step_name(step)
        # Saves run one at a time (the next waits or is skipped): the
        # writers carry this one's token until it is done.
        self._local_writer.user_json = self._writer.user_json = json.dumps(
            {tiers.SAVE_TOKEN: save_token})
        rank, topo = self._rank(), self._topology
        own_root = tiers.rank_dir(self.local_root, rank)
        error: Optional[BaseException] = None
        sd: Any = None
        try:
            if self._foreign_local is not None:
                raise RuntimeError(self._foreign_local)
            sd = staged.result() if isinstance(staged, ConcurrentFuture) else staged
            # The staged memory stays this save's until work() releases it:
            # the root's save below writes from it too.
            dcp.save(sd, storage_writer=self._local_writer,
                     checkpoint_id=os.path.join(own_root, name), no_dist=True)
        except BaseException as e:  # every rank learns of it below: none waits for a replica
            error = e
        failed = self._all_ranks(error is not None)
        if failed:
            if error is not None:
                _reraise(error)
            # Never a step committed on some ranks only: a later restore
            # could mix this copy with another run's of the same step.
            try:
                _core.Repository(own_root, self.local_options, True).delete(name)
            except Exception as e:
                log.warning("could not remove %s of a failed save: %s",
                            os.path.join(own_root, name), e)
            raise RuntimeError(f"local save of step {step} failed on rank(s) "
                               f"{', '.join(map(str, failed))}")
        if self.replicas and len(topo.nodes) > 1:
            self._replicate(name, own_root)
        if persist:
            dcp.save(sd, storage_writer=self._writer,
                     checkpoint_id=os.path.join(self.root, name),
                     process_group=self.process_group, planner=self._planner())
            self._retain(handle)
        try:
            self._retain_local()
        except Exception as e:  # the checkpoints stand; the next save retries
            handle.retention_error = e
            log.warning("local retention after step %d failed: %s", step, e)

    def _gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, by rank, over the tiers' own group (every
        rank calls it; without torch.distributed, this rank's alone)."""
        group = self._replica_group
        if group is None:
            return [value]
        out: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(out, value, group=group)
        return out

    def _max_over_ranks(self, *values: int) -> tuple[int, ...]:
        """Each value's maximum over the ranks, on the tiers' group."""
        return _max_over(self._replica_group, *values)

    def _any_ranks(self, *flags: bool) -> tuple[bool, ...]:
        """Whether each flag holds on any rank (every rank calls it)."""
        return tuple(bool(x) for x in self._max_over_ranks(*(int(f) for f in flags)))

    def _all_ranks(self, failed: bool) -> list[int]:
        """The ranks for which ``failed`` is True (every rank calls it)."""
        return [r for r, f in enumerate(self._gather(failed)) if f]

    def _replicate(self, name: str, own_root: str) -> None:
        """Sends this rank's local checkpoint NAME to its partner, and
        installs (verified) the ones this rank holds for others."""
        topo, rank = self._topology, self._rank()
        try:
            parts = tiers.pack_checkpoint(os.path.join(own_root, name))
        except OSError as e:  # sent empty: the partner refuses it; no rank waits for it
            log.warning("local checkpoint %s unreadable, no replica sent: %s", name, e)
            parts = []
        got = tiers.exchange(self._replica_group, {topo.partner(rank): parts}, topo.sources(rank),
                             self._buffers)
        for src, data in got.items():
            held = tiers.replica_dir(self.local_root, src)
            try:
                if self._writer.replace and os.path.isdir(os.path.join(held, name)):
                    # The replaced step's old replica must not outlive it.
                    _core.Repository(held, self.local_options, True).delete(name, True)
                tiers.install(held, name, data, self.local_options)
            except Exception as e:  # the local checkpoints stand; this replica is missing
                log.warning("replica of rank %d's %s not kept: %s", src, name, e)

    def _local_roots(self) -> list[str]:
        """This rank's local tier and the replica roots it holds."""
        rank = self._rank()
        roots = [tiers.rank_dir(self.local_root, rank)]
        return roots + [tiers.replica_dir(self.local_root, s)
                        for s in self._topology.sources(rank)]

    def _retain_local(self) -> None:
        for root in self._local_roots():
            if os.path.isdir(root):
                report = _core.Repository(root, self.local_options, True).gc(
                    keep_last=self.keep_local)
                _raise_gc_errors(report, root)

    def _load_tiered(self, state_dict: dict[str, Any], step: Optional[int]) -> Optional[int]:
        """The newest step every rank can read from some tier; each rank
        reads its own part from the fastest tier that holds it intact."""
        topo, rank = self._topology, self._rank()
        error: Optional[BaseException] = None
        foreign = self._foreign_local is not None
        if foreign:
            log.warning("not loading from the local tier: %s", self._foreign_local)
        try:
            own_dir = tiers.rank_dir(self.local_root, rank)
            own = ([] if foreign or not os.path.isdir(own_dir)
                   else _core.Repository(own_dir, self.engine_options, False).list())
            opts = self.engine_options

            def held(src: int) -> dict[str, Optional[str]]:
                d = tiers.replica_dir(self.local_root, src)
                return {} if foreign else tiers.tokens_of(d, tiers.committed_steps(d, opts), opts)

            mine: Optional[dict[str, Any]] = {
                # step -> the token of the save that wrote it (tiers.SAVE_TOKEN)
                "own": tiers.tokens_of(own_dir, tiers.steps_in(own), opts),
                # local copies whose manifest does not check out: a replica
                # may take their place
                "damaged": sorted(tiers.damaged_steps_in(own)),
                "held": {str(s): held(s) for s in topo.sources(rank)},
                "root": self.steps() if rank == 0 else [],
            }
        except Exception as e:  # every rank learns of it: none waits in the gather
            mine, error = None, e
        gathered = self._gather((mine, None if error is None else _problem_of(error)))
        failed = [(r, p) for r, (_, p) in enumerate(gathered) if p is not None]
        if error is not None:
            raise error
        if failed:
            raise _rebuilt(failed[0][1], f"(rank {failed[0][0]}, listing its tiers)")
        views = [v for v, _ in gathered]
        world = len(views)
        plan = tiers.RestorePlan(views, topo, set(views[0]["root"]), self._root_tokens(views))
        options, every = plan.options, plan.every
        if step is not None and step not in every:
            raise FileNotFoundError(errno.ENOENT, f"step {step} is on no tier: not committed in "
                                    f"{self.root} nor in any rank's {self.local_root}",
                                    os.path.join(self.root, tiers.step_name(step)))
        incomplete = plan.incomplete
        if step is not None and step in incomplete:
            none = [r for r in incomplete[step] if not plan.copies(r, step)]
            other = [r for r in incomplete[step] if plan.copies(r, step)]
            why = ([f"rank(s) {', '.join(map(str, none))} hold it on no tier"] if none else []) + (
                [f"rank(s) {', '.join(map(str, other))} hold only copies of another save of it "
                 "(another run's)"] if other else [])
            raise FileNotFoundError(errno.ENOENT, f"step {step} is incomplete: " + "; ".join(why),
                                    os.path.join(self.root, tiers.step_name(step)))
        candidates = [step] if step is not None else sorted(every, reverse=True)
        errors: list[str] = []
        attempts = 0
        for s in candidates:
            if s in incomplete:
                continue
            choices = [options(r, s) for r in range(world)]
            tried, done = [0] * world, [False] * world
            damaged_local = [s in views[r]["damaged"] for r in range(world)]
            while all(tried[r] < len(choices[r]) for r in range(world)):
                attempts += 1
                tier_of = [choices[r][tried[r]] for r in range(world)]
                ok, seconds, why, problem, mine = self._read_tier(
                    state_dict, s, tier_of, done, damaged_local=damaged_local[rank])
                results = self._gather((ok, seconds, why, problem))
                self._raise_unless_damage(results, mine, s, tier_of)
                if all(r[0] for r in results):
                    self.last_restore = tiers.TierReport(s, tier_of, [r[1] for r in results],
                                                         attempts)
                    log.info("loaded %s", self.last_restore)
                    if step is None:
                        self._drop_incomplete([t for t in incomplete if t > s])
                    return s
                for r, res in enumerate(results):
                    done[r] = res[0]
                    if not res[0]:
                        errors.append(f"rank {r}, step {s}, {tier_of[r]}: {res[2]}")
                        log.warning("rank %d could not read step %d from its %s tier: %s", r, s,
                                    tier_of[r], res[2])
                        damaged_local[r] |= tier_of[r] == tiers.LOCAL and _is_damage(res[3])
                        tried[r] += 1
            if step is not None:
                break
        if errors or step is not None:
            raise _corrupt("no step could be loaded from any tier" +
                           (f" (step {step})" if step is not None else "") + ": " +
                           "; ".join(errors), self.root)
        self._drop_incomplete(list(incomplete))
        self.last_restore = tiers.TierReport()
        return None

    def _root_tokens(self, views: list[dict[str, Any]]) -> dict[str, Optional[str]]:
        """The save tokens of the root's copies of the steps some local tier
        holds too (rank 0 reads them, every rank gets them; every rank
        calls it, after the gather of ``views``)."""
        local: set[str] = set()
        for v in views:
            local.update(v["own"])
            for steps in v["held"].values():
                local.update(steps)
        root = set(views[0]["root"])
        shared = sorted(int(x) for x in local if int(x) in root)
        if not shared:
            return {}
        mine = (tiers.tokens_of(self.root, shared, self.engine_options)
                if self._rank() == 0 else None)
        return self._gather(mine)[0]

    def _raise_unless_damage(self, results: list[Any], mine: Optional[BaseException], step: int,
                             tier_of: list[str]) -> None:
        """After a round of reads: an error that is no damage of a tier (a
        state dict that does not match, memory) is raised on every rank
        rather than sent to the next tier. Damage (a checksum, a missing or
        unreadable file) falls back."""
        hard = [(r, res[3]) for r, res in enumerate(results)
                if res[3] is not None and res[3][0] not in _TIER_FAILURES]
        if not hard:
            return
        if mine is not None and _problem_of(mine)[0] not in _TIER_FAILURES:
            raise mine
        r, problem = hard[0]
        raise _rebuilt(problem, f"(rank {r}, loading step {step} from its {tier_of[r]} tier)")

    def _drop_incomplete(self, steps: list[int]) -> None:
        """Removes this rank's local copies (its own and those it holds) of
        steps no rank set can load (a save that failed or was killed on
        some ranks): the resumed run saves them again, and none of their
        pieces may ever be mixed with the new run's. Every rank drops the
        same steps, each its own copies. Never in another root's local
        tier."""
        if self._foreign_local is not None:
            return
        for s in sorted(steps):
            name = tiers.step_name(s)
            for root in self._local_roots():
                if not os.path.isdir(os.path.join(root, name)):
                    continue
                log.warning("removing %s: step %d is incomplete (on no tier for some rank); "
                            "the resumed run saves it again", os.path.join(root, name), s)
                try:
                    _core.Repository(root, self.local_options, True).delete(name, True)
                except Exception as e:  # the next save of it then fails, saying so
                    log.warning("could not remove %s: %s", os.path.join(root, name), e)

    def _read_tier(self, state_dict: dict[str, Any], step: int, tier_of: list[str],
                   done: list[bool], *, damaged_local: bool = False
                   ) -> tuple[bool, float, str, Any, Optional[BaseException]]:
        """One round: partners send the replicas asked for; this rank reads
        its part from its tier, unless it read it in an earlier round
        (``done``, the same on every rank). (ok, seconds, why not, the
        problem as it travels, this rank's error)."""
        topo, rank, name = self._topology, self._rank(), tiers.step_name(step)
        t0 = time.monotonic()
        own_root = tiers.rank_dir(self.local_root, rank)
        wants = [t == tiers.REPLICA and not d for t, d in zip(tier_of, done)]
        sends = {}
        for r in topo.sources(rank):
            if wants[r]:
                d = os.path.join(tiers.replica_dir(self.local_root, r), name)
                try:
                    sends[r] = tiers.pack_checkpoint(d)
                except OSError as e:  # sent empty: the receiver fails over to its next tier
                    log.warning("replica %s of rank %d unreadable: %s", d, r, e)
                    sends[r] = []
        need = [topo.partner(rank)] if wants[rank] else []
        got = {}
        if any(wants):  # the same decision on every rank
            got = tiers.exchange(self._replica_group, sends, need, self._buffers)
        if done[rank]:
            return True, 0.0, "", None, None
        if wants[rank]:
            try:
                self._install_replica(own_root, name, got[topo.partner(rank)], damaged_local)
            except Exception as e:  # a missing or bad transfer, a busy tier: the next tier
                return (False, time.monotonic() - t0, f"{type(e).__name__}: {e}",
                        ("tier", str(e), getattr(e, "path", None), None), e)
        reader: Optional[Reader] = None
        try:
            path = (os.path.join(self.root, name) if tier_of[rank] == tiers.ROOT
                    else os.path.join(own_root, name))
            reader = Reader(path, progress=self.progress)
            dcp.load(state_dict, storage_reader=reader, no_dist=True, planner=LoadPlanner())
        except BaseException as e:  # DCP's CheckpointException is a BaseException
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            # A failed read_metadata() comes out of torch's load as an
            # AssertionError that drops it: the reader kept it.
            inner = (_corruption(e) or getattr(reader, "metadata_error", None)
                     or _underlying(e))
            return (False, time.monotonic() - t0, f"{type(inner).__name__}: {inner}",
                    _problem_of(inner), inner)
        return True, time.monotonic() - t0, "", None, None

    def _install_replica(self, own_root: str, name: str, data: Any, damaged_local: bool) -> None:
        """Installs the partner's replica of NAME as this rank's local copy,
        in place of a local copy only when that one was shown damaged."""
        repo = _core.Repository(own_root, self.local_options, True)
        if os.path.isdir(os.path.join(own_root, name)):
            if not damaged_local:  # (unreadable, say): kept, and the next tier serves
                raise OSError(errno.EEXIST, "kept: a replica is installed only over a copy "
                              "shown damaged", os.path.join(own_root, name))
            repo.delete(name, True)  # the damaged local copy makes way for the replica
        tiers.install(own_root, name, data, self.local_options)

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()
            return
        # Leaving on an error, maybe on this rank alone: no collective (the
        # other ranks may never reach it); the error goes on as it is. A save
        # still in flight is not waited for (it may wait on ranks that left),
        # but its failure is not lost: noted on the error when it already
        # failed, logged when it fails later.
        pending, self._pending = self._pending, None
        if pending is not None:
            pending._report_failure(exc[1])
        self._writer.close()
        if self.local_root is not None:
            self._background.shutdown(wait=False)


