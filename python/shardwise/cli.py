"""The ``shardwise`` console command: the native CLI (ls, inspect, verify,
gc, bench), plus ``import-dcp`` and the tiers' views (``ls --local-root``,
``verify --local-root``) implemented in Python."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Optional

from . import _core
from ._layout import steps_in, tier_roots

IMPORT_HELP = """Convert a stock PyTorch DCP checkpoint (written by FileSystemWriter) into a
shardwise checkpoint directory DST (ROOT/NAME). This reads DCP's pickled
.metadata and torch.save'd values: only import checkpoints you trust. The
result holds no pickle. DST must not exist, or with --replace hold a
checkpoint (or be empty): a checkpoint root or a file at DST is never
replaced. Exit codes: 0 imported, 1 failed, 2 usage error (DST exists or is
not a checkpoint, SRC unreadable)."""


def _import_dcp(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="shardwise import-dcp", description=IMPORT_HELP)
    ap.add_argument("src", help="the stock DCP checkpoint directory")
    ap.add_argument("dst", help="the shardwise checkpoint directory to create")
    ap.add_argument("--step", type=_step, help="step to record in the manifest (>= 0)")
    ap.add_argument("--replace", action="store_true", help="replace DST if it exists")
    ap.add_argument("--json", action="store_true", help="print a JSON summary")
    args = ap.parse_args(argv)
    import warnings

    from .migrate import import_dcp

    # One process on purpose: DCP's note that it assumes so is noise here.
    warnings.filterwarnings("ignore", message=r"torch\.distributed is disabled")
    try:
        summary = import_dcp(args.src, args.dst, step=args.step, replace=args.replace)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # DCP's CheckpointException is a BaseException
        return _import_failed(args, e)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"imported {summary['items']} items ({summary['tensor_bytes']} tensor bytes) "
              f"into {summary['dst']}")
    return 0


def _step(text: str) -> int:
    try:
        step = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= step < 2**63:
        raise argparse.ArgumentTypeError(f"must be from 0 to 2**63-1: {text}")
    return step


def _import_failed(args: argparse.Namespace, e: BaseException) -> int:
    """One line for a failed import (the rank's own error, not DCP's
    wrapper); 2 for a source that cannot be read or arguments refused, else
    1. Ctrl-C during DCP's load (which wraps it) is Ctrl-C."""
    from torch.distributed.checkpoint.api import CheckpointException

    from .checkpointer import _underlying

    if isinstance(e, CheckpointException) and any(
            isinstance(f[0] if isinstance(f, tuple) else f, KeyboardInterrupt)
            for f in e.failures.values()):
        raise KeyboardInterrupt from None
    inner = _underlying(e)
    if isinstance(inner, FileExistsError):
        if "pass replace" in str(inner):  # a checkpoint: --replace replaces it
            print(f"shardwise import-dcp: {args.dst} exists (pass --replace to replace it)",
                  file=sys.stderr)
        else:  # never replaced (a root, a file): says what is there
            print(f"shardwise import-dcp: {inner.strerror or inner}", file=sys.stderr)
        return 2
    # (an EOFError of a truncated stock file says nothing: its type does)
    print(f"shardwise import-dcp: {str(inner) or type(inner).__name__}", file=sys.stderr)
    refused = (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError,
               ValueError)
    return 2 if isinstance(inner, refused) else 1


TIERS_LS_HELP = """Which steps exist on which tier: the root (ROOT, with each checkpoint's
export state) and a node's local tier (LOCAL_ROOT: each rank's own local
checkpoints, rank-RRRRR/, and the replicas this node holds for ranks of
another node, replica-RRRRR/; docs/tiers.md). Run it on each node: a local
tier is that node's alone. Exit codes: 0 listed, 1 failed, 2 usage error or
an unreadable path."""

TIERS_VERIFY_HELP = """Re-reads every committed checkpoint of a node's local tier (LOCAL_ROOT:
rank-RRRRR/ and replica-RRRRR/) and checks every checksum, file size and
header. Exit codes: 0 all intact, 1 a problem (each is printed, naming the
file) or no committed checkpoint to verify, 2 usage error or an unreadable
path."""


def _guarded(command: str, body: Callable[[], int]) -> int:
    """body()'s exit code; an unreadable path (or one that is no root) is 2
    and any other failure 1, each printed as ``shardwise COMMAND: why``."""
    try:
        # A malformed SHARDWISE_* variable is a usage error here as in the
        # native commands.
        _core.check_options({})
    except ValueError as e:
        print(f"shardwise {command}: {e}", file=sys.stderr)
        return 2
    try:
        return body()
    except (OSError, ValueError) as e:  # a path that cannot be read, or is no root
        print(f"shardwise {command}: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"shardwise {command}: {e}", file=sys.stderr)
        return 1


def _tiers_ls(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="shardwise ls", description=TIERS_LS_HELP)
    ap.add_argument("root", nargs="?", help="the checkpoint root (Lustre); optional")
    ap.add_argument("--local-root", required=True, help="the node's local tier")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    return _guarded("ls", lambda: _list_tiers(args.root, args.local_root, args.json))


def _list_tiers(root: Optional[str], local_root: str, as_json: bool) -> int:
    steps: dict[int, dict[str, object]] = {}
    if root:
        for c in _core.Repository(root, {}, False).list(with_exports=True):
            if c.state == "committed" and c.step >= 0:
                steps.setdefault(c.step, {})["root"] = (
                    c.export_info.state if c.export_info else "committed")
    for kind, rank, d in tier_roots(local_root):
        for step in steps_in(_core.Repository(d, {}, False).list()):
            steps.setdefault(step, {}).setdefault(kind, []).append(rank)
    if as_json:
        print(json.dumps({str(k): v for k, v in sorted(steps.items())}))
        return 0
    print(f"{'step':>12}  {'root':<16} {'local (ranks)':<24} replicas held (ranks)")
    for step in sorted(steps):
        row = steps[step]
        ranks = lambda k: ",".join(map(str, row.get(k, []))) or "-"  # noqa: E731
        print(f"{step:>12}  {str(row.get('root', '-')):<16} {ranks('rank'):<24} {ranks('replica')}")
    if not steps:
        print(f"(no committed checkpoint in {local_root}" + (f" or {root}" if root else "") + ")")
    return 0


def _tiers_verify(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="shardwise verify", description=TIERS_VERIFY_HELP)
    ap.add_argument("--local-root", required=True, help="the node's local tier")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    return _guarded("verify", lambda: _verify_tiers(args.local_root, args.json))


def _verify_tiers(local_root: str, as_json: bool) -> int:
    """Every committed checkpoint of the tier, verified; one whose manifest
    cannot be read is a problem too. The JSON is native verify's schema."""
    import time

    checkpoints = []
    for _, _, d in tier_roots(local_root):
        for c in _core.Repository(d, {}, False).list():
            if c.state not in ("committed", "invalid"):
                continue  # a save in progress, or leftovers gc removes
            path = f"{d}/{c.dir_name}"
            entry = {"name": c.name, "dir": path, "ok": True, "bytes_checked": 0,
                     "files_checked": 0, "seconds": 0.0, "problems": []}
            t0 = time.monotonic()
            try:
                if c.state == "invalid":
                    raise _core.CorruptCheckpointError(c.problem)
                r = _core.Reader(path, {}).verify()
                entry["bytes_checked"], entry["files_checked"] = r.bytes_checked, r.files_checked
                entry["problems"] = [{"file": p.file, "code": p.code, "message": p.message}
                                     for p in r.problems]
            except (_core.CorruptCheckpointError, OSError, RuntimeError) as e:
                where = getattr(e, "path", None) or getattr(e, "filename", None)
                code = ("CORRUPT" if isinstance(e, _core.CorruptCheckpointError)
                        else "NOT_FOUND" if isinstance(e, FileNotFoundError) else "IO_ERROR")
                entry["problems"] = [{"file": os.path.basename(where or "manifest.json"),
                                      "code": code, "message": str(e)}]
            entry["seconds"] = round(time.monotonic() - t0, 3)
            entry["ok"] = not entry["problems"]
            checkpoints.append(entry)
            if not as_json:
                print(f"{'OK     ' if entry['ok'] else 'DAMAGED'} {path}")
                for p in entry["problems"]:
                    print(f"    {p['file']}: {p['message']}")
    # Nothing to verify is not a pass (as native verify).
    ok = bool(checkpoints) and all(c["ok"] for c in checkpoints)
    if as_json:
        print(json.dumps({"path": local_root, "ok": ok, "checkpoints": checkpoints}))
    elif not checkpoints:
        print(f"(no committed checkpoint in {local_root}: nothing verified)")
    return 0 if ok else 1


def _is_fd(stream: object, fd: int) -> bool:
    """Whether `stream` writes to the process's file descriptor `fd` (not
    to a capture of Python's)."""
    try:
        return stream.fileno() == fd  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "import-dcp":
        return _import_dcp(args[1:])
    if args and args[0] in ("ls", "verify") and any(a.split("=")[0] == "--local-root" for a in args):
        return (_tiers_ls if args[0] == "ls" else _tiers_verify)(args[1:])
    direct = _is_fd(sys.stdout, 1) and _is_fd(sys.stderr, 2)
    rc = _core.cli_main(["shardwise", *args], direct=direct)
    # The native overview goes to stdout for --help and to stderr (exit 2)
    # without a command: these lines go with it.
    out = sys.stdout if rc == 0 else sys.stderr
    if not args or args[0] in ("-h", "--help", "help"):
        print("\nAlso: shardwise import-dcp SRC DST   convert a stock DCP checkpoint "
              "(--help for details)\n"
              "      shardwise ls [ROOT] --local-root LOCAL_ROOT   steps on each tier\n"
              "      shardwise verify --local-root LOCAL_ROOT      check a node's local tier",
              file=out)
    elif args[0] in ("ls", "verify") and any(a in ("-h", "--help") for a in args[1:]):
        print(f"\nA node's local tier (docs/tiers.md): shardwise {args[0]} --local-root "
              f"LOCAL_ROOT --help", file=out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
