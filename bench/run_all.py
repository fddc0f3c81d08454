#!/usr/bin/env python3
"""The whole benchmark suite in one go, on one directory: see docs/PERFORMANCE.md.

Steps, all on --dir, all recorded under --out:
  1. the machine's description (CPU, memory, kernel, filesystem, versions);
  2. memcpy bandwidth (one thread, pre-faulted destination): the stall's limit;
  3. for every R in --ranks and size in --sizes:
       bench/compare.py (shardwise sync/async save and load, stock DCP at its
       defaults and every thread count, dcp.async_save, torch.save/load), and
       fio writing and reading the same total bytes with R jobs, O_DIRECT,
       shardwise's I/O unit as block size, an fsync at the end of the write,
       io_uring (registered buffers, shardwise's queue depth) and psync, best
       kept; the headline configuration also loads at other world sizes;
  4. the scaling simulation (build/release/scale_commit);
  5. the GPU stall (bench/gpu_stall.py; skips, saying why, without a GPU);
  6. results.json, table.md (medians and ratios) and PNG plots.

Usage (bench/run.sh sets everything up first and calls this):
  bench/run_all.py --dir /tmp/shardwise-bench [--runs 3] [--ranks 1,2,4]
                   [--sizes 1GiB,4GiB,8GiB] [--headline 2:4GiB] [--out DIR]
  bench/run_all.py --dir /tmp/b --quick     # minutes: small sizes, for a smoke run
  bench/run_all.py --report-only --out DIR  # rebuild table.md and plots from DIR
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from compare import parse_size  # noqa: E402
from vs_fio import run_fio  # noqa: E402

PY = sys.executable
IO_UNIT = "8m"       # shardwise's default I/O unit (Options::io_unit_bytes)
QUEUE_DEPTH = 8      # shardwise's default I/O depth per rank (Options::queue_depth)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def describe_machine(directory: str) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    mem = next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo")
               if line.startswith("MemTotal:"))
    import torch

    return {
        "cpu": cpu, "cpus": os.cpu_count(), "memory_bytes": mem,
        "kernel": platform.release(), "os": sh(["sh", "-c", ". /etc/os-release; echo $PRETTY_NAME"]),
        "dir": directory,
        "filesystem": sh(["stat", "-f", "-c", "%T", directory]),
        "device": sh(["findmnt", "-no", "SOURCE,FSTYPE,OPTIONS", "--target", directory]),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "torch": torch.__version__, "python": platform.python_version(),
        "compiler": sh(["c++", "--version"]).splitlines()[0] if sh(["c++", "--version"]) else "",
        "fio": sh(["fio", "--version"]),
        "shardwise_commit": sh(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def memcpy_gbps(nbytes: int = 1 << 30, reps: int = 5) -> float:
    """One thread copying nbytes into a pre-faulted buffer; median of reps."""
    import numpy as np

    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.zeros(nbytes, dtype=np.uint8)  # written below, so faulted in before timing
    dst[::4096] = 1
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        rates.append(nbytes / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def fio_best(directory: str, ranks: int, total: int, runs: int) -> dict:
    """fio with the same bytes, jobs, block size, O_DIRECT and fsync as shardwise."""
    per_job = f"{max(1, total // ranks // (1 << 20))}m"
    out = {}
    for engine, depth in (("io_uring_fixed", QUEUE_DEPTH), ("psync", 1)):
        for rw in ("write", "read"):
            out[f"fio {rw} {engine}"] = [run_fio(directory, ranks, per_job, engine, depth,
                                                 IO_UNIT, rw) for _ in range(runs)]
    return out


def label_size(nbytes: int) -> str:
    return f"{nbytes / 2**30:g}GiB" if nbytes >= 1 << 30 else f"{nbytes >> 20}MiB"


def run_suite(args) -> None:
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.dir, exist_ok=True)
    machine = describe_machine(args.dir)
    log(f"machine: {machine['cpus']} x {machine['cpu']}, "
        f"{machine['memory_bytes'] / 2**30:.0f} GiB, {machine['filesystem']} at {args.dir}")
    machine["memcpy_gbps"] = memcpy_gbps()
    log(f"memcpy (one thread): {machine['memcpy_gbps']:.2f} GB/s")
    json.dump(machine, open(os.path.join(args.out, "machine.json"), "w"), indent=2)
    head_r, head_size = args.headline.split(":")
    configs = [(r, parse_size(s)) for r in args.ranks for s in args.sizes]
    for ranks, size in configs:
        tag = f"r{ranks}-{label_size(size)}"
        headline = ranks == int(head_r) and size == parse_size(head_size)
        log(f"{tag}: compare.py{' (headline, with reshard loads)' if headline else ''}")
        cmd = [PY, os.path.join(HERE, "compare.py"), "--dir", os.path.join(args.dir, "cmp"),
               "--ranks", str(ranks), "--total-size", str(size), "--runs", str(args.runs),
               "--json", os.path.join(args.out, f"compare-{tag}.json")]
        if headline:
            others = [r for r in (1, 4) if r != ranks] or [2]
            cmd += ["--reload-ranks", ",".join(map(str, others))]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        data = json.load(open(os.path.join(args.out, f"compare-{tag}.json")))
        log(f"{tag}: fio, {data['bytes'] / 2**30:.2f} GiB with {ranks} jobs")
        fio = fio_best(args.dir, ranks, data["bytes"], args.runs)
        json.dump(fio, open(os.path.join(args.out, f"fio-{tag}.json"), "w"), indent=2)
    log("scaling simulation")
    scale = subprocess.run([os.path.join(ROOT, "build/release/scale_commit"), "--json",
                            "--runs", str(args.runs), "--ranks", args.scale_ranks,
                            "--dir", os.path.join(args.dir, "scale")],
                           check=True, capture_output=True, text=True).stdout
    json.dump(json.loads(scale), open(os.path.join(args.out, "scale.json"), "w"), indent=2)
    log("GPU stall")
    subprocess.run([PY, os.path.join(HERE, "gpu_stall.py"), "--dir", os.path.join(args.dir, "gpu"),
                    "--json", os.path.join(args.out, "gpu.json")], check=True)


# ---------------------------------------------------------------- report

def load_results(out: str) -> dict:
    res = {"machine": json.load(open(os.path.join(out, "machine.json"))), "configs": []}
    for name in sorted(os.listdir(out)):
        if not (name.startswith("compare-") and name.endswith(".json")):
            continue
        tag = name[len("compare-"):-len(".json")]
        cmp = json.load(open(os.path.join(out, name)))
        fio_path = os.path.join(out, f"fio-{tag}.json")
        fio = json.load(open(fio_path)) if os.path.exists(fio_path) else {}
        med = dict(cmp["medians"])
        nbytes = cmp["bytes"]
        gbps = {k: nbytes / v / 1e9 for k, v in med.items()}
        for k, v in fio.items():
            gbps[k] = statistics.median(v)
        res["configs"].append({"tag": tag, "ranks": cmp["ranks"], "bytes": nbytes,
                               "best_dcp": cmp.get("best_dcp", ""), "skipped": cmp.get("skipped", {}),
                               "seconds": med, "gbps": gbps})
    res["configs"].sort(key=lambda c: (c["ranks"], c["bytes"]))
    for extra in ("scale", "gpu"):
        path = os.path.join(out, f"{extra}.json")
        res[extra] = json.load(open(path)) if os.path.exists(path) else None
    return res


def ratios(c: dict, memcpy: float) -> dict:
    g, s = c["gbps"], c["seconds"]
    fio_w = max((v for k, v in g.items() if k.startswith("fio write")), default=None)
    fio_r = max((v for k, v in g.items() if k.startswith("fio read")), default=None)
    r = {
        "save/fio": g["shardwise save"] / fio_w if fio_w else None,
        "save/dcp default": g["shardwise save"] / g["dcp default save"],
        "save/dcp best": g["shardwise save"] / g[c["best_dcp"] + " save"] if c["best_dcp"] else None,
        "save/torch.save": g["shardwise save"] / g["torch.save save"],
        "load/fio": g["shardwise load"] / fio_r if fio_r else None,
        "load/dcp": g["shardwise load"] / g["dcp default load"],
        "load/torch.load": g["shardwise load"] / g["torch.save load"],
        "fio_write": fio_w, "fio_read": fio_r,
    }
    if "shardwise async stall" in s:
        # each rank copies its own share at once: the limit is one share at memcpy speed
        limit = c["bytes"] / c["ranks"] / (memcpy * 1e9)
        r["stall/dcp stall"] = s["shardwise async stall"] / s["dcp async stall"]
        r["stall/memcpy limit"] = s["shardwise async stall"] / limit
    return r


def fmt(v, spec=".2f", suffix="") -> str:
    return "—" if v is None else f"{v:{spec}}{suffix}"


TARGETS = [  # (ratio key, op, bound, text)
    ("save/dcp default", ">=", 3.0, "sync save >= 3x DCP FileSystemWriter defaults"),
    ("save/dcp best", ">=", 1.5, "sync save >= 1.5x DCP at its best thread_count"),
    ("save/fio", ">=", 0.9, "sync save >= 0.9x fio write"),
    ("stall/dcp stall", "<=", 0.5, "async stall <= 0.5x dcp.async_save's"),
    ("load/dcp", ">=", 2.0, "load >= 2x DCP FileSystemReader"),
    ("load/fio", ">=", 0.9, "load >= 0.9x fio read"),
]


def write_table(res: dict, out: str, headline: str) -> str:
    m = res["machine"]
    lines = [f"# shardwise benchmark results, {m['date']}", "",
             f"Machine: {m['cpus']} x {m['cpu']}, {m['memory_bytes'] / 2**30:.0f} GiB RAM, "
             f"{m['os']}, kernel {m['kernel']}; directory {m['dir']} on {m['filesystem']} "
             f"({m['device']}); GPU: {m['gpu']}; torch {m['torch']}; {m['compiler']}; "
             f"{m['fio']}; shardwise {m['shardwise_commit']}.",
             f"memcpy limit (one thread): {m['memcpy_gbps']:.2f} GB/s.", "",
             "Medians of the runs; GB/s = total bytes / wall time from a barrier to the slowest "
             "rank. Ratios are shardwise / other in throughput (higher is better), and "
             "shardwise / other in time for the stall (lower is better).", "",
             "## Throughput (GB/s)", "",
             "| ranks | size | shardwise save | fio write | dcp default | dcp best (threads) "
             "| torch.save | shardwise load | fio read | dcp load | torch.load |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in res["configs"]:
        g, r = c["gbps"], ratios(c, m["memcpy_gbps"])
        best = c["best_dcp"]
        lines.append(
            f"| {c['ranks']} | {c['bytes'] / 2**30:.2f} GiB | {g['shardwise save']:.2f} "
            f"| {fmt(r['fio_write'])} | {g['dcp default save']:.2f} "
            f"| {g[best + ' save']:.2f} ({best.split('=')[-1] if '=' in best else 1}) "
            f"| {g['torch.save save']:.2f} | {g['shardwise load']:.2f} | {fmt(r['fio_read'])} "
            f"| {g['dcp default load']:.2f} | {g['torch.save load']:.2f} |")
    lines += ["", "## Ratios", "",
              "| ranks | size | save/fio | save/dcp default | save/dcp best | save/torch.save "
              "| load/fio | load/dcp | load/torch.load |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in res["configs"]:
        r = ratios(c, m["memcpy_gbps"])
        lines.append(f"| {c['ranks']} | {c['bytes'] / 2**30:.2f} GiB | " + " | ".join(
            fmt(r[k], ".2f", "x") for k in ("save/fio", "save/dcp default", "save/dcp best",
                                              "save/torch.save", "load/fio", "load/dcp",
                                              "load/torch.load")) + " |")
    lines += ["", "## Async stall", "",
              "| ranks | size | shardwise stall | dcp.async_save stall | stall/dcp "
              "| memcpy limit | stall/limit | shardwise total | dcp total |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in res["configs"]:
        s, r = c["seconds"], ratios(c, m["memcpy_gbps"])
        if "async" in c["skipped"]:
            lines.append(f"| {c['ranks']} | {c['bytes'] / 2**30:.2f} GiB | skipped: "
                         f"{c['skipped']['async']} | | | | | | |")
            continue
        limit = c["bytes"] / c["ranks"] / (m["memcpy_gbps"] * 1e9)
        lines.append(f"| {c['ranks']} | {c['bytes'] / 2**30:.2f} GiB "
                     f"| {s['shardwise async stall'] * 1e3:.0f} ms | {s['dcp async stall'] * 1e3:.0f} ms "
                     f"| {r['stall/dcp stall']:.2f}x | {limit * 1e3:.0f} ms "
                     f"| {r['stall/memcpy limit']:.2f}x | {s['shardwise async total']:.2f} s "
                     f"| {s['dcp async total']:.2f} s |")
    reshard = [(c, k) for c in res["configs"] for k in c["seconds"] if "->" in k]
    if reshard:
        lines += ["", "## Load at another world size (resharding)", "",
                  "| saved by | loaded by | size | seconds | GB/s | vs same-size load |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for c, k in reshard:
            src, dst = k.split()[-1].split("->")
            lines.append(f"| {src} | {dst} | {c['bytes'] / 2**30:.2f} GiB | {c['seconds'][k]:.3f} "
                         f"| {c['gbps'][k]:.2f} | {c['gbps'][k] / c['gbps']['shardwise load']:.2f}x |")
    head_r, head_size = headline.split(":")
    head = next((c for c in res["configs"] if c["ranks"] == int(head_r)
                 and abs(c["bytes"] - parse_size(head_size)) <= parse_size(head_size) * 0.1), None)
    if head:
        r = ratios(head, m["memcpy_gbps"])
        lines += ["", f"## Targets (issue 5), at {head['ranks']} ranks and "
                  f"{head['bytes'] / 2**30:.2f} GiB", "", "| target | measured | |", "|---|---:|---|"]
        for key, op, bound, text in TARGETS:
            v = r.get(key)
            ok = v is not None and (v >= bound if op == ">=" else v <= bound)
            lines.append(f"| {text} | {fmt(v, '.2f', 'x')} | {'met' if ok else '**MISSED**'} |")
    if res["scale"]:
        lines += ["", "## Scaling simulation (commit + metadata load)", "",
                  "| ranks | items/rank | manifest | commit (s) | metadata load (s) | total (s) "
                  "| growth per x rank |", "|---:|---:|---:|---:|---:|---:|---:|"]
        prev = None
        for row in res["scale"]:
            total = row["commit_s"] + row["metadata_load_s"]
            growth = (f"{(total / prev[1]) / (row['ranks'] / prev[0]):.2f}" if prev else "—")
            lines.append(f"| {row['ranks']} | {row['items_per_rank']} "
                         f"| {row['manifest_bytes'] / 2**20:.1f} MiB | {row['commit_s']:.3f} "
                         f"| {row['metadata_load_s']:.3f} | {total:.3f} | {growth} |")
            prev = (row["ranks"], total)
        lines.append("")
        lines.append("growth per x rank: (time ratio) / (rank ratio) against the previous row; "
                     "1.00 is linear. Target: under 2 s at 4096 ranks.")
    gpu = res["gpu"]
    lines += ["", "## GPU stall", ""]
    if not gpu:
        lines.append("not run")
    elif "skipped" in gpu:
        lines.append(f"skipped: {gpu['skipped']}")
    else:
        med = gpu["medians"]
        lines.append(f"{gpu['gpu']}, {gpu['bytes'] / 2**30:.2f} GiB on the device: shardwise "
                     f"{med['shardwise async stall'] * 1e3:.0f} ms, dcp.async_save "
                     f"{med['dcp async stall'] * 1e3:.0f} ms "
                     f"({gpu['ratios']['async stall, shardwise / dcp']:.2f}x)")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text)
    return text


def plot(res: dict, out: str) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plots (bench/run.sh installs it)")
        return []
    made = []
    sizes = sorted({c["bytes"] for c in res["configs"]})
    fig, axes = plt.subplots(2, len(sizes), figsize=(4.5 * len(sizes), 8), squeeze=False)
    for col, size in enumerate(sizes):
        cs = [c for c in res["configs"] if c["bytes"] == size]
        ranks = [c["ranks"] for c in cs]
        for row, (op, series) in enumerate((
                ("save", [("shardwise", "shardwise save"), ("fio", "fio write"),
                          ("dcp default", "dcp default save"), ("dcp best", None),
                          ("torch.save", "torch.save save")]),
                ("load", [("shardwise", "shardwise load"), ("fio", "fio read"),
                          ("dcp", "dcp default load"), ("torch.load", "torch.save load")]))):
            ax = axes[row][col]
            for name, key in series:
                ys = []
                for c in cs:
                    r = ratios(c, res["machine"]["memcpy_gbps"])
                    if key is None:
                        ys.append(c["gbps"][c["best_dcp"] + " save"])
                    elif key.startswith("fio"):
                        ys.append(r["fio_write" if op == "save" else "fio_read"])
                    else:
                        ys.append(c["gbps"][key])
                ax.plot(ranks, ys, marker="o", label=name,
                        linewidth=2.5 if name == "shardwise" else 1.2)
            ax.set_title(f"{op}, {size / 2**30:.2f} GiB total")
            ax.set_xlabel("ranks")
            ax.set_ylabel("GB/s")
            ax.set_xticks(ranks)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, "throughput_vs_ranks.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    made.append(path)

    cs = [c for c in res["configs"] if "async" not in c["skipped"]]
    if cs:
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(cs)), 4.5))
        width = 0.27
        xs = range(len(cs))
        limit = [c["bytes"] / c["ranks"] / (res["machine"]["memcpy_gbps"] * 1e9) * 1e3 for c in cs]
        for i, (name, vals) in enumerate((
                ("shardwise async", [c["seconds"]["shardwise async stall"] * 1e3 for c in cs]),
                ("dcp.async_save", [c["seconds"]["dcp async stall"] * 1e3 for c in cs]),
                ("memcpy limit", limit))):
            ax.bar([x + (i - 1) * width for x in xs], vals, width, label=name)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([f"R={c['ranks']}\n{c['bytes'] / 2**30:.1f} GiB" for c in cs], fontsize=8)
        ax.set_ylabel("stall (ms, log scale)")
        ax.set_yscale("log")
        ax.set_title("async save: time the training loop is blocked")
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = os.path.join(out, "stall_per_method.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

    if res["scale"]:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        rs = [row["ranks"] for row in res["scale"]]
        ax.plot(rs, [row["commit_s"] for row in res["scale"]], marker="o", label="commit")
        ax.plot(rs, [row["metadata_load_s"] for row in res["scale"]], marker="o",
                label="metadata load")
        ax.axhline(2.0, color="grey", linestyle="--", label="target (sum) 2 s")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("ranks (200 items each)")
        ax.set_ylabel("seconds")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = os.path.join(out, "scaling.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/shardwise-bench",
                    help="directory every method writes to (the filesystem under test)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", time.strftime("%Y-%m-%d")),
                    help="where results.json, table.md, the plots and raw results go")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ranks", default="1,2,4")
    ap.add_argument("--sizes", default="1GiB,4GiB,8GiB")
    ap.add_argument("--headline", default="2:4GiB", help="RANKS:SIZE checked against the targets")
    ap.add_argument("--scale-ranks", default="256,1024,4096")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: ranks 1,2, size 512MiB, scaling 64,256")
    ap.add_argument("--report-only", action="store_true",
                    help="only rebuild results.json, table.md and plots from --out")
    args = ap.parse_args()
    if args.quick:
        args.ranks, args.sizes, args.headline, args.scale_ranks = "1,2", "512MiB", "2:512MiB", "64,256"
    args.ranks = [int(r) for r in args.ranks.split(",")]
    args.sizes = args.sizes.split(",")
    if args.runs < 3:
        ap.error("--runs must be at least 3")
    if not args.report_only:
        if not shutil.which("fio"):
            sys.exit("fio is not installed: run scripts/setup.sh (or bench/run.sh)")
        if not os.path.exists(os.path.join(ROOT, "build/release/scale_commit")):
            sys.exit("build/release/scale_commit is missing: run scripts/setup.sh release")
        t0 = time.monotonic()
        run_suite(args)
        log(f"suite took {(time.monotonic() - t0) / 60:.1f} min")
    res = load_results(args.out)
    res["ratios"] = {c["tag"]: ratios(c, res["machine"]["memcpy_gbps"]) for c in res["configs"]}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=2)
    print(write_table(res, args.out, args.headline))
    for p in plot(res, args.out):
        log(f"wrote {p}")
    log(f"results in {args.out}: results.json, table.md, *.png")


if __name__ == "__main__":
    main()
