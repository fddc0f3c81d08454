"""The ``shardwise`` console command: the native CLI (ls, inspect, verify,
gc, bench), plus ``import-dcp`` implemented in Python."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from . import _core

IMPORT_HELP = """Convert a stock PyTorch DCP checkpoint (written by FileSystemWriter) into a
shardwise checkpoint directory DST (ROOT/NAME). This reads DCP's pickled
.metadata and torch.save'd values: only import checkpoints you trust. The
result holds no pickle. Exit codes: 0 imported, 1 failed, 2 usage error."""


def _import_dcp(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="shardwise import-dcp", description=IMPORT_HELP)
    ap.add_argument("src", help="the stock DCP checkpoint directory")
    ap.add_argument("dst", help="the shardwise checkpoint directory to create")
    ap.add_argument("--step", type=int, help="step to record in the manifest")
    ap.add_argument("--replace", action="store_true", help="replace DST if it exists")
    ap.add_argument("--json", action="store_true", help="print a JSON summary")
    args = ap.parse_args(argv)
    from .migrate import import_dcp

    try:
        summary = import_dcp(args.src, args.dst, step=args.step, replace=args.replace)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"shardwise import-dcp: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"imported {summary['items']} items ({summary['tensor_bytes']} tensor bytes) "
              f"into {summary['dst']}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "import-dcp":
        return _import_dcp(args[1:])
    rc = _core.cli_main(["shardwise", *args])
    if not args or args[0] in ("-h", "--help", "help"):
        print("\nAlso: shardwise import-dcp SRC DST   convert a stock DCP checkpoint "
              "(--help for details)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
