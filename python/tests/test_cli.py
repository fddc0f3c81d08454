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
