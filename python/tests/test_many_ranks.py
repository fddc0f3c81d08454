"""Many real processes (issue 14, part 5): 32 ranks (gloo) save a sharded
model through dcp.save and through the Checkpointer, then 24 ranks load it
resharded and check every value. bench/many_ranks.py runs the same job with
64 and 48 and reports where the time goes."""
from __future__ import annotations

import json
import os

from dist_util import run_ranks
import many_ranks_job as job

SAVERS = int(os.environ.get("SHARDWISE_TEST_MANY_RANKS", "32"))
LOADERS = SAVERS * 3 // 4


def test_many_ranks_save_and_load_resharded(tmp_path):
    root = str(tmp_path / "root")
    saved, loaded = str(tmp_path / "save.json"), str(tmp_path / "load.json")
    # Starting this many interpreters on a small machine takes a while.
    run_ranks(SAVERS, job.save, root, saved, timeout=900, pg_timeout=600)
    run_ranks(LOADERS, job.load, root, loaded, timeout=900, pg_timeout=600)
    s, l = json.load(open(saved)), json.load(open(loaded))
    assert s["world"] == SAVERS and l["world"] == LOADERS
    for d in (os.path.join(root, "dcp", "step-000000000002"),
              os.path.join(root, "ckpt", "step-000000000002")):
        files = [f for f in os.listdir(d) if f.endswith(".shard")]
        assert len(files) == SAVERS, (d, len(files))
        assert os.path.exists(os.path.join(d, "index.swi"))
    print(json.dumps({"save": s, "load": l}))
