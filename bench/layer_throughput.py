"""Benchmark 5 of the builder issue: a layer from a ~1 GB tree — throughput (MB/s of uncompressed tar)
with gzip and zstd, and the writer's peak RSS (goal <= 300 MB); buildah's commit of the same tree
(gzip, to an OCI layout) side by side when buildah is installed; its unpacks beside GNU tar's (C: the floor).

Usage: .venv/bin/python bench/layer_throughput.py [--tree DIR] [--work DIR] [--runs N] [--no-buildah]
The default tree is a copy of /usr/share plus /usr/lib/x86_64-linux-gnu (real files, ~1.2 GB),
made once under --work. Each measurement runs in a child process so its peak RSS is its own.
Prints a Markdown block to append to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import benchlib  # noqa: E402  (bench/, the script's own folder)

SOURCES = ["/usr/share", "/usr/lib/x86_64-linux-gnu"]

UNPACK = """
import sys, os, shutil
sys.path.insert(0, {repo!r})
from builder.unpack import apply_layer
dest = {dest!r}
shutil.rmtree(dest, ignore_errors=True)
os.mkdir(dest)
with open({blob!r}, "rb") as f:
    apply_layer(f, dest)
"""

WALK = """
import sys
sys.path.insert(0, {repo!r})
from builder.snapshot import walk, diff
before = walk({tree!r})
after = walk({tree!r})
assert diff(before, after, {tree!r}) == []
"""

CHILD = """
import sys, json
sys.path.insert(0, {repo!r})
from builder.layer import layer_from_directory
with open({out!r}, "wb") as f:
    info = layer_from_directory({tree!r}, f, {comp!r}, epoch=0)
print(json.dumps(info.__dict__))
"""


def make_tree(work: Path) -> Path:
    tree = work / "tree"
    if not tree.exists():
        tmp = work / "tree.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for src in SOURCES:
            dest = tmp / src.strip("/").replace("/", "_")
            subprocess.run(["cp", "-a", src, str(dest)], check=True)
        tmp.rename(tree)
    return tree


def findmnt_type(path: Path) -> str:
    out = subprocess.run(["findmnt", "-no", "FSTYPE", "-T", str(path)], capture_output=True, text=True).stdout
    return (out.split() or ["?"])[0]   # the first of stacked mounts


def tree_bytes(tree: Path) -> tuple[int, int]:
    total = files = 0
    for dirpath, _, names in os.walk(tree):
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            total += st.st_size
            files += 1
    return total, files


def timed(argv: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in MB of the child, stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with proc.stdout, proc.stderr:  # type: ignore[union-attr]
        # both pipes at once: a child filling its stderr (tar on a full disk) must not wait on us
        with ThreadPoolExecutor(1) as pool:
            err_job = pool.submit(proc.stderr.read)  # type: ignore[union-attr]
            out = proc.stdout.read()  # type: ignore[union-attr]
            err = err_job.result()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]} failed: {err.decode(errors='replace')[-2000:]}")
    return wall, usage.ru_maxrss // 1024, out.decode()


def kade_run(tree: Path, work: Path, comp: str, keep: bool = False) -> tuple[float, int, int]:
    out = work / f"layer.{comp}"
    wall, rss, _ = timed([sys.executable, "-c", CHILD.format(repo=str(REPO), out=str(out), tree=str(tree), comp=comp)])
    size = out.stat().st_size
    if not keep:
        out.unlink()
    return wall, rss, size


def unpack_run(work: Path, comp: str, run: int, into: Path) -> tuple[float, int, int]:
    """Into a fresh directory under `into`, kept until every unpack is timed (see benchlib.settle),
    unless `into` is a tmpfs."""
    dest = into / f"unpacked-{comp}-{run}"
    shutil.rmtree(dest, ignore_errors=True)
    wall, rss, _ = timed([sys.executable, "-c", UNPACK.format(repo=str(REPO), dest=str(dest),
                                                                blob=str(work / f"layer.{comp}"))])
    return wall, rss, 0


def tar_unpack_run(work: Path, comp: str, run: int, into: Path) -> tuple[float, int, int]:
    """The anchor: the same blob through the C decompressor's CLI into GNU tar (no checks of names, links
    or sizes, as kade's unpacker does), into a fresh directory under `into`."""
    dest = into / f"unpacked-tar-{comp}-{run}"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir()
    decompress = {"gzip": "gzip -dc", "zstd": "zstd -dc"}[comp]
    script = f'{decompress} "$1" | tar --numeric-owner --xattrs -xpf - -C "$2"'
    return timed(["sh", "-c", script, "sh", str(work / f"layer.{comp}"), str(dest)])[:2] + (0,)


def walk_run(tree: Path) -> tuple[float, int, int]:
    return timed([sys.executable, "-c", WALK.format(repo=str(REPO), tree=str(tree))])[:2] + (0,)


def buildah_run(tree: Path, work: Path) -> tuple[float, int, int] | None:
    if shutil.which("buildah") is None:
        return None
    ctr = subprocess.run(["buildah", "from", "scratch"], check=True, capture_output=True, text=True).stdout.strip()
    layout = work / "buildah-oci"
    try:
        subprocess.run(["buildah", "copy", "--quiet", ctr, str(tree), "/tree"], check=True, capture_output=True)
        shutil.rmtree(layout, ignore_errors=True)
        wall, rss, _ = timed(["buildah", "commit", "--quiet", "--disable-compression=false", ctr,
                              f"oci:{layout}:bench"])
        blobs = layout / "blobs" / "sha256"
        size = max(p.stat().st_size for p in blobs.iterdir())
        return wall, rss, size
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
        shutil.rmtree(layout, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/kade-bench-layers"))
    parser.add_argument("--tree", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-buildah", action="store_true")
    parser.add_argument("--unpack-into", type=Path, help="unpack there (e.g. /dev/shm: the unpacker without the disk)")
    parser.add_argument("--big-gb", type=int, default=4, help="also a layer of one sparse file this big (0: skip)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    loads = [os.getloadavg()[0]]
    tree = args.tree or make_tree(args.work)
    _, files = tree_bytes(tree)
    tar_mb = kade_run(tree, args.work, "none")[2] / 1e6   # also warms the page cache
    rows = []
    comps = ("gzip", "zstd", "none")
    # Runs interleave (gzip, zstd, none, gzip, ...) after a sync, so write-back of one run's output
    # does not land on the next one's clock.
    writes = {c: [] for c in comps}
    for _ in range(args.runs):
        for comp in comps:
            subprocess.run(["sync"])
            writes[comp].append(kade_run(tree, args.work, comp, keep=comp != "none"))
    for comp in comps:
        runs = writes[comp]
        wall = statistics.median(r[0] for r in runs)
        rows.append((f"kade write_layer {comp}", wall, tar_mb / wall, max(r[1] for r in runs), runs[0][2] / 1e6))
    unpackers = {"kade apply_layer": unpack_run, "GNU tar -x": tar_unpack_run}
    unpacks: dict[tuple[str, str], list] = {(u, c): [] for c in ("gzip", "zstd") for u in unpackers}
    benchlib.settle()
    into = args.unpack_into or args.work
    in_memory = findmnt_type(into) == "tmpfs"   # no deletion cost to keep off the clock; RAM to give back
    for run in range(args.runs):   # interleaved: kade gzip, tar gzip, kade zstd, tar zstd, ...
        for unpacker, comp in unpacks:
            subprocess.run(["sync"])
            unpacks[(unpacker, comp)].append(unpackers[unpacker](args.work, comp, run, into))
            if in_memory:
                for done in into.glob("unpacked-*"):
                    shutil.rmtree(done)
    for done in into.glob("unpacked-*"):
        shutil.rmtree(done)
    for (unpacker, comp), runs in unpacks.items():
        wall = statistics.median(r[0] for r in runs)
        rows.append((f"{unpacker} {comp} (unpack into {findmnt_type(into)})", wall, tar_mb / wall,
                     max(r[1] for r in runs), None))
    for comp in ("gzip", "zstd"):
        (args.work / f"layer.{comp}").unlink()
    if args.big_gb:
        big = args.work / "big"
        big.mkdir(exist_ok=True)
        with open(big / "sparse-zeros", "wb") as f:
            f.truncate(args.big_gb << 30)
        wall, rss, size = kade_run(big, args.work, "gzip")
        rows.append((f"kade write_layer gzip, one {args.big_gb} GiB file (sparse zeros)", wall,
                     (args.big_gb << 30) / 1e6 / wall, rss, size / 1e6))
        shutil.rmtree(big)
    runs = [walk_run(tree) for _ in range(args.runs)]
    wall = statistics.median(r[0] for r in runs)
    rows.append((f"kade stat snapshot: 2 walks + diff ({files} files)", wall, None, max(r[1] for r in runs), None))
    if not args.no_buildah:
        runs = [r for r in (buildah_run(tree, args.work) for _ in range(args.runs)) if r]
        if runs:
            wall = statistics.median(r[0] for r in runs)
            rows.append(("buildah commit (gzip, to oci:)", wall, tar_mb / wall, max(r[1] for r in runs),
                         runs[0][2] / 1e6))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"\n## Layer throughput (benchmark 5) — {now}\n")
    print(f"Machine: {platform.node()}, {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
          f"files on {subprocess.run(['findmnt', '-no', 'FSTYPE', '-T', str(tree)], capture_output=True, text=True).stdout.strip()}, page cache warm.")
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"Command: `.venv/bin/python bench/layer_throughput.py --runs {args.runs} --big-gb {args.big_gb}"
          f"{' --no-buildah' if args.no_buildah else ''}"
          f"{f' --unpack-into {args.unpack_into}' if args.unpack_into else ''}` (kade commit {commit})")
    print(f"1-min load average at the start {loads[0]:.1f}, at the end {os.getloadavg()[0]:.1f} (the 2 cores are "
          "shared with other work).")
    print(f"Tree: {files} files, a {tar_mb:.0f} MB tar (copy of {', '.join(SOURCES)}). Median of {args.runs} runs; "
          "MB/s = uncompressed tar bytes / wall time; RSS = peak of the measured process.\n")
    print("| what | wall s | MB/s | peak RSS MB | blob MB |")
    print("|---|---:|---:|---:|---:|")
    for name, wall, rate, rss, blob in rows:
        rate_s = f"{rate:.0f}" if rate else "-"
        blob_s = f"{blob:.0f}" if blob else "-"
        print(f"| {name} | {wall:.1f} | {rate_s} | {rss} | {blob_s} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
