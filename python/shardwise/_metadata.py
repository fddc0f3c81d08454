"""DCP ``Metadata`` to and from the JSON stored in manifest.json ("dcp").

The reader rebuilds ``Metadata`` from JSON only; nothing is unpickled.
Checkpoints written by the C++ API carry no "dcp" block: their Metadata is
derived from the manifest's items.
"""
from __future__ import annotations

from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

from ._values import _dec, _enc

_FORMAT = 1


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def dtype_from_name(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dt


def to_json(md: Metadata) -> dict[str, Any]:
    sdm: dict[str, Any] = {}
    for fqn, m in md.state_dict_metadata.items():
        if isinstance(m, BytesStorageMetadata):
            sdm[fqn] = {"type": "bytes"}
        else:
            sdm[fqn] = {
                "type": "tensor",
                "dtype": dtype_name(m.properties.dtype),
                "requires_grad": bool(m.properties.requires_grad),
                "size": list(m.size),
                "chunks": [[list(c.offsets), list(c.sizes)] for c in m.chunks],
            }
    out: dict[str, Any] = {"format": _FORMAT, "version": md.version,
                           "state_dict_metadata": sdm}
    # The default planners' planner_data maps flattened keys to their paths in
    # the nested state dict (lists of str/int): JSON as it is.
    out["planner_data"] = _enc(md.planner_data) if md.planner_data is not None else None
    if md.storage_meta is not None:
        out["storage_meta"] = {"save_id": md.storage_meta.save_id,
                               "modules": list(md.storage_meta.modules)}
    return out


def from_json(d: dict[str, Any], checkpoint_id: str) -> Metadata:
    if d.get("format") != _FORMAT:
        raise ValueError(f"unsupported DCP metadata format {d.get('format')!r}")
    sdm: dict[str, Any] = {}
    for fqn, m in d["state_dict_metadata"].items():
        if m["type"] == "bytes":
            sdm[fqn] = BytesStorageMetadata()
            continue
        sdm[fqn] = TensorStorageMetadata(
            properties=TensorProperties(dtype=dtype_from_name(m["dtype"]),
                                        requires_grad=bool(m.get("requires_grad", False))),
            size=torch.Size(m["size"]),
            chunks=[ChunkStorageMetadata(offsets=torch.Size(o), sizes=torch.Size(s))
                    for o, s in m["chunks"]],
        )
    sm = d.get("storage_meta") or {}
    planner_data = d.get("planner_data")
    return Metadata(
        state_dict_metadata=sdm,
        planner_data=_dec(planner_data) if planner_data is not None else None,
        storage_meta=StorageMeta(checkpoint_id=checkpoint_id, save_id=sm.get("save_id"),
                                 modules=sm.get("modules", [])),
        version=d.get("version"),
    )


def from_items(manifest: dict[str, Any], checkpoint_id: str) -> Metadata:
    """Metadata for a checkpoint written without DCP (C++ API, CLI bench)."""
    sdm: dict[str, Any] = {}
    for it in manifest["items"]:
        if it["kind"] == "bytes":
            sdm[it["name"]] = BytesStorageMetadata()
            continue
        sdm[it["name"]] = TensorStorageMetadata(
            properties=TensorProperties(dtype=dtype_from_name(it["dtype"])),
            size=torch.Size(it["shape"]),
            chunks=[ChunkStorageMetadata(offsets=torch.Size(c["offsets"]),
                                         sizes=torch.Size(c["sizes"]))
                    for c in it["chunks"]],
        )
    return Metadata(state_dict_metadata=sdm,
                    storage_meta=StorageMeta(checkpoint_id=checkpoint_id))
