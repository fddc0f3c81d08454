"""The steps of a replica on one process (issue 17): pack on the sender,
install on the partner, each beside the way it would otherwise be done, in
one run, on the local tier's filesystem.

One local checkpoint of SIZE (one rank, ``Checkpointer(local_root=...)``),
then per round, interleaved:

- ``pack, mapped``: ``tiers.pack_checkpoint`` (the files' pages, mapped and
  populated; what the Checkpointer sends);
- ``pack, read``: the same files read into a reused buffer (what it sent
  before);
- ``install``: ``tiers.install`` into a new root (write, fsync, checksums
  over the received bytes, rename);
- ``write + read back``: the same files written and fsynced into a new
  directory, then every checksum verified by reading them back
  (``Reader.verify``): the old install's two passes;
- ``write only``: the writes and fsyncs alone, the floor of an install on
  this filesystem.

    .venv/bin/python bench/replica_steps.py --dir /dev/shm/replica-steps \\
        --size 256MiB --runs 5 --json bench/results/DATE/replica_steps.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time


def write_files(directory: str, blob, header) -> None:
    os.makedirs(directory)
    view = memoryview(blob.numpy())
    for name, at, size in header:
        fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            done = 0
            while done < size:
                done += os.pwrite(fd, view[at + done:at + size], done)
            os.fsync(fd)
        finally:
            os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="a directory on the local tier's filesystem")
    ap.add_argument("--size", default="256MiB", help="the checkpoint's state (one rank)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", help="write the samples and medians here")
    args = ap.parse_args()
    if args.runs < 3:
        ap.error("--runs must be at least 3")

    import torch

    import shardwise
    from shardwise import _core, tiers

    size = _core.parse_size(args.size)
    shutil.rmtree(args.dir, ignore_errors=True)
    n = max(1, size // (8 << 20))
    state = {f"t{i}": torch.randn(size // n // 4) for i in range(n)}
    ckpt = shardwise.Checkpointer(os.path.join(args.dir, "root"),
                                  local_root=os.path.join(args.dir, "local"))
    ckpt.save(1, state, blocking=True)
    ckpt.close()
    name = tiers.step_name(1)
    src = os.path.join(tiers.rank_dir(os.path.join(args.dir, "local"), 0), name)
    blob = torch.cat(tiers.pack_checkpoint(src))
    header = tiers.unpack_header(blob)
    buffers = tiers.Buffers()

    def pack_read() -> None:
        out = buffers.get("read", blob.numel())
        view = memoryview(out.numpy())
        for f, at, z in header:
            with open(os.path.join(src, f), "rb", buffering=0) as fh:
                got = 0
                while got < z:
                    got += fh.readinto(view[at + got:at + z])

    samples: dict[str, list[float]] = {}

    def timed(label, fn) -> None:
        t0 = time.perf_counter()
        fn()
        samples.setdefault(label, []).append(time.perf_counter() - t0)

    for r in range(args.runs):
        out = os.path.join(args.dir, f"round-{r}")
        timed("pack, mapped", lambda: tiers.pack_checkpoint(src))
        timed("pack, read", pack_read)
        timed("install", lambda: tiers.install(os.path.join(out, "installed"), name, blob, {}))
        copy = os.path.join(out, "copy")

        def write_and_verify() -> None:
            write_files(copy, blob, header)
            report = _core.Reader(copy, {}).verify()
            assert not report.problems, report.problems
        timed("write + read back", write_and_verify)
        timed("write only", lambda: write_files(os.path.join(out, "written"), blob, header))
        shutil.rmtree(out)
    shutil.rmtree(args.dir, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"one rank's local checkpoint of {blob.numel() / 2**20:.0f} MiB, {args.runs} rounds")
    for k, v in samples.items():
        print(f"  {k:<18} median {med[k]:.3f} s  (min {min(v):.3f}, max {max(v):.3f})")
    ratios = {"install / write + read back": med["install"] / med["write + read back"],
              "install / write only": med["install"] / med["write only"],
              "pack, mapped / pack, read": med["pack, mapped"] / med["pack, read"]}
    for k, v in ratios.items():
        print(f"  {k:<30} {v:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bytes": blob.numel(), "samples": samples, "medians": med,
                       "ratios": ratios}, f, indent=1)


if __name__ == "__main__":
    main()
