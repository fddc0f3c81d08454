"""Non-tensor values (step counters, hyper-parameters, RNG seeds...) as JSON.

DCP's default planners store such values with ``torch.save`` (pickle), and
loading them runs ``torch.load`` on bytes from the checkpoint: arbitrary code
execution for whoever can write the checkpoint. shardwise stores them as
tagged JSON instead and never unpickles anything it reads.

Supported: None, bool, int, float (also nan/inf), str, bytes, io.BytesIO,
list, tuple, dict (any JSON-able keys), set, frozenset, torch.dtype,
torch.Size, and numpy scalars (``numpy.generic``; arrays are refused: put
them in the state dict as tensors). Anything else is refused with a clear
error when saving. A
state dict entry that is an ``io.BytesIO`` is stored as its raw bytes (as
DCP stores it) and loads as an ``io.BytesIO``.

"""
from __future__ import annotations

import base64
import io
import json
import math
from typing import Any

MAGIC = b"SWJSON1\n"
RAW_MAGIC = b"SWRAW1\n"  # an io.BytesIO entry: its bytes follow as they are
_TAG = "__sw__"


def _enc(v: Any) -> Any:
    import torch

    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        if math.isfinite(v):
            return v
        return {_TAG: "float", "v": repr(v)}
    if isinstance(v, torch.Size):
        return {_TAG: "size", "v": list(v)}
    if isinstance(v, tuple):
        return {_TAG: "tuple", "v": [_enc(x) for x in v]}
    if isinstance(v, list):
        return [_enc(x) for x in v]
    if isinstance(v, (set, frozenset)):
        return {_TAG: "frozenset" if isinstance(v, frozenset) else "set",
                "v": [_enc(x) for x in sorted(v, key=repr)]}
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v) and _TAG not in v:
            return {k: _enc(x) for k, x in v.items()}
        return {_TAG: "dict", "v": [[_enc(k), _enc(x)] for k, x in v.items()]}
    if isinstance(v, (bytes, bytearray)):
        return {_TAG: "bytes", "v": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, io.BytesIO):
        return {_TAG: "bytesio", "v": base64.b64encode(v.getvalue()).decode()}
    if isinstance(v, torch.dtype):
        return {_TAG: "dtype", "v": str(v).replace("torch.", "")}
    if isinstance(v, torch.Tensor):
        raise TypeError("a tensor nested inside a non-tensor value cannot be stored; "
                        "put it in the state dict directly")
    if _is_numpy_scalar(v):
        return _enc(v.item())
    raise TypeError(f"a value of type {type(v).__name__} cannot be stored without pickle; "
                    "shardwise stores JSON-compatible values (see shardwise._values)")


def _is_numpy_scalar(v: Any) -> bool:
    """A numpy scalar (np.float32(1.5), np.int64(3)...), never an array: an
    array's ``item()`` would store one element of it, or fail."""
    if type(v).__module__ != "numpy":
        return False
    import numpy

    return isinstance(v, numpy.generic)


def _dec(v: Any) -> Any:
    import torch

    if isinstance(v, list):
        return [_dec(x) for x in v]
    if not isinstance(v, dict):
        return v
    tag = v.get(_TAG)
    if tag is None:
        return {k: _dec(x) for k, x in v.items()}
    body = v.get("v")
    if tag == "float":
        return float(body)
    if tag == "size":
        return torch.Size(body)
    if tag == "tuple":
        return tuple(_dec(x) for x in body)
    if tag == "set":
        return {_dec(x) for x in body}
    if tag == "frozenset":
        return frozenset(_dec(x) for x in body)
    if tag == "dict":
        return {_hashable(_dec(k)): _dec(x) for k, x in body}
    if tag == "bytes":
        return base64.b64decode(body)
    if tag == "bytesio":
        return io.BytesIO(base64.b64decode(body))
    if tag == "dtype":
        dt = getattr(torch, str(body), None)
        if not isinstance(dt, torch.dtype):
            raise ValueError(f"unknown dtype {body!r} in a stored value")
        return dt
    raise ValueError(f"unknown value tag {tag!r}")


def _hashable(k: Any) -> Any:
    return tuple(_hashable(x) for x in k) if isinstance(k, list) else k


def encode(value: Any) -> bytes:
    """The bytes shardwise stores for a non-tensor value."""
    if isinstance(value, io.BytesIO):
        return RAW_MAGIC + value.getvalue()
    return MAGIC + json.dumps(_enc(value), allow_nan=False, separators=(",", ":")).encode()


def decode(data: bytes, what: str) -> Any:
    """The value stored by :func:`encode`; ValueError for anything else."""
    if data.startswith(RAW_MAGIC):
        return io.BytesIO(data[len(RAW_MAGIC):])
    if not data.startswith(MAGIC):
        raise ValueError(f"{what}: not a shardwise JSON value (refusing to unpickle it)")
    try:
        return _dec(json.loads(data[len(MAGIC):].decode()))
    except (ValueError, TypeError, KeyError, RecursionError) as e:
        raise ValueError(f"{what}: malformed stored value: {e}") from e


def as_torch_bytes(value: Any) -> io.BytesIO:
    """``value`` re-serialized for a DCP LoadPlanner's ``load_bytes``.

    Stock planners call ``torch.load`` on what the storage reader hands them.
    We hand them a pickle we just made from the JSON-decoded value, so what
    they unpickle consists of plain values only, never bytes from the
    checkpoint.
    """
    import torch

    buf = io.BytesIO()
    torch.save(value, buf)
    buf.seek(0)
    return buf
