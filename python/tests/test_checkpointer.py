"""shardwise.Checkpointer and the Python API in one process (no process group)."""
from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.stateful import Stateful

import shardwise
from shardwise import _core
from shardwise.dcp import Reader, Writer


class AppState(Stateful):
    """Model and optimizer, the DCP way (state_dict helpers)."""

    def __init__(self, model: nn.Module, optim: torch.optim.Optimizer) -> None:
        self.model, self.optim = model, optim

    def state_dict(self):
        msd, osd = get_state_dict(self.model, self.optim)
        return {"model": msd, "optim": osd}

    def load_state_dict(self, sd):
        set_state_dict(self.model, self.optim, model_state_dict=sd["model"],
                       optim_state_dict=sd["optim"])


def make(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    return model, opt


def train(model, opt, steps: int) -> None:
    g = torch.Generator().manual_seed(123)
    for _ in range(steps):
        x = torch.randn(8, 16, generator=g)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def test_save_load_resume_with_stateful(tmp_path):
    model, opt = make(0)
    ck = shardwise.Checkpointer(tmp_path / "ck", keep_last=2)
    for step in range(1, 6):
        train(model, opt, 1)
        h = ck.save(step, {"app": AppState(model, opt), "meta": {"step": step}})
        assert h.stall_seconds > 0  # measured: staging takes time
    ck.wait()
    assert ck.steps() == [4, 5] and ck.latest_step() == 5
    model2, opt2 = make(1)
    state = {"app": AppState(model2, opt2), "meta": {"step": 0}}
    assert ck.load(state) == 5
    assert state["meta"]["step"] == 5
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    # The optimizer state matches too: both continue identically.
    train(model, opt, 3)
    train(model2, opt2, 3)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    ck.close()


def test_blocking_and_sync_modes(tmp_path, monkeypatch):
    # Without an async mode, save() returns once committed.
    ck = shardwise.Checkpointer(tmp_path / "sync", async_mode=None)
    h = ck.save(3, {"x": torch.arange(10)})
    assert h.done() and ck.steps() == [3]
    ck.close()
    # Thread mode: blocking=True returns committed; by default save() returns
    # while the shard is still being written (held for 0.5 s to be sure).
    ck = shardwise.Checkpointer(tmp_path / "thread", async_mode="thread")
    h = ck.save(3, {"x": torch.arange(10)}, blocking=True)
    assert h.done() and ck.steps() == [3]
    monkeypatch.setenv("SHARDWISE_PAUSE_AT", "write_shard:500")
    h = ck.save(4, {"x": torch.arange(10)})
    assert not h.done() and ck.steps() == [3]
    h.wait()
    assert h.done() and ck.steps() == [3, 4]
    ck.close()


def test_load_without_checkpoints_returns_none(tmp_path):
    ck = shardwise.Checkpointer(tmp_path / "empty")
    assert ck.load({"x": torch.zeros(1)}) is None
    assert ck.latest_step() is None


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        shardwise.Checkpointer(tmp_path, keep_last=0)
    with pytest.raises(ValueError):
        shardwise.Checkpointer(tmp_path, async_mode="fast")
    ck = shardwise.Checkpointer(tmp_path)
    with pytest.raises(ValueError):
        ck.save(-1, {"x": torch.zeros(1)})
    with pytest.raises(TypeError, match="cannot be stored without pickle"):
        ck.save(1, {"x": torch.zeros(1), "obj": object()}, blocking=True)
    assert ck.steps() == []  # nothing committed


def test_error_mapping(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        _core.Reader(str(tmp_path / "missing"), {})
    assert e.value.errno == errno.ENOENT
    with pytest.raises(ValueError, match="unknown I/O backend"):
        _core.Repository(str(tmp_path), {"io_backend": "floppy"}, True)
    with pytest.raises(ValueError, match="unknown option"):
        _core.Repository(str(tmp_path), {"bogus": 1}, True)
    dcp.save({"x": torch.ones(4)}, storage_writer=Writer(tmp_path / "r" / "a"), no_dist=True)
    # Refusing to overwrite a committed checkpoint: through DCP, wrapped...
    from torch.distributed.checkpoint.api import CheckpointException

    with pytest.raises(CheckpointException, match="FileExistsError"):
        dcp.save({"x": torch.ones(4)}, storage_writer=Writer(tmp_path / "r" / "a"), no_dist=True)
    # ...and through the Checkpointer, the error itself.
    ck = shardwise.Checkpointer(tmp_path / "r2")
    ck.save(1, {"x": torch.ones(4)}, blocking=True)
    with pytest.raises(FileExistsError) as e:
        ck.save(1, {"x": torch.ones(4)}, blocking=True)
    assert e.value.errno == errno.EEXIST and "step-000000000001" in e.value.filename
    (tmp_path / "r" / "a" / "manifest.json").write_text("{garbage")
    with pytest.raises(shardwise.CorruptCheckpointError) as c:
        _core.Reader(str(tmp_path / "r" / "a"), {})
    assert c.value.path.endswith("manifest.json")


def test_aborted_error_and_typed_results(tmp_path):
    """A rank's failure reaches the coordinator's commit as AbortedError (a
    RuntimeError) naming the rank; results and options are typed."""
    assert issubclass(shardwise.AbortedError, RuntimeError)
    assert issubclass(shardwise.UnavailableError, RuntimeError)
    repo = _core.Repository(str(tmp_path / "a"), {"commit_timeout_s": 30, "direct_io": "off",
                                                  "io_unit": "2MiB", "threads": 1}, True)
    t = torch.ones(64)
    item = _core.WriteItem("x", "tensor", "float32", [64], [0], [64], t.data_ptr(), 256)
    spec = _core.SaveSpec(name="s", step=1, save_id="ab1", world_size=2, rank=0)
    repo.write_rank(spec, [item])
    failed = _core.SaveSpec(name="s", step=1, save_id="ab1", world_size=2, rank=1)
    repo.report_failure(failed, "out of memory on rank 1")
    with pytest.raises(shardwise.AbortedError, match="rank 1 failed: ABORTED: out of memory on rank 1") as e:
        repo.commit(spec)
    assert e.value.path is not None and ".staging-ab1" in e.value.path
    assert [c.state for c in repo.list()] in ([], ["staging"])
    # An unknown or malformed option is refused, naming it; values may be
    # numbers or the words `shardwise options` shows.
    with pytest.raises(ValueError, match="queue_depth='0' is not an integer"):
        _core.Repository(str(tmp_path / "b"), {"queue_depth": 0}, True)
    with pytest.raises(ValueError, match="unknown option 'SHARDWISE_THREADS'"):
        _core.Repository(str(tmp_path / "b"), {"SHARDWISE_THREADS": 1}, True)
    with pytest.raises(TypeError, match="option threads"):
        _core.Repository(str(tmp_path / "b"), {"threads": [1]}, True)
    # Delete: the checkpoint goes and `latest` moves back.
    for step in (1, 2):
        s = _core.SaveSpec(name=f"step-{step:012d}", step=step, save_id=f"d{step}")
        repo.write_rank(s, [item])
        assert repo.commit(s).latest_updated
    repo.delete("step-000000000002")
    assert repo.latest() == "step-000000000001"
    assert (tmp_path / "a" / "latest").read_text() == "step-000000000001\n"
    with pytest.raises(FileNotFoundError):
        repo.delete("step-000000000002")


def test_replace(tmp_path):
    path = tmp_path / "r" / "step-000000000001"
    dcp.save({"x": torch.ones(4)}, storage_writer=Writer(path), no_dist=True)
    dcp.save({"x": torch.full((4,), 2.0)}, storage_writer=Writer(path, replace=True), no_dist=True)
    back = {"x": torch.zeros(4)}
    dcp.load(back, storage_reader=Reader(path), no_dist=True)
    assert torch.equal(back["x"], torch.full((4,), 2.0))


def test_never_unpickles(tmp_path):
    """A checkpoint whose non-tensor value is a pickle is refused, and the
    pickle never runs."""
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    payload = pickle.dumps(Evil())
    root = tmp_path / "hostile"
    repo = _core.Repository(str(root), {}, True)
    buf = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    spec = _core.SaveSpec(name="step-000000000001", step=1, save_id="x1", dcp_json=json.dumps(
        {"format": 1, "version": None, "planner_data": None,
         "state_dict_metadata": {"obj": {"type": "bytes"}}}))
    repo.write_rank(spec, [_core.WriteItem("obj", "bytes", "uint8", [len(payload)], [0],
                                           [len(payload)], buf.data_ptr(), len(payload))])
    repo.commit(spec)
    state = {"obj": None}
    with pytest.raises(BaseException) as e:
        dcp.load(state, storage_reader=Reader(root / "step-000000000001"), no_dist=True)
    assert "refusing to unpickle" in str(e.value)
    assert not marker.exists()


def test_progress_callback_and_logging(tmp_path, caplog):
    seen = []
    w = Writer(tmp_path / "p" / "a", progress=lambda d, t: seen.append((d, t)))
    dcp.save({"x": torch.ones(1000)}, storage_writer=w, no_dist=True)
    assert seen and seen[-1][0] == seen[-1][1] == 4000 + 0 * len(seen)
    caplog.set_level(logging.INFO, logger="shardwise")
    ck = shardwise.Checkpointer(tmp_path / "c")
    ck.save(1, {"x": torch.ones(3)}, blocking=True)
    assert any("saved" in r.message for r in caplog.records)
    # off Lustre, the first save says plainly that no layout was applied
    fs_lines = [r.message for r in caplog.records if "checkpoint root" in r.message]
    assert len(fs_lines) == 1 and "(not Lustre): no layout applied" in fs_lines[0], fs_lines


def test_cli_console_script(tmp_path):
    ck = shardwise.Checkpointer(tmp_path / "c")
    ck.save(7, {"x": torch.ones(3)}, blocking=True)
    out = subprocess.run([sys.executable, "-m", "shardwise.cli", "ls", str(tmp_path / "c"), "--json"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["checkpoints"][0]["step"] == 7
    rc = subprocess.run([sys.executable, "-m", "shardwise.cli", "verify", str(tmp_path / "c")],
                        capture_output=True).returncode
    assert rc == 0


def test_loads_cpp_written_checkpoint(tmp_path):
    """A checkpoint written by the C++ API (no DCP metadata) loads via DCP."""
    root = tmp_path / "cpp"
    repo = _core.Repository(str(root), {}, True)
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    spec = _core.SaveSpec(name="step-000000000002", step=2, save_id="c1")
    r = repo.write_rank(spec, [_core.WriteItem("w", "tensor", "float32", [3, 4], [0, 0], [3, 4],
                                               t.data_ptr(), 48)])
    assert r.bytes >= 48 and r.shard_path.endswith(".shard")
    c = repo.commit(spec)
    assert (c.name, c.latest_updated, c.export_error) == ("step-000000000002", True, "")
    info = [i for i in repo.list() if i.name == "step-000000000002"]
    assert [(i.state, i.step, i.items, i.is_latest) for i in info] == [("committed", 2, 1, True)]
    back = {"w": torch.zeros(3, 4)}
    dcp.load(back, storage_reader=Reader(root / "step-000000000002"), no_dist=True)
    assert torch.equal(back["w"], t)


def _refused_on_every_rank(rank: int, world: int, root: str, holder: int) -> None:
    ck = shardwise.Checkpointer(root)
    with pytest.raises(shardwise.AbortedError, match=f"pid {holder}"):
        ck.save(2, {"w": torch.zeros(4)})
    ck.close()


def test_a_second_job_on_the_same_root_is_refused_at_once(tmp_path):
    """Two jobs pointed at one root: the second job's first save fails before
    staging anything, naming the holder; reading needs no claim; the first
    job's checkpoints stay intact; once the first job is gone (even killed),
    the root is free."""
    import signal
    import time

    root = str(tmp_path / "ckpt")
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    script = (
        "import os, time, torch, shardwise\n"
        f"c = shardwise.Checkpointer({root!r})\n"
        "c.save(1, {'w': torch.ones(4)}).wait()\n"
        f"open({str(ready)!r}, 'w').close()\n"
        f"while not os.path.exists({str(stop)!r}): time.sleep(0.05)\n")
    # The other job must not be our child (a parent or child counts as the
    # same job): start it from a shell that leaves at once.
    out = subprocess.run(["sh", "-c", f"{sys.executable} -c \"$0\" >/dev/null 2>&1 & echo $!",
                          script], capture_output=True, text=True, check=True)
    holder = int(out.stdout.strip())
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert time.monotonic() < deadline, "the other job did not start"
            time.sleep(0.05)
        second = shardwise.Checkpointer(root)  # may read
        state = {"w": torch.zeros(4)}
        assert second.load(state) == 1
        assert torch.equal(state["w"], torch.ones(4))
        with pytest.raises(RuntimeError, match=r"being written by another job \(pid %d" % holder):
            second.save(2, {"w": torch.zeros(4)})
        # A job of 2 ranks: rank 0 is refused, and so is rank 1 (not left
        # waiting in the save's collectives).
        from dist_util import run_ranks

        run_ranks(2, _refused_on_every_rank, root, holder, timeout=120)
    finally:
        os.kill(holder, signal.SIGKILL)  # a dead holder must not block
    deadline = time.monotonic() + 30
    while True:
        try:
            c = shardwise.Checkpointer(root)
            c.save(2, {"w": torch.zeros(4)}, blocking=True)
            break
        except RuntimeError:
            assert time.monotonic() < deadline, "the killed job's claim was not released"
            time.sleep(0.1)
    assert c.steps() == [1, 2]


# -- loads that fail: never a silent None, never DCP's AssertionError ----------------
def test_load_when_every_checkpoint_is_damaged_raises(tmp_path):
    from dist_util import flip_item_byte

    ck = shardwise.Checkpointer(tmp_path)
    for step in (1, 2):
        ck.save(step, {"w": torch.full((4096,), float(step))}, blocking=True)
        flip_item_byte(tmp_path / f"step-{step:012d}", "w")
    with pytest.raises(shardwise.CorruptCheckpointError) as e:
        ck.load({"w": torch.zeros(4096)})
    assert "every one failed verification" in str(e.value)
    assert "step 2:" in str(e.value) and "step 1:" in str(e.value)


def test_the_resumed_runs_save_of_a_step_skipped_as_damaged_replaces_it(tmp_path):
    """load() falls back past a damaged step 3; when the resumed run gets to
    step 3 again, its save replaces the damaged one (it would raise
    FileExistsError there at every restart). A step that was not skipped
    is still not replaced."""
    from dist_util import flip_item_byte

    ck = shardwise.Checkpointer(tmp_path)
    for step in (1, 2, 3):
        ck.save(step, {"w": torch.full((4096,), float(step))}, blocking=True)
    ck.close()
    flip_item_byte(tmp_path / "step-000000000003", "w")
    resumed = shardwise.Checkpointer(tmp_path)
    state = {"w": torch.zeros(4096)}
    assert resumed.load(state) == 2
    with pytest.raises(FileExistsError):
        resumed.save(2, {"w": torch.full((4096,), 20.0)}, blocking=True)
    resumed.save(3, {"w": torch.full((4096,), 30.0)}).wait()
    assert resumed.load(state, step=3) == 3
    assert torch.equal(state["w"], torch.full((4096,), 30.0))
    resumed.close()


def test_load_of_a_missing_step_names_it(tmp_path):
    ck = shardwise.Checkpointer(tmp_path)
    ck.save(1, {"w": torch.ones(8)}, blocking=True)
    with pytest.raises(FileNotFoundError) as e:
        ck.load({"w": torch.zeros(8)}, step=77)
    assert e.value.errno == errno.ENOENT and "step-000000000077" in str(e.value)
    with pytest.raises(ValueError, match="non-negative int"):
        ck.load({"w": torch.zeros(8)}, step="1")
    for bad in (True, -1, 1.0, torch.tensor(1.0), torch.tensor(True), torch.tensor([3])):
        with pytest.raises(ValueError, match="non-negative int"):
            ck.save(bad, {"w": torch.ones(8)}, blocking=True)
    # Integers of numpy and torch are steps (a loop's counter often is one).
    import numpy as np
    ck.save(np.int64(2), {"w": torch.full((8,), 2.0)}, blocking=True)
    ck.save(torch.tensor(3), {"w": torch.full((8,), 3.0)}, blocking=True)
    assert ck.steps() == [1, 2, 3]
    state = {"w": torch.zeros(8)}
    assert ck.load(state, step=np.int32(2)) == 2 and torch.equal(state["w"], torch.full((8,), 2.0))
    assert type(ck.load(state)) is int


def test_a_damaged_index_or_manifest_falls_back(tmp_path):
    ck = shardwise.Checkpointer(tmp_path)
    for step in (1, 2, 3):
        ck.save(step, {"w": torch.full((64,), float(step))}, blocking=True)
    index = tmp_path / "step-000000000003" / "index.swi"
    data = bytearray(index.read_bytes())
    data[10] ^= 0xFF
    index.write_bytes(bytes(data))
    state = {"w": torch.zeros(64)}
    assert ck.load(state) == 2  # not DCP's AssertionError
    assert torch.equal(state["w"], torch.full((64,), 2.0))
    with pytest.raises(shardwise.CorruptCheckpointError, match="index.swi"):
        ck.load(state, step=3)
    (tmp_path / "step-000000000002" / "manifest.json").write_text("{garbage")
    assert ck.load(state) == 1  # the listing skips the invalid one


def test_a_malformed_dcp_block_falls_back(tmp_path):
    """A manifest whose checksum holds but whose "dcp" block does not parse
    (a writer's bug, a crafted file) is damage: load() falls back, and an
    explicit step raises CorruptCheckpointError naming the manifest, not
    DCP's AssertionError ("metadata is None")."""
    from dist_util import reseal

    ck = shardwise.Checkpointer(tmp_path)
    for step in (1, 2):
        ck.save(step, {"w": torch.full((64,), float(step))}, blocking=True)
    path = tmp_path / "step-000000000002"
    m = json.loads((path / "manifest.json").read_text())
    m["dcp"]["format"] = "not a format"
    reseal(path, m)
    state = {"w": torch.zeros(64)}
    assert ck.load(state) == 1
    assert torch.equal(state["w"], torch.full((64,), 1.0))
    with pytest.raises(shardwise.CorruptCheckpointError, match=r"manifest.json.*\"dcp\""):
        ck.load(state, step=2)
    ck.close()


def test_a_dcp_path_named_as_a_step_is_that_step(tmp_path):
    """The DCP idiom names the directory, not the step: the engine takes the
    step from a step-N name, so listings, `latest` and retention agree."""
    ck = shardwise.Checkpointer(tmp_path, keep_last=2)
    ck.save(1000, {"x": torch.ones(4)}, blocking=True)
    for step in (1050, 1200):
        dcp.save({"x": torch.ones(4)}, no_dist=True,
                 storage_writer=Writer(tmp_path / f"step-{step:012d}"))
    assert ck.steps() == [1000, 1050, 1200]
    assert ck.latest_step() == 1200
    with pytest.raises(BaseException, match="is the name of step 1300, but the save's step "
                                            "is 1301"):
        dcp.save({"x": torch.ones(4)}, no_dist=True,
                 storage_writer=Writer(tmp_path / "step-000000001300", step=1301))


def test_retention_failure_is_kept_and_the_save_stands(tmp_path, monkeypatch):
    ck = shardwise.Checkpointer(tmp_path, keep_last=1)

    def broken() -> None:
        raise OSError(errno.EIO, "gc failed", str(tmp_path))

    monkeypatch.setattr(ck, "_apply_retention", broken)
    h = ck.save(1, {"x": torch.ones(4)}, blocking=True)
    assert isinstance(h.retention_error, OSError)
    h = ck.save(2, {"x": torch.ones(4)})
    h.wait()
    assert isinstance(h.retention_error, OSError)
    assert ck.steps() == [1, 2]
    ck.close()


def test_without_a_process_group_the_next_save_raises_an_unseen_error(tmp_path):
    import time
    ck = shardwise.Checkpointer(tmp_path)
    ck.save(1, {"w": torch.ones(8)}).wait()
    h = ck.save(1, {"w": torch.ones(8)})  # step 1 exists: fails in the background
    while not h.done():
        time.sleep(0.01)
    with pytest.raises(FileExistsError):
        ck.save(2, {"w": torch.ones(8)})
    ck.save(2, {"w": torch.ones(8)}).wait()  # reported once, then saves again
    assert ck.steps() == [1, 2]
    ck.close()



def test_a_with_block_left_on_an_error_keeps_the_failed_saves_error(tmp_path, caplog):
    """Leaving the with-block on an error does not wait for the save in
    flight, and does not lose its failure: noted on the leaving error when
    the save has failed by then, logged when it fails after."""
    import sys
    import threading
    import time
    with shardwise.Checkpointer(tmp_path) as ck:
        ck.save(1, {"w": torch.ones(8)}).wait()
    with pytest.raises(KeyError) as raised:
        with shardwise.Checkpointer(tmp_path) as ck:
            h = ck.save(1, {"w": torch.ones(8)})  # step 1 exists: fails in the background
            while not h.done():
                time.sleep(0.01)
            raise KeyError("the loop's own error")
    if sys.version_info >= (3, 11):
        notes = getattr(raised.value, "__notes__", [])
        assert any("save of step 1" in n and "FileExistsError" in n for n in notes), notes

    # Still in flight when the block is left: logged once it fails.
    gate = threading.Event()
    ck = shardwise.Checkpointer(tmp_path)
    real = ck._writer._write_data

    def held(*args, **kwargs):
        gate.wait(30)
        return real(*args, **kwargs)

    ck._writer._write_data = held
    with caplog.at_level("ERROR", logger="shardwise"):
        with pytest.raises(KeyError):
            with ck:
                h = ck.save(1, {"w": torch.ones(8)})
                raise KeyError("the loop's own error")
        assert not h.done()
        gate.set()
        with pytest.raises(FileExistsError):
            h.wait(30)
        deadline = time.monotonic() + 10
        while "save of step 1" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    assert "save of step 1" in caplog.text and "FileExistsError" in caplog.text
    assert ck.steps() == [1]

def _set_immutable(path: str, on: bool) -> bool:
    """chattr +i / -i through FS_IOC_SETFLAGS: a file even root cannot
    unlink. False where the filesystem or the process cannot."""
    import array
    import fcntl
    get, put, immutable = 0x80086601, 0x40086602, 0x10
    fd = os.open(path, os.O_RDONLY)
    try:
        flags = array.array("l", [0])
        fcntl.ioctl(fd, get, flags, True)
        flags[0] = flags[0] | immutable if on else flags[0] & ~immutable
        fcntl.ioctl(fd, put, flags, True)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def test_retention_goes_on_past_what_it_cannot_remove(tmp_path):
    """gc cannot remove one file of an old checkpoint: the other old
    checkpoint still goes, the save stands, and retention_error names the
    file left in place (from the engine's gc report)."""
    root = tmp_path / "root"
    ck = shardwise.Checkpointer(root, keep_last=3)
    for step in (1, 2, 3):
        ck.save(step, {"x": torch.full((1024,), float(step))}, blocking=True)
    stuck = next(p for p in (root / "step-000000000001").iterdir() if p.name.endswith(".shard"))
    if not _set_immutable(str(stuck), True):
        pytest.skip("this filesystem or process cannot make a file immutable")
    try:
        ck.keep_last = 1
        h = ck.save(4, {"x": torch.full((1024,), 4.0)}, blocking=True)
        assert isinstance(h.retention_error, OSError)
        assert "left 1 entry in place" in str(h.retention_error)
        assert stuck.name in str(h.retention_error), h.retention_error
        assert ck.steps() == [4]  # step 1 is out of sight, step 2 and 3 gone
        state = {"x": torch.zeros(1024)}
        assert ck.load(state) == 4 and torch.equal(state["x"], torch.full((1024,), 4.0))
    finally:
        for p in root.rglob(stuck.name):
            _set_immutable(str(p), False)
    assert ck.save(5, {"x": torch.full((1024,), 5.0)}, blocking=True).retention_error is None
    assert not any(p.name.startswith(".step-000000000001") for p in root.iterdir())
    ck.close()


def test_lazy_save_refuses_an_optimizer_without_step_hooks(tmp_path):
    class Wrapped:  # has state and param_groups, no hook API
        def __init__(self, opt):
            self.state, self.param_groups = opt.state, opt.param_groups

    model, opt = make(0)
    ck = shardwise.Checkpointer(tmp_path, snapshot="lazy")
    with pytest.raises(TypeError, match="register_step_pre_hook"):
        ck.save(1, {"model": model.state_dict()}, optimizer=Wrapped(opt))
    ck.save(2, {"model": model.state_dict()}, optimizer=opt).wait()  # nothing held
    ck.close()
    assert ck.steps() == [2]


def test_a_resumed_job_replaces_the_steps_it_writes_again(tmp_path):
    """Resuming from an older step and saving the later steps again: refused
    by default, naming the way out; with replace=True, replaced atomically."""
    ck = shardwise.Checkpointer(tmp_path)
    for step in (1, 2, 3):
        ck.save(step, {"w": torch.full((8,), float(step))}, blocking=True)
    state = {"w": torch.zeros(8)}
    assert ck.load(state, step=2) == 2
    with pytest.raises(FileExistsError, match=r"replace=True"):
        ck.save(3, {"w": torch.full((8,), 30.0)}, blocking=True)
    with pytest.raises(ValueError, match="unknown option 'bogus'"):
        shardwise.Checkpointer(tmp_path, bogus=1)  # at once, not at the first save
    ck = shardwise.Checkpointer(tmp_path, replace=True)
    ck.save(3, {"w": torch.full((8,), 30.0)}).wait()
    assert ck.load(state) == 3 and torch.equal(state["w"], torch.full((8,), 30.0))
    ck.close()


def test_discard_after_removes_the_abandoned_runs_later_steps(tmp_path):
    """Resumed from step 2, a job that saves every 5 steps would otherwise
    restart from the old run's step 9 after a crash at step 5."""
    ck = shardwise.Checkpointer(tmp_path, keep_last=4)
    for step in (2, 6, 9, 12):
        ck.save(step, {"w": torch.full((8,), float(step))}, blocking=True)
    # Step 12's manifest is damaged: steps() does not list it, and the
    # resumed run's save of step 12 would collide with it.
    (tmp_path / "step-000000000012" / "manifest.json").write_text("{torn")
    assert ck.steps() == [2, 6, 9]
    state = {"w": torch.zeros(8)}
    assert ck.load(state, step=2) == 2
    assert ck.discard_after(2) == [6, 9, 12]
    assert not (tmp_path / "step-000000000012").exists()
    ck.save(5, {"w": torch.full((8,), 5.0)}, blocking=True)
    assert ck.steps() == [2, 5] and ck.load(state) == 5
    ck.save(12, {"w": torch.full((8,), 12.0)}, blocking=True)
    assert ck.steps() == [2, 5, 12]
    with pytest.raises(ValueError, match="non-negative int"):
        ck.discard_after(-1)
    ck.close()


def test_numpy_scalars_load_back_as_python_numbers(tmp_path):
    """docs/python.md: numpy scalars are stored without pickle and come back
    as Python int, float and bool."""
    import numpy as np

    ck = shardwise.Checkpointer(tmp_path)
    ck.save(1, {"a": np.float32(1.5), "b": np.int64(3), "c": np.bool_(True),
                "w": torch.ones(2)}, blocking=True)
    back = {"a": 0.0, "b": 0, "c": False, "w": torch.zeros(2)}
    assert ck.load(back) == 1
    assert (back["a"], back["b"], back["c"]) == (1.5, 3, True)
    assert [type(back[k]) for k in "abc"] == [float, int, bool]
