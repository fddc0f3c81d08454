#!/usr/bin/env python3
"""Fails when a file includes a header of a layer it may not use.

The layers and the edges allowed between them are the table below, the one
docs/architecture.md shows. A file belongs to the layer of its folder
(src/<layer>/..., include/shardwise/ is the public API, tools/ and
examples/ are callers of the public API). Tests (*_test.cc) and the test
harnesses (src/testing/, fuzz/, bench/) may include any layer: they test the
internals from outside.

Known violations that are not fixed yet are listed in KNOWN with the reason;
each one is reported, a new one fails, and one that no longer occurs fails
too (so the list only shrinks).

    scripts/check_layers.py            # check the tree
    scripts/check_layers.py --table    # print the table (for the docs)
    scripts/check_layers.py --self-test
"""
from __future__ import annotations

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_function_length import blank  # noqa: E402  (comments and strings blanked)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# layer -> the layers it may include (itself always). "api" is
# include/shardwise/, which every layer may use.
ALLOWED: dict[str, set[str]] = {
    "api": set(),
    "common": {"api"},
    "os": {"api", "common"},
    "format": {"api", "common", "os"},
    "io": {"api", "common", "os"},
    "fs": {"api", "common", "os"},
    "engine": {"api", "common", "os", "format", "io", "fs"},
    "repo": {"api", "common", "os", "format", "io", "fs", "engine"},
    "cli": {"api"},
    "python": {"api"},
    "tools": {"api", "cli"},
    "examples": {"api"},
}
ANY = {"testing", "fuzz", "bench"}  # harnesses: may include every layer
LAYER_OF_INCLUDE = {"shardwise": "api", "common": "common", "os": "os", "format": "format",
                    "io": "io", "fs": "fs", "engine": "engine", "repo": "repo", "cli": "cli",
                    "python": "python", "testing": "testing"}

# (file, included header): why it is still here. Issue 13 removes them.
KNOWN: dict[tuple[str, str], str] = {}

INCLUDE = re.compile(r'^\s*#\s*include\s+["<]([a-z_]+)/([^">]+)[">]', re.M)
RELATIVE = re.compile(r'^\s*#\s*include\s+"(\.\./[^"]*)"', re.M)

# src/os/posix.h's claim: the core calls POSIX only through os/, past the
# fault-injection and power-loss seam. These core files may call it
# themselves, for the reason given.
CORE = {"common", "format", "io", "fs", "engine", "repo"}
SYSCALLS = ("open openat close read write pread pwrite preadv pwritev fsync fdatasync "
            "sync_file_range rename renameat2 unlink mkdir rmdir ftruncate fallocate "
            "posix_fallocate posix_fadvise flock fcntl ioctl fstat stat lstat statfs fstatfs "
            "futimens dup dup2 mmap munmap madvise eventfd getpid getppid gethostname realpath "
            "opendir readdir fopen dlopen").split()
# `::name(` or a bare `name(` (not a member, not another namespace's), in
# code with comments and strings blanked out.
SYSCALL = re.compile(r"(?:(?<![\w:])::|(?<![\w:.>]))(" + "|".join(SYSCALLS) + r")\s*\(")
POSIX_ALLOWED: dict[str, str] = {
    "src/fs/io_mode.cc": "the filesystem probes bypass the fault seam on purpose: a probe must "
                         "not consume the Nth injected fault meant for the save",
    "src/io/uring_backend.cc": "the ring's wake-up eventfd (no file data)",
    "src/fs/lustre_api.cc": "loads liblustreapi with dlopen; llapi_file_open creates shard files "
                            "inside the library, where no seam can reach",
}


def layer_of(rel: str) -> str | None:
    parts = rel.split("/")
    if parts[0] == "include":
        return "api"
    if parts[0] == "src" and len(parts) > 2:
        return parts[1]
    if parts[0] in ("tools", "examples", "fuzz", "bench"):
        return parts[0]
    return None


def sources(root: str) -> list[str]:
    out = []
    for top in ("include", "src", "tools", "examples", "fuzz", "bench"):
        for dirpath, _, files in os.walk(os.path.join(root, top)):
            for f in files:
                if f.endswith((".cc", ".h")):
                    out.append(os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(out)


def check(root: str = ROOT, known: dict[tuple[str, str], str] = KNOWN,
          posix_allowed: dict[str, str] = POSIX_ALLOWED) -> int:
    bad, seen = [], set()
    for rel in sources(root):
        layer = layer_of(rel)
        if layer is None or layer in ANY or rel.endswith("_test.cc") or "/testdata/" in rel:
            continue
        if layer not in ALLOWED:
            bad.append(f"{rel}: layer '{layer}' is not in the table (scripts/check_layers.py)")
            continue
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            text = f.read()
        for m in RELATIVE.finditer(text):
            bad.append(f"{rel}: includes {m.group(1)}: include headers by their path from src/ "
                       f"or include/, so the layer check can see them")
        for m in INCLUDE.finditer(text):
            target = LAYER_OF_INCLUDE.get(m.group(1))
            if target is None or target == layer or target in ALLOWED[layer]:
                continue
            header = f"{m.group(1)}/{m.group(2)}"
            if (rel, header) in known:
                seen.add((rel, header))
                continue
            bad.append(f"{rel}: includes {header}: layer '{layer}' may not use '{target}' "
                       f"(allowed: {', '.join(sorted(ALLOWED[layer])) or 'none'})")
    for rel in sources(root):
        layer = layer_of(rel)
        if layer not in CORE or rel.endswith("_test.cc") or "/testdata/" in rel:
            continue
        with open(os.path.join(root, rel), encoding="utf-8") as f:
            text = blank(f.read())
        calls = sorted({m.group(1) for m in SYSCALL.finditer(text)})
        if calls and rel not in posix_allowed:
            bad.append(f"{rel}: calls {', '.join('::' + c for c in calls)} directly; the core "
                       f"calls POSIX through src/os/ (posix.h), past the fault seam")
    for rel in sorted(posix_allowed):
        path = os.path.join(root, rel)
        if not os.path.exists(path):
            bad.append(f"{rel} is in POSIX_ALLOWED but does not exist")
            continue
        with open(path, encoding="utf-8") as f:
            if not SYSCALL.search(blank(f.read())):
                bad.append(f"{rel} no longer calls POSIX directly: remove it from "
                           f"POSIX_ALLOWED in scripts/check_layers.py")
    for key, why in sorted(known.items()):
        if key not in seen:
            bad.append(f"{key[0]} no longer includes {key[1]}: remove it from KNOWN "
                       f"in scripts/check_layers.py ({why})")
    for key in sorted(seen):
        print(f"known, to fix: {key[0]} includes {key[1]} ({known[key]})")
    for b in bad:
        print(f"LAYER VIOLATION: {b}", file=sys.stderr)
    print(f"layers: {len(bad)} violation(s), {len(seen)} known")
    return 1 if bad else 0


def self_test() -> int:
    """The check fails on a forbidden include, on a stale KNOWN entry, on a
    system call in the core outside os/ and on a stale POSIX_ALLOWED entry,
    and passes a clean tree and a test that includes anything."""
    import tempfile

    def tree(files: dict[str, str]) -> str:
        d = tempfile.mkdtemp(prefix="layers-")
        for rel, text in files.items():
            os.makedirs(os.path.dirname(os.path.join(d, rel)), exist_ok=True)
            with open(os.path.join(d, rel), "w") as f:
                f.write(text)
        return d

    ok = {"src/io/a.h": '#include "os/posix.h"\n',
          "src/io/a_test.cc": '#include "repo/commit.h"\n'}
    forbidden = dict(ok, **{"src/io/b.cc": '#include "repo/listing.h"\n'})
    syscall = dict(ok, **{"src/repo/c.cc": "int f(int fd) { return ::fsync(fd); }\n"})
    bare = dict(ok, **{"src/repo/d.cc": "// fsync(fd) in a comment\nint g(int fd) { "
                                         "const char* s = \"write(\"; return fsync(fd); }\n"})
    quiet = dict(ok, **{"src/repo/e.cc": "// ::fsync(fd)\nvoid h(File& f) { f.write(1); "
                                          "os::Fsync(2); std::fopen(\"x\", \"r\"); }\n"})
    angle = dict(ok, **{"src/io/f.cc": "#include <repo/listing.h>\n"})
    relative = dict(ok, **{"src/io/g.cc": '#include "../repo/listing.h"\n'})
    results = [check(tree(ok), {}, {}) == 0, check(tree(forbidden), {}, {}) == 1,
               check(tree(ok), {("src/io/a.h", "os/posix.h"): "stale"}, {}) == 1,
               check(tree(syscall), {}, {}) == 1,
               check(tree(syscall), {}, {"src/repo/c.cc": "allowed"}) == 0,
               check(tree(ok), {}, {"src/io/a.h": "stale"}) == 1,
               check(tree(bare), {}, {}) == 1, check(tree(quiet), {}, {}) == 0,
               check(tree(angle), {}, {}) == 1, check(tree(relative), {}, {}) == 1]
    print(f"self-test: {results}")
    return 0 if all(results) else 1


def table_text() -> str:
    rows = ["| layer | may include |", "|---|---|"]
    for layer, allowed in ALLOWED.items():
        rows.append(f"| `{layer}` | {', '.join(f'`{a}`' for a in sorted(allowed)) or '(nothing)'} |")
    return "\n".join(rows) + "\n"


def table() -> None:
    print(table_text(), end="")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", action="store_true", help="print the allowed-edges table")
    ap.add_argument("--self-test", action="store_true",
                    help="check that the check fails where it must")
    a = ap.parse_args()
    if a.table:
        table()
        sys.exit(0)
    if a.self_test:
        sys.exit(self_test())
    docs = os.path.join(ROOT, "docs", "architecture.md")
    with open(docs, encoding="utf-8") as f:
        if table_text() not in f.read():
            sys.exit(f"{docs}: its allowed-edges table differs from the one in "
                     f"scripts/check_layers.py (print it with --table)")
    sys.exit(check())
