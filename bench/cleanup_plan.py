"""Benchmark: cleanup planning on 10,000 tags, a 2,000-commit git history, 50 releases x 10 revisions
and 3 cluster reports, then the deletions.

Starts the real docker-registry on loopback, stores 1,000 builds (each: a final image with 3 tags,
6 step images, a build record = 10,000 tags), writes a 2,000-commit history (main, 40 branches,
20 tags) with git fast-import; in a namespace of the test cluster (tests/cluster/up) writes 50
releases of 10 revisions each (25 kade release records through deployer.release, 25 Helm release
Secrets in Helm's format), each revision a Deployment naming one built image; publishes 3 cluster
reports (each: 100 images in use, 50 x 10 release revisions, all among the newest 500 builds) to the
stages repository: about half the builds are old and unused, as a nightly cleanup finds them. Measures:
  - planning: scanning the namespace (workloads, kade and Helm releases), reading the registry (tags,
    HEAD per tag, records, cluster reports), walking git, making the plan;
  - execution: deletions per second with the default policy (most builds are old).

Run from the repository root: `.venv/bin/python bench/cleanup_plan.py [--append bench/RESULTS.md]`
(`--no-cluster` leaves the releases out).
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
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registry import mediatypes as mt  # noqa: E402
from kade.cleanup_facts import kade_releases  # noqa: E402
from registry.cleanup.clusters import make_report, publish_report  # noqa: E402
from registry.cleanup.execute import execute  # noqa: E402
from registry.cleanup.inuse import InUse  # noqa: E402
from registry.cleanup.policy import DEFAULT_POLICY  # noqa: E402
from registry.cleanup.releases import ReleaseRevision  # noqa: E402
from registry.cleanup.run import ClusterOptions, collect_facts, plan_cleanup  # noqa: E402
from registry.client import RegistryClient  # noqa: E402
from registry.digest import sha256_digest  # noqa: E402
from registry.model import Descriptor, Manifest  # noqa: E402
from registry.records import BuildRecord, RecordImage, record_manifest  # noqa: E402
from tests.fixtures.cleanup import GitHistory, helm_objects, helm_release  # noqa: E402
from tests.fixtures.registry import RegistryServer  # noqa: E402

COMMITS, BRANCHES, TAGS, BUILD_EVERY = 2000, 40, 20, 2
STEPS_PER_BUILD, TAGS_PER_IMAGE = 6, 3
RELEASES, REVISIONS, REPORTS, REPORT_IN_USE = 50, 10, 3, 100
KUBECONFIG = "/var/lib/kade-cluster/admin.kubeconfig"


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
             history: GitHistory, images: list[str]) -> int:
    """Write the builds; `images` gets each build's first tag (as `host/repo:tag`), oldest first."""
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
    images.clear()
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
        images.append(f"{repo_name}:{tags[0]}")
    return count


def deployment(image: str) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"template": {"spec": {"containers": [{"name": "web", "image": image}],
                                           "initContainers": [{"name": "init", "image": image}]}}}}


def write_releases(kubeconfig: str, images: list[str], now: datetime) -> tuple[str, Callable[[], None]]:
    """RELEASES x REVISIONS release revisions in a new namespace (half kade, half Helm); revision r of
    release k names the image of build k * REVISIONS + r among the newest builds. Returns the namespace
    and a function that deletes it."""
    import secrets as random_names

    import yaml
    from kubernetes import client, config

    from deployer.release import ReleaseRecord, record_secrets

    api = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
    ns = f"kade-bench-{random_names.token_hex(4)}"
    api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    newest = images[-RELEASES * REVISIONS:]
    for k in range(RELEASES):
        for r in range(1, REVISIONS + 1):
            image = newest[k * REVISIONS + r - 1]
            name = f"rel{k}"
            if k % 2:
                payload = helm_release(name, ns, r, yaml.safe_dump(deployment(image)), [], "superseded")
                api.create_namespaced_secret(ns, helm_objects(ns, name, r, payload, "secret"))
            else:
                record = ReleaseRecord(name, ns, r, "superseded", [deployment(image)],
                                       created=(now - timedelta(hours=REVISIONS - r)).isoformat())
                for secret in record_secrets(record):
                    api.create_namespaced_secret(ns, secret)
    return ns, lambda: api.delete_namespace(ns, propagation_policy="Background")


def publish_reports(stages, images: list[str], now: datetime, repo_path: str) -> None:
    """REPORTS other clusters, each using REPORT_IN_USE of the newest images and with RELEASES x
    REVISIONS revisions (of the newest images too, as a nightly cleanup sees them: old builds unused)."""
    newest = images[-RELEASES * REVISIONS:]
    for c in range(REPORTS):
        in_use = InUse()
        for i, image in enumerate(newest[c * REPORT_IN_USE:(c + 1) * REPORT_IN_USE]):
            in_use.add(image, f"ctx/shop/Deployment/web-{i}")
        releases = [ReleaseRevision("ctx", "helm", "shop", f"rel{k}", r, now, (newest[(k * REVISIONS + r) % len(newest)],))
                    for k in range(RELEASES) for r in range(1, REVISIONS + 1)]
        publish_report(stages, make_report(f"bench-{c}", now, in_use, releases, [], ["shop"], {repo_path}, set(),
                                           label="ctx"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--append", help="append the figures to this RESULTS.md")
    ap.add_argument("--plan-only", action="store_true", help="measure planning only, delete nothing")
    ap.add_argument("--workers", type=int, default=8, help="parallel registry requests while planning")
    ap.add_argument("--kubeconfig", default=KUBECONFIG, help="the test cluster, for the release histories")
    ap.add_argument("--no-cluster", action="store_true", help="leave the releases out (no test cluster)")
    args = ap.parse_args()
    drop_namespace: Callable[[], None] = lambda: None  # noqa: E731
    work = Path(tempfile.mkdtemp(prefix="kade-bench-cleanup-"))
    server = RegistryServer(work / "registry").start()
    try:
        now = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        history, commits = make_history(work / "git", int(now.timestamp()))
        client = RegistryClient()
        repo_name = f"{server.host}/bench/app"
        images: list[str] = []
        pushed = populate(Storage(server.storage), server.host, "bench/app", commits, now, history, images)
        publish_reports(client.repository(repo_name + "-stages"), images, now, "bench/app")
        clusters = ClusterOptions(None)
        if not args.no_cluster:
            ns, drop_namespace = write_releases(args.kubeconfig, images, now)
            clusters = ClusterOptions([None], args.kubeconfig, (ns,), (kade_releases,), "bench-local")
        setup = time.perf_counter() - t0
        print(f"setup: {pushed} tags, {len(commits)} commits, {REPORTS} cluster reports"
              + ("" if args.no_cluster else f", {RELEASES} x {REVISIONS} release revisions in {ns}")
              + f" in {setup:.1f}s", flush=True)

        load0 = os.getloadavg()[0]
        cpu0 = _cpu_seconds()
        t0 = time.perf_counter()
        def progress(kind: str, msg: str, **kw: object) -> None:
            print(f"  {time.perf_counter() - t0:6.2f}s {msg}")

        facts = collect_facts(client, repo_name + "-stages", repos=(repo_name,), git=str(history.path), now=now,
                              workers=args.workers, clusters=clusters, report=progress)
        t_facts = time.perf_counter() - t0
        t1 = time.perf_counter()
        plan = plan_cleanup(client, facts, DEFAULT_POLICY, workers=args.workers, report=progress)
        t_plan = time.perf_counter() - t1
        planning = time.perf_counter() - t0
        s = plan.summary()
        cpu_planning = _cpu_seconds() - cpu0
        print(f"planning: kade's own CPU {cpu_planning:.1f}s")
        print(f"planning: {planning:.2f}s (cluster+registry+git {t_facts:.2f}s, plan {t_plan:.2f}s): "
              f"keep {s['keep']}, delete {s['delete']}; {len(facts.releases)} release revisions, "
              f"{len(plan.clusters)} cluster reports, blockers: {len(plan.blockers)}", flush=True)
        assert len(facts.releases) == (0 if args.no_cluster else RELEASES * REVISIONS) and not plan.blockers
        assert len(plan.clusters) == REPORTS and all(i.digest for i in plan.deletions)
        unread = sum(1 for i in plan.items if i.digest is None)
        print(f"planning: {unread} stage tags kept by name without reading their digest")

        lines = [
            f"\n## cleanup planning ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, commit {_commit()})\n",
            f"- machine: {os.cpu_count()} cores ({_cpu()}), {platform.python_implementation()} "
            f"{platform.python_version()}, docker-registry (distribution 2.8, filesystem storage) on loopback"
            + ("" if args.no_cluster else ", the test cluster's API server (tests/cluster/up)"),
            f"- command: `.venv/bin/python bench/cleanup_plan.py {' '.join(sys.argv[1:])}`",
            f"- input: {pushed} tags ({len(commits[::BUILD_EVERY])} builds x ({TAGS_PER_IMAGE} image tags + "
            f"{STEPS_PER_BUILD} step images + 1 record)), {len(commits)} commits, {BRANCHES + 1} branches, "
            f"{TAGS} git tags, " + ("no releases" if args.no_cluster else
                                    f"{RELEASES} releases x {REVISIONS} revisions (half kade, half Helm Secrets)")
            + f", {REPORTS} cluster reports; default policy",
            f"- planning (goal < 30 s): **{planning:.1f} s** (cluster scan + registry reads + git walk {t_facts:.1f} s, "
            f"plan with the digests of its deletions {t_plan:.2f} s; {unread} step images kept by name cost "
            f"no request; kade's own CPU {cpu_planning:.1f} s); plan: keep {s['keep']}, delete "
            f"{s['delete']}; load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
            "(the machine is shared)",
        ]
        if not args.plan_only:
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
            lines.append(f"- deleting: **{rate:.0f} tags/s** ({deleted} tags in {t_exec:.1f} s; digests whose every "
                         f"tag goes are deleted by digest, 4 workers); {first:.0f}/s for the first 1,000 and {last:.0f}/s "
                         "for the last 1,000")
        if args.append:
            with open(args.append, "a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
        return 0
    finally:
        drop_namespace()
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


def _commit() -> str:
    import subprocess

    done = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


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
