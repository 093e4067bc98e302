"""kade's builder image under the exact security context of a builder pod (capabilities dropped
to the chroot set, no privilege escalation, RuntimeDefault-like seccomp), run by podman with runc
instead of the kubelet: every stage runs through `kade build-stage` in the image, and the result
equals the local backend's bit for bit. Uses the test cluster's registry (and its Debian base)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.backends.kubernetes import parse_pod_line
from builder.backends.podspec import KubeSettings, stage_pod
from builder.backends.remote import RemoteExecutor
from builder.build import Build, build
from builder.options import BuildOptions
from tests.cluster.test_incluster_build import MULTI
from tests.fixtures.incluster import stage_keys, unique, write_context

pytestmark = [pytest.mark.cluster,
              pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")]


class PodmanStages:
    """A StageRunner: each stage in the builder image under podman, with a builder pod's security context."""

    def __init__(self, options: BuildOptions, report, *, image: str, registry: str, pvc: Path):
        self.image, self.registry, self.pvc = image, registry, pvc
        self.records: list[dict] = []
        self.build = Build(options, report, executor=lambda env: RemoteExecutor(env, self))

    def run(self, ps, plan_digest: str) -> int:
        env = self.build.env
        m = stage_pod(KubeSettings(image=self.image), build_id="podman", owner=None, image_name="default",
                      stage=ps.label, plan_digest=plan_digest, stages_repo=env.stages_repo,
                      insecure=(self.registry,), epoch=env.epoch)
        c = m["spec"]["containers"][0]
        sc = c["securityContext"]
        caps = [a for cap in sc["capabilities"]["add"] for a in ("--cap-add", cap)]
        env = [a for e in c["env"] if "value" in e for a in ("-e", f"{e['name']}={e['value']}")]
        cmd = ["podman", "run", "--rm", "--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit",
               "nproc=1024:1024", "--network", "host", "--tls-verify=false", "--cap-drop", "ALL", *caps,
               "--security-opt", "no-new-privileges", "-v", f"{self.pvc}:/cache", "--tmpfs", "/work:exec,dev,suid",
               *env, self.image, *c["args"]]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        recs = [r for r in map(parse_pod_line, done.stdout.splitlines()) if r]
        self.records += recs
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return next(r["built"] for r in recs if r["kind"] == "stage-result")


def test_builder_image_under_the_pod_security_context_matches_local(kube_cluster, builder_image, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    ctx = write_context(tmp_path / "ctx", MULTI, kube_cluster.base_image)
    reg = kube_cluster.registry
    pvc = tmp_path / "pvc"
    pvc.mkdir()
    remote_repo, local_repo = unique("podman"), unique("podman-local")
    remote = PodmanStages(BuildOptions(context=ctx, tags=[f"{reg}/{remote_repo}:1"], insecure=(reg,),
                                       cache_dir=str(tmp_path / "cli")), lambda *a, **k: None,
                          image=builder_image, registry=reg, pvc=pvc)
    r = remote.build.run()
    lr = build(BuildOptions(context=ctx, tags=[f"{reg}/{local_repo}:1"], insecure=(reg,),
                            cache_dir=str(tmp_path / "local")), lambda *a, **k: None)
    assert r.built == lr.built == 8
    assert r.images[0]["digest"] == lr.images[0]["digest"]
    assert stage_keys(reg, remote_repo + "-stages") == stage_keys(reg, local_repo + "-stages")
    assert any(rec["kind"] == "step" and "RUN" in rec["message"] for rec in remote.records)
    assert os.listdir(pvc / "blobs" / "sha256")  # the shared cache was used


