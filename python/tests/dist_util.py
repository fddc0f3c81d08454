"""Runs a test function in N real processes joined by a gloo process group."""
from __future__ import annotations

import atexit
import os
import sys
import tempfile
import time
import traceback
from datetime import timedelta
from typing import Any, Callable, Optional

from multiprocessing import forkserver

import torch.multiprocessing as mp


def _rendezvous_file() -> str:
    # A file store, unique per run: no TCP port to race for between tests.
    # gloo's FileStore leaves the file behind: removed when the tests end.
    fd, path = tempfile.mkstemp(prefix="shardwise-rdzv-")
    os.close(fd)
    os.unlink(path)
    atexit.register(lambda: os.path.exists(path) and os.unlink(path))
    return path


def _entry(rank: int, world: int, store: str, fn: Callable[..., Any], args: tuple,
           env: dict[str, str], pg_timeout: float) -> None:
    # The server swallows an ImportError of its preload: say so here rather
    # than let every rank import torch again, unnoticed.
    assert "rank_preload" in sys.modules, "the rank server did not import rank_preload"
    # The environment the test had when it started the ranks (as a spawned
    # rank would inherit it), not the one the server started with.
    os.environ.clear()
    os.environ.update(env)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=pg_timeout))
    try:
        fn(rank, world, *args)
        # Leave together: a rank tearing down gloo while a peer still
        # finishes a collective can abort that peer.
        dist.barrier()
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    # Every rank passed the barrier: the test function is done everywhere.
    # Leave without tearing gloo down: twice in CI (2026-12-05) a rank that
    # had passed that barrier was aborted during teardown ("terminate called
    # without an active exception", exit -6) while its peers exited 0. The
    # cause is not established; this exit keeps it from failing the test the
    # rank already passed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# Ranks fork from a server process that has imported torch once
# (multiprocessing's "forkserver", preloading rank_preload.py), rather than
# each starting a fresh interpreter that imports torch again ("spawn"): the
# suite starts some 300 ranks, and on a 2-core machine each import costs
# about 4 s of CPU. The server imports modules only, and starts no thread
# and no process group, so each rank begins as a spawned one would, with
# those modules loaded.
_context = None


def _mp_context():
    global _context
    if _context is None:
        _context = mp.get_context("forkserver")
        _context.set_forkserver_preload(["rank_preload"])
        # The server imports its preload before it takes this process's
        # sys.path: give it this directory (rank_preload) through the
        # environment it starts with, and only that process.
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (os.path.dirname(os.path.abspath(__file__)), old) if p)
        try:
            forkserver.ensure_running()
        finally:
            if old is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = old
    return _context


def start_ranks(world: int, fn: Callable[..., Any], *args: Any,
                env_by_rank: Optional[dict[int, dict[str, str]]] = None,
                pg_timeout: float = 120) -> list[Any]:
    ctx = _mp_context()
    store = _rendezvous_file()
    procs = []
    for rank in range(world):
        env = {**os.environ, **(env_by_rank or {}).get(rank, {})}
        p = ctx.Process(target=_entry, args=(rank, world, store, fn, args, env, pg_timeout))
        p.start()
        procs.append(p)
    return procs


def run_ranks(world: int, fn: Callable[..., Any], *args: Any, timeout: float = 300,
              pg_timeout: float = 120) -> None:
    """Runs fn(rank, world, *args) on `world` ranks; fails if any rank fails
    or the whole run takes longer than `timeout` seconds."""
    procs = start_ranks(world, fn, *args, pg_timeout=pg_timeout)
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert codes == [0] * world, f"rank exit codes: {codes}"


def read_manifest(path: Any) -> dict[str, Any]:
    """A checkpoint's manifest with every file and item listed (the format-1
    schema), whichever format it was written in."""
    import json

    import shardwise

    return json.loads(shardwise._core.Reader(os.fspath(path), {}).manifest_json())


def flip_item_byte(path: Any, item: str, at: int = 100) -> str:
    """Flips byte ``at`` of item ``item``'s first chunk in checkpoint
    ``path``; returns the shard file it damaged."""
    manifest = read_manifest(path)
    chunk = next(it for it in manifest["items"] if it["name"] == item)["chunks"][0]
    shard = os.path.join(os.fspath(path), manifest["files"][chunk["file"]]["name"])
    with open(shard, "r+b") as f:
        f.seek(chunk["offset"] + at)
        b = f.read(1)
        f.seek(chunk["offset"] + at)
        f.write(bytes([b[0] ^ 0xFF]))
    return shard


def crc32c(data: bytes) -> int:
    """CRC32C (Castagnoli), bit by bit: the tests' own, to seal manifests."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def reseal(path: Any, m: dict[str, Any]) -> None:
    """Writes manifest `m` into checkpoint `path`, sealed as a writer seals
    it (format.md, "The self-checksum"): damage no checksum can see."""
    import json

    m = {k: v for k, v in m.items() if k != "self_crc32c"}
    body = json.dumps(m, separators=(",", ":"))
    with open(os.path.join(os.fspath(path), "manifest.json"), "w") as f:
        f.write(body[:-1] + ',"self_crc32c":"%08x"}\n' % crc32c(body.encode()))
