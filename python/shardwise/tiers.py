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
import mmap
import os
import socket
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.distributed as dist

from . import _core
from ._layout import (damaged_steps_in, rank_dir, replica_dir, step_name,  # noqa: F401
                      steps_in)  # (tiers.step_name etc.)

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


class RestorePlan:
    """Which tiers may serve each rank's part of each step, from every
    rank's view of its tiers (gathered: every rank computes the same plan).

    ``views[r]``: ``"own"`` {str(step): token} of rank r's local copies,
    ``"held"`` {str(source): {str(step): token}} of the replicas it holds;
    ``root_tokens`` {str(step): token} of the root's copies that some
    local tier also holds (a root step no local tier holds has no rival).
    A step is loaded from copies of one save only: of the tokens its copies
    carry, one that every rank holds on some tier, the newest (tokens begin
    with the time of the save; copies without one are the oldest). A step
    no token covers is incomplete.
    """

    _ANY = "*"  # a root copy whose token was not read: nothing to mix it with

    def __init__(self, views: list[dict[str, Any]], topo: Topology, root_steps: set[int],
                 root_tokens: dict[str, Optional[str]]) -> None:
        self.views, self.topo = views, topo
        self.root_steps, self.root_tokens = root_steps, root_tokens
        self.every = set(root_steps)
        for v in views:
            self.every.update(int(x) for x in v["own"])
        self.token: dict[int, Any] = {}
        self.incomplete: dict[int, list[int]] = {}
        for step in self.every:
            self._decide(step)

    def copies(self, r: int, step: int) -> list[tuple[str, Any]]:
        """(tier, token) of every copy of rank r's part of ``step``."""
        key, out = str(step), []
        own = self.views[r]["own"]
        if key in own:
            out.append((LOCAL, own[key]))
        p = self.topo.partner(r)
        held = self.views[p]["held"].get(str(r), {}) if p != r else {}
        if key in held:
            out.append((REPLICA, held[key]))
        if step in self.root_steps:
            out.append((ROOT, self.root_tokens.get(key, self._ANY)))
        return out

    def _decide(self, step: int) -> None:
        world = len(self.views)
        per_rank = [self.copies(r, step) for r in range(world)]
        tokens = {t for cs in per_rank for _, t in cs}
        covers = {t: [r for r in range(world) if any(tok == t for _, tok in per_rank[r])]
                  for t in tokens}
        complete = [t for t in tokens if len(covers[t]) == world]
        if not complete:
            best = max(tokens, key=lambda t: (len(covers[t]), str(t)), default=None)
            held = set(covers.get(best, []))
            self.incomplete[step] = [r for r in range(world) if r not in held]
            return
        self.token[step] = max(complete, key=lambda t: (t is not None and t != self._ANY,
                                                       str(t)))

    def options(self, r: int, step: int) -> list[str]:
        """The tiers that may serve rank r's part of ``step``, fastest
        first (none when the step is incomplete)."""
        if step not in self.token:
            return []
        return [tier for tier, tok in self.copies(r, step) if tok == self.token[step]]


ROOT_MARK = ".shardwise-root"  # in a local root: the root its checkpoints belong to


def mark_local_root(local_root: str, root: str) -> Optional[str]:
    """Records in ``local_root`` the root whose local tier it is (the first
    Checkpointer there writes it). None when it is ``root``'s; else why it is
    not: a node-local directory outlives the job (tmpfs until a reboot), and
    another job's checkpoints in it must never be loaded as this one's."""
    mark = os.path.join(local_root, ROOT_MARK)
    os.makedirs(local_root, exist_ok=True)
    if not os.path.exists(mark):
        tmp = f"{mark}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(root + "\n")
        os.replace(tmp, mark)  # the local ranks of one job all write the same
    with open(mark) as f:
        owner = f.read().strip()
    if owner == root:
        return None
    return (f"{local_root} holds the local tier of another root ({owner}, says {mark}); "
            f"this Checkpointer's root is {root}: pass another local_root, or remove that "
            "one if its checkpoints are no longer needed")


def committed_steps(root: str, options: dict[str, Any]) -> set[int]:
    """steps_in the listing of ``root`` (none when it does not exist)."""
    if not os.path.isdir(root):
        return set()
    return steps_in(_core.Repository(root, options, False).list())


# The user metadata key that names the tiered save a copy belongs to: every
# rank's local copy, replica and root copy of one save carry the same token,
# drawn by rank 0 for that save (16 hex digits: the time in milliseconds,
# then random bits). A restore combines only copies that carry the same one
# (a step saved by two runs, or twice with replace=True, is two saves), and
# of two complete saves of a step it takes the newer.
SAVE_TOKEN = "shardwise_tier_save"


def save_token(directory: str, options: dict[str, Any]) -> Optional[str]:
    """The tiered-save token a checkpoint directory's manifest records;
    None when it records none (saved without a local tier, or by a release
    before tokens) or cannot be read (then it fails as it is read)."""
    try:
        user = json.loads(_core.Reader(directory, options).header()["user"])
    except Exception:
        return None
    token = user.get(SAVE_TOKEN) if isinstance(user, dict) else None
    return token if isinstance(token, str) else None


def tokens_of(root: str, steps: Any, options: dict[str, Any]) -> dict[str, Optional[str]]:
    """{str(step): save_token} of each of ``steps`` in ``root``."""
    return {str(s): save_token(os.path.join(root, step_name(s)), options) for s in steps}


class Buffers:
    """uint8 receive buffers of one Checkpointer, by role ("recv-R"), kept
    from save to save and grown only when a larger one is needed: their
    pages are not faulted in again on every save."""

    def __init__(self) -> None:
        self._by_role: dict[str, torch.Tensor] = {}

    def get(self, role: str, nbytes: int) -> torch.Tensor:
        have = self._by_role.get(role)
        if have is None or have.numel() < nbytes:
            have = self._by_role[role] = torch.empty(nbytes, dtype=torch.uint8)
        return have[:nbytes]

    def clear(self) -> None:
        self._by_role.clear()


def _mapped(path: str, size: int) -> torch.Tensor:
    """The file's bytes as a read-only uint8 tensor over its pages (mapped
    and populated at once, no copy: a local tier's files are in memory or
    on NVMe). A committed checkpoint's files are rewritten only once
    retention has removed it (recycled files, docs/format.md), and the
    Checkpointer runs retention after the send, in the same background job;
    the mapping keeps the pages of a file that is unlinked meanwhile."""
    if size == 0:
        return torch.empty(0, dtype=torch.uint8)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_size != size:
            raise OSError(f"{path}: its size changed while it was packed")
        m = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                      prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    with warnings.catch_warnings():  # read-only memory, only ever sent
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(m, dtype=torch.uint8)  # keeps the mapping alive


def pack_checkpoint(directory: str) -> list[torch.Tensor]:
    """The files of one committed checkpoint directory (flat) as a transfer:
    uint8 parts whose concatenation is an 8-byte header length, a JSON header
    (names and sizes; never pickle), then each file's bytes. The files'
    parts are their pages, mapped: nothing is copied before the send."""
    names = sorted(n for n in os.listdir(directory)
                   if not n.startswith(".") and os.path.isfile(os.path.join(directory, n)))
    sizes = [os.path.getsize(os.path.join(directory, n)) for n in names]
    header = json.dumps([[n, z] for n, z in zip(names, sizes)]).encode()
    head = torch.frombuffer(bytearray(len(header).to_bytes(8, "little") + header),
                            dtype=torch.uint8)
    return [head] + [_mapped(os.path.join(directory, n), z) for n, z in zip(names, sizes)]


def unpack_header(blob: torch.Tensor) -> list[tuple[str, int, int]]:
    """(name, offset, size) of each file packed in ``blob``; a malformed
    blob is a ValueError naming the problem, never a crash."""
    total = blob.numel()
    if total == 0:
        raise ValueError("replica transfer: nothing was sent (the sender could not read its "
                         "local checkpoint; its log says why)")
    if total < 8:
        raise ValueError("replica transfer: shorter than its header")
    view = memoryview(blob.numpy())
    n = int.from_bytes(view[:8], "little")
    if n > total - 8:
        raise ValueError("replica transfer: header longer than the transfer")
    try:
        header = json.loads(bytes(view[8:8 + n]))
    except ValueError as e:
        raise ValueError(f"replica transfer: unreadable header: {e}") from None
    if not isinstance(header, list):
        raise ValueError("replica transfer: header is not a list")
    out, at = [], 8 + n
    for entry in header:
        if (not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], str)
                or not isinstance(entry[1], int) or entry[1] < 0 or at + entry[1] > total):
            raise ValueError(f"replica transfer: bad file entry {entry!r}")
        out.append((entry[0], at, entry[1]))
        at += entry[1]
    if at != total:
        raise ValueError("replica transfer: bytes left over after the last file")
    return out


def exchange(group: Any, sends: dict[int, list[torch.Tensor]], recv_from: list[int],
             buffers: Buffers) -> dict[int, torch.Tensor]:
    """One round of point-to-point transfers on ``group``: this rank sends
    each list of parts of ``sends`` to its rank, and receives from each rank
    of ``recv_from`` one tensor, the concatenation of what it sent. The
    number of parts and their sizes go first, so a receiver allocates once
    and receives each part in place."""
    def post(pairs: list[tuple[torch.Tensor, int, bool]]) -> None:
        ops = [dist.isend(t, peer, group=group) if out else dist.irecv(t, peer, group=group)
               for t, peer, out in pairs if t.numel()]
        for op in ops:
            op.wait()

    counts = {src: torch.zeros(1, dtype=torch.int64) for src in recv_from}
    post([(torch.tensor([len(parts)], dtype=torch.int64), dst, True)
          for dst, parts in sends.items()] + [(counts[src], src, False) for src in recv_from])
    sizes = {src: torch.zeros(int(counts[src].item()), dtype=torch.int64) for src in recv_from}
    post([(torch.tensor([p.numel() for p in parts], dtype=torch.int64), dst, True)
          for dst, parts in sends.items()] + [(sizes[src], src, False) for src in recv_from])
    got, pairs = {}, []
    for dst, parts in sends.items():
        pairs += [(p, dst, True) for p in parts]
    for src in recv_from:
        got[src] = buffers.get(f"recv-{src}", int(sizes[src].sum().item()))
        at = 0
        for n in sizes[src].tolist():
            pairs.append((got[src][at:at + n], src, False))
            at += n
    post(pairs)
    return got


def install(root: str, name: str, blob: torch.Tensor, options: dict[str, Any]) -> None:
    """Installs a received checkpoint copy under ``root``: the engine writes
    it from the received buffer, verifies every checksum, and refuses it
    whole if it is damaged."""
    os.makedirs(root, exist_ok=True)
    _core.Repository(root, options, True).install(name, unpack_header(blob), blob.numpy())
