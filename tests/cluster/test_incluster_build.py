"""`kade build --backend kubernetes` end to end on the real test cluster: stages run as pods of
kade's own builder image (built by kade), push step images to the cluster's registry, and the
result matches the local backend (same keys, same digests) with SOURCE_DATE_EPOCH set."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.fixtures.incluster import (EPOCH, builder_pods, kade_build, list_tags, records, result, stage_keys,
                                     unique, wait_running_pod, write_context)

pytestmark = pytest.mark.cluster

MULTI = """\
FROM {base} AS deps
RUN mkdir -p /opt/deps && echo dep > /opt/deps/a.txt && seq 1 3 > /opt/deps/seq
ARG DEPS_LEVEL=2

FROM {base} AS tool
COPY tool.sh /usr/local/bin/tool
RUN /usr/local/bin/tool > /opt/tool.out && test -c /dev/null

FROM deps
COPY --from=deps /opt/deps /opt/deps
COPY --from=tool /opt/tool.out /srv/tool.out
COPY app/ /srv/app/
RUN cat /srv/app/hello.txt /opt/deps/seq > /srv/joined && ls /srv > /srv/listing
CMD ["cat", "/srv/joined"]
"""


def test_multistage_build_in_pods_matches_local_and_reuses_everything(builder_env, tmp_path):
    ctx = write_context(tmp_path / "ctx", MULTI, builder_env.base_image)
    repo = unique("multi")
    tag = f"{builder_env.registry}/{repo}:v1"
    first = kade_build(builder_env, ctx, tag)
    out = result(first)
    recs = records(first)
    pods = {r["message"].split()[0] for r in recs if r["kind"] == "pod" and "started" in r["message"]}
    assert {"[default/deps]", "[default/tool]", "[default/2]"} <= pods, pods
    assert out["steps"]["built"] == 8, out
    # output streamed from the pods, prefixed with image and stage
    assert any(r["kind"] == "output" and r["message"].startswith("[default/tool]") for r in recs) or \
        "[default/tool]" in first.stderr
    uploads = [r["message"] for r in recs if r["kind"] == "upload"]
    assert uploads and "2 entries" in uploads[0], uploads  # tool.sh, app/hello.txt: not unused.bin

    # the same Dockerfile with the local backend: same step keys, same step image digests (the last
    # stage's pod reads deps back with the history of its trailing ARG, as the local solver has it)
    local_repo = unique("multi-local")
    local = kade_build(builder_env, ctx, f"{builder_env.registry}/{local_repo}:v1", backend="local")
    lout = result(local)
    in_cluster = stage_keys(builder_env.registry, repo + "-stages")
    on_host = stage_keys(builder_env.registry, local_repo + "-stages")
    assert set(in_cluster) == set(on_host) and len(in_cluster) == 8
    assert in_cluster == on_host
    assert lout["images"][0]["digest"] != "" and out["images"][0]["digest"].startswith("sha256:")

    # a second in-cluster build reuses every step: no pod at all
    second = kade_build(builder_env, ctx, tag)
    out2 = result(second)
    assert out2["steps"] == {"built": 0, "cached": 8}
    assert not [r for r in records(second) if r["kind"] in ("pod", "upload")]


SLOW = """\
FROM {base} AS a
RUN sleep 3 && echo a > /a.txt

FROM {base} AS b
RUN sleep 3 && echo b > /b.txt

FROM a
COPY --from=b /b.txt /b.txt
RUN cat /a.txt /b.txt > /ab.txt
"""


def test_two_concurrent_identical_builds_build_each_step_once(builder_env, tmp_path):
    ctx = write_context(tmp_path / "ctx", SLOW, builder_env.base_image)
    repo = unique("concurrent")
    results: dict[str, subprocess.CompletedProcess] = {}

    def go(name: str) -> None:
        results[name] = kade_build(builder_env, ctx, f"{builder_env.registry}/{repo}:{name}")

    threads = [threading.Thread(target=go, args=(n,)) for n in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outs = [result(results[n]) for n in ("one", "two")]
    # 4 steps in all (a: RUN, b: RUN, final: COPY, RUN); between both builds each ran exactly once
    assert sum(o["steps"]["built"] for o in outs) == 4, outs
    assert outs[0]["images"][0]["digest"] == outs[1]["images"][0]["digest"]
    assert len(stage_keys(builder_env.registry, repo + "-stages")) == 4


def _start(builder_env, ctx: Path, tag: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kade", "build", str(ctx), "-t", tag, "--insecure-registry", builder_env.registry,
           "--output", "json", "--backend", "kubernetes", "--namespace", builder_env.namespace,
           "--cache-pvc", builder_env.cache_pvc, "--builder-image", builder_env.image,
           "--kubeconfig", builder_env.kubeconfig, "--lease-seconds", "6", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SOURCE_DATE_EPOCH": EPOCH,
                                 "KADE_CACHE_DIR": str(ctx.parent / "cache")})


def test_a_pod_deleted_mid_build_is_retried(builder_env, tmp_path):
    ctx = write_context(tmp_path / "ctx", "FROM {base}\nRUN sleep 6 && echo done > /done.txt\n",
                        builder_env.base_image)
    proc = _start(builder_env, ctx, f"{builder_env.registry}/{unique('lost')}:v1")
    api, pod = wait_running_pod(builder_env)
    time.sleep(2)  # the step (and its Lease) is under way
    api.delete_namespaced_pod(pod.metadata.name, builder_env.namespace, grace_period_seconds=0)
    stdout, stderr = proc.communicate(timeout=180)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    out = result(done)
    assert out["steps"]["built"] == 1
    kinds = [r["kind"] for r in records(done)]
    assert "retry" in kinds, stderr[-3000:]
    assert pod.metadata.name in stderr


def test_a_failing_run_names_pod_step_exit_code_and_output(builder_env, tmp_path):
    ctx = write_context(tmp_path / "ctx", "FROM {base}\nRUN echo getting ready && echo broken >&2 && exit 7\n",
                        builder_env.base_image)
    done = kade_build(builder_env, ctx, f"{builder_env.registry}/{unique('fail')}:v1")
    assert done.returncode == 1
    err = done.stderr
    assert f"pod {builder_env.namespace}/kade-" in err
    assert "RUN /bin/sh -c echo getting ready" in err and "exit code 7" in err
    assert "broken" in err.split("exit code 7", 1)[1]  # the last output lines follow the message
    time.sleep(1)
    assert not builder_pods(builder_env, "app.kubernetes.io/managed-by=kade")[1] or all(
        p.metadata.deletion_timestamp for p in builder_pods(builder_env)[1])


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_deletes_the_pods_releases_the_lease_and_exits_128_plus_it(builder_env, tmp_path, sig, code):
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    ctx = write_context(tmp_path / "ctx", "FROM {base}\nRUN sleep 60\n", builder_env.base_image)
    tag = f"{builder_env.registry}/{unique('cancel')}:v1"
    proc = _start(builder_env, ctx, tag)
    _, pod = wait_running_pod(builder_env)
    build_id = pod.metadata.labels["kade.io/build"]
    sent = time.monotonic()
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == code, stderr[-3000:]
    assert json.loads(stdout[stdout.index("{\n"):])["kind"] == "interrupted"
    assert "Traceback" not in stderr
    assert took < 10, f"kade took {took:.1f} s to stop"
    # the build Lease is released (deleted) and the pods are deleted by kade itself, not by a later sweep
    leases = client.CoordinationV1Api(config.new_client_from_config(config_file=builder_env.kubeconfig))
    with pytest.raises(ApiException) as gone:
        leases.read_namespaced_lease(f"kade-build-{build_id}", builder_env.namespace)
    assert gone.value.status == 404
    pods = builder_pods(builder_env, f"kade.io/build={build_id}")[1]
    assert all(p.metadata.deletion_timestamp for p in pods), [p.metadata.name for p in pods]
    assert list_tags(builder_env.registry, tag.split("/", 1)[1].rsplit(":", 1)[0]) == []


def test_a_missing_namespace_is_named_at_once(builder_env, tmp_path):
    ctx = write_context(tmp_path / "ctx", "FROM {base}\nRUN true\n", builder_env.base_image)
    missing = f"nowhere-{uuid.uuid4().hex[:6]}"
    done = kade_build(builder_env, ctx, f"{builder_env.registry}/{unique('nons')}:v1", "--namespace", missing,
                      timeout=60)
    assert done.returncode == 1, done.stderr[-3000:]
    assert f"namespace {missing} does not exist" in done.stderr
    assert "another build holds" not in done.stderr and "Traceback" not in done.stderr


def test_pods_of_a_dead_cli_are_garbage_collected(builder_env, tmp_path):
    ctx = write_context(tmp_path / "ctx", "FROM {base}\nRUN sleep 60\n", builder_env.base_image)
    proc = _start(builder_env, ctx, f"{builder_env.registry}/{unique('dead')}:v1")
    _, pod = wait_running_pod(builder_env)
    build_id = pod.metadata.labels["kade.io/build"]
    proc.kill()  # no cleanup at all: the build Lease stops being renewed
    proc.communicate(timeout=30)
    assert builder_pods(builder_env, f"kade.io/build={build_id}")[1]
    time.sleep(7)  # the build Lease (6 s) expires
    other = write_context(tmp_path / "other", "FROM {base}\nRUN echo quick > /q\n", builder_env.base_image)
    done = kade_build(builder_env, other, f"{builder_env.registry}/{unique('sweeper')}:v1")
    result(done)
    assert any(r["kind"] == "cleanup" for r in records(done))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and builder_pods(builder_env, f"kade.io/build={build_id}")[1]:
        time.sleep(0.5)
    assert not builder_pods(builder_env, f"kade.io/build={build_id}")[1]


def test_build_secrets_reach_run_but_never_the_output(builder_env, tmp_path):
    ctx = write_context(tmp_path / "ctx", "FROM {base}\nRUN --mount=type=secret,id=token,required=true "
                        "cat /run/secrets/token && test \"$(wc -c < /run/secrets/token)\" -eq 12 "
                        "&& echo ok > /ok\n", builder_env.base_image)
    (tmp_path / "token").write_text("s3cret-value")
    done = kade_build(builder_env, ctx, f"{builder_env.registry}/{unique('secret')}:v1",
                      "--secret", f"id=token,src={tmp_path / 'token'}")
    out = result(done)
    assert out["steps"]["built"] == 1
    assert "s3cret-value" not in done.stderr + done.stdout
    assert "****" in done.stderr  # the RUN printed it, masked
    time.sleep(1)
    from kubernetes import client, config

    api = client.CoreV1Api(config.new_client_from_config(config_file=builder_env.kubeconfig))
    left = api.list_namespaced_secret(builder_env.namespace, label_selector="app.kubernetes.io/managed-by=kade")
    assert not [s for s in left.items if not s.metadata.deletion_timestamp]
