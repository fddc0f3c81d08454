"""Where a Checkpointer's tiers keep their checkpoints, and what they are
called: one definition for the Checkpointer, its tiers (shardwise.tiers) and
the CLI's views of a local tier. Imports no torch, so ``shardwise ls
--local-root`` starts fast."""
from __future__ import annotations

import os
import re
from typing import Any

_TIER_DIR = re.compile(r"(rank|replica)-(\d{5})")
_STEP_NAME = re.compile(r"step-(\d{12})")


def rank_dir(local_root: str, rank: int) -> str:
    """RANK's own local checkpoints on its node."""
    return os.path.join(local_root, f"rank-{rank:05d}")


def replica_dir(local_root: str, rank: int) -> str:
    """The replicas of RANK's local checkpoints, on its partner's node."""
    return os.path.join(local_root, f"replica-{rank:05d}")


def tier_roots(local_root: str) -> list[tuple[str, int, str]]:
    """(kind, rank, directory) of each rank_dir ("rank") and replica_dir
    ("replica") under LOCAL_ROOT, in name order. FileNotFoundError when
    LOCAL_ROOT is not a directory."""
    if not os.path.isdir(local_root):
        raise FileNotFoundError(f"{local_root}: no such directory")
    out = []
    for name in sorted(os.listdir(local_root)):
        m = _TIER_DIR.fullmatch(name)
        if m and os.path.isdir(os.path.join(local_root, name)):
            out.append((m.group(1), int(m.group(2)), os.path.join(local_root, name)))
    return out


def step_name(step: int) -> str:
    """The name of a Checkpointer's checkpoint of STEP, on every tier."""
    return f"step-{step:012d}"


def steps_in(listing: Any) -> set[int]:
    """The steps of the committed checkpoints a Checkpointer wrote (named
    step-N) in a Repository's listing."""
    return {c.step for c in listing
            if c.state == "committed" and c.step >= 0 and c.name == step_name(c.step)}


def damaged_steps_in(listing: Any) -> set[int]:
    """The steps of the checkpoint directories named step-N in a
    Repository's listing whose manifest does not check out (state
    "invalid": the name is all that tells their step)."""
    out = set()
    for c in listing:
        m = _STEP_NAME.fullmatch(c.name)
        if c.state == "invalid" and m:
            out.add(int(m.group(1)))
    return out
