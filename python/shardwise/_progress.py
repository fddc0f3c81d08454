"""Progress reporting for long saves and loads: tqdm when installed and asked
for, log lines otherwise, or a caller's callback ``(done_bytes, total_bytes)``."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Optional, Union

ProgressArg = Optional[Union[bool, Callable[[int, int], None]]]
log = logging.getLogger("shardwise")


class Progress:
    def __init__(self, how: ProgressArg, total: int, label: str) -> None:
        self.how, self.total, self.label, self.done = how, total, label, 0
        self.bar: Any = None
        self.start = time.monotonic()
        if how is True:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"shardwise {label}")
            except ImportError:
                self.bar = None

    def update(self, n: int) -> None:
        self.done += n
        if callable(self.how):
            self.how(self.done, self.total)
        elif self.bar is not None:
            self.bar.update(n)
        elif self.how is True:
            log.info("%s: %.1f%% of %d bytes", self.label,
                     100.0 * self.done / max(self.total, 1), self.total)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.close()
