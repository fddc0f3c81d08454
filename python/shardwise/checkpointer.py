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

import logging
import os
import time
from concurrent.futures import Future as ConcurrentFuture
from typing import Any, Optional, Union


import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType

from . import _core
from ._progress import ProgressArg
from .dcp import Reader, Writer

log = logging.getLogger("shardwise")

__all__ = ["Checkpointer", "SaveHandle"]


def _step_name(step: int) -> str:
    return f"step-{step:012d}"


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


def _reraise(e: BaseException) -> None:
    inner = _underlying(e)
    if inner is e:
        raise e
    raise inner from e


class SaveHandle:
    """One save. ``wait()`` blocks until it is committed and raises its error."""

    def __init__(self, step: int, future: Optional[ConcurrentFuture], stall_s: float) -> None:
        self.step = step
        self.stall_seconds = stall_s  # how long save() blocked the caller
        self._future = future

    def done(self) -> bool:
        return self._future is None or self._future.done()

    def wait(self, timeout: Optional[float] = None) -> None:
        if self._future is not None:
            try:
                self._future.result(timeout=timeout)
            except BaseException as e:  # DCP's CheckpointException is a BaseException
                _reraise(e)

    def exception(self) -> Optional[BaseException]:
        if self._future is None or not self._future.done():
            return None
        return self._future.exception()


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
        process_group: the group whose ranks checkpoint together. By default,
            when torch.distributed is initialized, a new gloo group over all
            ranks, created here (so every rank must construct the
            Checkpointer): background saves run collectives, and on the
            training's own group they would interleave with the training's
            collectives and deadlock. Works without torch.distributed too.
        progress: True for progress bars/log lines, or a callable
            ``(done_bytes, total_bytes)``.
        **engine_options: ``io_backend``, ``queue_depth``, ``io_unit``,
            ``checksum_block``, ``direct_io``, ``commit_timeout_s``.

    Saves never overlap: a save waits for the previous one first (and raises
    its error, if any). Retention never deletes what ``latest`` names, or
    anything newer than the newest valid checkpoint.
    """

    def __init__(self, root: Union[str, "os.PathLike[str]"], *, keep_last: Optional[int] = None,
                 keep_every: Optional[int] = None, async_mode: Optional[str] = "thread",
                 process_group: Optional[Any] = None, progress: ProgressArg = None,
                 **engine_options: Any) -> None:
        if keep_last is not None and keep_last < 1:
            raise ValueError("keep_last must be >= 1")
        if keep_every is not None and keep_every < 1:
            raise ValueError("keep_every must be >= 1")
        if async_mode not in ("thread", "process", None):
            raise ValueError("async_mode must be 'thread', 'process' or None")
        self.root = os.path.abspath(os.fspath(root))
        self.keep_last, self.keep_every = keep_last, keep_every
        self.async_mode = async_mode
        if process_group is None and dist.is_available() and dist.is_initialized():
            process_group = dist.new_group(backend="gloo")
        self.process_group = process_group
        self.progress = progress
        self.engine_options = engine_options
        # One writer for every save: its staging pool is allocated once.
        self._writer = Writer(None, progress=progress, **engine_options)
        self._pending: Optional[SaveHandle] = None
        self._repo = None
        self._claimed = False
        if self._rank() == 0:
            os.makedirs(self.root, exist_ok=True)

    # -- helpers -------------------------------------------------------------------
    def _rank(self) -> int:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(self.process_group)
        return 0

    def _core_repo(self) -> Any:
        if self._repo is None:
            opts = {k: v for k, v in self.engine_options.items() if k != "checksum_block"}
            self._repo = _core.Repository(self.root, opts, True)
        return self._repo

    def _retention(self) -> None:
        if not (self.keep_last or self.keep_every):
            return
        if self._rank() == 0:
            report = self._core_repo().gc(keep_last=self.keep_last, keep_every=self.keep_every)
            if report["removed_checkpoints"]:
                log.info("retention removed %s", ", ".join(report["removed_checkpoints"]))
        # Every rank returns once retention is done, so all see the same steps.
        if dist.is_available() and dist.is_initialized():
            dist.barrier(group=self.process_group)

    # -- public API ----------------------------------------------------------------
    def save(self, step: int, state_dict: dict[str, Any], *, blocking: bool = False) -> SaveHandle:
        """Saves ``state_dict`` as checkpoint ``step``.

        Non-blocking (the default): returns once the state is staged in host
        memory; the save persists in the background. ``blocking=True``
        returns once the checkpoint is committed.
        """
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        self.wait()
        if self._rank() == 0:
            # One job writes a root: fail before staging anything if another
            # job writes here (its coordinator holds ROOT/.writer.lock).
            first = not self._claimed
            self._core_repo().lock_for_writing()
            self._claimed = True
            if first:  # where the shards go, and whether Lustre layouts apply
                log.info("checkpoint root %s: %s", self.root, self._core_repo().filesystem_summary())
        path = os.path.join(self.root, _step_name(step))
        self._writer.step = step
        t0 = time.monotonic()
        if blocking or self.async_mode is None:
            try:
                dcp.save(state_dict, storage_writer=self._writer, checkpoint_id=path,
                         process_group=self.process_group)
            except BaseException as e:
                _reraise(e)
            stall = time.monotonic() - t0
            self._retention()
            handle = SaveHandle(step, None, stall)
            log.info("saved %s in %.3f s", path, stall)
            return handle
        kind = (AsyncCheckpointerType.PROCESS if self.async_mode == "process"
                else AsyncCheckpointerType.THREAD)
        response = dcp.async_save(state_dict, storage_writer=self._writer, checkpoint_id=path,
                                  process_group=self.process_group, async_checkpointer_type=kind)
        future = getattr(response, "upload_completion", response)
        stall = time.monotonic() - t0
        # Retention for this save runs in wait() (or the next save/close).
        handle = SaveHandle(step, future, stall)

        def done(f: ConcurrentFuture) -> None:
            if self.async_mode == "process":
                # The subprocess wrote from our staged copy; it may be reused.
                self._writer._idle.set()

        future.add_done_callback(done)
        self._pending = handle
        log.info("staged %s in %.3f s; persisting in the background", path, stall)
        return handle

    def wait(self) -> None:
        """Waits for the save in flight; raises its error. Retention runs
        here, after the save committed; with retention on and
        torch.distributed initialized, this is collective (call it on every
        rank, as save() and close() do)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.wait()
            self._retention()

    def steps(self) -> list[int]:
        """Steps of the committed checkpoints, oldest first."""
        out = []
        for c in self._core_repo().list():
            if c["state"] == "committed" and c["step"] >= 0 and c["name"] == _step_name(c["step"]):
                out.append(int(c["step"]))
        return sorted(set(out))

    def latest_step(self) -> Optional[int]:
        steps = self.steps()
        return steps[-1] if steps else None

    def load(self, state_dict: dict[str, Any], step: Optional[int] = None) -> Optional[int]:
        """Loads checkpoint ``step`` (default: the newest valid one) into
        ``state_dict`` in place; returns the step loaded, or None when there
        is no checkpoint.

        When the newest checkpoint fails verification, the reason is logged
        and the previous one is tried, and so on. With an explicit ``step``
        the error is raised instead, as :class:`CorruptCheckpointError`
        (naming the item and the file). All ranks take the same decision:
        DCP gathers every rank's read errors.
        """
        self.wait()
        candidates = [step] if step is not None else list(reversed(self.steps()))
        for s in candidates:
            path = os.path.join(self.root, _step_name(s))
            try:
                dcp.load(state_dict, storage_reader=Reader(path, progress=self.progress),
                         process_group=self.process_group)
                log.info("loaded %s", path)
                return s
            except BaseException as e:  # DCP's CheckpointException is a BaseException
                corrupt = None if isinstance(e, (KeyboardInterrupt, SystemExit)) else _corruption(e)
                if corrupt is None:
                    _reraise(e)
                if step is not None:
                    raise corrupt from e
                log.warning("checkpoint %s failed verification, falling back to an older "
                            "one: %s", path, corrupt)
        return None

    def close(self) -> None:
        """Waits for the save in flight and releases the staging memory."""
        try:
            self.wait()
        finally:
            self._writer.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


