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
background. The next save, ``load_checkpoint`` and the end of training wait
for it, and its error, if any, is raised there.

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
import os
from typing import Any, Callable, Optional, Union

import torch
from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO

from .. import _core, _values
from .. import dcp as _sdcp

__all__ = ["ShardwiseCheckpointIO"]

PathLike = Union[str, "os.PathLike[str]"]


class ShardwiseCheckpointIO(CheckpointIO):
    """Lightning ``CheckpointIO`` that writes shardwise checkpoints.

    Args:
        async_save: persist in the background (see the module's docs).
        **writer_options: for :class:`shardwise.dcp.Writer` (engine options
            such as ``io_backend``, ``threads``, ``progress``).
    """

    def __init__(self, *, async_save: bool = False, **writer_options: Any) -> None:
        super().__init__()
        self.async_save = async_save
        self.writer_options = writer_options
        self._pending: Optional[Any] = None  # the background save's future

    def _wait(self) -> None:
        pending, self._pending = self._pending, None
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
        state = {**tensors, _SKELETON: io.BytesIO(_values.encode(skeleton))}
        if self.async_save:
            self._pending = _sdcp.async_save(state, storage_writer=writer, no_dist=True)
        else:
            _sdcp.save(state, storage_writer=writer, no_dist=True)

    def load_checkpoint(self, path: PathLike,
                        map_location: Optional[Union[Callable, str, torch.device]] = None,
                        weights_only: Optional[bool] = None) -> dict[str, Any]:
        """The whole checkpoint, as Lightning saved it (tensors on the CPU,
        or on ``map_location`` when it names a device). ``weights_only`` is
        always true in effect: nothing is unpickled."""
        self._wait()
        path = os.fspath(path)
        if not os.path.isfile(os.path.join(path, _core.MANIFEST_NAME)):
            raise FileNotFoundError(f"Checkpoint file not found: {path} (no shardwise checkpoint "
                                    f"there)")
        reader = _sdcp.Reader(path)
        entries = reader.read_metadata().state_dict_metadata
        if _SKELETON not in entries:
            raise ValueError(f"{path}: not a Lightning checkpoint written by "
                             f"ShardwiseCheckpointIO (it has no {_SKELETON!r} entry)")
        state: dict[str, Any] = {_SKELETON: io.BytesIO()}
        for name in entries:
            if name != _SKELETON:
                md = entries[name]
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

    def remove_checkpoint(self, path: PathLike) -> None:
        """Deletes the checkpoint directory: renamed aside first, so it is
        never seen half removed."""
        self._wait()
        path = os.path.abspath(os.fspath(path))
        if not os.path.exists(path):
            return
        root, name = os.path.split(path)
        _sdcp._repository(root, _sdcp.Writer(path, **self.writer_options).options).delete(name)

    def teardown(self) -> None:
        self._wait()


_SKELETON = "__lightning__"
_REF = "__shardwise_tensor__"


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


def _join(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _REF in value:
            return tensors[value[_REF]]
        return {k: _join(v, tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        out = [_join(v, tensors) for v in value]
        return tuple(out) if isinstance(value, tuple) else out
    return value
