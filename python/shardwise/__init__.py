"""shardwise: fast, crash-consistent checkpoints for distributed training.

The public surface:

- :class:`shardwise.Checkpointer`: checkpoint a training loop (async saves,
  ``latest``, retention, load of the newest *valid* checkpoint).
- :mod:`shardwise.dcp`: :class:`~shardwise.dcp.Writer` and
  :class:`~shardwise.dcp.Reader`, storage plugins for
  ``torch.distributed.checkpoint`` (``save``, ``async_save``, ``load``).
- :func:`shardwise.import_dcp`: convert a stock DCP checkpoint.
- :class:`shardwise.CorruptCheckpointError`: a damaged checkpoint.
- :class:`shardwise.AbortedError`: a save abandoned because another job
  holds the root or a rank failed; :class:`shardwise.UnavailableError`: a
  facility the save needs is missing here. Both derive from RuntimeError.
- :func:`shardwise.release_staging`: free the process's idle staging memory.

Errors from the C++ core arrive as :class:`OSError` (with ``errno`` and
``filename``), :class:`CorruptCheckpointError`, :class:`ValueError`,
:class:`AbortedError`, :class:`UnavailableError`, :class:`TimeoutError` or
:class:`RuntimeError`. The three shardwise errors carry the file or directory
they concern in ``path`` (None when there is none); OSError in ``filename``.
"""
from __future__ import annotations

import logging

from ._core import AbortedError, CorruptCheckpointError, UnavailableError
from ._core import __version__  # the VERSION file, compiled in
from ._core import release_staging as _release_staging

logger = logging.getLogger("shardwise")
logger.addHandler(logging.NullHandler())

__all__ = [
    "AbortedError",
    "Checkpointer",
    "CorruptCheckpointError",
    "UnavailableError",
    "import_dcp",
    "release_staging",
    "__version__",
]


def release_staging() -> None:
    """Frees the staging memory of asynchronous saves that no save in flight
    holds. Staging memory belongs to the process and is reused by every save
    (a new DCP Writer per save included); it is also freed at exit."""
    _release_staging()


def __getattr__(name: str):
    # torch is imported only when these are used, so the CLI starts fast.
    if name == "Checkpointer":
        from .checkpointer import Checkpointer

        return Checkpointer
    if name == "import_dcp":
        from .migrate import import_dcp

        return import_dcp
    raise AttributeError(f"module 'shardwise' has no attribute {name!r}")
