"""DCP ``Metadata`` to and from the JSON stored in manifest.json ("dcp").

The reader rebuilds ``Metadata`` from JSON and the checkpoint's items only;
nothing is unpickled. Checkpoints written by the C++ API carry no "dcp"
block: their Metadata is derived from the items alone.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Optional

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

# The "dcp" block of manifest.json. Format 1 repeated every item's dtype,
# shape and chunks in "state_dict_metadata"; format 2 keeps only what the
# checkpoint's items do not say (requires_grad, planner data, storage meta),
# and the state_dict_metadata is resolved lazily from the items.
_FORMAT = 2


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def dtype_from_name(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dt


def to_json(md: Metadata) -> dict[str, Any]:
    grad = sorted(fqn for fqn, m in md.state_dict_metadata.items()
                  if isinstance(m, TensorStorageMetadata) and m.properties.requires_grad)
    out: dict[str, Any] = {"format": _FORMAT, "version": md.version, "requires_grad": grad}
    # The default planners' planner_data maps flattened keys to their paths in
    # the nested state dict (lists of str/int): JSON as it is.
    out["planner_data"] = _enc(md.planner_data) if md.planner_data is not None else None
    if md.storage_meta is not None:
        out["storage_meta"] = {"save_id": md.storage_meta.save_id,
                               "modules": list(md.storage_meta.modules)}
    return out


def _storage_meta(d: dict[str, Any], checkpoint_id: str) -> StorageMeta:
    sm = d.get("storage_meta") or {}
    return StorageMeta(checkpoint_id=checkpoint_id, save_id=sm.get("save_id"),
                       modules=sm.get("modules", []))


def _tensor(dtype: str, size: list[int], chunks: Iterable[tuple[list[int], list[int]]],
            requires_grad: bool = False) -> TensorStorageMetadata:
    return TensorStorageMetadata(
        properties=TensorProperties(dtype=dtype_from_name(dtype), requires_grad=requires_grad),
        size=torch.Size(size),
        chunks=[ChunkStorageMetadata(offsets=torch.Size(o), sizes=torch.Size(s))
                for o, s in chunks],
    )


def from_json(d: dict[str, Any], checkpoint_id: str) -> Metadata:
    """Metadata from a format-1 "dcp" block, which lists every entry."""
    if d.get("format") != 1:
        raise ValueError(f"unsupported DCP metadata format {d.get('format')!r}")
    sdm: dict[str, Any] = {}
    for fqn, m in d["state_dict_metadata"].items():
        if m["type"] == "bytes":
            sdm[fqn] = BytesStorageMetadata()
        else:
            sdm[fqn] = _tensor(m["dtype"], m["size"], m["chunks"],
                               bool(m.get("requires_grad", False)))
    planner_data = d.get("planner_data")
    return Metadata(state_dict_metadata=sdm,
                    planner_data=_dec(planner_data) if planner_data is not None else None,
                    storage_meta=_storage_meta(d, checkpoint_id), version=d.get("version"))


class LazyStateDictMetadata(Mapping[str, Any]):
    """DCP's ``state_dict_metadata``, resolved one entry at a time.

    Membership, ``keys()`` and ``len()`` come from the checkpoint's items
    table, which the reader holds already; ``m[fqn]`` reads that item's
    chunk records (in format 2, only those) the first time it is asked for.
    So a rank that loads some items reads the metadata of those items only.
    ``items()`` and ``values()`` resolve every entry: DCP calls them only on
    paths that rebuild a whole state dict (``_EmptyStateDictLoadPlanner``,
    ``dcp_to_torch_save``).

    After ``expect(parts)`` (shardwise's ``LoadPlanner`` calls it with the
    boxes of the rank's sharded tensors), ``m[fqn]`` for such an entry holds
    only the saved chunks that overlap those boxes: all that DCP's planning
    of this rank's reads looks at, found with a box lookup in the index (a
    few blocks) instead of the item's every chunk record.
    """

    def __init__(self, reader: Any, names: Iterable[str], requires_grad: Iterable[str] = ()):
        self._reader = reader
        self._names = dict.fromkeys(names)  # ordered, O(1) membership
        self._grad = frozenset(requires_grad)
        self._resolved: dict[str, Any] = {}

    def expect(self, parts: dict[str, list[tuple[list[int], list[int]]]]) -> None:
        """Entries not resolved yet will hold only the chunks that overlap
        these boxes (offsets, sizes) of their global shape. They are looked
        up now, all in one call whose index reads are in flight together
        (DCP asks for every one of them next, one at a time)."""
        queries = [(fqn, o, s) for fqn, boxes in parts.items()
                   if fqn in self._names and fqn not in self._resolved for o, s in boxes]
        if not queries:
            return
        found: dict[str, list[Optional[dict[str, Any]]]] = {}
        for (fqn, _, _), it in zip(queries, self._reader.item_parts(queries)):
            found.setdefault(fqn, []).append(it)
        for fqn, its in found.items():
            it = self._union(its)
            if it is not None:  # else a box did not fit: the whole item when asked
                self._resolved[fqn] = self._entry(fqn, it)

    def __getitem__(self, fqn: str) -> Any:
        hit = self._resolved.get(fqn)
        if hit is not None:
            return hit
        if fqn not in self._names:
            raise KeyError(fqn)
        md = self._resolved[fqn] = self._entry(fqn, self._reader.item(fqn))
        return md

    def _entry(self, fqn: str, it: dict[str, Any]) -> Any:
        if it["kind"] == "bytes":
            return BytesStorageMetadata()
        return _tensor(it["dtype"], it["shape"], it["chunks"], fqn in self._grad)

    @staticmethod
    def _union(its: list[Optional[dict[str, Any]]]) -> Optional[dict[str, Any]]:
        """One item's lookups, one per box, as one item with the chunks that
        overlap any box; None when a box did not fit the saved shape (the
        whole item then, so that DCP reports the mismatch as it words it)."""
        if not its or any(it is None for it in its):
            return None
        seen: dict[tuple[int, ...], Any] = {}
        for it in its:
            for c in it["chunks"]:  # type: ignore[index]
                seen.setdefault(tuple(c[0]), c)
        out = dict(its[0])  # type: ignore[arg-type]
        out["chunks"] = list(seen.values())
        return out

    def __contains__(self, fqn: object) -> bool:
        return fqn in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __reduce__(self) -> Any:
        # Pickled (DCP's process-based async paths): as a plain dict of whole
        # entries, never this rank's narrowed ones.
        whole = LazyStateDictMetadata(self._reader, self._names, self._grad)
        return (dict, (dict(whole.items()),))


def lazy(reader: Any, header: dict[str, Any], checkpoint_id: str) -> Metadata:
    """Metadata of a checkpoint whose "dcp" block is format 2 or absent (the
    C++ API and the CLI write none): entries come from the items."""
    d = json.loads(header["dcp"]) if header.get("dcp") else {}
    if d and d.get("format") == 1:
        return from_json(d, checkpoint_id)
    if d and d.get("format") != _FORMAT:
        raise ValueError(f"unsupported DCP metadata format {d.get('format')!r}")
    names = reader.item_names()
    sdm = LazyStateDictMetadata(reader, names, d.get("requires_grad", ()))
    planner_data = d.get("planner_data")
    if d:
        planner_data = _dec(planner_data) if planner_data is not None else None
    else:
        # Written without DCP (the C++ API, the CLI): every item is a key of
        # a flat state dict, which is what DCP's planners make of it (they
        # look keys up in planner_data when they rebuild a state dict).
        planner_data = {name: (name,) for name in names}
    return Metadata(state_dict_metadata=sdm,  # type: ignore[arg-type]
                    planner_data=planner_data,
                    storage_meta=_storage_meta(d, checkpoint_id), version=d.get("version"))
