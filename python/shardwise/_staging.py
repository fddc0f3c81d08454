"""Staging a state dict into the process's staging memory.

Every asynchronous save of shardwise stages here, the ``Checkpointer``'s and
the DCP ``Writer.stage()``'s alike, and this module only decides *what* to
copy *where*: the memory is the C++ ``StagingPool`` (one per kind, owned by
the process, reused by every save: a new ``Writer`` per save allocates
nothing), and the copy of CPU tensors is the pool's parallel copy, run in
C++ with the GIL released. Tensors are laid out one after another at 4 KiB
boundaries with zero padding, exactly as extents of a shard file, so that
``Writer.write_data`` writes them straight from the pool and copies nothing
(the engine recognizes staged memory by its address).

CUDA tensors are copied into pinned memory on a side stream, non-blocking,
after the stream that produced them; completion is a CUDA event. Nothing
here synchronizes the whole device.

Kinds of memory: ``pageable`` (C++ anonymous memory, pre-faulted),
``pinned`` (torch's pinned allocator, for device-to-host copies),
``shared`` (torch shared memory, so that DCP's PROCESS mode hands the staged
tensors to its checkpoint process without copying them), ``shared-pinned``.
"""
from __future__ import annotations

import atexit
import copy as _copy
import os
import threading
import time
import weakref
from typing import Any, Callable, Optional

import torch

from . import _core

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover
    DTensor = None  # type: ignore[misc,assignment]

ALIGN = 4096
_SLAB_ROUNDING = 2 << 20

__all__ = ["Snapshot", "stage", "release_staging", "staging_stats", "kind_for"]


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def local_tensor(t: Any) -> torch.Tensor:
    """The local shard of a DTensor, or the tensor itself. The shard is read
    where the DTensor holds it: ``to_local()`` makes a view through an
    autograd Function, about 0.1 ms a call, which a state of a few hundred
    DTensors pays on every save."""
    if DTensor is not None and isinstance(t, DTensor):
        held = getattr(t, "_local_tensor", None)
        return held if isinstance(held, torch.Tensor) else t.to_local()
    return t


def kind_for(pin_memory: bool, shared_memory: bool) -> str:
    if shared_memory:
        return "shared-pinned" if pin_memory else "shared"
    return "pinned" if pin_memory else "pageable"


# -- memory from torch, for the kinds C++ cannot allocate ------------------------
_owners: "weakref.WeakValueDictionary[int, Any]" = weakref.WeakValueDictionary()
_installed: set[str] = set()
_install_lock = threading.Lock()


class _Registered:
    """Shared memory registered with CUDA (pinned); unregistered when freed."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor
        err = torch.cuda.cudart().cudaHostRegister(tensor.data_ptr(), tensor.numel(), 0)
        if int(err) != 0:
            raise RuntimeError(f"cudaHostRegister of {tensor.numel()} bytes failed ({err})")

    def __del__(self) -> None:
        try:
            torch.cuda.cudart().cudaHostUnregister(self.tensor.data_ptr())
        except Exception:  # interpreter shutdown: nothing left to unregister for
            pass


def _allocate(kind: str, nbytes: int) -> tuple[int, int, Any]:
    n = (nbytes + _SLAB_ROUNDING - 1) // _SLAB_ROUNDING * _SLAB_ROUNDING
    if kind == "pinned":
        t = torch.empty(n, dtype=torch.uint8, pin_memory=True)
        owner: Any = t
    else:
        # Shared memory lives in /dev/shm: touching pages past its capacity
        # would kill the process with SIGBUS, so refuse clearly instead.
        free = _shm_free_bytes()
        if free is not None and free < n:
            raise MemoryError(
                f"shared staging memory of {n / 2**30:.2f} GiB does not fit /dev/shm "
                f"({free / 2**30:.2f} GiB free): enlarge it (e.g. docker --shm-size, a "
                f"Kubernetes emptyDir with medium: Memory) or stage without shared_memory")
        # Allocated in shared memory directly (share_memory_() would copy),
        # then touched once so that no save pays for page faults.
        storage = torch.UntypedStorage._new_shared(n)
        t = torch.empty(0, dtype=torch.uint8).set_(storage)
        t.zero_()
        owner = _Registered(t) if kind == "shared-pinned" else t
    _owners[t.data_ptr()] = t
    return t.data_ptr(), n, owner


def _shm_free_bytes() -> Optional[int]:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _ensure_allocator(kind: str) -> None:
    if kind == "pageable" or kind in _installed:
        return
    with _install_lock:
        if kind not in _installed:
            _core.set_staging_allocator(kind, lambda n, k=kind: _allocate(k, n))
            _installed.add(kind)


def release_staging() -> None:
    """Frees the staging memory that no save in flight holds (every kind).

    The next save allocates it again. Also runs at interpreter exit."""
    _core.release_staging()


atexit.register(release_staging)


def staging_stats(kind: str = "pageable") -> dict[str, int]:
    """The process pool of ``kind``: allocations so far, bytes reserved and
    leased, slabs."""
    st = _core.staging_stats(kind)
    return {k: getattr(st, k) for k in ("allocations", "reserved_bytes", "leased_bytes", "slabs",
                                        "leased")}


# -- snapshots ----------------------------------------------------------------------
_streams: dict[int, Any] = {}
_snapshots: "weakref.WeakValueDictionary[int, Snapshot]" = weakref.WeakValueDictionary()


def _side_stream(device: torch.device) -> Any:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _streams:
        _streams[index] = torch.cuda.Stream(device=index)
    return _streams[index]


class Snapshot:
    """One save's staged copy of a state dict.

    ``state_dict`` mirrors the original, its tensors replaced by views of
    the lease (DTensors re-wrapped around them) and other values deep-copied.
    With background copies (lazy or async staging) it is complete only after
    :meth:`wait`.
    """

    def __init__(self, lease: Any, nbytes: int) -> None:
        self.lease = lease
        self.nbytes = nbytes  # bytes of tensor state staged
        self.state_dict: Any = None
        self.torch_copied = 0  # CPU bytes copied by torch (non-contiguous tensors)
        self.device_bytes = 0  # bytes copied by device-to-host DMA
        self.write_copied = 0  # bytes the writer copied again (0 when all went direct)
        self.kind = "pageable"
        self.copy_seconds = 0.0  # the foreground copy (the part of the stall that moves bytes)
        self.extents: list[tuple[int, int]] = []  # (offset, bytes) of every staged tensor
        self._events: list[tuple[Any, Any]] = []  # (CUDA event, device)
        _snapshots[lease.address] = self

    @property
    def copied_bytes(self) -> int:
        """Bytes of state the CPU copied for this save: the staging copy,
        plus whatever the writer copied again (nothing, normally)."""
        return self.lease.copied_bytes + self.torch_copied + self.write_copied

    def done(self) -> bool:
        return self.lease.staged and all(e.query() for e, _ in self._events)

    def wait(self) -> None:
        """Blocks until every copy is complete (host and device)."""
        self.lease.wait_staged()
        for e, _ in self._events:
            e.synchronize()  # this event only: never the whole device

    def wait_on_device(self) -> None:
        """Host copies are waited for; device copies are ordered before the
        current stream's next kernels (no host stall for them)."""
        self.lease.wait_staged()
        for e, device in self._events:
            torch.cuda.current_stream(device).wait_event(e)

    def release(self) -> None:
        """Returns the memory to the pool (waits for background copies)."""
        self.lease.release()


def adopt(record: dict[str, Any], tensors: list[torch.Tensor]) -> Any:
    """In DCP's checkpoint process: a lease over the parent's shared staging
    memory that ``tensors`` (views of it, received by file descriptor) lie
    in, with the parent's staged extents, so they are written without a
    copy. None when the tensors are not views of that memory."""
    for t in tensors:
        storage = t.untyped_storage()
        if storage.nbytes() == record["size"] and storage.is_shared():
            return _core.adopt_staged(storage.data_ptr(), record["size"], record["extents"])
    return None


def tensor_bytes(state_dict: Any) -> int:
    """Bytes of the (local) tensors in a state dict, each tensor once."""
    seen: set[tuple[Any, ...]] = set()
    total = 0

    def walk(v: Any) -> None:
        nonlocal total
        if isinstance(v, torch.Tensor):
            t = local_tensor(v)
            key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))
            if key not in seen or t.numel() == 0:
                seen.add(key)
                total += t.numel() * t.element_size()
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    walk(state_dict)
    return total


def snapshot_at(address: int) -> Optional[Snapshot]:
    """The live snapshot whose lease starts at ``address``."""
    return _snapshots.get(address)


def _base_tensor(lease: Any, kind: str) -> torch.Tensor:
    if kind.startswith("shared"):
        # Views of torch's own shared storage: DCP's PROCESS mode passes them
        # to its checkpoint process by file descriptor, without a copy.
        owner = _owners.get(lease.address)
        if owner is None:
            raise RuntimeError("shardwise: shared staging memory has no torch owner")
        return owner
    # A tensor over the lease that keeps it leased while any view lives.
    return torch.from_dlpack(lease.memory())


def _rebuild_dtensor(local: torch.Tensor, mesh: Any, placements: Any, shape: Any,
                     stride: Any) -> Any:
    assert DTensor is not None
    return DTensor.from_local(local, mesh, placements, run_check=False, shape=shape,
                              stride=stride)


def _same_spec(view: torch.Tensor, like: Any) -> Any:
    """A DTensor over `view` with `like`'s spec (mesh, placements, global
    shape and stride): what ``from_local`` computes, without its autograd
    Function and shape checks (0.1 ms against 0.01 ms a tensor). None where
    this torch's DTensor has no such constructor, or `view` is not shaped
    like `like`'s shard."""
    spec = getattr(like, "_spec", None)
    held = getattr(like, "_local_tensor", None)
    if spec is None or held is None or held.shape != view.shape or held.dtype != view.dtype:
        return None
    try:
        return DTensor(view, spec, requires_grad=False)
    except TypeError:
        return None


def _dtensor_over(view: torch.Tensor, like: Any) -> Any:
    """A DTensor like `like` whose local tensor is `view`. DCP's PROCESS mode
    pickles the staged state to its checkpoint process, and torch 2.13
    pickles a DTensor whose local tensor starts past the beginning of its
    storage through the wrapper's own empty storage, which crashes the
    process (SIGSEGV). Such a DTensor is pickled through its local tensor
    instead (shared staging memory goes by file descriptor, no copy)."""
    args = (view, like.device_mesh, like.placements, like.shape, like.stride())
    d = _same_spec(view, like)
    if d is None:
        d = _rebuild_dtensor(*args)
    if view.storage_offset():
        d.__reduce_ex__ = lambda proto: (_rebuild_dtensor, args)
    return d


def stage(state_dict: Any, *, pin_memory: bool = False, shared_memory: bool = False,
          background: bool = False, lazy: Optional[Callable[[torch.Tensor], bool]] = None,
          non_blocking: bool = True, threads: int = 0) -> Snapshot:
    """Stages ``state_dict``; see the module docstring.

    background: every copy runs in the background (DCP's async staging).
    lazy: tensors for which it returns True are copied in the background,
        the others before this returns (the lazy snapshot of the
        Checkpointer).
    """
    kind = kind_for(pin_memory, shared_memory)
    _ensure_allocator(kind)
    # 1. Lay out every tensor (a tensor met twice, e.g. tied weights, once).
    places: dict[tuple[Any, ...], int] = {}
    order: list[torch.Tensor] = []
    offset = 0

    def key_of(t: torch.Tensor) -> tuple[Any, ...]:
        return (t.device, t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()))

    def collect(v: Any) -> None:
        nonlocal offset
        if isinstance(v, torch.Tensor):
            t = local_tensor(v)
            if t.is_quantized or t.layout != torch.strided:
                raise TypeError(f"shardwise stages dense tensors only, not {t.layout} "
                                f"{'quantized ' if t.is_quantized else ''}tensors")
            k = key_of(t)
            if k not in places or t.numel() == 0:
                places[k] = offset
                order.append(t)
                offset += _align(t.numel() * t.element_size())
        elif isinstance(v, dict):
            for x in v.values():
                collect(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                collect(x)

    collect(state_dict)
    lease = _core.acquire_staging(kind, max(offset, ALIGN))
    snap = Snapshot(lease, offset)
    snap.kind = kind
    base = _base_tensor(lease, kind)
    views: dict[tuple[Any, ...], torch.Tensor] = {}
    eager: list[tuple[int, int, int]] = []
    later: list[tuple[int, int, int]] = []
    by_torch: list[tuple[torch.Tensor, torch.Tensor]] = []
    by_device: list[tuple[torch.Tensor, torch.Tensor]] = []  # needed before we return
    by_device_later: list[tuple[torch.Tensor, torch.Tensor]] = []
    for t in order:
        off = places[key_of(t)]
        n = t.numel() * t.element_size()
        view = base[off:off + n].view(t.dtype).view(t.shape)
        views[key_of(t)] = view
        if n == 0:
            continue
        snap.extents.append((off, n))
        if t.device.type != "cpu" or not t.is_contiguous():
            # Copied by torch, which writes the tensor's bytes only: the
            # padding to the next 4 KiB (format.md: zeros) may hold an earlier
            # save's bytes, and a PROCESS-mode writer adopts the whole extent.
            base[off + n:_align(off + n)].zero_()
        deferred = background or (lazy is not None and lazy(t))
        if t.device.type == "cuda":
            (by_device_later if deferred else by_device).append((view, t))
        elif t.device.type != "cpu":
            raise TypeError(f"shardwise cannot stage a tensor on {t.device}")
        elif not t.is_contiguous():
            by_torch.append((view, t))
        elif deferred:
            later.append((t.data_ptr(), off, n))
        else:
            eager.append((t.data_ptr(), off, n))

    # 2. Copy: device-to-host first (it runs on its own), then the host.
    blocking = not background and lazy is None
    if by_device:
        # Before this returns: waited for on the host (an eager save's stall),
        # or, in lazy mode, ordered before the current stream's next kernels
        # (the next forward may change buffers).
        for event, device in _copy_from_devices(snap, by_device, non_blocking):
            if blocking:
                event.synchronize()
            else:
                torch.cuda.current_stream(device).wait_event(event)
    if by_device_later:
        _copy_from_devices(snap, by_device_later, non_blocking)
    if eager:
        t0 = time.monotonic()
        lease.stage(eager, threads)
        snap.copy_seconds = time.monotonic() - t0
    with torch.no_grad():  # parameters may be passed as they are
        for view, t in by_torch:
            view.copy_(t)
            snap.torch_copied += view.numel() * view.element_size()
    if later:
        lease.stage_in_background(later, threads)

    # 3. The staged state dict: same structure, views for tensors.
    def rebuild(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            view = views[key_of(local_tensor(v))]
            if DTensor is not None and isinstance(v, DTensor):
                return _dtensor_over(view, v)
            return view
        if isinstance(v, dict):
            out = {k: rebuild(x) for k, x in v.items()}
            return out if type(v) is dict else _same_mapping(v, out)
        if isinstance(v, list):
            return [rebuild(x) for x in v]
        if isinstance(v, tuple):
            items = [rebuild(x) for x in v]
            return type(v)(*items) if hasattr(v, "_fields") else tuple(items)
        return _copy_value(v)

    snap.state_dict = rebuild(state_dict)
    return snap


def _copy_from_devices(snap: Snapshot, copies: list[tuple[torch.Tensor, torch.Tensor]],
                       non_blocking: bool) -> list[tuple[Any, Any]]:
    """Queues the copies on each device's side stream; returns (event,
    device) per device, also recorded in the snapshot."""
    recorded = []
    by_dev: dict[Any, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for view, t in copies:
        by_dev.setdefault(t.device, []).append((view, t))
    for device, pairs in by_dev.items():
        stream = _side_stream(device)
        # After the work that produced the tensors, on a stream of our own.
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), torch.no_grad():
            for view, t in pairs:
                view.copy_(t, non_blocking=non_blocking)
                t.record_stream(stream)  # its memory stays valid until the copy ran
                snap.device_bytes += view.numel() * view.element_size()
            event = torch.cuda.Event()
            event.record(stream)
        snap._events.append((event, device))
        recorded.append((event, device))
    return recorded


def _same_mapping(original: Any, items: dict[Any, Any]) -> Any:
    try:
        return type(original)(items)
    except Exception:
        return items


def _copy_value(v: Any) -> Any:
    try:
        return _copy.deepcopy(v)
    except Exception:  # an object that cannot be copied is saved as it is then
        return v
