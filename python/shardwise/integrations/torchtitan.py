"""torchtitan: checkpoints through shardwise, in one line of the job's config::

    from shardwise.integrations.torchtitan import ShardwiseCheckpointManager

    config.checkpoint = ShardwiseCheckpointManager.Config(
        enable=True, folder="checkpoint", interval=500)   # any CheckpointManager field

``Trainer.Config.checkpoint`` accepts any ``BaseCheckpointManager.Config``;
this one builds a torchtitan ``CheckpointManager`` whose DCP saves and loads
go through :class:`shardwise.dcp.Writer` and :class:`shardwise.dcp.Reader`.
Everything else is torchtitan's: the interval, ``async_mode``, what is saved,
``load_step``, ``keep_latest_k``, model-only last saves.

What changes:

- Each ``step-N`` folder is a shardwise checkpoint: every rank writes its
  shard with the engine, the coordinator commits it atomically (a crash leaves
  the previous step, never a torn one), and loads verify checksums.
- ``async_mode="async"`` persists in the background from shardwise's staging
  memory; ``"async_with_pinned_mem"`` stages in the background too (pinned
  when CUDA is present) and hands the staged state to DCP's checkpoint
  process, as torchtitan does.
- Restart: the latest step is the newest *committed* checkpoint; torchtitan's
  own rule (a ``.metadata`` file) does not know shardwise's. Stock DCP
  folders in the same directory still count and still load with DCP's
  reader, so a job that switches keeps its old checkpoints.
- Retention (``keep_latest_k``) counts committed checkpoints only (an async
  save still in flight does not count until it commits) and deletes a
  shardwise checkpoint through shardwise (renamed aside first, never seen
  half removed).
- Saving a step that exists replaces it atomically, as torchtitan's own
  writer overwrites it (a resume from an earlier ``load_step``).
- Hugging Face safetensors (``last_save_in_hf``, ``initial_load_in_hf``)
  stay torchtitan's own.

Engine options come from ``SHARDWISE_*`` environment variables
(docs/cpp-api.md), for example ``SHARDWISE_THREADS``.
"""
from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType
from torchtitan.components.checkpointer.base import MODEL, purge_thread
from torchtitan.components.checkpointer.dcp import AsyncMode, CheckpointManager
from torchtitan.tools import filesystem
from torchtitan.tools.utils import GarbageCollection

from .. import _core
from .. import dcp as _sdcp

__all__ = ["ShardwiseCheckpointManager"]

_STEP = re.compile(r"step-(\d+)")


def _is_shardwise(path: str) -> bool:
    return os.path.isfile(os.path.join(path, _core.MANIFEST_NAME))


def _remove(path: str) -> None:
    """Retention's delete: a shardwise checkpoint through shardwise, anything
    else (stock DCP, a torn folder) as torchtitan removes it."""
    if _is_shardwise(path):
        root, name = os.path.split(os.path.abspath(path))
        _sdcp._repository(root, {}).delete(name)
    else:
        filesystem.rmtree(path)


class _OwnStaging:
    """Stands where torchtitan keeps DCP's ``DefaultStager`` for
    ``async_with_pinned_mem``: shardwise's Writer stages into the process's
    staging memory itself, so torchtitan must not build a second stager
    (with its own pinned buffers) that nothing would use."""

    def close(self) -> None:
        pass


class ShardwiseCheckpointManager(CheckpointManager):
    """torchtitan's ``CheckpointManager``, saving and loading through
    shardwise (see the module's docs)."""

    @dataclass(kw_only=True, slots=True)
    class Config(CheckpointManager.Config):
        """``CheckpointManager.Config``: the same fields and defaults."""

    def __init__(self, config: Config, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        if self.enable:
            self.stager = _OwnStaging()  # type: ignore[assignment]
        if self.enable and self.purge_thread is not None:
            # Retention's deletes go through _remove: restart the purge thread.
            self.purge_queue.put(None)
            self.purge_thread.join()
            self.purge_thread = threading.Thread(target=purge_thread,
                                                 args=(self.purge_queue, _remove), daemon=True)
            self.purge_thread.start()

    @torch.no_grad()
    def dcp_save(self, state_dict: dict[str, Any], checkpoint_id: str, async_mode: AsyncMode,
                 enable_garbage_collection: bool = False, to_hf: bool = False) -> Any:
        if to_hf:
            return super().dcp_save(state_dict, checkpoint_id, async_mode,
                                    enable_garbage_collection, to_hf)
        # replace=True, as torchtitan's FileSystemWriter overwrites: a job
        # that resumes from an earlier step (load_step, or a newer step that
        # is damaged) saves that newer step again.
        if async_mode == AsyncMode.ASYNC:
            ret = dcp.async_save(state_dict, process_group=self.pg,
                                 storage_writer=_sdcp.Writer(checkpoint_id, replace=True))
        elif async_mode == AsyncMode.ASYNC_WITH_PINNED_MEM:
            writer = _sdcp.Writer(checkpoint_id, replace=True, shared_memory=True,
                                  async_staging=True)
            ret = dcp.async_save(state_dict, storage_writer=writer, process_group=self.pg,
                                 async_checkpointer_type=AsyncCheckpointerType.PROCESS)
        else:
            ret = dcp.save(state_dict, storage_writer=_sdcp.Writer(checkpoint_id, replace=True))
        if enable_garbage_collection:
            GarbageCollection.collect("GC collection invoked by checkpointer.")
        return ret

    def dcp_load(self, state_dict: dict[str, Any], checkpoint_id: str, from_hf: bool,
                 from_quantized: bool) -> None:
        if from_hf or not _is_shardwise(checkpoint_id):
            # Hugging Face or stock DCP (a job's checkpoints from before the
            # switch, a seed checkpoint): torchtitan's own path.
            return super().dcp_load(state_dict, checkpoint_id, from_hf, from_quantized)
        dcp.load(state_dict, storage_reader=_sdcp.Reader(checkpoint_id),
                 planner=_sdcp.LoadPlanner())
        # As torchtitan: the model's states are flattened into the state dict.
        if MODEL in self.states:
            self.states[MODEL].load_state_dict(state_dict)

    def _steps(self, folder: str) -> dict[int, str]:
        """Step -> folder of every checkpoint a load may use: committed
        shardwise checkpoints, and stock DCP or HF ones torchtitan counts."""
        found: dict[int, str] = {}
        if not os.path.isdir(folder):
            return found
        for info in _sdcp._repository(os.path.abspath(folder), {}).list():
            m = _STEP.fullmatch(info.name)
            # Only committed ones: the listing also names saves in progress
            # (or killed mid-save), whose directories are hidden.
            if m and info.state == "committed":
                found[int(m.group(1))] = os.path.join(folder, info.name)
        for name in os.listdir(folder):
            m = _STEP.fullmatch(name)
            path = os.path.join(folder, name)
            if m and int(m.group(1)) not in found and not _is_shardwise(path) and (
                    os.path.isfile(os.path.join(path, ".metadata"))
                    or os.path.isfile(os.path.join(path, "model.safetensors.index.json"))):
                found[int(m.group(1))] = path
        return found

    def _find_load_step(self, folder: str = "") -> int:
        steps = self._steps(folder or self.folder)
        return max(steps) if steps else -1

    def _purge_stale_checkpoints(self) -> None:
        if not self._should_purge():
            return
        steps = sorted(self._steps(self.folder).items())
        for _, path in steps[: -self.keep_latest_k]:
            assert self.purge_thread is not None
            self.purge_queue.put(path)
