"""Benchmark: cleanup planning on 10,000 tags and a 2,000-commit git history, then the deletions.

Starts the real docker-registry on loopback, stores 1,000 builds (each: a final image with 3 tags,
6 step images, a build record = 10,000 tags), writes a 2,000-commit history (main, 40 branches,
20 tags) with git fast-import, and measures:
  - planning: reading the registry (tags, HEAD per tag, records), walking git, making the plan;
  - execution: deletions per second with the default policy (most builds are old).

Run from the repository root: `.venv/bin/python bench/cleanup_plan.py [--append bench/RESULTS.md]`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registry import mediatypes as mt  # noqa: E402
from registry.cleanup.execute import execute  # noqa: E402
from registry.cleanup.plan import make_plan  # noqa: E402
from registry.cleanup.policy import DEFAULT_POLICY  # noqa: E402
from registry.cleanup.run import collect_facts  # noqa: E402
from registry.client import RegistryClient  # noqa: E402
from registry.digest import sha256_digest  # noqa: E402
from registry.model import Descriptor, Manifest  # noqa: E402
from registry.records import BuildRecord, RecordImage, record_manifest  # noqa: E402
from tests.fixtures.cleanup import GitHistory  # noqa: E402
from tests.fixtures.registry import RegistryServer  # noqa: E402

COMMITS, BRANCHES, TAGS, BUILD_EVERY = 2000, 40, 20, 2
STEPS_PER_BUILD, TAGS_PER_IMAGE = 6, 3


def make_history(path: Path, now: int) -> tuple[GitHistory, list[str]]:
    """main: 1,600 commits over ~200 days; 40 branches of 10 commits; 20 tags on main."""
    h = GitHistory(path)
    main_len = COMMITS - BRANCHES * 10
    span = 200 * 86400
    names = []
    prev = None
    for i in range(main_len):
        t = now - span + i * (span // main_len)
        prev = h.commit(f"m{i}", "main", t, (prev,) if prev else ())
        names.append(prev)
    for b in range(BRANCHES):
        base = f"m{(b + 1) * (main_len // (BRANCHES + 1))}"
        prev = base
        for j in range(10):
            t = now - span + (b + 1) * (span // (BRANCHES + 1)) + (j + 1) * 3600
            if b >= BRANCHES - 3:
                t = now - 86400 * 2 + j * 60  # a few branches active recently
            prev = h.commit(f"b{b}-{j}", f"feature-{b}", t, (prev,))
            names.append(prev)
    for k in range(TAGS):
        h.tag(f"v{k}", f"m{(k + 1) * (main_len // (TAGS + 1))}")
    return h.write(), names


class Storage:
    """Writes distribution's filesystem layout directly (what the registry itself writes on push):
    blobs/sha256/<2>/<hex>/data, repositories/<name>/_layers, _manifests/revisions and tags. Pushing
    10,000 manifests through HTTP on a loaded 2-core box takes longer than the whole measurement, and
    the pushing is not what this benchmark measures; the registry then serves this state as usual."""

    def __init__(self, root: Path) -> None:
        self.v2 = root / "docker" / "registry" / "v2"

    def _link(self, path: Path, digest: str) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "link").write_text(digest)

    def blob(self, repo: str, data: bytes, layer_link: bool = True) -> str:
        digest = sha256_digest(data)
        hexd = digest.split(":", 1)[1]
        d = self.v2 / "blobs" / "sha256" / hexd[:2] / hexd
        if not d.exists():
            d.mkdir(parents=True, exist_ok=True)
            (d / "data").write_bytes(data)
        if layer_link:
            self._link(self.v2 / "repositories" / repo / "_layers" / "sha256" / hexd, digest)
        return digest

    def manifest(self, repo: str, body: bytes, tags: list[str]) -> str:
        digest = self.blob(repo, body, layer_link=False)
        hexd = digest.split(":", 1)[1]
        m = self.v2 / "repositories" / repo / "_manifests"
        self._link(m / "revisions" / "sha256" / hexd, digest)
        for tag in tags:
            self._link(m / "tags" / tag / "current", digest)
            self._link(m / "tags" / tag / "index" / "sha256" / hexd, digest)
        return digest


def populate(storage: Storage, host: str, repo_path: str, commits: list[str], now: datetime,
             history: GitHistory) -> int:
    stages_path = repo_path + "-stages"
    repo_name = f"{host}/{repo_path}"
    blob = b"kade bench layer"
    config = json.dumps({"architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
                         "rootfs": {"type": "layers", "diff_ids": [sha256_digest(blob)]}}).encode()
    for r in (repo_path, stages_path):
        storage.blob(r, blob)
        storage.blob(r, config)
    storage.blob(stages_path, mt.OCI_EMPTY_BYTES)

    def manifest(label: str) -> bytes:
        return Manifest(config=Descriptor(mt.OCI_CONFIG, sha256_digest(config), len(config)),
                        layers=[Descriptor(mt.OCI_LAYER_GZIP, sha256_digest(blob), len(blob))],
                        annotations={"bench": label}).to_bytes()

    builds = commits[::BUILD_EVERY]
    count = 0
    for i, name in enumerate(builds):
        sha = history.sha[name]
        steps = [f"{i * STEPS_PER_BUILD + s:064x}" for s in range(STEPS_PER_BUILD)]
        for key in steps:
            storage.manifest(stages_path, manifest(key), [key])
        tags = [sha, f"{sha[:12]}-a", f"{sha[:12]}-b"][:TAGS_PER_IMAGE]
        digest = storage.manifest(repo_path, manifest(sha), tags)
        created = now - timedelta(days=200) + timedelta(seconds=i * 200 * 86400 // len(builds))
        if name.startswith("b") and int(name[1:].split("-")[0]) >= BRANCHES - 3:
            created = now - timedelta(days=1)
        record = BuildRecord(sha, None, created, (RecordImage("default", repo_name, tuple(tags), digest,
                                                              tuple(steps)),))
        rconfig, rmanifest = record_manifest(record)
        storage.blob(stages_path, rconfig)
        storage.manifest(stages_path, rmanifest, [record.tag])
        count += len(steps) + len(tags) + 1
    return count


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--append", help="append the figures to this RESULTS.md")
    ap.add_argument("--plan-only", action="store_true", help="measure planning only, delete nothing")
    ap.add_argument("--workers", type=int, default=8, help="parallel registry requests while planning")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kade-bench-cleanup-"))
    server = RegistryServer(work / "registry").start()
    try:
        now = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        history, commits = make_history(work / "git", int(now.timestamp()))
        client = RegistryClient()
        repo_name = f"{server.host}/bench/app"
        pushed = populate(Storage(server.storage), server.host, "bench/app", commits, now, history)
        setup = time.perf_counter() - t0
        print(f"setup: {pushed} tags, {len(commits)} commits in {setup:.1f}s", flush=True)

        load0 = os.getloadavg()[0]
        cpu0 = _cpu_seconds()
        t0 = time.perf_counter()
        facts = collect_facts(client, repo_name + "-stages", git=str(history.path), kube_contexts=None, now=now,
                              workers=args.workers,
                              report=lambda kind, msg, **kw: print(f"  {time.perf_counter() - t0:6.2f}s {msg}"))
        t_facts = time.perf_counter() - t0
        t1 = time.perf_counter()
        plan = make_plan(facts, DEFAULT_POLICY)
        t_plan = time.perf_counter() - t1
        planning = time.perf_counter() - t0
        s = plan.summary()
        cpu_planning = _cpu_seconds() - cpu0
        print(f"planning: kade's own CPU {cpu_planning:.1f}s")
        print(f"planning: {planning:.2f}s (registry+git {t_facts:.2f}s, plan {t_plan:.2f}s): "
              f"keep {s['keep']}, delete {s['delete']}", flush=True)

        if args.plan_only:
            return 0
        t0 = time.perf_counter()
        marks: list[tuple[float, int]] = []
        outcomes = execute(client, plan, progress=lambda done, total: marks.append((time.perf_counter(), done)))
        t_exec = time.perf_counter() - t0
        first, last = _rate(marks, t0, 0, 1000), _rate(marks, t0, len(plan.deletions) - 1000, len(plan.deletions))
        print(f"  first 1000 deletions: {first:.0f}/s, last 1000: {last:.0f}/s")
        deleted = sum(1 for o in outcomes if o.status == "deleted")
        failed = [o for o in outcomes if o.status != "deleted"]
        rate = deleted / t_exec if t_exec else 0.0
        print(f"execute: {deleted} tags deleted in {t_exec:.1f}s = {rate:.0f} tags/s; not deleted: {len(failed)}")
        if failed:
            print("  e.g.", failed[0])
        if args.append:
            line = (f"\n## cleanup planning ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)\n\n"
                    f"- machine: {os.cpu_count()} cores ({_cpu()}), {platform.python_implementation()} "
                    f"{platform.python_version()}, docker-registry (distribution 2.8, filesystem storage) on loopback\n"
                    f"- command: `.venv/bin/python bench/cleanup_plan.py --append bench/RESULTS.md`\n"
                    f"- input: {pushed} tags ({len(commits[::BUILD_EVERY])} builds x ({TAGS_PER_IMAGE} image tags + "
                    f"{STEPS_PER_BUILD} step images + 1 record)), {len(commits)} commits, {BRANCHES + 1} branches, "
                    f"{TAGS} git tags; default policy\n"
                    f"- planning (goal <= 30 s): **{planning:.1f} s** (registry reads + git walk {t_facts:.1f} s, "
                    f"plan {t_plan:.2f} s; kade's own CPU {cpu_planning:.1f} s: the rest is the registry answering "
                    f"~{(pushed + 1000) / t_facts:.0f} requests/s); plan: keep {s['keep']}, delete {s['delete']}; "
                    f"load average at the start {load0:.1f} (the machine is shared)\n"
                    f"- deleting: **{rate:.0f} tags/s** ({deleted} tags in {t_exec:.1f} s; digests whose every tag "
                    f"goes are deleted by digest, 4 workers); {first:.0f}/s for the first 1,000 and {last:.0f}/s "
                    f"for the last 1,000: distribution 2.8 looks up every tag of the repository on each "
                    f"delete by digest, so a delete costs O(tags in the repository)\n")
            with open(args.append, "a", encoding="utf-8") as f:
                f.write(line)
        return 0
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def _cpu_seconds() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _rate(marks: list[tuple[float, int]], t0: float, lo: int, hi: int) -> float:
    """Deletions per second between the progress marks that cross `lo` and `hi` done."""
    start = max(((t, d) for t, d in marks if d <= lo), default=(t0, 0))
    end = min(((t, d) for t, d in marks if d >= hi), default=marks[-1] if marks else (t0, 0))
    return (end[1] - start[1]) / (end[0] - start[0]) if end[0] > start[0] else 0.0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


if __name__ == "__main__":
    sys.exit(main())
