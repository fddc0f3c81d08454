"""Tiered checkpoints (docs/tiers.md): 4 real processes (gloo) as 2 simulated
nodes (SHARDWISE_NODE), a local tier per node, replicas on the partner node,
every 2nd save persisted to the root. Each case restores the newest complete
step, bit-exact, from the tiers that still hold it, and never a mix of steps."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from dist_util import start_ranks

WORLD, NODES = 4, 2
ROWS = 64  # the DTensor's global rows, 16 per rank


def node_of(rank: int) -> int:
    return rank // (WORLD // NODES)


def env_by_rank(base: Path) -> dict[int, dict[str, str]]:
    return {r: {"SHARDWISE_NODE": f"node{node_of(r)}"} for r in range(WORLD)}


def make_state(step: int, empty: bool = False):
    """A DTensor sharded by rows over the 4 ranks, a replicated tensor and
    the step: values that tell every step apart."""
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (WORLD,))
    full = torch.arange(ROWS * 8, dtype=torch.float32).reshape(ROWS, 8) + 1000.0 * step
    rep = torch.full((5,), float(step))
    if empty:
        full, rep = torch.zeros_like(full), torch.zeros_like(rep)
    return {"w": distribute_tensor(full, mesh, [Shard(0)]), "b": rep,
            "extra": {"step": torch.tensor(step if not empty else -1)}}


def check_state(state, step: int) -> None:
    import torch

    want = make_state(step)
    assert torch.equal(state["w"].to_local(), want["w"].to_local()), f"w is not step {step}'s"
    assert torch.equal(state["b"], want["b"]) and int(state["extra"]["step"]) == step


def checkpointer(base: str, rank: int, **kw):
    import shardwise

    return shardwise.Checkpointer(os.path.join(base, "root"),
                                  local_root=os.path.join(base, f"node{node_of(rank)}"),
                                  persist_every=2, keep_local=2, replicas=1, **kw)


def restore(ckpt, rank: int, out: str, label: str):
    import torch.distributed as dist

    state = make_state(0, empty=True)
    step = ckpt.load(state)
    if step is not None:
        check_state(state, step)
    if rank == 0:
        rep = ckpt.last_restore
        with open(out, "a") as f:
            f.write(json.dumps({"case": label, "step": step, "tiers": rep.tiers,
                                "attempts": rep.attempts, "seconds": rep.seconds}) + "\n")
    dist.barrier()


def damage(path: str) -> None:
    """One flipped bit in the first bytes of data (after the shard's 4 KiB header)."""
    with open(path, "r+b") as f:
        f.seek(4096 + 3)
        b = f.read(1)
        f.seek(4096 + 3)
        f.write(bytes([b[0] ^ 0x40]))


def matrix_job(rank: int, world: int, base: str, out: str) -> None:
    """Saves steps 1..5 (root: 2, 4; local and replicas: 4, 5), then
    restores after each kind of loss."""
    import torch.distributed as dist

    ckpt = checkpointer(base, rank)
    for step in range(1, 6):
        ckpt.save(step, make_state(step)).wait()
    ckpt.wait()
    assert ckpt.steps() == [2, 4], ckpt.steps()
    restore(ckpt, rank, out, "intact")  # step 5, every rank from its local tier

    node1 = os.path.join(base, "node1")
    shard = os.path.join(base, "node0", "rank-00001", "step-000000000005", "rank-00000.shard")
    if rank == 0:
        damage(shard)
    dist.barrier()
    restore(ckpt, rank, out, "damaged local shard")  # rank 1: its partner's replica

    # Rank 0's local copy gone (its replica serves it in the first round) and
    # rank 1's damaged (its replica serves it in the second): rank 0 keeps
    # what it read, and nobody sends it a replica again.
    if rank == 0:
        shutil.rmtree(os.path.join(base, "node0", "rank-00000", "step-000000000005"))
        damage(shard)
    dist.barrier()
    restore(ckpt, rank, out, "one local copy gone, another damaged")

    # Rank 1's local manifest torn (the step is not listed as committed
    # there): its replica takes the copy's place.
    if rank == 0:
        with open(os.path.join(base, "node0", "rank-00001", "step-000000000005",
                               "manifest.json"), "w") as f:
            f.write("torn")
    dist.barrier()
    restore(ckpt, rank, out, "torn local manifest")

    if rank == 0:
        shutil.rmtree(node1)
    dist.barrier()
    restore(ckpt, rank, out, "node 1 wiped")  # ranks 2, 3: replicas held on node 0

    if rank == 0:
        shutil.rmtree(node1)
        for r in (2, 3):
            shutil.rmtree(os.path.join(base, "node0", f"replica-{r:05d}"))
    dist.barrier()
    # step 5 is nowhere for ranks 2, 3 (not persisted): every rank takes step
    # 4, ranks 0, 1 locally and ranks 2, 3 from the root
    restore(ckpt, rank, out, "node 1 wiped, its replicas too")

    # rank 3's local save fails (its directory is a file): the save fails on
    # every rank, and none waits for a replica that will not come
    if rank == 0:
        shutil.rmtree(node1, ignore_errors=True)  # the root served ranks 2, 3: nothing local
        os.makedirs(node1)
        open(os.path.join(node1, "rank-00003"), "w").close()
    dist.barrier()
    try:
        ckpt.save(6, make_state(6)).wait()
        raised = "nothing"
    except Exception as e:  # noqa: BLE001 (what each rank saw is the test)
        raised = f"{type(e).__name__}: {e}"
    seen: list = [None] * world
    dist.all_gather_object(seen, raised)
    # The ranks whose local save of step 6 committed took it back: a step is
    # on every rank or on none.
    left = os.path.isdir(os.path.join(base, f"node{node_of(rank)}", f"rank-{rank:05d}",
                                      "step-000000000006"))
    kept: list = [None] * world
    dist.all_gather_object(kept, left)
    if rank == 0:
        with open(out, "a") as f:
            f.write(json.dumps({"case": "a local save fails", "raised": seen,
                                "step 6 left": kept}) + "\n")
    ckpt.close()


def run(world: int, fn, *args, expect=None, timeout: float = 240) -> list[int]:
    procs = start_ranks(world, fn, *args, env_by_rank=env_by_rank(Path(args[0])), pg_timeout=60)
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
    codes = [p.exitcode for p in procs]
    if expect is None:
        assert codes == [0] * world, f"rank exit codes: {codes}"
    return codes


def cases(out: Path) -> dict[str, dict]:
    return {d["case"]: d for d in map(json.loads, out.read_text().splitlines())}


def test_restores_from_the_fastest_intact_tier(tmp_path: Path) -> None:
    out = tmp_path / "report.jsonl"
    run(WORLD, matrix_job, str(tmp_path), str(out))
    got = cases(out)
    assert got["intact"]["step"] == 5 and got["intact"]["tiers"] == ["local"] * 4
    dmg = got["damaged local shard"]
    assert dmg["step"] == 5 and dmg["tiers"] == ["local", "replica", "local", "local"]
    assert dmg["attempts"] == 2  # the damage was found by the checksums, then the replica read
    two = got["one local copy gone, another damaged"]
    assert two["step"] == 5 and two["tiers"] == ["replica", "replica", "local", "local"], two
    assert two["attempts"] == 2
    torn = got["torn local manifest"]
    assert torn["step"] == 5 and torn["tiers"] == ["local", "replica", "local", "local"], torn
    wiped = got["node 1 wiped"]
    assert wiped["step"] == 5 and wiped["tiers"] == ["local", "local", "replica", "replica"]
    both = got["node 1 wiped, its replicas too"]
    assert both["step"] == 4 and both["tiers"] == ["local", "local", "root", "root"]
    raised = got["a local save fails"]["raised"]
    assert all("failed on rank(s) 3" in r for r in raised[:3]), raised
    assert "rank-00003" in raised[3] and "failed on rank" not in raised[3], raised
    assert got["a local save fails"]["step 6 left"] == [False] * 4


def dies_in(rank: int, ckpt, where: str) -> None:
    """On node 1's ranks, the process dies at `where` of the next save."""
    if node_of(rank) != 1:
        return
    if where == "local save":
        ckpt._persist_tiers = lambda *a, **k: os._exit(17)
    elif where == "root save":
        import torch.distributed.checkpoint as dcp

        real = dcp.save

        def save(*a, **k):
            if not k.get("no_dist"):
                os._exit(17)
            return real(*a, **k)
        import shardwise.checkpointer as c
        c.dcp = type("dcp", (), {"save": staticmethod(save), "load": staticmethod(dcp.load)})


def crash_job(rank: int, world: int, base: str, out: str, phase: int) -> None:
    ckpt = checkpointer(base, rank)
    if phase == 0:
        for step in (1, 2, 3):  # root: 2
            ckpt.save(step, make_state(step)).wait()
        dies_in(rank, ckpt, "root save")
        ckpt.save(4, make_state(4)).wait()  # node 1 dies persisting step 4 to the root
        return
    if phase == 1:
        restore(ckpt, rank, out, "root persist interrupted")  # step 4: local everywhere
        dies_in(rank, ckpt, "local save")
        ckpt.save(5, make_state(5)).wait()  # node 1 dies before its local save
        return
    # Step 5 is on node 0's ranks only: asked for, it is missing, named so.
    try:
        ckpt.load(make_state(0, empty=True), step=5)
        raised = "nothing"
    except FileNotFoundError as e:
        raised = str(e)
    restore(ckpt, rank, out, "node 1 killed mid-save")
    # The load took node 0's pieces of step 5 away: the resumed run saves
    # step 5 again on every rank, and no piece of the old run's can join it.
    left = os.path.isdir(os.path.join(base, "node0", f"rank-{rank:05d}", "step-000000000005"))
    ckpt.save(5, make_state(5)).wait()
    restore(ckpt, rank, out, "the resumed run's step 5")
    if rank == 0:
        with open(out, "a") as f:
            f.write(json.dumps({"case": "partial step 5", "raised": raised, "left": left}) + "\n")
    ckpt.close()


def test_a_node_killed_mid_save(tmp_path: Path) -> None:
    out = tmp_path / "report.jsonl"
    codes = run(WORLD, crash_job, str(tmp_path), str(out), 0, expect="failures")
    assert codes[2] == codes[3] == 17 and codes[0] != 0 and codes[1] != 0, codes
    root = tmp_path / "root"
    assert not (root / "step-000000000004" / "manifest.json").exists()  # never committed
    codes = run(WORLD, crash_job, str(tmp_path), str(out), 1, expect="failures")
    assert codes[2] == codes[3] == 17, codes
    run(WORLD, crash_job, str(tmp_path), str(out), 2)
    got = cases(out)
    assert got["root persist interrupted"]["step"] == 4
    assert got["root persist interrupted"]["tiers"] == ["local"] * 4
    # node 0 saved step 5 locally; node 1 never did: step 4, on every rank
    assert got["node 1 killed mid-save"]["step"] == 4
    assert got["node 1 killed mid-save"]["tiers"] == ["local"] * 4
    partial = got["partial step 5"]
    assert "step 5 is incomplete: rank(s) 2, 3 hold it on no tier" in partial["raised"], partial
    assert partial["left"] is False
    assert got["the resumed run's step 5"]["step"] == 5
    assert got["the resumed run's step 5"]["tiers"] == ["local"] * 4


def moved_job(rank: int, world: int, base: str, out: str, phase: int) -> None:
    """Ranks 2, 3 run on machine B, then on C, then on B again; ranks 0, 1
    on A throughout. Each machine's local tier stays where it is."""
    import shardwise

    machine = "A" if node_of(rank) == 0 else ("B", "C", "B")[phase]
    ckpt = shardwise.Checkpointer(os.path.join(base, "root"),
                                  local_root=os.path.join(base, machine), persist_every=2,
                                  keep_local=2)
    if phase == 0:
        for step in (1, 2, 3):  # the root: 2
            ckpt.save(step, make_state(step)).wait()
        ckpt.close()
        if node_of(rank) == 0:  # A died before its local copies of step 3 committed
            shutil.rmtree(os.path.join(base, "A", f"rank-{rank:05d}", "step-000000000003"))
        return
    if phase == 1:
        restore(ckpt, rank, out, "run 2 on A and C")  # step 3 is on B only: step 2
        ckpt.save(3, make_state(103)).wait()  # run 2's step 3, not persisted, other values
        ckpt.close()
        return
    # Run 3: A holds run 2's step 3, B run 1's. Never loaded together.
    try:
        ckpt.load(make_state(0, empty=True), step=3)
        raised = "nothing"
    except FileNotFoundError as e:
        raised = str(e)
    restore(ckpt, rank, out, "run 3 on A and B")
    if rank == 0:
        with open(out, "a") as f:
            f.write(json.dumps({"case": "step 3 of two runs", "raised": raised}) + "\n")
    ckpt.close()


def test_copies_of_one_step_from_two_runs_are_never_mixed(tmp_path: Path) -> None:
    """Local tiers outlive placements: a machine that left the job comes back
    with its copies of a step another run saved again meanwhile. Each copy
    names the save that wrote it (a token rank 0 draws per save), and a
    restore combines copies of one save only."""
    out = tmp_path / "report.jsonl"
    for phase in (0, 1, 2):
        run(WORLD, moved_job, str(tmp_path), str(out), phase)
    got = cases(out)
    assert got["run 2 on A and C"]["step"] == 2
    assert got["run 2 on A and C"]["tiers"] == ["local", "local", "root", "root"]
    assert got["run 3 on A and B"]["step"] == 2, got["run 3 on A and B"]
    raised = got["step 3 of two runs"]["raised"]
    assert "step 3 is incomplete" in raised and "another save of it" in raised, raised


def test_bad_arguments(tmp_path: Path) -> None:
    import shardwise

    with pytest.raises(ValueError, match="need a local_root"):
        shardwise.Checkpointer(tmp_path, replicas=1)
    with pytest.raises(ValueError, match="persist_every"):
        shardwise.Checkpointer(tmp_path, local_root=tmp_path / "l", persist_every=0)
    with pytest.raises(ValueError, match="snapshot='eager'"):
        shardwise.Checkpointer(tmp_path, local_root=tmp_path / "l", snapshot="lazy")


def part_of_the_job(rank: int, world: int, base: str, out: str) -> None:
    import torch.distributed as dist

    group = dist.new_group([0])  # every rank enters new_group, as torch requires
    if rank == 0:
        try:
            checkpointer(base, rank, process_group=group)
        except ValueError as e:
            assert "needs the whole job: process_group has 1 of the 2 ranks" in str(e), e
            return
        raise AssertionError("a tier over part of the job was accepted")


def test_a_tier_over_part_of_the_job_is_refused(tmp_path: Path) -> None:
    run(2, part_of_the_job, str(tmp_path), str(tmp_path / "out"))


def test_one_process_and_the_operators_view(tmp_path: Path, capsys) -> None:
    """Without torch.distributed: the local tier and the root, as `shardwise
    ls --local-root` and `verify --local-root` show them."""
    import torch

    import shardwise
    from shardwise.cli import main

    root, local = tmp_path / "root", tmp_path / "local"
    ckpt = shardwise.Checkpointer(root, local_root=local, persist_every=2, keep_local=2)
    for step in (1, 2, 3):
        ckpt.save(step, {"w": torch.full((100,), float(step))})
    ckpt.wait()
    assert ckpt.steps() == [2]
    state = {"w": torch.zeros(100)}
    assert ckpt.load(state) == 3 and torch.equal(state["w"], torch.full((100,), 3.0))
    assert ckpt.last_restore.tiers == ["local"]
    ckpt.close()

    # A checkpoint in a rank's directory that no Checkpointer wrote (not
    # named step-N): not a step of the local tier, for ls as for load.
    import torch.distributed.checkpoint as dcp
    dcp.save({"w": torch.zeros(3)}, no_dist=True,
             storage_writer=shardwise.dcp.Writer(str(local / "rank-00000" / "by-hand"), step=9))

    capsys.readouterr()
    assert main(["ls", str(root), "--local-root", str(local), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed == {"2": {"root": "not requested", "rank": [0]}, "3": {"rank": [0]}}
    assert main(["verify", "--local-root", str(local)]) == 0
    assert capsys.readouterr().out.count("OK ") == 3  # every committed one, by-hand too
    shutil.rmtree(local / "rank-00000" / "by-hand")
    damage(str(local / "rank-00000" / "step-000000000003" / "rank-00000.shard"))
    assert main(["verify", "--local-root", str(local)]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED" in out and "rank-00000.shard" in out and "checksum" in out
    # A manifest that cannot be read is damage too (exit 1), in verify's schema.
    manifest2 = local / "rank-00000" / "step-000000000002" / "manifest.json"
    intact = manifest2.read_bytes()
    manifest2.write_text("garbage")
    assert main(["verify", "--local-root", str(local), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["path"] == str(local)
    broken = {c["name"]: c for c in report["checkpoints"] if not c["ok"]}
    assert set(broken) == {"step-000000000002", "step-000000000003"}
    assert broken["step-000000000002"]["problems"][0]["file"] == "manifest.json"
    manifest2.write_bytes(intact)
    assert main(["ls", "--local-root", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such directory" in capsys.readouterr().err
    # the damaged local copy: the root's step 2 is the newest intact one
    again = shardwise.Checkpointer(root, local_root=local, persist_every=2)
    state = {"w": torch.zeros(100)}
    assert again.load(state) == 2 and torch.equal(state["w"], torch.full((100,), 2.0))
    assert again.last_restore.tiers == ["local"]  # step 2 is also kept locally
    # Resumed from step 2: the local step 3 goes, its manifest damaged or not.
    (local / "rank-00000" / "step-000000000003" / "manifest.json").write_text("{torn")
    assert again.discard_after(2) == []  # none of the root's
    assert not (local / "rank-00000" / "step-000000000003").exists()
    assert (local / "rank-00000" / "step-000000000002").exists()
    again.close()


@pytest.fixture
def shm_dir():
    """A directory on /dev/shm, where local tiers live; skips where recycled
    files cannot run (no tmpfs there, or file leases switched off)."""
    import fcntl
    import tempfile

    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    d = Path(tempfile.mkdtemp(prefix="sw-recycle-", dir="/dev/shm"))
    probe = os.open(d / "lease-probe", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.fcntl(probe, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        fcntl.fcntl(probe, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    except OSError as e:
        shutil.rmtree(d)
        pytest.skip(f"file leases are unavailable here ({e}): recycled files never run")
    finally:
        os.close(probe)
    os.unlink(d / "lease-probe")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_the_local_tier_overwrites_the_files_retention_removed(tmp_path: Path,
                                                               shm_dir: Path) -> None:
    """Retention keeps a removed local checkpoint's files (.recycle), and the
    next local save overwrites its shard in place (docs/tiers.md): on tmpfs
    no new pages. The result loads and verifies like any save."""
    import torch

    import shardwise
    from shardwise.cli import main

    local = shm_dir / "local"

    def shard(step: int) -> Path:
        return local / "rank-00000" / f"step-{step:012d}" / "rank-00000.shard"

    ckpt = shardwise.Checkpointer(tmp_path / "root", local_root=local, persist_every=1000,
                                  keep_local=1)
    ckpt.save(1, {"w": torch.full((300_001,), 1.0)})
    ckpt.wait()
    retired = os.stat(shard(1)).st_ino
    ckpt.save(2, {"w": torch.full((300_001,), 2.0)})
    ckpt.wait()
    assert not shard(1).exists() and len(os.listdir(local / "rank-00000" / ".recycle")) >= 1
    ckpt.save(3, {"w": torch.full((70_001,), 3.0)})  # smaller: the file is cut to size
    ckpt.wait()
    assert os.stat(shard(3)).st_ino == retired
    state = {"w": torch.zeros(70_001)}
    assert ckpt.load(state) == 3 and torch.equal(state["w"], torch.full((70_001,), 3.0))
    ckpt.close()
    assert main(["verify", "--local-root", str(local)]) == 0

    # recycle_files=0: retention unlinks the files
    off = shardwise.Checkpointer(tmp_path / "root2", local_root=tmp_path / "local2",
                                 persist_every=1000, keep_local=1, recycle_files=0)
    for step in (1, 2):
        off.save(step, {"w": torch.full((1000,), float(step))})
        off.wait()
    off.close()
    assert not (tmp_path / "local2" / "rank-00000" / ".recycle").exists()


def test_a_malformed_replica_transfer_is_refused(tmp_path: Path) -> None:
    """What arrives from a partner is checked before anything is written: a
    clear error for every malformed transfer, and nothing installed."""
    import torch

    import shardwise
    from shardwise import tiers

    ckpt = shardwise.Checkpointer(tmp_path / "root", local_root=tmp_path / "local")
    ckpt.save(1, {"w": torch.arange(10.0)}, blocking=True)
    ckpt.close()
    blob = torch.cat(tiers.pack_checkpoint(
        str(tmp_path / "local" / "rank-00000" / "step-000000000001")))
    dest = tmp_path / "replica"
    tiers.install(str(dest), "step-000000000001", blob, {})  # the intact copy installs
    n = int.from_bytes(blob[:8].numpy().tobytes(), "little")
    header = json.loads(blob[8:8 + n].numpy().tobytes())

    def with_header(h) -> torch.Tensor:
        text = json.dumps(h).encode()
        head = torch.frombuffer(bytearray(len(text).to_bytes(8, "little") + text), dtype=torch.uint8)
        return torch.cat([head, blob[8 + n:]])

    cases = {
        "nothing was sent": blob[:0],
        "shorter than its header": blob[:5],
        "header longer than the transfer": torch.cat([torch.tensor([255] * 8, dtype=torch.uint8),
                                                      blob[8:]]),
        "unreadable header": torch.cat([blob[:8], torch.full((n,), 0x7B, dtype=torch.uint8),
                                        blob[8 + n:]]),
        "bad file entry": with_header([[header[0][0], 10**12]] + header[1:]),
        "bytes left over": torch.cat([blob, torch.zeros(3, dtype=torch.uint8)]),
    }
    for why, bad in cases.items():
        with pytest.raises(ValueError, match=why):
            tiers.install(str(dest), "step-000000000002", bad, {})
    with pytest.raises(ValueError, match="not a file name"):  # a name that would leave the root
        tiers.install(str(dest), "step-000000000002",
                      with_header([["../x", header[0][1]]] + header[1:]), {})
    names = sorted(p.name for p in dest.iterdir() if not p.name.startswith("."))
    assert names == ["latest", "step-000000000001"] or names == ["step-000000000001"], names


def test_the_roots_save_writes_staged_bytes_no_one_else_took(tmp_path: Path,
                                                             monkeypatch) -> None:
    """The local save must not hand the staged memory back: the root's save
    writes from it after. Another staging user in the process (a second
    Checkpointer, a dcp.async_save) staging in between gets other memory,
    and the root checkpoint holds the saved values."""
    import torch
    import torch.distributed.checkpoint as tdcp

    import shardwise
    import shardwise.checkpointer as ck_module
    from shardwise import _staging

    ck = shardwise.Checkpointer(tmp_path / "root", local_root=tmp_path / "local")
    real_save, others = tdcp.save, []

    def save_with_a_stage_between(sd, *, storage_writer=None, **kw):
        if storage_writer is ck._writer:  # the root's save, after the local one
            others.append(_staging.stage({"x": torch.full((1 << 16,), 7.0)}))
        return real_save(sd, storage_writer=storage_writer, **kw)

    monkeypatch.setattr(ck_module.dcp, "save", save_with_a_stage_between)
    state = {"w": torch.arange(1 << 16, dtype=torch.float32)}
    ck.save(1, state).wait()
    monkeypatch.setattr(ck_module.dcp, "save", real_save)
    assert others, "the root's save did not run"
    for path in (tmp_path / "root" / "step-000000000001",
                 tmp_path / "local" / "rank-00000" / "step-000000000001"):
        back = {"w": torch.zeros(1 << 16)}
        tdcp.load(back, storage_reader=shardwise.dcp.Reader(path), no_dist=True)
        assert torch.equal(back["w"], state["w"]), path
    ck.close()


def test_a_tiered_load_raises_what_is_no_damage_and_keeps_the_copy(tmp_path: Path) -> None:
    """A state dict that does not match the checkpoint is the caller's
    error: raised as it is, not taken for damage (which would try every
    tier and step, and could drop an intact local copy)."""
    import torch

    import shardwise

    root, local = tmp_path / "root", tmp_path / "local"
    ckpt = shardwise.Checkpointer(root, local_root=local, persist_every=2)
    ckpt.save(1, {"w": torch.ones(4)}, blocking=True)
    with pytest.raises(Exception) as e:
        ckpt.load({"other": torch.zeros(4)})
    assert not isinstance(e.value, shardwise.CorruptCheckpointError), e.value
    assert "other" in str(e.value)
    assert (local / "rank-00000" / "step-000000000001" / "manifest.json").is_file()
    ckpt.close()


def test_a_tiered_load_takes_a_malformed_dcp_block_for_damage(tmp_path: Path) -> None:
    """A local copy whose manifest's "dcp" block does not parse (checksum
    intact) is damage of that tier: the root's copy serves."""
    import torch

    import shardwise
    from dist_util import reseal

    root, local = tmp_path / "root", tmp_path / "local"
    ckpt = shardwise.Checkpointer(root, local_root=local)
    ckpt.save(1, {"w": torch.full((4,), 1.0)}, blocking=True)
    path = local / "rank-00000" / "step-000000000001"
    m = json.loads((path / "manifest.json").read_text())
    m["dcp"]["format"] = "not a format"
    reseal(path, m)
    state = {"w": torch.zeros(4)}
    assert ckpt.load(state) == 1 and torch.equal(state["w"], torch.full((4,), 1.0))
    assert ckpt.last_restore.tiers == ["root"]
    ckpt.close()


def test_a_step_saved_again_locally_keeps_the_roots_older_save_of_it(tmp_path: Path) -> None:
    """replace=True: step 2 saved again, to the local tier only. A restore
    takes the newer save; with the local tier gone, the root's older save
    of step 2 (kept, never mixed with the newer one's parts)."""
    import torch

    import shardwise

    root, local = tmp_path / "root", tmp_path / "local"
    first = shardwise.Checkpointer(root, local_root=local, persist_every=2, replace=True)
    for step in (1, 2):  # step 2 goes to the root too
        first.save(step, {"w": torch.full((8,), float(step))}, blocking=True)
    first.close()
    again = shardwise.Checkpointer(root, local_root=local, persist_every=2, replace=True)
    state = {"w": torch.zeros(8)}
    assert again.load(state) == 2
    again.save(2, {"w": torch.full((8,), 20.0)}, blocking=True)  # the local tier only
    assert again.steps() == [2]  # the root's copy stays
    assert again.load(state) == 2 and torch.equal(state["w"], torch.full((8,), 20.0))
    assert again.last_restore.tiers == ["local"]
    shutil.rmtree(local / "rank-00000")
    assert again.load(state) == 2 and torch.equal(state["w"], torch.full((8,), 2.0))
    assert again.last_restore.tiers == ["root"]
    again.close()


def test_a_local_root_of_another_root_is_never_read_nor_written(tmp_path: Path, caplog) -> None:
    """A node-local directory outlives the job: another root's checkpoints
    in it are not loaded as this root's, and are not written over."""
    import torch

    import shardwise

    local = tmp_path / "local"
    first = shardwise.Checkpointer(tmp_path / "a", local_root=local, persist_every=2)
    first.save(1, {"w": torch.ones(4)}, blocking=True)
    first.close()
    other = shardwise.Checkpointer(tmp_path / "b", local_root=local, persist_every=2)
    state = {"w": torch.zeros(4)}
    assert other.load(state) is None and torch.equal(state["w"], torch.zeros(4))
    assert "another root" in caplog.text
    with pytest.raises(RuntimeError, match="holds the local tier of another root"):
        other.save(1, {"w": torch.full((4,), 2.0)}, blocking=True)
    other.close()
    again = shardwise.Checkpointer(tmp_path / "a", local_root=local, persist_every=2)
    assert again.load(state) == 1 and torch.equal(state["w"], torch.ones(4))
    again.close()
