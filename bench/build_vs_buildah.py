"""kade build vs buildah and BuildKit on one realistic workload, side by side in one run (issue 3,
benchmarks 1-4; issue 20's goals table against BuildKit).

The tools build the same context from the same base image (the busybox base of tests/fixtures/build.py)
and push to the same local registry (Debian's `docker-registry` on a loopback port, storage in a temp dir).

Workload (deterministic per run seed): a ~100 MB asset tree of mixed-size, partly compressible files,
300 Python sources, and a Dockerfile with ENV, WORKDIR, COPY assets, COPY sources, a RUN writing
20,000 small files, CMD.

Scenarios, each timed as build + push (wall seconds and peak RSS via /usr/bin/time -v):
  1. cold:           empty local caches, empty registry repos.
                     buildah: fresh storage, `bud --layers --cache-to <repo>` (its counterpart of kade's
                     step images), then `push`.
  2. nochange-fresh: nothing changed, fresh machine: empty local cache, registry populated.
                     buildah: fresh storage, `bud --layers --cache-from <repo>`, then `push`.
  3. onefile-fresh:  one source file changed, fresh machine.
                     buildah: fresh storage, `--cache-from <repo> --cache-to <repo>`, then `push`.
  4. onefile-warm:   another source file changed, the local cache / storage of the cold build.
                     buildah: `bud --layers` in the cold build's storage, then `push`.
buildah runs with `--format docker --isolation chroot` on its default storage driver, overlay (kernel
overlayfs, as root), and its own --root/--runroot per storage.
BuildKit (buildkitd/buildctl built here by tests/buildkit/build; OCI worker on runc, overlayfs) runs as CI
users run it: `buildctl build --output type=image,push=true --export-cache type=registry,mode=max
--import-cache type=registry` against a cache ref in the same registry, every scenario; a "fresh machine"
is a buildkitd with a fresh state dir (started before the timing: CI starts it before the build too), the
warm scenario reuses the cold build's daemon and state. Peak RSS is the largest resident set of any single process of the command (GNU time
reports the biggest waited-for descendant), the larger of build and push for buildah; for BuildKit the
daemon's high-water mark (VmHWM; cumulative over the scenarios a warm daemon served).
Disk: every tool's state, caches and the registry's storage live on a fresh ext4 with its journal on a
loop device (benchlib.journaled_fs: this VM's own ext4 has no journal, which makes creating files after
any mass delete up to 20x slower for minutes; `--work-fs here` runs in /var/tmp as before).
Fairness: the tools take turns going first in each scenario, and nothing is deleted between timed builds
(a run's trees go at its end, then the disk settles: see `benchlib.settle`), except by buildah itself: it
removes its intermediate containers (`--rm`, its default), the RUN's 20,000 files included, so the disk
settles after every buildah build too. kade's modules are compiled first.

--registry-delay-ms D puts the registry one round trip of 2 x D ms away from every tool (a proxy on
loopback that holds each chunk D ms each way: benchlib.DelayProxy), as a cloud registry is from CI.

Usage: python bench/build_vs_buildah.py [--runs 3] [--results bench/RESULTS.md] [--no-append]
       [--only kade|buildah|buildkit] [--kade-wrap 'py-spy record -o {out} -r 200 --subprocesses --']
       [--scenarios cold,onefile-fresh]   (cold always runs: the others start from what it pushed)
       [--registry-delay-ms 5] [--work-fs journaled|here]
Needs root, buildah, busybox-static, GNU time, docker-registry, runc and Go (as the tests do).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import benchlib  # noqa: E402  (bench/, the script's own folder)
from tests.fixtures.build import base_rootfs_tar, push_image  # noqa: E402
from tests.fixtures.buildkit import BuildKitDaemon, build_buildkit  # noqa: E402
from tests.fixtures.registry import RegistryServer  # noqa: E402

SCENARIOS = ("cold", "nochange-fresh", "onefile-fresh", "onefile-warm")
GOALS = {"cold": (1.0, None), "nochange-fresh": (0.1, 2.0), "onefile-fresh": (0.3, None),
         "onefile-warm": (1.0, None)}
GOAL_TEXT = {"cold": "<= 1.0", "nochange-fresh": "<= 0.1 and kade < 2 s", "onefile-fresh": "<= 0.3",
             "onefile-warm": "<= 1.0"}
BUILDKIT_GOALS = {"cold": 0.8, "nochange-fresh": 0.5, "onefile-fresh": 0.6, "onefile-warm": 1.0}  # issue 20

DOCKERFILE = """\
FROM {base}
ENV APP_HOME=/app PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
COPY assets/ /srv/assets/
COPY src/ /app/src/
RUN mkdir -p /data && cd /data && i=0; while [ $i -lt 20000 ]; do echo "record $i" > f$i; i=$((i+1)); done
CMD ["sh", "-c", "ls /app/src"]
"""
ASSET_BYTES = 100 * 1024 * 1024
TEXT = b"".join(b"asset line %d: the quick brown fox jumps over the lazy dog\n" % i for i in range(4096))


@dataclass
class Sample:
    seconds: float
    rss_mib: float


@dataclass
class Row:
    kade: list[Sample] = field(default_factory=list)
    buildah: list[Sample] = field(default_factory=list)
    buildkit: list[Sample] = field(default_factory=list)


# ---------------------------------------------------------------- workload

def asset_bytes(rng: random.Random, size: int) -> bytes:
    """About half random, half repeated text: compresses to roughly 55-60 % with gzip."""
    out, left = bytearray(), size
    while left > 0:
        n = min(left, rng.randint(4096, 65536))
        if rng.random() < 0.5:
            out += rng.randbytes(n)
        else:
            start = rng.randrange(len(TEXT) - n) if n < len(TEXT) else 0
            out += TEXT[start:start + n]
        left -= n
    return bytes(out[:size])


def make_assets(root: Path, rng: random.Random) -> None:
    total, i = 0, 0
    while total < ASSET_BYTES:
        size = min(int(2 ** rng.uniform(10, 22)), ASSET_BYTES - total)  # 1 KiB .. 4 MiB, log-uniform
        d = root / f"kind{i % 7}" / f"set{(i // 7) % 9}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"asset{i:05d}.{('png', 'json', 'bin', 'txt', 'woff2')[i % 5]}").write_bytes(asset_bytes(rng, size))
        total, i = total + size, i + 1


def make_sources(root: Path, rng: random.Random) -> None:
    for i in range(300):
        pkg = root / "app" / f"pkg{i % 12}" / f"sub{i % 5}"
        pkg.mkdir(parents=True, exist_ok=True)
        funcs = "".join(f"def f{j}_{rng.randrange(10**6)}(x: int) -> int:\n    return x * {j} + {rng.randrange(99)}\n\n"
                        for j in range(rng.randint(10, 80)))
        (pkg / f"module{i:03d}.py").write_text(f'"""Module {i}."""\nimport os\n\n{funcs}')


def make_workload(ctx: Path, base: str, seed: int) -> None:
    rng = random.Random(seed)
    make_assets(ctx / "assets", rng)
    make_sources(ctx / "src", rng)
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(base=base))
    (ctx / ".dockerignore").write_text("**/__pycache__\n")


def change_source(ctx: Path, which: int) -> None:
    path = sorted((ctx / "src").rglob("*.py"))[which]
    path.write_text(path.read_text() + f"\nCHANGED = {which}\n")


# ---------------------------------------------------------------- measuring

def timed(cmd: list[str], log: Path) -> Sample:
    """Run cmd under GNU time; wall seconds by our clock, peak RSS from time's report."""
    tfile = log.with_suffix(".time")
    t = time.monotonic()
    with open(log, "ab") as out:
        proc = subprocess.run(["/usr/bin/time", "-v", "-o", str(tfile), *cmd], stdout=out, stderr=subprocess.STDOUT)
    elapsed = time.monotonic() - t
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {shlex.join(cmd)}\nsee {log}:\n{log.read_text()[-3000:]}")
    rss_kb = 0
    for line in tfile.read_text().splitlines():
        if "Maximum resident set size" in line:
            rss_kb = int(line.rsplit(":", 1)[1])
    return Sample(elapsed, rss_kb / 1024)


def kade(ctx: Path, tag: str, cache: Path, log: Path, wrap: str | None) -> Sample:
    cmd = [sys.executable, "-m", "kade", "build", str(ctx), "--tag", tag, "--cache-dir", str(cache)]
    if wrap:
        cmd = shlex.split(wrap.format(out=str(log.with_suffix(".prof")))) + cmd
    return timed(cmd, log)


def buildah_base(store: Path) -> list[str]:
    return ["buildah", "--root", str(store / "root"), "--runroot", str(store / "run"), "--storage-driver", "overlay"]


def buildah(store: Path, ctx: Path, tag: str, log: Path, cache_from: str | None, cache_to: str | None) -> Sample:
    extra = (["--cache-from", cache_from] if cache_from else []) + (["--cache-to", cache_to] if cache_to else [])
    build = timed([*buildah_base(store), "bud", "--layers", "--format", "docker", "--isolation", "chroot",
                   "--tls-verify=false", *extra, "-t", tag, str(ctx)], log)
    push = timed([*buildah_base(store), "push", "--tls-verify=false", tag], log)
    return Sample(build.seconds + push.seconds, max(build.rss_mib, push.rss_mib))


def buildkit(daemon: BuildKitDaemon, ctx: Path, tag: str, cache_ref: str, log: Path) -> Sample:
    """One CI-style BuildKit build: import and export the registry cache (mode=max), push the image."""
    args = ["build", "--frontend", "dockerfile.v0", "--local", f"context={ctx}", "--local", f"dockerfile={ctx}",
            "--output", f"type=image,name={tag},push=true,registry.insecure=true",
            "--export-cache", f"type=registry,ref={cache_ref},mode=max,registry.insecure=true",
            "--import-cache", f"type=registry,ref={cache_ref},registry.insecure=true"]
    t = time.monotonic()
    out = daemon.buildctl(*args, check=False)
    elapsed = time.monotonic() - t
    with open(log, "a") as f:
        f.write(out.stderr)
    if out.returncode != 0:
        raise SystemExit(f"buildctl failed ({out.returncode}); see {log}:\n{out.stderr[-3000:]}")
    return Sample(elapsed, _vm_hwm_mib(daemon.process.pid))


def _vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def drop_buildah_storage(store: Path) -> None:
    if store.exists():
        subprocess.run([*buildah_base(store), "rm", "--all"], capture_output=True)
        subprocess.run([*buildah_base(store), "rmi", "--all", "--force"], capture_output=True)
        shutil.rmtree(store, ignore_errors=True)


# ---------------------------------------------------------------- one run

def one_run(run: int, work: Path, host: str, base: str, rows: dict[str, Row], loads: list[float],
            only: str | None, wrap: str | None, chosen: tuple[str, ...] = SCENARIOS, bk_bin: Path | None = None) -> None:
    ctx, logs = work / f"ctx{run}", work / "logs"
    logs.mkdir(exist_ok=True)
    make_workload(ctx, base, seed=run)
    k_tag, b_tag, b_cache = f"{host}/bench/kade{run}:v1", f"{host}/bench/buildah{run}:v1", f"{host}/bench/bcache{run}"
    bk_tag, bk_cache = f"{host}/bench/buildkit{run}:v1", f"{host}/bench/bkcache{run}:cache"
    k_warm, b_warm = work / f"kcache{run}-warm", work / f"bstore{run}-warm"
    daemons: dict[str, BuildKitDaemon] = {}

    def daemon(which: str) -> BuildKitDaemon:
        """The warm daemon (the cold build's state), or a fresh one (a new state dir) per fresh scenario."""
        if which not in daemons:
            daemons[which] = BuildKitDaemon(work / f"bkd{run}-{which}", bk_bin, insecure=(host,)).start()
        return daemons[which]

    def step(name: str, k_cache: Path, b_store: Path, b_from: str | None, b_to: str | None, bk: str) -> None:
        if name not in chosen:
            return
        loads.append(os.getloadavg()[0])
        tools = {
            "kade": lambda: rows[name].kade.append(kade(ctx, k_tag, k_cache, logs / f"{name}-{run}-kade.log", wrap)),
            "buildah": lambda: rows[name].buildah.append(
                buildah(b_store, ctx, b_tag, logs / f"{name}-{run}-buildah.log", b_from, b_to)),
            "buildkit": lambda: rows[name].buildkit.append(
                buildkit(daemon(bk), ctx, bk_tag, bk_cache, logs / f"{name}-{run}-buildkit.log")),
        }
        for tool in rotated(list(tools), run + SCENARIOS.index(name)):
            if only in (None, tool):
                tools[tool]()
                if tool == "buildah" and only is None:
                    benchlib.settle()   # buildah removed its intermediate containers (the RUN's 20,000 files)
        print(f"run {run} {name}: kade {_fmt(rows[name].kade[-1:])} buildah {_fmt(rows[name].buildah[-1:])} "
              f"buildkit {_fmt(rows[name].buildkit[-1:])} load {loads[-1]:.1f}", flush=True)

    try:
        step("cold", k_warm, b_warm, None, b_cache, "warm")
        step("nochange-fresh", work / f"kcache{run}-b", work / f"bstore{run}-b", b_cache, None, "b")
        change_source(ctx, 0)
        step("onefile-fresh", work / f"kcache{run}-c", work / f"bstore{run}-c", b_cache, b_cache, "c")
        change_source(ctx, 1)
        step("onefile-warm", k_warm, b_warm, None, None, "warm")
    finally:
        for d in daemons.values():
            d.stop()
        for suffix in ("b", "c", "warm"):
            drop_buildah_storage(work / f"bstore{run}-{suffix}")
            shutil.rmtree(work / f"kcache{run}-{suffix}", ignore_errors=True)
        shutil.rmtree(ctx, ignore_errors=True)
        benchlib.settle()


def rotated(items: list[str], by: int) -> list[str]:
    """Each tool goes first in turn: none always builds right after another one's work."""
    k = by % len(items)
    return items[k:] + items[:k]


def _fmt(samples: list[Sample]) -> str:
    return f"{samples[0].seconds:.2f}s/{samples[0].rss_mib:.0f}MiB" if samples else "-"


# ---------------------------------------------------------------- report

def table(rows: dict[str, Row]) -> list[str]:
    """kade against buildah (issue 3's goals)."""
    lines = ["| scenario | kade s | buildah s | kade/buildah | goal | met | kade peak RSS MiB | buildah peak RSS MiB |"
             " kade runs s | buildah runs s |", "|---|---:|---:|---:|---|---|---:|---:|---|---|"]
    for name, row, km, om in _medians(rows, "buildah"):
        ratio_goal, abs_goal = GOALS[name]
        met = km / om <= ratio_goal and (abs_goal is None or km < abs_goal)
        lines.append(f"| {name} | {km:.2f} | {om:.2f} | {km / om:.3f} | {GOAL_TEXT[name]} | {'yes' if met else 'NO'} "
                     f"| {max(s.rss_mib for s in row.kade):.0f} | {max(s.rss_mib for s in row.buildah):.0f} "
                     f"| {_runs(row.kade)} | {_runs(row.buildah)} |")
    return lines


def buildkit_table(rows: dict[str, Row]) -> list[str]:
    """kade against BuildKit (issue 20's goals)."""
    lines = ["| scenario | kade s | BuildKit s | kade/BuildKit | goal (issue 20) | met | buildkitd VmHWM MiB |"
             " BuildKit runs s |", "|---|---:|---:|---:|---|---|---:|---|"]
    for name, row, km, om in _medians(rows, "buildkit"):
        goal = BUILDKIT_GOALS[name]
        lines.append(f"| {name} | {km:.2f} | {om:.2f} | {km / om:.3f} | <= {goal} | {'yes' if km / om <= goal else 'NO'} "
                     f"| {max(s.rss_mib for s in row.buildkit):.0f} | {_runs(row.buildkit)} |")
    return lines


def _medians(rows: dict[str, Row], other: str):
    """(scenario, row, kade median s, other tool's median s) for the scenarios both tools ran."""
    for name, row in rows.items():
        theirs = getattr(row, other)
        if row.kade and theirs:
            yield name, row, statistics.median(s.seconds for s in row.kade), statistics.median(s.seconds for s in theirs)


def _runs(samples: list[Sample]) -> str:
    return " ".join(f"{s.seconds:.2f}" for s in samples)


def report(rows: dict[str, Row], loads: list[float], args: argparse.Namespace, started: str, bk_version: str) -> str:
    commit = benchlib.commit()
    head = [f"\n## kade build vs buildah and BuildKit (benchmarks 1-4, issue 20) — {started}\n",
            benchlib.machine(loads, _cpu()) + " (at the start of each scenario)",
            f"- command: `python bench/build_vs_buildah.py --runs {args.runs}"
            + (f" --scenarios {args.scenarios}" if args.scenarios != ",".join(SCENARIOS) else "")
            + (f" --registry-delay-ms {args.registry_delay_ms:g}" if args.registry_delay_ms else "")
            + (" --work-fs here" if args.work_fs == "here" else "")
            + f"` (kade commit {commit})",
            "- disk: every tool's state, caches and the registry's storage on "
            + ("the root fs (ext4 without a journal)" if args.work_fs == "here" else
               "a fresh ext4 with a journal on a loop device (benchlib.journaled_fs)"),
            f"- BuildKit {bk_version}: buildkitd (OCI worker, runc {_runc_version()}, overlayfs), `buildctl build "
            "--export-cache type=registry,mode=max --import-cache type=registry --output type=image,push=true`; "
            "fresh machine = a buildkitd on a fresh state dir, started before the timing",
            f"- buildah {_buildah_version()}: `bud --layers --format docker --isolation chroot --storage-driver overlay` "
            "(its default driver), "
            "own --root per storage; registry: Debian docker-registry on loopback (plain HTTP)"
            + (f", reached through a proxy holding every chunk {args.registry_delay_ms:g} ms each way "
               "(benchlib.DelayProxy)" if args.registry_delay_ms else "")
            + "; base: busybox (tests/fixtures/build.py)",
            "- workload: ~100 MiB of mixed-size partly compressible assets, 300 Python sources, ENV, WORKDIR, "
            "COPY assets, COPY src, RUN writing 20,000 small files (after the COPY of sources, so a source change "
            "re-runs it), CMD",
            f"- median of {args.runs} runs, seconds of build + push; peak RSS is the largest over the runs\n"]
    return "\n".join(head + table(rows) + [""] + buildkit_table(rows)) + "\n"


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "?"


def _runc_version() -> str:
    out = subprocess.run(["runc", "--version"], capture_output=True, text=True)
    return out.stdout.split()[2] if out.returncode == 0 else "?"


def _buildah_version() -> str:
    out = subprocess.run(["buildah", "--version"], capture_output=True, text=True)
    return out.stdout.split()[2] if out.returncode == 0 else "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    ap.add_argument("--no-append", action="store_true", help="print the section, don't append it")
    ap.add_argument("--only", choices=("kade", "buildah", "buildkit"), help="run one tool (profiling)")
    ap.add_argument("--kade-wrap", help="prefix kade's command ({out} = a per-step profile path)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, profiles)")
    ap.add_argument("--work-fs", choices=("journaled", "here"), default="journaled",
                    help="journaled: every tool works on a fresh ext4 with a journal on a loop device "
                         "(benchlib.journaled_fs); here: in /var/tmp as it is")
    ap.add_argument("--registry-delay-ms", type=float, default=0.0,
                    help="every tool reaches the registry through a proxy holding each chunk this long each way")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help="comma-separated scenarios to run (cold always runs: the others need what it pushed)")
    args = ap.parse_args()
    chosen = tuple(dict.fromkeys(["cold", *args.scenarios.split(",")]))
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    benchlib.compile_bytecode()   # kade runs from the working directory: as installed, not compiling itself
    bk_bin = build_buildkit()
    bk_version = subprocess.run([str(bk_bin / "buildctl"), "--version"], capture_output=True, text=True).stdout.split()[2]
    with contextlib.ExitStack() as stack:
        where = "/var/tmp" if args.work_fs == "here" else stack.enter_context(benchlib.journaled_fs(keep=args.keep))
        work = Path(tempfile.mkdtemp(prefix="kade-bench-build-", dir=where))
        print(f"work dir {work}", flush=True)
        rows, loads = bench_runs(args, work, chosen, bk_bin)
    text = report(rows, loads, args, started, bk_version)
    print(text)
    if not args.no_append and not args.only:
        with open(args.results, "a") as f:
            f.write(text)


def bench_runs(args: argparse.Namespace, work: Path, chosen: tuple[str, ...], bk_bin: Path):
    """Every run of the chosen scenarios in `work` (a registry of its own); the rows and the loads seen."""
    reg = RegistryServer(workdir=work / "registry").start()
    rows: dict[str, Row] = {name: Row() for name in SCENARIOS}
    loads: list[float] = []
    try:
        host = benchlib.DelayProxy(reg.host, args.registry_delay_ms).host if args.registry_delay_ms else reg.host
        base = push_image(reg.host, "bench/base", "1", base_rootfs_tar()).ref.replace(reg.host, host, 1)
        for run in range(args.runs):
            one_run(run, work, host, base, rows, loads, args.only, args.kade_wrap, chosen, bk_bin)
    finally:
        reg.stop()
        if not args.keep:
            for store in work.glob("bstore*"):
                drop_buildah_storage(store)
            shutil.rmtree(work, ignore_errors=True)
    return rows, loads


if __name__ == "__main__":
    main()
