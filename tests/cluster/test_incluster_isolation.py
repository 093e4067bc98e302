"""What builder pods share and what a RUN step in them can't reach, on the real test cluster:
unpacked layers are kept on the cache PVC for later pods, and root in a RUN can't chroot back out of
its rootfs to the pod's credentials, token and cache."""
from __future__ import annotations

import pytest

from tests.cluster.test_incluster_build import kade_build, records, result, unique, write_context
from tests.fixtures.incluster import PV_ROOT, builder_namespace

pytestmark = pytest.mark.cluster

CHAIN = """\
FROM {base} AS first
RUN echo one > /one.txt

FROM {base}
COPY --from=first /one.txt /srv/one.txt
RUN cat /srv/one.txt > /srv/copy.txt
"""


def unpack_records(recs: list[dict], stage: str) -> list[dict]:
    return [r for r in recs if r["kind"] == "unpack" and r["message"].startswith(f"[default/{stage}]")]


def test_later_pods_copy_unpacked_layers_from_the_cache_pvc(kube_cluster, builder_image, tmp_path):
    with builder_namespace(kube_cluster, builder_image) as env:  # its own, empty cache PVC
        ctx = write_context(tmp_path / "ctx", CHAIN, env.base_image)
        done = kade_build(env, ctx, f"{env.registry}/{unique('shared')}:v1")
        result(done)
        recs = records(done)
        first = unpack_records(recs, "first")
        final = unpack_records(recs, "1")
        # the first pod found an empty PVC: it unpacked the base layer and kept the tree there ...
        assert [(r["reused"], r["unpacked"]) for r in first] == [(0, 1)], first
        kept = [p.name for p in (PV_ROOT / env_pv(env)).joinpath("rootfs").iterdir() if p.name.startswith("sha256-")]
        assert len(kept) == 1, kept
        # ... the next pod copied it: the base as its own parent, and under the first stage's image
        assert sorted((r["reused"], r["unpacked"]) for r in final) == [(1, 0), (1, 1)], final


def env_pv(env) -> str:
    """The host folder of the builder namespace's cache PV (a static local PV per namespace)."""
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(config_file=env.kubeconfig))
    pvc = api.read_namespaced_persistent_volume_claim(env.cache_pvc, env.namespace)
    return pvc.spec.volume_name


ESCAPE = r"""FROM {base}
RUN perl -e 'mkdir "/esc"; if (!chroot("/esc")) {{ print "BLOCKED: $!\n"; exit 0 }} chdir ".." for 1..64; chroot "."; print((-e "/var/run/secrets/kubernetes.io/serviceaccount/token") ? "ESCAPED\n" : "STILL-INSIDE\n")' && rmdir /esc
"""


def test_root_in_a_run_step_cannot_chroot_out_of_the_rootfs(builder_env, tmp_path):
    ctx = write_context(tmp_path / "ctx", ESCAPE, builder_env.base_image)
    done = kade_build(builder_env, ctx, f"{builder_env.registry}/{unique('escape')}:v1")
    result(done)
    said = [r["message"].split("] ", 1)[-1].strip() for r in records(done) if r["kind"] == "output"]
    assert "BLOCKED: Operation not permitted" in said, done.stderr[-3000:]
    assert "ESCAPED" not in said and "STILL-INSIDE" not in said
