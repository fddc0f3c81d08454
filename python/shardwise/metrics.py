"""Per-save metrics for Prometheus: a textfile for the node exporter, and
``prometheus_client`` when it is installed.

Every committed save records, on the process that commits it (DCP's
coordinator; in DCP's PROCESS mode, its checkpoint process), what the save
cost and what it wrote; loads record checksum failures. Two outlets, both
optional:

- ``SHARDWISE_METRICS_FILE=/var/lib/node_exporter/textfile/shardwise.prom``:
  the file is rewritten (atomically: a temporary file renamed over it) after
  every save and verify failure, in Prometheus' text format, for the node
  exporter's textfile collector. Only global rank 0 writes it, unless the
  path holds ``{rank}``, which becomes the process's global rank (one file
  per process).
- ``prometheus_client``: when it is importable, a collector with the same
  metrics is registered in its default registry at the first record;
  :func:`register` puts it in another registry.

``shardwise ls --json`` stays the operator's view of what is on disk (every
checkpoint, its state and its export). The metric names are listed in
:data:`METRICS` and in docs/python.md ("Metrics").
"""
from __future__ import annotations

import math
import os
import tempfile
import threading
import time
from typing import Any, Iterator, Optional

__all__ = ["METRICS", "record_save", "record_save_failure", "record_verify_failure",
           "render", "register", "snapshot"]

# name -> (type, help). Every metric has the label root (the checkpoint root).
METRICS: dict[str, tuple[str, str]] = {
    "shardwise_save_stall_seconds": (
        "gauge", "Last save: how long the caller was blocked (the staging copy for an async "
                 "save; the whole save for a synchronous one)."),
    "shardwise_save_persist_seconds": (
        "gauge", "Last save: from its start until it was committed."),
    "shardwise_save_bytes": ("gauge", "Last save: bytes of the committed checkpoint."),
    "shardwise_save_throughput_bytes_per_second": (
        "gauge", "Last save: checkpoint bytes over persist seconds."),
    "shardwise_save_waves": (
        "gauge", "Last save: staging waves (1: staged in full then written; 0: synchronous or "
                 "streamed, no staging)."),
    "shardwise_save_step": ("gauge", "Last save: its training step (-1 when none was given)."),
    "shardwise_saves_total": ("counter", "Saves by result (label result: committed, failed)."),
    "shardwise_verify_failures_total": (
        "counter", "Loads that found data not matching its checksum (or otherwise corrupt)."),
    "shardwise_export_state": (
        "gauge", "Last save's S3 export, 1 for its state (label state: off, requested, "
                 "request_failed); completion is in `shardwise ls --json`."),
    "shardwise_last_good_checkpoint_timestamp_seconds": (
        "gauge", "Unix time of the last committed save."),
    "shardwise_seconds_since_last_good_checkpoint": (
        "gauge", "Seconds since the last committed save (in the textfile: as of its writing; "
                 "prefer time() - shardwise_last_good_checkpoint_timestamp_seconds)."),
}

_EXPORT_STATES = ("off", "requested", "request_failed")

_lock = threading.Lock()
_roots: dict[str, dict[str, Any]] = {}
_registered: set[int] = set()


def _root_state(root: str) -> dict[str, Any]:
    st = _roots.get(root)
    if st is None:
        st = _roots[root] = {"committed": 0, "failed": 0, "verify_failures": 0}
    return st


def record_save(root: str, *, step: Optional[int], stall_s: float, persist_s: float,
                nbytes: int, waves: int, export_state: str) -> None:
    """A committed save of checkpoint root `root`."""
    if export_state not in _EXPORT_STATES:
        raise ValueError(f"export_state must be one of {_EXPORT_STATES}, not {export_state!r}")
    with _lock:
        st = _root_state(os.path.abspath(root))
        st.update(stall=stall_s, persist=persist_s, bytes=nbytes, waves=waves,
                  step=-1 if step is None else step, export=export_state,
                  last_good=time.time())
        st["committed"] += 1
    _publish()


def record_save_failure(root: str) -> None:
    """A save of `root` that failed (nothing was committed)."""
    with _lock:
        _root_state(os.path.abspath(root))["failed"] += 1
    _publish()


def record_verify_failure(root: str) -> None:
    """A load from `root` that found corrupt data."""
    with _lock:
        _root_state(os.path.abspath(root))["verify_failures"] += 1
    _publish()


def snapshot() -> dict[str, dict[str, Any]]:
    """What has been recorded, per root (a copy)."""
    with _lock:
        return {r: dict(st) for r, st in _roots.items()}


def _samples(now: float) -> Iterator[tuple[str, dict[str, str], float]]:
    for root, st in sorted(snapshot().items()):
        lab = {"root": root}
        for res in ("committed", "failed"):
            yield "shardwise_saves_total", {**lab, "result": res}, st[res]
        yield "shardwise_verify_failures_total", lab, st["verify_failures"]
        if "last_good" not in st:
            continue
        persist = st["persist"]
        yield "shardwise_save_stall_seconds", lab, st["stall"]
        yield "shardwise_save_persist_seconds", lab, persist
        yield "shardwise_save_bytes", lab, st["bytes"]
        yield ("shardwise_save_throughput_bytes_per_second", lab,
               st["bytes"] / persist if persist > 0 else math.nan)
        yield "shardwise_save_waves", lab, st["waves"]
        yield "shardwise_save_step", lab, st["step"]
        for s in _EXPORT_STATES:
            yield "shardwise_export_state", {**lab, "state": s}, 1.0 if st["export"] == s else 0.0
        yield "shardwise_last_good_checkpoint_timestamp_seconds", lab, st["last_good"]
        yield "shardwise_seconds_since_last_good_checkpoint", lab, now - st["last_good"]


def _label_value(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


def render() -> str:
    """Every metric recorded so far, in Prometheus' text exposition format."""
    by_name: dict[str, list[str]] = {}
    for name, labels, value in _samples(time.time()):
        lab = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items())
        by_name.setdefault(name, []).append(f"{name}{{{lab}}} {_number(value)}")
    out = []
    for name, (kind, help_) in METRICS.items():
        if name in by_name:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(by_name[name])
    return "\n".join(out) + "\n" if out else ""


def _rank() -> int:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except Exception:  # noqa: BLE001 - no torch.distributed: one process
        pass
    return int(os.environ.get("RANK", "0"))


def _write_textfile(path: str) -> None:
    path = path.replace("{rank}", str(_rank()))
    d = os.path.dirname(os.path.abspath(path))
    text = render()
    # The node exporter must never read a half-written file: write aside,
    # then rename over the old one.
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _publish() -> None:
    path = os.environ.get("SHARDWISE_METRICS_FILE")
    # One file per node exporter: without {rank} in its name, only global
    # rank 0 writes it (every rank's figures stay in prometheus_client).
    if path and ("{rank}" in path or _rank() == 0):
        try:
            _write_textfile(path)
        except OSError as e:  # metrics never fail a save
            import logging

            logging.getLogger("shardwise").warning(
                "SHARDWISE_METRICS_FILE=%s: cannot write the metrics: %s", path, e)
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return
    register()


class _Collector:
    """prometheus_client collector over what this module recorded."""

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for name, labels, value in _samples(time.time()):
            samples.setdefault(name, []).append((labels, value))
        for name, (kind, help_) in METRICS.items():
            rows = samples.get(name)
            if not rows:
                continue
            keys = list(rows[0][0])
            if kind == "counter":
                fam: Any = CounterMetricFamily(name.removesuffix("_total"), help_, labels=keys)
            else:
                fam = GaugeMetricFamily(name, help_, labels=keys)
            for labels, value in rows:
                fam.add_metric([labels[k] for k in keys], value)
            yield fam


_collector = _Collector()


def register(registry: Any = None) -> None:
    """Adds shardwise's metrics to a prometheus_client registry (default: its
    global one). Registering twice in one registry does nothing."""
    if registry is None:
        from prometheus_client import REGISTRY as registry  # noqa: N811
    with _lock:
        if id(registry) in _registered:
            return
        _registered.add(id(registry))
    registry.register(_collector)
