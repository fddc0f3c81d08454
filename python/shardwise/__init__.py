"""shardwise: fast, crash-consistent checkpoints for distributed training.

The public surface:

- :class:`shardwise.Checkpointer`: checkpoint a training loop (async saves,
  ``latest``, retention, load of the newest *valid* checkpoint).
- :mod:`shardwise.dcp`: :class:`~shardwise.dcp.Writer` and
  :class:`~shardwise.dcp.Reader`, storage plugins for
  ``torch.distributed.checkpoint`` (``save``, ``async_save``, ``load``).
- :func:`shardwise.import_dcp`: convert a stock DCP checkpoint.
- :class:`shardwise.CorruptCheckpointError`: a damaged checkpoint.

Errors from the C++ core arrive as :class:`OSError` (with ``errno`` and
``filename``), :class:`CorruptCheckpointError`, :class:`ValueError`,
:class:`TimeoutError` or :class:`RuntimeError`.
"""
from __future__ import annotations

import logging

from ._core import CorruptCheckpointError

__version__ = "0.1.0"

logger = logging.getLogger("shardwise")
logger.addHandler(logging.NullHandler())

__all__ = [
    "Checkpointer",
    "CorruptCheckpointError",
    "import_dcp",
    "__version__",
]


def __getattr__(name: str):
    # torch is imported only when these are used, so the CLI starts fast.
    if name == "Checkpointer":
        from .checkpointer import Checkpointer

        return Checkpointer
    if name == "import_dcp":
        from .migrate import import_dcp

        return import_dcp
    raise AttributeError(f"module 'shardwise' has no attribute {name!r}")
