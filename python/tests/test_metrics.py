"""shardwise.metrics (issue 15, part 6): per-save figures in a Prometheus
textfile (SHARDWISE_METRICS_FILE) and in prometheus_client's registry,
recorded by the process that commits; verify failures by loads."""
from __future__ import annotations

import os
import re

import pytest
import torch
import torch.distributed.checkpoint as dcp

import shardwise
from shardwise import metrics
from shardwise.dcp import Reader, Writer

from dist_util import run_ranks


def _parse(text: str) -> dict[str, float]:
    """`name{labels}` -> value, refusing anything that is not a comment or a
    sample line of the text format."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        m = re.fullmatch(r'([a-z_]+)\{((?:[a-z_]+="(?:[^"\\]|\\.)*",?)*)\} (\S+)', line)
        assert m, f"not a sample line: {line!r}"
        labels = sorted(re.findall(r'[a-z_]+="(?:[^"\\]|\\.)*"', m.group(2)))
        out[f"{m.group(1)}{{{','.join(labels)}}}"] = float(m.group(3))
    return out


def _value(samples: dict[str, float], name: str, root: str, **labels: str) -> float:
    lab = ",".join(sorted([f'root="{root}"'] + [f'{k}="{v}"' for k, v in labels.items()]))
    return samples[f"{name}{{{lab}}}"]


def test_textfile_after_saves_and_a_verify_failure(tmp_path, monkeypatch):
    prom = tmp_path / "prom" / "shardwise.prom"
    prom.parent.mkdir()
    monkeypatch.setenv("SHARDWISE_METRICS_FILE", str(prom))
    root = str(tmp_path / "root")
    state = {"w": torch.randn(256, 256), "b": torch.arange(10.0)}
    dcp.save(state, storage_writer=Writer(os.path.join(root, "step-1"), step=1), no_dist=True)
    fut = dcp.async_save(state, storage_writer=Writer(os.path.join(root, "step-2"), step=2),
                         no_dist=True)
    fut.result()
    s = _parse(prom.read_text())
    assert _value(s, "shardwise_saves_total", root, result="committed") == 2
    assert _value(s, "shardwise_saves_total", root, result="failed") == 0
    assert _value(s, "shardwise_save_step", root) == 2
    nbytes = _value(s, "shardwise_save_bytes", root)
    info = {c.name: c for c in shardwise._core.Repository(root, {}, False).list()}
    assert nbytes == info["step-2"].bytes
    persist = _value(s, "shardwise_save_persist_seconds", root)
    stall = _value(s, "shardwise_save_stall_seconds", root)
    assert 0 < stall <= persist
    assert _value(s, "shardwise_save_throughput_bytes_per_second", root) == pytest.approx(
        nbytes / persist)
    assert _value(s, "shardwise_save_waves", root) == 1  # staged in full, then written
    assert _value(s, "shardwise_export_state", root, state="off") == 1
    assert _value(s, "shardwise_export_state", root, state="requested") == 0
    assert _value(s, "shardwise_verify_failures_total", root) == 0
    assert not [n for n in os.listdir(prom.parent) if n != "shardwise.prom"]  # no temp left

    # A flipped byte in the shard: the load fails, and says so in the metrics.
    shard = os.path.join(root, "step-2", "rank-00000.shard")
    with open(shard, "r+b") as f:
        f.seek(4096 + 100)
        b = f.read(1)
        f.seek(4096 + 100)
        f.write(bytes([b[0] ^ 0x40]))
    back = {"w": torch.zeros(256, 256), "b": torch.zeros(10)}
    with pytest.raises(BaseException, match="checksum|corrupt|CRC"):
        dcp.load(back, storage_reader=Reader(os.path.join(root, "step-2")), no_dist=True)
    s = _parse(prom.read_text())
    assert _value(s, "shardwise_verify_failures_total", root) == 1


def test_prometheus_client_registry(tmp_path):
    prometheus_client = pytest.importorskip("prometheus_client", reason="prometheus_client is "
                                            "not installed (scripts/setup.sh installs it)")
    reg = prometheus_client.CollectorRegistry()
    metrics.register(reg)
    metrics.register(reg)  # twice: once
    root = str(tmp_path / "r")
    dcp.save({"x": torch.ones(1000)}, storage_writer=Writer(os.path.join(root, "c"), step=7),
             no_dist=True)
    text = prometheus_client.generate_latest(reg).decode()
    s = {k: v for k, v in _parse("\n".join(
        ln for ln in text.splitlines() if not ln.startswith("shardwise_saves_created"))).items()}
    assert _value(s, "shardwise_save_step", root) == 7
    assert _value(s, "shardwise_saves_total", root, result="committed") == 1
    assert _value(s, "shardwise_seconds_since_last_good_checkpoint", root) >= 0


def test_render_escapes_and_refuses_unknown_export_state(tmp_path):
    root = str(tmp_path / 'odd "root"\\x')
    metrics.record_save(root, step=None, stall_s=0.5, persist_s=2.0, nbytes=4096, waves=0,
                        export_state="requested")
    s = _parse(metrics.render())
    esc = os.path.abspath(root).replace("\\", "\\\\").replace('"', '\\"')
    assert _value(s, "shardwise_save_step", esc) == -1
    assert _value(s, "shardwise_save_throughput_bytes_per_second", esc) == 2048
    assert _value(s, "shardwise_export_state", esc, state="requested") == 1
    with pytest.raises(ValueError, match="export_state"):
        metrics.record_save(root, step=1, stall_s=0, persist_s=0, nbytes=0, waves=0,
                            export_state="done")


def _two_ranks(rank: int, world: int, root: str, prom: str) -> None:
    os.environ["SHARDWISE_METRICS_FILE"] = prom
    ck = shardwise.Checkpointer(root)
    for step in (1, 2, 3):
        ck.save(step, {f"r{rank}": torch.full((1000,), float(step))})
    ck.wait()
    # A save that fails: the step exists already.
    with pytest.raises(FileExistsError):
        ck.save(3, {f"r{rank}": torch.zeros(1000)}, blocking=True)
    ck.close()


def test_checkpointer_two_ranks_coordinator_writes_one_file(tmp_path):
    prom = tmp_path / "node.prom"
    root = str(tmp_path / "root")
    run_ranks(2, _two_ranks, root, str(prom))
    s = _parse(prom.read_text())
    assert _value(s, "shardwise_saves_total", root, result="committed") == 3
    assert _value(s, "shardwise_saves_total", root, result="failed") == 1
    assert _value(s, "shardwise_save_step", root) == 3
    info = {c.name: c for c in shardwise._core.Repository(root, {}, False).list()}
    assert _value(s, "shardwise_save_bytes", root) == info["step-000000000003"].bytes
