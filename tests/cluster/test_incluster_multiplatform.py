"""In-cluster multi-platform builds on the test cluster (one amd64 node): an arm64 stage's pod asks for
a kubernetes.io/arch=arm64 node, so without one the build stops with an error naming the architecture;
with --allow-emulation the pod runs on the amd64 node and its RUN runs under the node's qemu-user-static."""
from __future__ import annotations

import json

import pytest

from tests.fixtures.incluster import PodLogs, image_file, kade_build, records, result, unique, write_context
from tests.fixtures.multiplatform import push_multi_base

pytestmark = pytest.mark.cluster

DOCKERFILE = """\
FROM {base}
RUN uname -m > /built-arch
"""


@pytest.fixture(scope="module")
def cluster_multi_base(builder_env, busybox_tar, arm64_layer):
    return push_multi_base(builder_env.registry, unique("multi-base"), busybox_tar, arm64_layer)


def test_an_arm64_stage_needs_an_arm64_node_or_emulation(builder_env, cluster_multi_base, tmp_path):
    ctx = write_context(tmp_path / "ctx", DOCKERFILE, cluster_multi_base.ref)
    repo = unique("multi-arm")
    tag = f"{builder_env.registry}/{repo}:v1"
    refused = kade_build(builder_env, ctx, tag, "--platform", "linux/arm64")
    assert refused.returncode == 1, refused.stderr[-3000:]
    message = json.loads(refused.stdout[refused.stdout.index("{"):])["error"]
    assert "is for linux/arm64, and no node is kubernetes.io/arch=arm64 (the nodes are: amd64)" in message
    assert "--allow-emulation" in message

    with PodLogs(builder_env.kubeconfig, builder_env.namespace) as pods:
        built = kade_build(builder_env, ctx, tag, "--platform", "linux/arm64", "--allow-emulation")
    out = result(built)
    assert len(pods.specs) == 1, pods.specs
    spec = next(iter(pods.specs.values()))
    assert "node_selector={'kubernetes.io/arch': 'amd64'}" in spec and "KADE_NODE_EMULATION" in spec
    warnings = [r["message"] for r in records(built) if r["kind"] == "warning"]
    assert any("no linux/arm64 node: its RUN steps run under emulation on a amd64 node" in w for w in warnings), warnings
    assert image_file(builder_env.registry, repo, "v1", "built-arch") == b"aarch64\n"
    assert out["steps"]["built"] == 1
