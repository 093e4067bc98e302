"""The pod half of in-cluster builds, run on this host against the real registry: the CLI half
(the remote executor: plan, lookup, upload) hands each stage to `build_stage` (what `kade
build-stage` runs in a pod, with the chroot RUN runner) in a separate work dir and cache, as a pod
would. The result must equal the local backend's: same step keys, same step image digests."""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from builder.backends import context_upload, plancodec
from builder.backends.podstage import StageTask, build_stage
from builder.backends.remote import RemoteExecutor
from builder.build import Build
from builder.options import BuildOptions
from builder.errors import BuildError, StepFailedError
from registry import mediatypes as mt
from registry.client import RegistryClient

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the chroot runner needs root (CAP_SYS_CHROOT)")

DOCKERFILE = """\
FROM {base} AS deps
RUN mkdir -p /opt/deps && echo dep > /opt/deps/a.txt && seq 1 3 > /opt/deps/seq
ARG DEPS_LEVEL=2

FROM {base} AS tool
COPY tool.sh /usr/local/bin/tool
RUN mkdir -p /opt && /usr/local/bin/tool > /opt/tool.out && echo quiet > /dev/null

FROM deps AS final
COPY --from=tool /opt/tool.out /srv/tool.out
COPY app/ /srv/app/
RUN --mount=type=cache,target=/tmp/cache echo cached >> /tmp/cache/x && cp /tmp/cache/x /srv/from-cache
USER app
RUN id -u > /home/app/who
"""


class InProcessStages:
    """A StageRunner: each remote stage runs `build_stage` here, in its own work dir and cache (like its
    own pod)."""

    def __init__(self, options: BuildOptions, report, pods_root: Path):
        self.report, self.pods_root = report, pods_root
        self.build = Build(options, report, executor=lambda env: RemoteExecutor(env, self))
        self.ran: list[str] = []
        self.plan = None

    def run(self, job, plan_digest: str) -> int:
        self.ran.append(job.stage.label)
        work = self.pods_root / f"pod-{job.stage.label}"
        result = build_stage(StageTask(plan_digest, job.stage.label, self.build.env.stages_repo, work=work,
                                       cache_dir=str(self.pods_root / "pvc")), self.report)
        return result["built"]

    def build_all(self):
        with self.build.session():
            self.plan = self.build.prepare()
            return self.build.publish(self.plan, self.build.solve(self.plan))


def local_build(options: BuildOptions, report):
    """(result, plan) of a local build."""
    b = Build(options, report)
    with b.session():
        plan = b.prepare()
        return b.publish(plan, b.solve(plan)), plan


def context(tmp: Path, base: str) -> Path:
    ctx = tmp / "ctx"
    (ctx / "app").mkdir(parents=True)
    (ctx / "Dockerfile").write_text(DOCKERFILE.format(base=base))
    (ctx / "tool.sh").write_text("#!/bin/sh\necho tool-ran\n")
    (ctx / "tool.sh").chmod(0o750)
    (ctx / "app" / "hello.txt").write_text("hello\n")
    (ctx / "big-unused.bin").write_bytes(b"x" * 100_000)
    return ctx


def step_digests(registry: str, repo: str, keys: list[str]) -> dict[str, str]:
    with RegistryClient() as client:
        r = client.repository(f"{registry}/{repo}")
        return {k: r.head_manifest(k, mt.OCI_MANIFEST).digest for k in keys}


@pytest.fixture
def epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")


def test_stages_built_by_the_pod_code_equal_the_local_backend(registry, base_image, tmp_path, epoch):
    ctx = context(tmp_path, base_image.ref)
    events: list[tuple[str, str]] = []
    report = lambda kind, message, **_: events.append((kind, message))  # noqa: E731
    local_result, local_plan = local_build(BuildOptions(context=ctx, tags=[f"{registry.host}/par/local:1"],
                                                        cache_dir=str(tmp_path / "local-cache")), report)
    remote = InProcessStages(BuildOptions(context=ctx, tags=[f"{registry.host}/par/remote:1"],
                                          cache_dir=str(tmp_path / "cli-cache")), report, pods_root=tmp_path / "pods")
    try:
        remote_result = remote.build_all()
    except Exception:
        print(*events, sep="\n")   # what each "pod" did (warnings, discarded layer dirs): shown with the failure
        raise
    assert sorted(remote.ran) == ["deps", "final", "tool"]
    assert remote_result.built == local_result.built == 8
    keys = [s.key for s in remote.plan.all_steps()]
    assert keys == [s.key for s in local_plan.all_steps()]
    # (the final stage's pod reads deps back with the history of deps' trailing ARG, as the local solver has it)
    stored = [s.key for s in remote.plan.stored_steps()]   # all but USER app, a config-only step in between
    assert len(stored) == len(keys) - 1
    assert step_digests(registry.host, "par/remote-stages", stored) == step_digests(registry.host, "par/local-stages",
                                                                                     stored)
    # the final images differ only by their created time: same layers
    assert remote_result.images[0]["digest"] == local_result.images[0]["digest"]
    uploads = sorted(m for k, m in events if k == "upload")
    # one blob per COPY source: tool.sh, app/ (app/hello.txt); never big-unused.bin
    assert len(uploads) == 2 and all("1 entries" in u for u in uploads), uploads

    again = InProcessStages(BuildOptions(context=ctx, tags=[f"{registry.host}/par/remote:2"],
                                         cache_dir=str(tmp_path / "cli-cache")), report, pods_root=tmp_path / "pods2")
    assert again.build_all().built == 0 and again.ran == []

    # one source changed: only its blob goes up again; the pod gets both and builds the same way
    events.clear()
    (ctx / "app" / "hello.txt").write_text("hello again\n")
    third = InProcessStages(BuildOptions(context=ctx, tags=[f"{registry.host}/par/remote:3"],
                                         cache_dir=str(tmp_path / "cli-cache")), report, pods_root=tmp_path / "pods3")
    assert third.build_all().built == 4 and third.ran == ["final"]   # COPY app/ and the three steps after it
    uploads = [m for k, m in events if k == "upload"]
    assert len(uploads) == 1 and "1 entries" in uploads[0], uploads


def test_add_url_reaches_the_pod_as_a_blob_of_the_bytes_the_cli_checked(registry, base_image, tmp_path, epoch):
    """The pod has no other copy of an `ADD <url>` download (its own cache, maybe no internet): the CLI
    uploads the file it checked and keyed, the pod fetches it by digest (verified)."""
    import hashlib
    import http.server
    import threading
    from functools import partial

    served = tmp_path / "www"
    served.mkdir()
    (served / "tool.txt").write_text("downloaded\n")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(http.server.SimpleHTTPRequestHandler,
                                                                       directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    digest = "sha256:" + hashlib.sha256(b"downloaded\n").hexdigest()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base_image.ref}\nADD --checksum={digest} "
                                    f"http://127.0.0.1:{server.server_port}/tool.txt /opt/\nRUN cat /opt/tool.txt\n")
    try:
        b = InProcessStages(BuildOptions(context=ctx, tags=[f"{registry.host}/url/x:1"], cache_dir=str(tmp_path / "c")),
                            lambda *a, **k: None, pods_root=tmp_path / "pods")
        with b.build.session():
            plan = b.build.prepare()
            (served / "tool.txt").write_text("changed after the CLI planned\n")   # the pod never asks the server
            assert b.build.publish(plan, b.build.solve(plan)).built == 2
    finally:
        server.shutdown()
    from tests.fixtures.canary import image_files

    files = image_files(registry.url, "url/x", "1")
    assert files["opt/tool.txt"][1] == b"downloaded\n" and files["opt/tool.txt"][0].mode & 0o777 == 0o600
    assert list((tmp_path / "pods" / "pvc" / "tenants").glob(f"*/downloads/{digest[7:]}/tool.txt"))


def test_a_failing_run_in_the_pod_names_step_and_exit_code(registry, base_image, tmp_path, epoch):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base_image.ref}\nRUN echo about to fail && exit 7\n")
    b = InProcessStages(BuildOptions(context=ctx, tags=[f"{registry.host}/fail/x:1"], cache_dir=str(tmp_path / "c")),
                        lambda *a, **k: None, pods_root=tmp_path / "pods")
    with pytest.raises(StepFailedError) as info:
        b.build_all()
    assert info.value.exit_code == 7
    assert "about to fail" in info.value.output_tail
    assert "exit 7" in str(info.value)


def test_stage_plan_documents_round_trip_and_reject_foreign_input(registry, base_image, tmp_path, epoch):
    ctx = context(tmp_path, base_image.ref)
    b = Build(BuildOptions(context=ctx, tags=[f"{registry.host}/rt/x:1"], cache_dir=str(tmp_path / "c")),
              lambda *a, **k: None)
    plan = b.prepare()
    body = plancodec.dump_stages(plan.order(), ctx.resolve(), {"context": None})
    stages, extra = plancodec.load_stages(body, tmp_path / "elsewhere")
    assert [s.label for s in stages] == list(plan.stages)
    assert [st.key for s in stages for st in s.steps] == [st.key for st in plan.all_steps()]
    copy = next(st for s in stages for st in s.steps if st.copy and st.copy.sources)
    assert str(copy.copy.sources[0].path).startswith(str(tmp_path / "elsewhere"))
    assert extra == {"context": None}
    hostile = body.replace(b'{"ctx":"tool.sh"}', b'{"ctx":"../../etc/shadow"}')
    assert hostile != body
    with pytest.raises(BuildError, match="leaves the context"):
        plancodec.load_stages(hostile, tmp_path)
    with pytest.raises(BuildError, match="format"):
        plancodec.load_stages(b'{"format": "x", "stages": []}', tmp_path)


def test_context_upload_keeps_modes_and_refuses_escapes(tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "d").mkdir(parents=True)
    (ctx / "d" / "x.sh").write_text("x")
    (ctx / "d" / "x.sh").chmod(0o4750)
    (ctx / "d" / "link").symlink_to("x.sh")
    tar, digest, size = context_upload.pack(ctx, ["d/link", "d/x.sh"], tmp_path)
    tar2, digest2, _ = context_upload.pack(ctx, ["d/x.sh", "d/link"], tmp_path)
    assert digest == digest2 and size == tar.stat().st_size  # deterministic whatever the order
    out = tmp_path / "out"
    context_upload.unpack(tar, out)
    assert (out / "d" / "x.sh").stat().st_mode & 0o7777 == 0o4750
    assert os.readlink(out / "d" / "link") == "x.sh"
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tf:
        info = tarfile.TarInfo("../escape")
        info.size = 0
        tf.addfile(info)
    with pytest.raises(BuildError):
        context_upload.unpack(evil, tmp_path / "out2")
    assert not (tmp_path / "escape").exists()


def test_context_uploads_are_checked_together(tmp_path):
    """One tar per source: a symlink in one must not carry another's file out of the context dir."""
    link_tar, file_tar = tmp_path / "link.tar", tmp_path / "file.tar"
    with tarfile.open(link_tar, "w") as tf:
        link = tarfile.TarInfo("a")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path / "outside")
        tf.addfile(link)
    with tarfile.open(file_tar, "w") as tf:
        f = tarfile.TarInfo("a/owned")
        f.size = 0
        tf.addfile(f)
    (tmp_path / "outside").mkdir()
    with pytest.raises(BuildError, match="through a symlink"):
        context_upload.unpack([link_tar, file_tar], tmp_path / "out")
    assert not (tmp_path / "outside" / "owned").exists()


def test_context_upload_refuses_writing_through_its_own_symlink(tmp_path):
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tf:
        link = tarfile.TarInfo("a")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path / "outside")
        tf.addfile(link)
        f = tarfile.TarInfo("a/owned")
        f.size = 0
        tf.addfile(f)
    (tmp_path / "outside").mkdir()
    with pytest.raises(BuildError, match="through a symlink"):
        context_upload.unpack(evil, tmp_path / "out")
    assert not (tmp_path / "outside" / "owned").exists()
