"""Import a stock DCP checkpoint (``FileSystemWriter``) into shardwise's format.

This is the one place where shardwise reads DCP's pickle: the stock
checkpoint's ``.metadata`` is a pickle, and its non-tensor values were saved
with ``torch.save``; both are read through DCP's own ``FileSystemReader``.
Only import checkpoints you trust. The result stores metadata as JSON and
non-tensor values as JSON, and every byte is checksummed.

The import loads the whole checkpoint into host memory once (one process), so
it needs about as much RAM as the checkpoint's size.
"""
from __future__ import annotations

import os
from typing import Any, Union

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata

from . import _core
from .dcp import Writer

__all__ = ["import_dcp"]


def import_dcp(src: Union[str, "os.PathLike[str]"], dst: Union[str, "os.PathLike[str]"], *,
               step: int | None = None, replace: bool = False) -> dict[str, Any]:
    """Converts the stock DCP checkpoint ``src`` into the shardwise checkpoint
    directory ``dst`` (``ROOT/NAME``). Returns a summary (items, bytes)."""
    src = os.fspath(src)
    if not os.path.isfile(os.path.join(src, ".metadata")):
        raise FileNotFoundError(2, f"{src} is not a DCP checkpoint (no .metadata)", src)
    # Before anything is read: what is at dst may be replaced (FileExistsError).
    _core.check_target(os.path.abspath(os.fspath(dst)), replace)
    reader = dcp.FileSystemReader(src)
    metadata = reader.read_metadata()  # pickle: the documented exception
    state: dict[str, Any] = {}
    nbytes = 0
    for fqn, m in metadata.state_dict_metadata.items():
        if isinstance(m, TensorStorageMetadata):
            state[fqn] = torch.empty(m.size, dtype=m.properties.dtype)
            nbytes += state[fqn].numel() * state[fqn].element_size()
        elif isinstance(m, BytesStorageMetadata):
            state[fqn] = None  # filled by the load
    dcp.load(state, storage_reader=dcp.FileSystemReader(src), no_dist=True)
    dcp.save(state, storage_writer=Writer(dst, step=step, replace=replace), no_dist=True)
    return {"items": len(state), "tensor_bytes": nbytes, "dst": os.fspath(dst)}
