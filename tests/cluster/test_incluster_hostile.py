"""The builder issue's hostile inputs, end to end through builder pods (`kade build --backend
kubernetes` on the real test cluster): hostile base layers, hostile local archives for ADD, context
symlinks pointing out of the context, `--secret` values and malformed base images.

Escape attempts all aim at the pod's /cache, the cache PVC, whose PV is a directory on this host
(`builder_env.cache_dir`) holding a `victim` file: after each build nothing named `pwned*` may exist
there outside the unpacked rootfs trees the pods keep under tenants/<tenant>/trees/, and the victim is
unchanged.
A refused input fails the build (exit 1) with the layer (or archive) and entry named, and pushes no
final tag and no build record. Entries that are legitimately kept inside the rootfs (symlinks, even
absolute ones or ones to `/`; devices, as the pod runs as root) are checked in the built image.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import secrets
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config

from tests.fixtures.build import BaseImage, base_rootfs_tar, push_layers
from tests.fixtures.cluster import state_dir
from tests.fixtures.incluster import (PodLogs, get_blob, get_manifest, kade_build, layer_members, list_tags,
                                      pushed_blobs, records, result, stage_keys, unique)
from tests.fixtures.layers import E, make_tar

pytestmark = pytest.mark.cluster

MARK = b"kade-hostile-escape-marker"
PRECIOUS = b"precious, on the cache PVC"
UNPACK_BUDGET = 64 << 30  # builder/unpack.py Limits.max_bytes, what pods use


@pytest.fixture(scope="module")
def busybox_tar_bytes() -> bytes:
    return base_rootfs_tar()


@pytest.fixture(scope="module")
def busybox_image(builder_env, busybox_tar_bytes) -> BaseImage:
    """A runnable one-layer base (busybox-static) in the cluster's registry."""
    return push_layers(builder_env.registry, "incluster/hostile-busybox", "1", [busybox_tar_bytes])


@pytest.fixture(scope="module")
def victim(builder_env) -> Path:
    """A file on the cache PVC (the pods' /cache/victim), the target of every escape attempt."""
    assert builder_env.cache_dir is not None
    path = builder_env.cache_dir / "victim"
    path.write_bytes(PRECIOUS)
    return path


def inside_an_image_tree(rel: Path) -> bool:
    """Whether a path of the PVC is image content: in a tenant's (or the shared) trees, an unpacked
    stack the chroot-mode pods keep (trees/stacks/<ChainID>/...) or a layer dir of the layer store
    (trees/layers/<ChainID>/fs/...)."""
    parts = rel.parts
    trees = parts[2:] if parts[:1] == ("tenants",) else parts[1:] if parts[:1] == ("shared",) else ()
    if trees[:1] != ("trees",) or len(trees) < 3:
        return False
    return trees[1] == "stacks" or (trees[1] == "layers" and len(trees) > 3 and trees[3] == "fs")


def assert_nothing_escaped(env, victim: Path) -> None:
    pv = env.cache_dir
    leaked = [str(p.relative_to(pv)) for p in pv.rglob("pwned*") if not inside_an_image_tree(p.relative_to(pv))]
    assert leaked == [], f"written outside the rootfs, onto the cache PVC: {leaked}"
    assert victim.read_bytes() == PRECIOUS and victim.stat().st_nlink == 1


def assert_nothing_published(env, repo: str) -> None:
    assert list_tags(env.registry, repo) == []
    assert not [t for t in list_tags(env.registry, repo + "-stages") if t.startswith("build-")]


def error_text(proc: subprocess.CompletedProcess) -> str:
    """The CLI's error message: stderr without the JSON progress records."""
    return "\n".join(line for line in proc.stderr.splitlines() if not line.startswith("{"))


def output_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """What RUN printed in the pod, as the CLI streamed it (without the [image/stage] prefix)."""
    return [r["message"].split("] ", 1)[1] for r in records(proc) if r["kind"] == "output" and "] " in r["message"]]


def hostile_image(env, busybox: bytes, name: str, *layers: list[E], diff_ids: list[str] | None = None) -> BaseImage:
    return push_layers(env.registry, unique(f"hostile-base-{name}"), "1", [busybox] + [make_tar(x) for x in layers],
                       diff_ids=diff_ids)


def context(tmp: Path, dockerfile: str, files: dict[str, bytes] | None = None) -> Path:
    ctx = tmp / "ctx"
    ctx.mkdir(parents=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, data in (files or {}).items():
        (ctx / name).write_bytes(data)
    return ctx


# -- refused inputs: one build (one pod) each ---------------------------------------------------

UP = "../" * 12  # far more than the rootfs' depth in the pod (/work/rootfs/stage-*/rootfs)


@dataclass(frozen=True)
class Refused:
    id: str
    entries: list[E]
    expect: list[str]  # fragments of the error (besides the layer or archive name)
    add: bool = False  # a local archive for ADD instead of a base layer
    environ: dict[str, str] = field(default_factory=dict)  # of the CLI, which passes $KADE_LAYER_MAX_* on to pods
    zeros_after: int = 0  # bytes of zeros after the end of the archive

    def tar(self) -> bytes:
        return make_tar(self.entries) + b"\0" * self.zeros_after


SMALL_BUDGET = {"KADE_LAYER_MAX_BYTES": str(8 << 20)}


REFUSED = [
    Refused("dotdot", [E(UP + "cache/pwned-dotdot", data=MARK)], ["pwned-dotdot", "has a '..' component"]),
    Refused("absolute", [E("/cache/pwned-absolute", data=MARK)], ["'/cache/pwned-absolute'", "has an absolute name"]),
    Refused("hardlink-absolute", [E("h", "hardlink", link="/cache/victim")],
            ["entry 'h'", "is a hard link to a name with an absolute name"]),
    Refused("hardlink-dotdot", [E("h", "hardlink", link=UP + "cache/victim")],
            ["entry 'h'", "is a hard link to a name with a '..' component"]),
    # the symlink resolves inside the rootfs (to its own /cache), where no victim exists
    Refused("hardlink-via-symlinked-parent", [E("s", "symlink", link="/cache"), E("h", "hardlink", link="s/victim")],
            ["hard link 'h' -> 's/victim'", "the target does not exist in the rootfs"]),
    # a tiny layer that declares a file larger than the unpack budget: refused before writing
    Refused("declared-size-bomb", [E("pwned-bomb", data=b"", size=UNPACK_BUDGET + 1)],
            ["'pwned-bomb'", f"declares {UNPACK_BUDGET + 1} bytes", f"over the {UNPACK_BUDGET}-byte budget"]),
    # 2 MiB of PAX metadata that gzip shrinks to a few KiB
    Refused("pax-header-bomb", [E("pwned-pax", data=MARK, xattrs={"user.bomb": b"a" * (2 << 20)})],
            ["over the 1048576-byte limit"]),
    # compression bombs under a lowered budget: 16 MiB of zeros that gzip shrinks to ~16 KiB, in files
    # or after the end of the archive, and 5,000 entries
    Refused("zeros-bomb", [E(f"pwned-zeros-{i:02}", data=bytes(1 << 20)) for i in range(16)],
            ["'pwned-zeros-0", "over the 8388608-byte budget"], environ=SMALL_BUDGET),
    Refused("trailing-zeros-bomb", [E("pwned-small", data=MARK)], ["expands to more than 8388608 bytes"],
            environ=SMALL_BUDGET, zeros_after=16 << 20),
    Refused("entry-count-bomb", [E(f"pwned-many/{i}") for i in range(5000)], ["has more than 1000 entries"],
            environ={"KADE_LAYER_MAX_ENTRIES": "1000"}),
    # ADD's names are taken as BuildKit's untar takes them, inside the destination (the kept test below);
    # a hard link to a name that isn't there is refused as BuildKit refuses it
    Refused("add-hardlink-absolute", [E("h", "hardlink", link="/cache/victim")],
            ["hard link 'h' -> '/cache/victim'", "the target does not exist"], add=True),
]


@dataclass
class Run:
    done: subprocess.CompletedProcess
    repo: str
    named: str  # how the error must name the input: the layer digest or the ADD archive


def run_refused(case: Refused, env, busybox: bytes, busybox_image: BaseImage, tmp: Path) -> Run:
    repo = unique(f"refused-{case.id}")
    if case.add:
        ctx = context(tmp, f"FROM {busybox_image.ref}\nADD evil.tar /dst/\nRUN echo unreachable\n",
                      {"evil.tar": case.tar()})
        named = "layer ADD evil.tar:"
    else:
        base = push_layers(env.registry, unique(f"hostile-base-{case.id}"), "1", [busybox, case.tar()])
        ctx = context(tmp, f"FROM {base.ref}\nRUN echo unreachable\n")
        named = f"layer {base.layer_digest}"
    return Run(kade_build(env, ctx, f"{env.registry}/{repo}:v1", environ=case.environ), repo, named)


@pytest.fixture(scope="module")
def refused_runs(builder_env, busybox_tar_bytes, busybox_image, victim, tmp_path_factory) -> dict[str, Run]:
    """Every REFUSED case built at once, four at a time (each its own build, pod and repositories, so
    each error stays its own; escape attempts carry the case's name)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {c.id: pool.submit(run_refused, c, builder_env, busybox_tar_bytes, busybox_image,
                                     tmp_path_factory.mktemp(c.id)) for c in REFUSED}
        return {cid: f.result() for cid, f in futures.items()}


@pytest.mark.parametrize("case", REFUSED, ids=[c.id for c in REFUSED])
def test_hostile_input_is_refused_in_the_pod(case, refused_runs, builder_env, victim):
    run = refused_runs[case.id]
    done, err = run.done, error_text(run.done)
    assert done.returncode == 1, done.stderr[-3000:]
    assert err.count("Dockerfile:") == (1 if case.add else 0)  # the position once, not repeated by the pod
    assert [r for r in records(done) if r["kind"] == "pod" and "started" in r["message"]], "no pod ran"
    assert f"pod {builder_env.namespace}/kade-" in err and run.named in err, err[-3000:]
    for fragment in case.expect:
        assert fragment in err, (fragment, err[-3000:])
    assert "unreachable" not in output_lines(done)  # the RUN after the refused input never ran
    assert "Traceback" not in err
    assert_nothing_escaped(builder_env, victim)
    assert_nothing_published(builder_env, run.repo)


# -- kept inside the rootfs: one base image with every legitimate oddity ---------------------------

LOWER = [E("data", "dir"), E("data/old", data=b"old"), E("data/sub", "dir"), E("data/sub/deep", data=b"deep"),
         E("etc/gone", data=b"gone")]
KEPT = [
    E("cache-link", "symlink", link="/cache"), E("cache-link/pwned-through-link", data=MARK),
    E("root-link", "symlink", link="/"), E("root-link/cache/pwned-via-root", data=MARK),
    E("up", "symlink", link=UP.rstrip("/")), E("up/cache/pwned-via-up", data=MARK),
    E("work-link", "symlink", link="/work"), E("work-link/pwned-via-work", data=MARK),  # the pod's emptyDir
    E("victim-link", "symlink", link="/cache/victim"), E("victim-link", data=b"replaced, not written through"),
    E("abs-link", "symlink", link="/cache/victim"),
    E("hard-to-link", "hardlink", link="abs-link"),
    E("dev", "dir"), E("dev/kade-mem", "char", dev=(1, 1), mode=0o600),
    E("dev/kade-sda", "block", dev=(8, 0), mode=0o600),
    E("dev/kade-fuse", "char", dev=(10, 229), mode=0o600),  # root opens it without any capability
    E("data", "dir"), E("data/new", data=b"new"), E("data/.wh..wh..opq"),  # opaque after a sibling
    E("etc/.wh.gone"),
    E("owned", data=b"o", uid=1234, gid=5678, mode=0o4750),
]
INSPECT = r"""RUN for f in /cache/pwned-through-link /cache/pwned-via-root /cache/pwned-via-up \
      /work/pwned-via-work /victim-link; \
      do echo "FILE $f $(cat $f)"; done; \
    echo "LINK /abs-link $(readlink /abs-link)"; echo "LINK /hard-to-link $(readlink /hard-to-link)"; \
    cat /abs-link >/dev/null 2>&1 && echo "ABS followed" || echo "ABS dangling inside the rootfs"; \
    echo "DATA $(ls -A /data | tr '\n' ' ')"; \
    test -e /etc/gone && echo "GONE no" || echo "GONE yes"; \
    stat -c 'STAT %n %F %t:%T' /dev/kade-mem /dev/kade-sda; stat -c 'STAT %n %u:%g %a' /owned; \
    (: < /dev/kade-fuse) 2>/dev/null && echo "FUSE opened" || echo "FUSE refused"
"""


def test_symlinks_devices_and_whiteouts_of_a_base_stay_inside_the_rootfs(builder_env, busybox_tar_bytes, victim,
                                                                       tmp_path):
    base = hostile_image(builder_env, busybox_tar_bytes, "kept", LOWER, KEPT)
    ctx = context(tmp_path, f"FROM {base.ref}\n{INSPECT}")
    # the chroot mode, whose RUN sees the image's own /dev (a user-namespace pod can't make device nodes,
    # and its RUN gets a /dev of its own)
    done = kade_build(builder_env, ctx, f"{builder_env.registry}/{unique('kept')}:v1", "--no-user-namespaces")
    result(done)
    lines = output_lines(done)
    for name in ("pwned-through-link", "pwned-via-root", "pwned-via-up"):  # landed in the rootfs' own /cache
        assert f"FILE /cache/{name} {MARK.decode()}" in lines, lines
    # in the rootfs' own /work: written through to the pod's /work (the emptyDir holding the rootfs), the
    # file would be missing here
    assert f"FILE /work/pwned-via-work {MARK.decode()}" in lines
    assert "FILE /victim-link replaced, not written through" in lines
    assert "LINK /abs-link /cache/victim" in lines and "LINK /hard-to-link /cache/victim" in lines
    assert "ABS dangling inside the rootfs" in lines  # resolved in the chroot, not on the pod's /cache
    assert "DATA new " in lines and "GONE yes" in lines  # opaque whiteout and whiteout honoured
    # device nodes are created: the pod runs as root with CAP_MKNOD, as a local build as root would
    assert "STAT /dev/kade-mem character special file 1:1" in lines
    assert "STAT /dev/kade-sda block special file 8:0" in lines
    assert "STAT /owned 1234:5678 4750" in lines
    assert "FUSE refused" in lines  # a node the image brings can't be opened in the pod (root on the host can)
    assert_nothing_escaped(builder_env, victim)
    # the (chroot-mode) pod kept the unpacked base on the PVC (tenants/<tenant>/trees/stacks/<ChainID>/): the
    # same tree, confined too
    kept = list((builder_env.cache_dir / "tenants").glob("*/trees/stacks/*/cache/pwned-through-link"))
    assert len(kept) == 1 and kept[0].read_bytes() == MARK
    dev = os.lstat(kept[0].parents[1] / "dev" / "kade-sda")  # its device nodes too (docs/incluster.md)
    assert stat.S_ISBLK(dev.st_mode) and (os.major(dev.st_rdev), os.minor(dev.st_rdev)) == (8, 0)


def test_add_of_a_local_archive_keeps_owners_and_symlinks_inside_the_target(builder_env, busybox_image, victim,
                                                                            tmp_path):
    archive = make_tar([E("app", "dir"), E("app/owned", data=b"o", uid=1234, gid=5678, mode=0o640),
                        E("app/abs-link", "symlink", link="/etc/passwd"),
                        E("escape-link", "symlink", link="/"), E("escape-link/cache/pwned-add-link", data=MARK),
                        # names as BuildKit's untar takes them: under the destination, `..` stopping there
                        E(UP + "cache/pwned-add-dotdot", data=MARK), E("/cache/pwned-add-absolute", data=MARK),
                        E("hl-absolute", "hardlink", link="/app/owned", uid=1234, gid=5678, mode=0o640),
                        E("hl-dotdot", "hardlink", link=UP + "app/owned", uid=1234, gid=5678, mode=0o640)])
    ctx = context(tmp_path, f"FROM {busybox_image.ref}\nADD app.tar /dst/\n"
                            "RUN echo \"LINK $(readlink /dst/app/abs-link)\"; cat /dst/cache/pwned-add-link; echo\n",
                  {"app.tar": archive})
    repo = unique("add-ok")
    done = kade_build(builder_env, ctx, f"{builder_env.registry}/{repo}:v1")
    out = result(done)
    lines = output_lines(done)
    assert "LINK /etc/passwd" in lines and MARK.decode() in lines, lines
    manifest = get_manifest(builder_env.registry, repo, "v1")
    add_layer = layer_members(builder_env.registry, repo, manifest["layers"][-1]["digest"])
    owned = add_layer["dst/app/owned"]
    assert (owned.uid, owned.gid, owned.mode & 0o7777) == (1234, 5678, 0o640)
    assert add_layer["dst/app/abs-link"].issym() and add_layer["dst/app/abs-link"].linkname == "/etc/passwd"
    assert add_layer["dst/escape-link"].linkname == "/"
    assert "dst/cache/pwned-add-link" in add_layer  # the symlink to / resolved to the ADD target
    assert {"dst/cache/pwned-add-dotdot", "dst/cache/pwned-add-absolute"} <= set(add_layer)
    assert [(add_layer[n].islnk(), add_layer[n].linkname) for n in ("dst/hl-absolute", "dst/hl-dotdot")] == \
        [(True, "dst/app/owned")] * 2
    assert out["steps"]["built"] == 2
    assert_nothing_escaped(builder_env, victim)


# -- COPY of context symlinks pointing out of the context -------------------------------------------

def test_copy_of_context_symlinks_leaks_no_host_file(builder_env, busybox_image, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    leak = b"host-only-" + secrets.token_hex(16).encode()
    (outside / "secret.txt").write_bytes(leak)
    ctx = context(tmp_path, f"FROM {busybox_image.ref}\nCOPY dir/ /dst/\n"
                            "RUN for f in leak leakdir rel-leak leakdir/secret.txt; do "
                            "echo \"LINK $f $(readlink /dst/$f)\"; cat /dst/$f 2>/dev/null || echo \"UNREADABLE $f\"; "
                            "done\n")
    (ctx / "dir").mkdir()
    (ctx / "dir" / "ok.txt").write_text("ok\n")
    (ctx / "dir" / "leak").symlink_to(outside / "secret.txt")
    (ctx / "dir" / "leakdir").symlink_to(outside)
    (ctx / "dir" / "rel-leak").symlink_to("../../outside/secret.txt")
    repo = unique("copy-links")
    with PodLogs(builder_env.kubeconfig, builder_env.namespace) as pods:
        done = kade_build(builder_env, ctx, f"{builder_env.registry}/{repo}:v1")
    result(done)
    lines = output_lines(done)
    for name in ("leak", "leakdir", "rel-leak", "leakdir/secret.txt"):
        assert f"UNREADABLE {name}" in lines, lines
    assert f"LINK leak {outside / 'secret.txt'}" in lines  # copied as a link, never as the host's file
    assert leak.decode() not in done.stdout + done.stderr
    assert pods.logs and all(leak.decode() not in log for log in pods.logs.values())
    extra = _plan_and_context(builder_env, repo, pods)
    blobs = pushed_blobs(builder_env.registry, repo + "-stages", extra) | pushed_blobs(builder_env.registry, repo)
    assert len(blobs) >= 6
    assert [d for d, data in blobs.items() if leak in data] == []

    # a top-level source that is a symlink out of the context: refused while planning, no pod
    (ctx / "leak-top").symlink_to(outside / "secret.txt")
    (ctx / "Dockerfile").write_text(f"FROM {busybox_image.ref}\nCOPY leak-top /x\n")
    refused = kade_build(builder_env, ctx, f"{builder_env.registry}/{repo}:v2")
    assert refused.returncode == 1
    assert "'leak-top' points outside the build context" in refused.stderr
    assert not [r for r in records(refused) if r["kind"] in ("pod", "upload")]


def _plan_and_context(env, repo: str, pods: PodLogs) -> tuple[str, ...]:
    """The digests of the blobs no manifest names: the stage plans the pods ran and their context uploads."""
    out = []
    for plan in pods.plan_digests():
        out.append(plan)
        ctx = json.loads(get_blob(env.registry, repo + "-stages", plan)).get("context")
        if ctx:
            out.append(ctx)
    assert out, "no pod ran"
    return tuple(out)


# -- --secret through pods ----------------------------------------------------------------------------

def test_secret_is_in_no_blob_log_or_step_key(builder_env, busybox_image, tmp_path):
    value = "kade-secret-" + secrets.token_hex(12)
    (tmp_path / "tok").write_text(value)
    ctx = context(tmp_path, f"FROM {busybox_image.ref}\n"
                            "RUN --mount=type=secret,id=tok,required=true cat /run/secrets/tok; echo; "
                            "cp /run/secrets/tok /tmp/copy && rm /tmp/copy && echo ok > /ok\n", {"app.txt": b"app\n"})
    repo = unique("secret")
    with PodLogs(builder_env.kubeconfig, builder_env.namespace) as pods:
        done = kade_build(builder_env, ctx, f"{builder_env.registry}/{repo}:v1", "--secret",
                          f"id=tok,src={tmp_path / 'tok'}")
    assert result(done)["steps"]["built"] == 1
    assert value not in done.stdout + done.stderr and "****" in done.stderr
    assert pods.logs and all(value not in log for log in pods.logs.values())
    assert any("****" in log for log in pods.logs.values())  # the pod's own log, read through the API
    assert pods.specs and all(value not in spec for spec in pods.specs.values())  # handed over a port-forward
    assert all("--secrets-relay" in spec for spec in pods.specs.values())
    core = client.CoreV1Api(config.new_client_from_config(config_file=builder_env.kubeconfig))
    stored = core.list_namespaced_secret(builder_env.namespace).items   # nothing in etcd holds it
    assert not [s.metadata.name for s in stored if base64.b64encode(value.encode()).decode() in str(s.data)]
    blobs = pushed_blobs(builder_env.registry, repo + "-stages", _plan_and_context(builder_env, repo, pods)) | \
        pushed_blobs(builder_env.registry, repo)
    assert len(blobs) >= 5
    assert [d for d, data in blobs.items() if value.encode() in data] == []
    keys = stage_keys(builder_env.registry, repo + "-stages")
    assert len(keys) == 1 and not [k for k in keys if value in k]
    # the step key does not depend on the secret's value: another value finds every step cached
    (tmp_path / "tok").write_text("another-" + value)
    again = kade_build(builder_env, ctx, f"{builder_env.registry}/{repo}:v2", "--secret",
                       f"id=tok,src={tmp_path / 'tok'}")
    assert result(again)["steps"] == {"built": 0, "cached": 1}
    assert stage_keys(builder_env.registry, repo + "-stages") == keys


# -- malformed base images ------------------------------------------------------------------------------

def _registry_blob_file(digest: str) -> Path:
    conf = yaml.safe_load((state_dir() / "registry.yml").read_text())
    root = Path(conf["storage"]["filesystem"]["rootdirectory"])
    hexdigest = digest.split(":", 1)[1]
    return root / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexdigest[:2] / hexdigest / "data"


MALFORMED = ["fewer-diff-ids", "wrong-diff-id", "layer-bytes-not-its-digest"]


@pytest.mark.parametrize("kind", MALFORMED)
def test_malformed_base_image_fails_clearly_and_publishes_nothing(kind, builder_env, busybox_tar_bytes, tmp_path):
    extra = [E("payload", data=uuid.uuid4().bytes)]  # unique: this layer's blob exists only for this test
    busybox_diff = "sha256:" + hashlib.sha256(busybox_tar_bytes).hexdigest()
    diff_ids = {"fewer-diff-ids": [busybox_diff], "wrong-diff-id": [busybox_diff, "sha256:" + "0" * 64]}.get(kind)
    base = hostile_image(builder_env, busybox_tar_bytes, kind, extra, diff_ids=diff_ids)
    if kind == "layer-bytes-not-its-digest":
        # storage corruption on the real registry: it serves other bytes (same length) under the digest
        blob = _registry_blob_file(base.layer_digest)
        data = blob.read_bytes()
        blob.write_bytes(bytes(b ^ 0xFF for b in data[:64]) + data[64:])
    ctx = context(tmp_path, f"FROM {base.ref}\nRUN echo unreachable\n")
    repo = unique(f"malformed-{kind}")
    done = kade_build(builder_env, ctx, f"{builder_env.registry}/{repo}:v1")
    err = error_text(done)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in err
    expect = {"fewer-diff-ids": ["has 2 layers but 1 diff_ids in its config"],
              "wrong-diff-id": [f"layer {base.layer_digest}", "the image config says sha256:" + "0" * 64],
              "layer-bytes-not-its-digest": [base.layer_digest]}[kind]
    for fragment in expect:
        assert fragment in err, (fragment, err[-3000:])
    assert_nothing_published(builder_env, repo)
