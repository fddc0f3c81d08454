"""PyTorch Lightning: checkpoints through shardwise, in one line::

    from shardwise.integrations.lightning import ShardwiseCheckpointIO

    trainer = Trainer(plugins=[ShardwiseCheckpointIO()])              # synchronous
    trainer = Trainer(plugins=[ShardwiseCheckpointIO(async_save=True)])  # in the background

Each checkpoint Lightning names (``epoch=3-step=1200.ckpt``) becomes a
shardwise checkpoint directory of that name: written by the engine with
every byte checksummed, committed atomically (a crash leaves the previous
checkpoint, never a torn file), verified on load, and never unpickled.
Lightning's own code (``ModelCheckpoint``, ``ckpt_path="last"``, retention
of the best k) keeps working on those paths.

With ``async_save=True`` a save costs the training step one copy of the
state into shardwise's staging memory; the write and the commit run in the
background, on a thread of the plugin's. The next save, ``load_checkpoint``,
removing that checkpoint and the end of training wait for it, and its
error, if any, is raised there.

Lightning calls ``save_checkpoint`` on global rank 0 only (its strategies
for a single-file checkpoint gather the whole state there), so the plugin
saves as one process, whatever the world size; every rank loads.

The checkpoint dict is stored as its tensors (items named by their path,
``state_dict.layer.weight``, ``optimizer_states.0.state.0.exp_avg``) plus
its structure with everything else in it, as JSON (``__lightning__``): so
the loaded dict is the saved one, integer keys of optimizer states, tuples
and all, without a template and without pickle.
"""
from __future__ import annotations

import io
import logging
import os
import shutil
import re
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Optional, Union

import torch
from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO
from pytorch_lightning.strategies import FSDPStrategy, ModelParallelStrategy
from pytorch_lightning.strategies.fsdp import (
    _get_sharded_state_dict_context as _fsdp_sharded_context)
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from .. import _core, _values
from .. import dcp as _sdcp

__all__ = ["ShardwiseCheckpointIO", "ShardwiseFSDPStrategy", "ShardwiseModelParallelStrategy"]

PathLike = Union[str, "os.PathLike[str]"]
log = logging.getLogger("shardwise")


class ShardwiseCheckpointIO(CheckpointIO):
    """Lightning ``CheckpointIO`` that writes shardwise checkpoints.

    Args:
        async_save: persist in the background (see the module's docs).
        **writer_options: for :class:`shardwise.dcp.Writer` (engine options
            such as ``io_backend``, ``threads``, ``progress``).
    """

    def __init__(self, *, async_save: bool = False, **writer_options: Any) -> None:
        super().__init__()
        if writer_options.get("async_staging") or writer_options.get("staging_options"):
            raise ValueError("ShardwiseCheckpointIO: async_staging / staging_options do not "
                             "apply (async_save=True already saves in the background from "
                             "the staged copy)")
        self.async_save = async_save
        self.writer_options = writer_options
        self._pending: Optional[Future[Any]] = None  # the background save
        self._pending_path: Optional[str] = None  # and the checkpoint it writes
        self._executor: Optional[ThreadPoolExecutor] = None

    def _wait(self) -> None:
        pending, self._pending, self._pending_path = self._pending, None, None
        if pending is not None:
            pending.result()  # raises the background save's error here

    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike,
                        storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("ShardwiseCheckpointIO.save_checkpoint: storage_options are not "
                            "supported; pass engine options to ShardwiseCheckpointIO(...)")
        path = os.fspath(path)
        self._wait()  # one save in flight; its error surfaces now
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # Lightning saves again to the same name (last.ckpt, a rerun of an
        # epoch): the new checkpoint replaces the old one atomically.
        writer = _sdcp.Writer(path, replace=True, **self.writer_options)
        tensors: dict[str, torch.Tensor] = {}
        skeleton = _split(checkpoint, [], tensors)
        # The structure is one opaque value (DCP would flatten a dict).
        state = {**tensors, _SKELETON: io.BytesIO(_encode(skeleton))}
        if not self.async_save or _HPC_NAME.fullmatch(os.path.basename(path)):
            # (Lightning's SLURM save, on SIGUSR1: the job is requeued and
            # killed right after, so this one is committed before returning.)
            _sdcp.save(state, storage_writer=writer, no_dist=True)
            return
        # What dcp.async_save does (stage, then save the staged state on a
        # thread), without its demand for a CPU backend in the default
        # process group: Lightning's DDP and FSDP on GPUs set up NCCL alone,
        # and this save is rank 0's own (no_dist).
        staged = writer.stage(state)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="shardwise-lightning")
        pending = self._executor.submit(_sdcp.save, staged, storage_writer=writer, no_dist=True)
        # Raised by the next save, load or teardown; logged here as well, for
        # a save nothing waits for (one after teardown, at the end of a job).
        pending.add_done_callback(
            lambda f, p=path: f.exception() is not None and log.error(
                "background save of %s failed: %s", p, f.exception()))
        self._pending, self._pending_path = pending, os.path.abspath(path)

    def load_checkpoint(self, path: PathLike,
                        map_location: Optional[Union[Callable, str, torch.device]] = None,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        """The whole checkpoint, as Lightning saved it (tensors on the CPU,
        or on ``map_location`` when it names a device). ``weights_only`` is
        always true in effect: nothing is unpickled."""
        self._wait()
        path = _hpc_resume_fallback(os.fspath(path))
        if os.path.isfile(path):
            raise ValueError(f"{path}: a single-file checkpoint (torch.save), not a shardwise "
                             "checkpoint directory; load it without ShardwiseCheckpointIO "
                             "(Lightning's default TorchCheckpointIO)")
        if not os.path.isfile(os.path.join(path, _core.MANIFEST_NAME)):
            raise FileNotFoundError(f"Checkpoint file not found: {path} (no shardwise checkpoint "
                                    f"there)")
        return _read_structured(path, lambda name: True, map_location)

    def remove_checkpoint(self, path: PathLike) -> None:
        """Deletes the checkpoint directory: renamed aside first, so it is
        never seen half removed. With a save in the background, the delete
        runs after it, and only if it committed: ModelCheckpoint removes
        the previous best right after each save, which must not go before
        its successor is durable. What is not a shardwise checkpoint (a
        link ``save_last="link"`` made, a ``torch.save`` file) is removed
        as Lightning's own CheckpointIO removes it."""
        path = os.path.abspath(os.fspath(path))
        if path == self._pending_path:
            self._wait()
        pending = self._pending
        if pending is None:
            self._delete(path)
            return
        assert self._executor is not None

        def after_the_save() -> None:
            pending.result()  # it failed: the old checkpoint stays, the error goes on
            self._delete(path)

        # One thread: this runs once the save is done. Its future carries
        # the save's error (raised by the next save, load or teardown).
        self._pending = self._executor.submit(after_the_save)

    def _delete(self, path: str) -> None:
        if not os.path.lexists(path):
            return
        if os.path.islink(path) or not os.path.isfile(os.path.join(path, _core.MANIFEST_NAME)):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
            return
        root, name = os.path.split(path)
        repo = _sdcp._repository(root, _sdcp.Writer(path, **self.writer_options).options)
        repo.delete(name, True)  # a damaged one too: Lightning asked for it gone

    def teardown(self) -> None:
        try:
            self._wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None


_SKELETON = "__lightning__"
_REF = "__shardwise_tensor__"
_META = "meta"  # the strategy's non-module, non-optimizer state: items meta.*


class _ShardedCheckpoints:
    """The checkpoint hooks of a Lightning strategy with distributed
    checkpoints (``save_checkpoint``, ``load_checkpoint``,
    ``remove_checkpoint``), through shardwise. A strategy says whether a save
    is sharded (``_sharded``), under which key its model's state goes
    (``_model_key``, Lightning's own), and how it loads model and optimizer
    states from a checkpoint (``_load_states``)."""

    _model_key = ""

    def __init__(self, *args: Any, writer_options: Optional[dict[str, Any]] = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writer_options = dict(writer_options or {})

    def _sharded(self) -> bool:
        raise NotImplementedError

    def _load_states(self, path: str) -> None:
        raise NotImplementedError

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: PathLike,
                        storage_options: Optional[Any] = None) -> None:
        if not self._sharded():
            if isinstance(self.checkpoint_io, ShardwiseCheckpointIO):  # type: ignore[attr-defined]
                # Lightning's full-state save and load of these strategies
                # want one file; the plugin writes a directory.
                raise ValueError(f"{type(self).__name__}: ShardwiseCheckpointIO does not serve "
                                 "full-state checkpoints of this strategy (Lightning loads those "
                                 "as one file); save sharded checkpoints instead")
            return super().save_checkpoint(checkpoint, filepath, storage_options)  # type: ignore[misc]
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint: storage_options are not "
                            f"supported; pass writer_options to the strategy")
        # Every rank must write to the same path: rank 0's.
        path = os.path.abspath(os.fspath(self.broadcast(filepath)))  # type: ignore[attr-defined]
        if os.path.isfile(path):
            raise FileExistsError(f"{path}: a file (a full checkpoint) is there; shardwise "
                                  f"writes a checkpoint directory: remove it or save elsewhere")
        # The model and optimizer states under Lightning's own keys, the rest
        # of the checkpoint as items meta.* plus its structure as JSON: one
        # shardwise checkpoint, committed once.
        checkpoint = dict(checkpoint)
        state: dict[str, Any] = {self._model_key: checkpoint.pop("state_dict")}
        for i, optim_state in enumerate(checkpoint.pop("optimizer_states", [])):
            state[f"optimizer_{i}"] = optim_state
        problem: Optional[str] = None
        if self.is_global_zero:  # type: ignore[attr-defined]
            # The rest (loops, callbacks, metrics) as rank 0 sees it, as
            # Lightning writes meta.pt from rank 0: were every rank to add it,
            # DCP would keep one rank's copy of each item, any rank's.
            tensors: dict[str, torch.Tensor] = {}
            try:
                skeleton = _split(checkpoint, [_META], tensors)
                state[_SKELETON] = io.BytesIO(_encode(skeleton))
            except TypeError as e:  # every rank raises it, before the save's collectives
                problem = str(e)
            state.update(tensors)
        problem = self.broadcast(problem)  # type: ignore[attr-defined]
        if problem is not None:
            raise TypeError(problem if self.is_global_zero  # type: ignore[attr-defined]
                            else f"{problem} (rank 0, encoding the checkpoint)")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _sdcp.save(state, storage_writer=_sdcp.Writer(path, replace=True, **self.writer_options))

    def load_checkpoint(self, checkpoint_path: PathLike,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        # Rank 0's path, past an unfinished SLURM save (_hpc_resume_fallback),
        # or its error, on every rank.
        found: tuple[Optional[str], Optional[str]] = (None, None)
        if self.is_global_zero:  # type: ignore[attr-defined]
            try:
                found = (_hpc_resume_fallback(os.fspath(checkpoint_path)), None)
            except FileNotFoundError as e:
                found = (None, str(e))
        resolved, problem = self.broadcast(found)  # type: ignore[attr-defined]
        if problem is not None:
            raise FileNotFoundError(problem)
        path = os.path.abspath(resolved)
        if not os.path.isfile(os.path.join(path, _core.MANIFEST_NAME)):
            # not ours (meta.pt folders, single files): Lightning's own loader
            return super().load_checkpoint(path, weights_only)  # type: ignore[misc]
        self._load_states(path)
        # The rest (loops, callbacks, ...), read by each rank on its own.
        return _read_structured(path, lambda name: name.startswith(_META + "."))

    def remove_checkpoint(self, filepath: PathLike) -> None:
        path = os.path.abspath(os.fspath(filepath))
        if not os.path.isfile(os.path.join(path, _core.MANIFEST_NAME)):
            return super().remove_checkpoint(filepath)  # type: ignore[misc]
        if self.is_global_zero:  # type: ignore[attr-defined]
            # renamed aside, then deleted: never seen half removed
            root, name = os.path.split(path)
            options = _sdcp.Writer(path, **self.writer_options).options
            _sdcp._repository(root, options).delete(name)


class ShardwiseModelParallelStrategy(_ShardedCheckpoints, ModelParallelStrategy):  # type: ignore[misc]
    """Lightning's ``ModelParallelStrategy`` (FSDP2 and tensor parallelism
    over DTensors), whose distributed checkpoints are shardwise checkpoints::

        trainer = Trainer(strategy=ShardwiseModelParallelStrategy(data_parallel_size=8))

    Lightning's ``ModelParallelStrategy`` saves a distributed checkpoint with
    DCP's own file writer and ``torch.save``s the rest of the checkpoint
    (loops, callbacks, hyper-parameters) into ``meta.pt`` beside it: two
    writes, neither atomic, and a pickle to load. This strategy overrides the
    hooks Lightning gives a strategy for that (``save_checkpoint``,
    ``load_checkpoint``, ``remove_checkpoint``): every rank writes its shards
    with the engine; the rest of the checkpoint goes into the same checkpoint
    (its tensors as items ``meta.*``, its structure as JSON), committed once,
    atomically;
    nothing is unpickled on load. Saving again to a name replaces it
    atomically (``last.ckpt``). Loads go through DCP's planner (another world
    size reshards as with DCP). Checkpoints Lightning wrote before the switch
    (``meta.pt`` folders, single files) go to Lightning's own loader.

    All arguments are ``ModelParallelStrategy``'s, plus ``writer_options``
    (engine options for :class:`shardwise.dcp.Writer`, e.g.
    ``{"threads": 4}``). With ``save_distributed_checkpoint=False`` Lightning
    saves one full file through its default ``CheckpointIO``, and loads it as
    a file: :class:`ShardwiseCheckpointIO` (which writes directories) is
    refused there, saying so.
    """

    _model_key = "state_dict"

    def _sharded(self) -> bool:
        return bool(self._save_distributed_checkpoint)

    def _load_states(self, path: str) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
            set_optimizer_state_dict)

        assert self.model is not None and self.lightning_module is not None
        module_state = {"state_dict": get_model_state_dict(self.model)}
        _sdcp.load(module_state, storage_reader=_sdcp.Reader(path))
        self.model.load_state_dict(module_state["state_dict"],
                                   strict=self.lightning_module.strict_loading)
        for i, optim in enumerate(self.optimizers):
            key = f"optimizer_{i}"
            optim_state = {key: get_optimizer_state_dict(self.model, optim)}
            _sdcp.load(optim_state, storage_reader=_sdcp.Reader(path))
            set_optimizer_state_dict(self.model, optim, optim_state_dict=optim_state[key],
                                     options=StateDictOptions(cpu_offload=True))


class ShardwiseFSDPStrategy(_ShardedCheckpoints, FSDPStrategy):  # type: ignore[misc]
    """Lightning's ``FSDPStrategy`` (FSDP1) whose sharded checkpoints
    (``state_dict_type="sharded"``) are shardwise checkpoints::

        trainer = Trainer(strategy=ShardwiseFSDPStrategy(state_dict_type="sharded"))

    What :class:`ShardwiseModelParallelStrategy` does for
    ``ModelParallelStrategy``: shards written by the engine, the rest of the
    checkpoint in the same checkpoint as tensors and JSON (no ``meta.pt``),
    one atomic commit, nothing unpickled. Arguments are ``FSDPStrategy``'s
    plus ``writer_options``. With ``state_dict_type="full"`` Lightning saves
    one file through its default ``CheckpointIO``, and loads it as a file:
    :class:`ShardwiseCheckpointIO` (which writes directories) is refused
    there, saying so.
    """

    _model_key = "model"

    def _sharded(self) -> bool:
        return self._state_dict_type == "sharded"

    def _load_states(self, path: str) -> None:
        from pytorch_lightning.trainer.states import TrainerFn
        from torch.distributed.checkpoint.optimizer import load_sharded_optimizer_state_dict
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        assert self.model is not None and self.lightning_module is not None
        # As FSDPStrategy loads its own sharded checkpoints, with our reader.
        with _fsdp_sharded_context(self.model):
            module_state = {"model": self.model.state_dict()}
            _sdcp.load(module_state, storage_reader=_sdcp.Reader(path))
            self.model.load_state_dict(module_state["model"],
                                       strict=self.lightning_module.strict_loading)
            if self.lightning_module.trainer.state.fn == TrainerFn.FITTING:
                for i, optim in enumerate(self.optimizers):
                    key = f"optimizer_{i}"
                    optim_state = load_sharded_optimizer_state_dict(
                        model_state_dict=module_state["model"], optimizer_key=key,
                        storage_reader=_sdcp.Reader(path))
                    optim.load_state_dict(FSDP.optim_state_dict_to_load(
                        optim_state_dict=optim_state[key], model=self.model, optim=optim))


def _split(value: Any, path: list[str], tensors: dict[str, torch.Tensor]) -> Any:
    """`value` with each tensor replaced by a reference to its entry in
    `tensors`, named by its path."""
    if isinstance(value, torch.Tensor):
        name = ".".join(path) or "tensor"
        if name in tensors or name == _SKELETON:
            name = f"{name}#{len(tensors)}"
        tensors[name] = value
        return {_REF: name}
    if isinstance(value, dict):
        return {k: _split(v, path + [str(k)], tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        out = [_split(v, path + [str(i)], tensors) for i, v in enumerate(value)]
        return tuple(out) if isinstance(value, tuple) else out
    return value


def _read_structured(path: str, wanted: Callable[[str], bool],
                     map_location: Any = None) -> Any:
    """The structure saved under _SKELETON in checkpoint `path`, with its
    tensors (the items `wanted` selects) put back; read by this process
    alone."""
    reader = _sdcp.Reader(path)
    entries = reader.read_metadata().state_dict_metadata
    if _SKELETON not in entries:
        raise ValueError(f"{path}: not a Lightning checkpoint written by shardwise (it has no "
                         f"{_SKELETON!r} entry)")
    state: dict[str, Any] = {_SKELETON: io.BytesIO()}
    for name in entries:
        if name != _SKELETON and wanted(name):
            md = entries[name]
            if not isinstance(md, TensorStorageMetadata):
                raise ValueError(f"{path}: entry {name!r} is a value, not a tensor: this "
                                 "checkpoint was written by a Shardwise*Strategy; load it "
                                 "through that strategy, not ShardwiseCheckpointIO")
            state[name] = torch.empty(tuple(md.size), dtype=md.properties.dtype)
    reader.reset(path)
    _sdcp.load(state, storage_reader=reader, no_dist=True)
    device = torch.device(map_location) if isinstance(map_location, (str, torch.device)) \
        else None
    tensors = {k: (v.to(device) if device is not None else v)
               for k, v in state.items() if k != _SKELETON}
    try:
        skeleton = _values.decode(state[_SKELETON].getvalue(), f"{path}: {_SKELETON}")
    except ValueError as e:
        raise _sdcp._corrupt(str(e), path) from None
    return _join(skeleton, tensors)


_HPC_NAME = re.compile(r"hpc_ckpt_(\d+)\.ckpt")
_HIDDEN_HPC = re.compile(r"\.(hpc_ckpt_\d+\.ckpt)\.(staging|deleting|replaced)-.*")


def _hpc_resume_fallback(path: str) -> str:
    """Lightning's SLURM auto-requeue resumes from ``hpc_ckpt_N.ckpt``, N
    being the largest number it finds in the names in the folder that hold
    ``hpc_ckpt_``, digits taken wherever they are. A save killed midway
    leaves a hidden shardwise entry (``.hpc_ckpt_3.ckpt.staging-ID``) whose
    digits make such an N, naming no checkpoint: then the newest committed
    ``hpc_ckpt_K.ckpt`` is the one Lightning meant. Any other path is
    returned as it is."""
    folder, name = os.path.split(path)
    want = _HPC_NAME.fullmatch(name)
    if want is None or os.path.exists(path) or not os.path.isdir(folder or "."):
        return path
    names = os.listdir(folder or ".")
    # The numbers Lightning reads in the hidden entries' names.
    parsed = {int(digits) for n in names if _HIDDEN_HPC.fullmatch(n)
              if (digits := re.sub("[^0-9]", "", n.split("hpc_ckpt_")[-1]))}
    if int(want.group(1)) not in parsed:
        return path
    committed = [(int(m.group(1)), n) for n in names
                 if (m := _HPC_NAME.fullmatch(n))
                 and os.path.isfile(os.path.join(folder, n, _core.MANIFEST_NAME))]
    if not committed:
        leftovers = sorted(n for n in names if _HIDDEN_HPC.fullmatch(n))
        raise FileNotFoundError(
            f"{path}: no such checkpoint: Lightning took its number from the name of an "
            f"unfinished save ({', '.join(leftovers)}), and no HPC checkpoint was ever "
            f"committed in {folder}. Remove the leftover (`shardwise gc {folder}` once no "
            f"job writes there) or pass ckpt_path")
    chosen = os.path.join(folder, max(committed)[1])
    log.warning("%s: no such checkpoint (Lightning took its number from the name of an "
                "unfinished save); resuming from %s, the newest committed HPC checkpoint",
                path, chosen)
    return chosen


def _encode(skeleton: Any) -> bytes:
    """The checkpoint's structure as stored JSON; a value that cannot be
    stored is refused naming its place in the checkpoint dict."""
    try:
        return _values.encode(skeleton)
    except TypeError as e:
        raise TypeError(f"checkpoint entry {'.'.join(_unstorable(skeleton, []))!r}: {e}") from None


def _unstorable(value: Any, path: list[str]) -> list[str]:
    """The path of the first value inside `value` that cannot be stored."""
    if isinstance(value, (dict, list, tuple)):
        pairs = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in pairs:
            try:
                _values.encode(v)
            except TypeError:
                return _unstorable(v, path + [str(k)])
    return path


def _join(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _REF in value:
            return tensors[value[_REF]]
        return {k: _join(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        out = [_join(v, tensors) for v in value]
        return tuple(out) if isinstance(value, tuple) else out
    return value
