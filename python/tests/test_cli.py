"""The ``shardwise`` command as installed (the release build users run)."""
from __future__ import annotations

import json
import subprocess
import sys


def test_async_bench_memory_stays_within_its_documented_bound(tmp_path):
    # docs/cli.md: peak RSS <= baseline + state + staging pool + 4 MiB. The
    # C++ tests run under sanitizers, whose shadow memory breaks this bound,
    # so it is checked here, on the build users install.
    out = subprocess.run(
        [sys.executable, "-m", "shardwise.cli", "bench", "--async", "--dir", str(tmp_path / "a"),
         "--size-per-rank", "16MiB", "--saves", "3", "--json"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    j = json.loads(out.stdout)
    assert j["peak_rss_bytes"] >= j["state_bytes"] + j["staging_bytes"]
    assert j["rss_overhead_bytes"] < 4 << 20, j
    assert not (tmp_path / "a").exists()  # nothing left without --keep


def _sw(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "shardwise.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def test_nothing_to_verify_and_bad_paths_are_not_a_pass(tmp_path):
    """A check in a script must not pass on an empty root or a mistyped
    path; paths that are no root and malformed SHARDWISE_* variables are
    usage errors (2), in the Python package's commands as in the native
    ones."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "file").write_text("x")
    for args in (["verify", str(empty)], ["verify", "--local-root", str(empty)]):
        r = _sw(*args)
        assert r.returncode == 1 and "nothing verified" in r.stdout, (args, r.stdout, r.stderr)
    r = _sw("verify", str(empty), "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["ok"] is False
    r = _sw("ls", str(tmp_path / "file"), "--local-root", str(empty))
    assert r.returncode == 2 and "not a directory" in r.stderr, r.stderr
    for args in (["ls", "--local-root", str(empty)], ["ls", str(empty)]):
        r = _sw(*args, env={"SHARDWISE_THREADS": "abc"})
        assert r.returncode == 2 and "SHARDWISE_THREADS" in r.stderr, (args, r.stderr)
