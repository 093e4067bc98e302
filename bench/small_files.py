"""Benchmark 6 (issue 20): what a RUN that writes many small files costs after its command, per entry.

A RUN's upper dir of N small files (an `npm install`, a `pip install`, the build bench's 20,000-file
RUN) goes through three passes in kade: the scan of its changes (snapshot.upper_diff), the layer writer
(gzip) and the normalizer (layernorm: what turns the upper dir into a layer dir; a child process
beside the writer). Their cost is per entry, not per byte. GNU tar writing the same tree (sorted,
numeric owners, through `gzip -1`) is the floor a C tool sets.

The layer is then unpacked (builder/unpack.py: what a fresh runner does to every layer it pulls), beside
GNU tar -xzf of its own archive.

Each measurement runs in a fresh interpreter (as a build's process is), on a tree in tmpfs (the
disk's own noise left out: on this VM, creating 20,000 files takes 0.3 s or 3 s from one minute to
the next), runs interleaved. `--kade DIR` (repeatable) times the kade source trees given (e.g. a `git
worktree` of an older commit) in the same run; default: this checkout.

Usage: .venv/bin/python bench/small_files.py [--files 20000] [--dirs 20] [--runs 5] [--kade DIR ...]
       [--no-append] [--results bench/RESULTS.md]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import benchlib  # noqa: E402  (bench/, the script's own folder)

PASSES = ("changes", "write_layer", "normalize")   # after a RUN; then, on a puller, "unpack"

CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
from builder.snapshot import upper_diff
from builder.layer import write_layer
from builder.layernorm import fingerprint_of, normalize
from builder.unpack import apply_layer
upper, lower, blob, into = {upper!r}, {lower!r}, {blob!r}, {into!r}
t0 = time.perf_counter()
changes = upper_diff(upper, lower).changes
t1 = time.perf_counter()
with open(blob, "wb") as out:
    info = write_layer(changes, out, "gzip", None)
t2 = time.perf_counter()
fingerprint_of(normalize(upper, None))
t3 = time.perf_counter()
with open(blob, "rb") as layer:
    apply_layer(layer, into)
t4 = time.perf_counter()
print(json.dumps({{"changes": t1 - t0, "write_layer": t2 - t1, "normalize": t3 - t2, "unpack": t4 - t3,
                  "entries": len(changes), "digest": info.digest}}))
"""


def make_tree(root: Path, files: int, dirs: int) -> None:
    """`files` files of one line each, spread over `dirs` directories, as a RUN leaves them."""
    for d in range(dirs):
        sub = root / f"d{d:03d}"
        sub.mkdir(parents=True)
        for i in range(d, files, dirs):
            (sub / f"f{i}").write_bytes(b"record %d\n" % i)


def kade_run(repo: Path, master: Path, work: Path) -> dict:
    """The three passes on a fresh copy of the tree (normalize changes it), then the layer unpacked into
    an empty dir, in a fresh interpreter."""
    upper, lower, into = work / "upper", work / "lower", work / "unpacked"
    for tree in (upper, into):
        shutil.rmtree(tree, ignore_errors=True)
    subprocess.run(["cp", "-a", str(master), str(upper)], check=True)
    lower.mkdir(exist_ok=True)
    into.mkdir()
    code = CHILD.format(repo=str(repo), upper=str(upper), lower=str(lower), blob=str(work / "layer.gz"),
                        into=str(into))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def tar_run(master: Path, work: Path) -> tuple[float, float]:
    """GNU tar's write (through gzip -1) and unpack of the same tree, in seconds."""
    into = work / "tar-unpacked"
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir()
    timed = []
    tree, blob, into_q = shlex.quote(str(master)), shlex.quote(str(work / "tree.tar.gz")), shlex.quote(str(into))
    for cmd in (f"tar --sort=name --numeric-owner -C {tree} -cf - . | gzip -1 > {blob}",
                f"tar -xzf {blob} -C {into_q}"):
        start = time.perf_counter()
        subprocess.run(["sh", "-c", cmd], check=True)
        timed.append(time.perf_counter() - start)
    return timed[0], timed[1]


def label(repo: Path) -> str:
    return benchlib.commit(repo) or str(repo)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--dirs", type=int, default=20)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--kade", type=Path, action="append", help="a kade source tree to time (repeatable)")
    ap.add_argument("--work", type=Path, default=Path("/dev/shm"))
    benchlib.add_result_args(ap)
    args = ap.parse_args()
    repos = args.kade or [REPO]
    for repo in repos:
        benchlib.compile_bytecode(repo)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    work = Path(tempfile.mkdtemp(prefix="kade-small-", dir=args.work))
    loads: list[float] = []
    try:
        master = work / "tree"
        make_tree(master, args.files, args.dirs)
        kade: dict[Path, list[dict]] = {repo: [] for repo in repos}
        tar: list[tuple[float, float]] = []
        for run in range(args.runs):   # interleaved; each run starts with a different tool
            loads.append(os.getloadavg()[0])
            order = [*repos, None]
            for which in order[run % len(order):] + order[:run % len(order)]:
                if which is None:
                    tar.append(tar_run(master, work))
                else:
                    kade[which].append(kade_run(which, master, work))
        digests = {r["digest"] for runs in kade.values() for r in runs}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    entries = args.files + args.dirs + 1
    lines = [f"\n## Small files after a RUN (benchmark 6, issue 20) — {started}\n",
             benchlib.machine(loads),
             f"- command: `python bench/small_files.py --files {args.files} --dirs {args.dirs} --runs {args.runs}"
             + "".join(f" --kade {r}" for r in args.kade or []) + f"` (kade commit {benchlib.commit()})",
             f"- tree: {args.files} files of one line in {args.dirs} directories ({entries} entries), in "
             f"{args.work} (tmpfs); each kade run in a fresh interpreter on a fresh copy; medians of {args.runs}",
             f"- layer digests over all kade runs: {len(digests)} distinct ({', '.join(sorted(d[:19] for d in digests))})",
             "", "| tool | changes ms | write_layer ms | normalize ms | after a RUN: sum ms | us/entry | unpack ms | "
             "us/entry |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for repo, runs in kade.items():
        med = {p: statistics.median(r[p] for r in runs) * 1000 for p in (*PASSES, "unpack")}
        total = sum(med[p] for p in PASSES)
        lines.append(f"| kade {label(repo)} | {med['changes']:.0f} | {med['write_layer']:.0f} | "
                     f"{med['normalize']:.0f} | {total:.0f} | {total * 1000 / entries:.1f} | {med['unpack']:.0f} | "
                     f"{med['unpack'] * 1000 / entries:.1f} |")
    t, x = (statistics.median(run[i] for run in tar) * 1000 for i in (0, 1))
    lines.append(f"| GNU tar -c \\| gzip -1, tar -xzf | | {t:.0f} | | {t:.0f} | {t * 1000 / entries:.1f} | {x:.0f} | "
                 f"{x * 1000 / entries:.1f} |")
    benchlib.publish("\n".join(lines) + "\n", args)


if __name__ == "__main__":
    main()
