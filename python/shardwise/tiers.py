"""Tiered checkpoints: a node-local tier, a partner node's replica, and the root.

``Checkpointer(root, local_root=..., persist_every=K, replicas=1)`` uses this
module. Each rank's save goes to its node's local tier as a checkpoint of its
own (the same format and commit as the root's, world size 1):
``LOCAL_ROOT/rank-RRRRR/step-N``. With ``replicas=1`` the rank then sends
that checkpoint's files to its partner, a rank of the next node in a fixed
ring, which installs them, verified, as ``LOCAL_ROOT/replica-RRRRR/step-N``
(``Repository.install``). Every K-th save also goes to the root (Lustre) as
the usual DCP checkpoint of all ranks, from the same staged bytes.

At load the ranks decide together on the newest step that every rank can
read from some tier, then each rank reads its own part from the fastest tier
that holds it: its local tier, its partner's replica (sent over
torch.distributed and installed locally first), or the root. A rank whose
copy fails verification tries its next tier for the same step; when a rank
has none left, every rank moves to an older step. A mix of steps is never
loaded. docs/tiers.md has the model.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.distributed as dist

from . import _core

log = logging.getLogger("shardwise")

__all__ = ["Topology", "TierReport", "node_name"]

LOCAL, REPLICA, ROOT = "local", "replica", "root"


def node_name() -> str:
    """This process's node: ``SHARDWISE_NODE`` if set (a test or a launcher
    that simulates nodes), else the host name."""
    return os.environ.get("SHARDWISE_NODE") or socket.gethostname()


@dataclass
class Topology:
    """Ranks by node, in rank order, and the partner ring over nodes: rank
    ``r``, the i-th rank of node n, sends its replica to the i-th rank of
    node n+1 (modulo that node's size), and holds the replica of the ranks
    whose partner it is."""

    rank: int
    nodes: list[list[int]]  # the ranks of each node, nodes in order of their first rank

    @staticmethod
    def gather(group: Any) -> "Topology":
        if not (dist.is_available() and dist.is_initialized()):
            return Topology(0, [[0]])
        names: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(names, node_name(), group=group)
        order: dict[str, list[int]] = {}
        for r, n in enumerate(names):
            order.setdefault(n, []).append(r)
        return Topology(dist.get_rank(group), list(order.values()))

    def node_of(self, rank: int) -> int:
        return next(i for i, ranks in enumerate(self.nodes) if rank in ranks)

    def partner(self, rank: int) -> int:
        """Where ``rank``'s replica goes (itself on a single node)."""
        n = self.node_of(rank)
        nxt = self.nodes[(n + 1) % len(self.nodes)]
        return nxt[self.nodes[n].index(rank) % len(nxt)]

    def sources(self, rank: int) -> list[int]:
        """The ranks whose replicas ``rank`` holds."""
        return [r for ranks in self.nodes for r in ranks if r != rank and self.partner(r) == rank]


@dataclass
class TierReport:
    """What a tiered ``load()`` did: the step, and per rank the tier that
    served it and how long its load took."""

    step: Optional[int] = None
    tiers: list[str] = field(default_factory=list)      # by rank
    seconds: list[float] = field(default_factory=list)  # by rank
    attempts: int = 0  # rounds of reading (1 when every first choice was intact)

    def __str__(self) -> str:
        if self.step is None:
            return "no checkpoint on any tier"
        by = {}
        for r, t in enumerate(self.tiers):
            by.setdefault(t, []).append(r)
        parts = ", ".join(f"{t}: ranks {','.join(map(str, rs))}" for t, rs in by.items())
        return f"step {self.step} ({parts}; slowest {max(self.seconds):.3f} s)"


def rank_dir(local_root: str, rank: int) -> str:
    return os.path.join(local_root, f"rank-{rank:05d}")


def replica_dir(local_root: str, rank: int) -> str:
    return os.path.join(local_root, f"replica-{rank:05d}")


def committed_steps(root: str, options: dict[str, Any]) -> set[int]:
    """Steps of the committed checkpoints named step-N under ``root``."""
    if not os.path.isdir(root):
        return set()
    repo = _core.Repository(root, options, False)
    return {c.step for c in repo.list()
            if c.state == "committed" and c.step >= 0 and c.name == f"step-{c.step:012d}"}


def checkpoint_files(directory: str) -> list[tuple[str, bytes]]:
    """The files of one committed checkpoint directory (flat), by name."""
    out = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path) and not name.startswith("."):
            with open(path, "rb") as f:
                out.append((name, f.read()))
    return out


def _pack(files: list[tuple[str, bytes]]) -> torch.Tensor:
    """Files as one uint8 tensor: a JSON header (names and sizes; no pickle)
    and the bytes back to back."""
    header = json.dumps([[n, len(b)] for n, b in files]).encode()
    blob = bytearray(8 + len(header) + sum(len(b) for _, b in files))
    blob[:8] = len(header).to_bytes(8, "little")
    blob[8:8 + len(header)] = header
    at = 8 + len(header)
    for _, b in files:
        blob[at:at + len(b)] = b
        at += len(b)
    return torch.frombuffer(blob, dtype=torch.uint8) if blob else torch.empty(0, dtype=torch.uint8)


def _unpack(t: torch.Tensor) -> list[tuple[str, bytes]]:
    """The inverse of _pack; a malformed blob is a ValueError, never a crash."""
    data = t.numpy().tobytes()
    if len(data) < 8:
        raise ValueError("replica transfer: shorter than its header")
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + n])
    except ValueError as e:
        raise ValueError(f"replica transfer: unreadable header: {e}") from None
    if not isinstance(header, list):
        raise ValueError("replica transfer: header is not a list")
    out, at = [], 8 + n
    for entry in header:
        if (not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], str)
                or not isinstance(entry[1], int) or entry[1] < 0 or at + entry[1] > len(data)):
            raise ValueError(f"replica transfer: bad file entry {entry!r}")
        out.append((entry[0], data[at:at + entry[1]]))
        at += entry[1]
    if at != len(data):
        raise ValueError("replica transfer: bytes left over after the last file")
    return out


def exchange(group: Any, sends: dict[int, torch.Tensor],
             recv_from: list[int]) -> dict[int, torch.Tensor]:
    """One round of point-to-point transfers on ``group``: this rank sends
    each tensor of ``sends`` to its rank and receives one tensor from each
    rank of ``recv_from``. Sizes go first, so a receiver allocates exactly."""
    ops, sizes = [], {}
    for dst, t in sends.items():
        ops.append(dist.isend(torch.tensor([t.numel()], dtype=torch.int64), dst, group=group))
    for src in recv_from:
        sizes[src] = torch.zeros(1, dtype=torch.int64)
        ops.append(dist.irecv(sizes[src], src, group=group))
    for op in ops:
        op.wait()
    ops, got = [], {}
    for dst, t in sends.items():
        if t.numel():
            ops.append(dist.isend(t, dst, group=group))
    for src in recv_from:
        got[src] = torch.empty(int(sizes[src].item()), dtype=torch.uint8)
        if got[src].numel():
            ops.append(dist.irecv(got[src], src, group=group))
    for op in ops:
        op.wait()
    return got


def install(root: str, name: str, blob: torch.Tensor, options: dict[str, Any]) -> None:
    """Installs a received checkpoint copy under ``root`` (verified by the
    engine; refused whole if damaged)."""
    os.makedirs(root, exist_ok=True)
    _core.Repository(root, options, True).install(name, _unpack(blob))


def timed(fn: Any) -> tuple[Any, float]:
    t0 = time.monotonic()
    out = fn()
    return out, time.monotonic() - t0
