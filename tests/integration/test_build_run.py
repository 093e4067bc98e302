"""RUN steps end to end: sandbox, snapshot, layers, users, cache mounts, secrets, heredocs, failures."""

import pytest

from common.fsutil import remove_tree
from registry.client import RegistryClient
from tests.fixtures.build import podman_run, skopeo_inspect
from tests.fixtures.build import push_layers
from tests.fixtures.canary import image_files
from tests.fixtures.layers import E, make_tar

RUN_DOCKERFILE = """\
ARG BASE
FROM ${BASE} AS tools
RUN mkdir -p /opt/tools && echo tool > /opt/tools/t.txt && chmod 4755 /opt/tools/t.txt
FROM ${BASE} AS app
ARG GREETING=hello
ENV APP=/app
WORKDIR $APP
COPY src/ ./
RUN echo "$GREETING from $(id -u):$(id -g) in $(pwd)" > greeting.txt && rm -f /etc/group-
RUN rm /bin/vi && mkdir -p /var/empty/dir && ln -s greeting.txt /app/link
COPY --from=tools /opt/tools /opt/tools
USER app
RUN id -u > /tmp/whoami && echo $HOME > /tmp/home
RUN <<EOT
set -e
echo heredoc-script > /tmp/heredoc.txt
EOT
RUN <<EOT
#!/bin/sh
echo shebang-$0 > /tmp/shebang.txt
EOT
CMD ["cat", "/app/greeting.txt"]
"""


@pytest.fixture
def run_project(tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "src").mkdir(parents=True)
    (ctx / "src" / "main.sh").write_text("echo main\n")
    (ctx / "Dockerfile").write_text(RUN_DOCKERFILE)
    return ctx


def test_run_build_runs_rebuilds_and_inspects(registry, base_image, run_project, kade_build, tmp_path):
    tag = f"{registry.host}/run/app:v1"
    args = [str(run_project), "--build-arg", f"BASE={base_image.ref}", "--tag", tag, "--output", "json"]
    steps = kade_build(*args, "--cache-dir", str(tmp_path / "c1")).ok()["steps"]
    total = steps["built"]
    assert steps == {"built": total, "cached": 0} and total == 12

    out = podman_run(tag)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello from 0:0 in /app\n"
    out = podman_run(tag, "sh", "-c", "cat /tmp/whoami /tmp/home /tmp/heredoc.txt /tmp/shebang.txt; "
                                      "ls -l /opt/tools/t.txt; ls /bin/vi; readlink /app/link; ls -d /var/empty/dir")
    lines = out.stdout.splitlines()
    assert lines[:4] == ["1000", "/home/app", "heredoc-script", "shebang-/run/kade-heredoc"]
    assert lines[4].startswith("-rwsr-xr-x")
    assert "No such file" in out.stderr  # /bin/vi was deleted: a whiteout in the layer
    assert lines[5:] == ["greeting.txt", "/var/empty/dir"]
    cfg = skopeo_inspect(f"docker://{tag}", config=True)
    assert "GREETING=hello" not in cfg["config"]["Env"]  # ARGs are not persisted

    again = kade_build(*args, "--cache-dir", str(tmp_path / "c2"))
    assert again.code == 0, again.stderr
    assert again.json()["steps"] == {"built": 0, "cached": total}

    (run_project / "src" / "main.sh").write_text("echo changed\n")
    third = kade_build(*args, "--cache-dir", str(tmp_path / "c3"))
    assert third.code == 0, third.stderr
    # ENV and WORKDIR (2 steps of the app stage) and the whole tools stage are reused
    assert third.json()["steps"] == {"built": total - 3, "cached": 3}

    other = kade_build(*args[:-2], "--build-arg", "GREETING=hi", "--output", "json", "--cache-dir", str(tmp_path / "c4"))
    assert other.code == 0, other.stderr
    assert podman_run(tag).stdout == "hi from 0:0 in /app\n"


def test_failing_run_reports_exit_code_and_output(registry, base_image, kade_build, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base_image.ref}\nRUN echo first\nRUN echo line1; echo line2; exit 3\n")
    res = kade_build(str(ctx), "--tag", f"{registry.host}/run/fail:v1", "--cache-dir", str(tmp_path / "c"),
                     "--keep-failed")
    assert res.code == 1
    assert "Dockerfile:3:" in res.stderr and "exit code 3" in res.stderr
    assert "line1" in res.stderr and "line2" in res.stderr
    kept = [ln for ln in res.stderr.splitlines() if "kept at" in ln]
    assert kept, res.stderr
    with RegistryClient() as client:
        assert client.repository(f"{registry.host}/run/fail").head_manifest("v1") is None


def test_cache_mount_persists_and_never_enters_a_layer(registry, base_image, kade_build, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    df = ctx / "Dockerfile"
    df.write_text(f"FROM {base_image.ref}\nARG N\n"
                  "RUN --mount=type=cache,target=/cache echo $N >> /cache/runs && cat /cache/runs > /runs.txt\n")
    cache = tmp_path / "c"
    tag = f"{registry.host}/run/cachemount:v1"
    for n in ("1", "2"):
        res = kade_build(str(ctx), "--tag", tag, "--build-arg", f"N={n}", "--cache-dir", str(cache))
        assert res.code == 0, res.stderr
    out = podman_run(tag, "sh", "-c", "cat /runs.txt; test -e /cache && echo present || echo absent")
    assert out.stdout.splitlines() == ["1", "2", "absent"]


def test_secret_is_in_no_blob_key_or_log(registry, base_image, kade_build, tmp_path):
    secret = "s3cr3t-value-7f1e9c"
    (tmp_path / "secret.txt").write_text(secret)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        f"FROM {base_image.ref}\n"
        "RUN --mount=type=secret,id=tok,required cat /run/secrets/tok | wc -c > /len.txt && cat /run/secrets/tok\n")
    tag = f"{registry.host}/run/secret:v1"
    res = kade_build(str(ctx), "--tag", tag, "--secret", f"id=tok,src={tmp_path / 'secret.txt'}",
                     "--cache-dir", str(tmp_path / "c"), "--output", "json")
    assert res.code == 0, res.stderr
    assert secret not in res.stderr and secret not in res.stdout
    assert podman_run(tag, "cat", "/len.txt").stdout.strip() == str(len(secret))
    assert podman_run(tag, "ls", "/run/secrets").returncode != 0
    blobs = [p for p in registry.storage.rglob("data") if p.is_file()]
    import gzip
    for p in blobs:
        data = p.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        assert secret.encode() not in data, p
    for p in (tmp_path / "c").rglob("*"):
        if p.is_file():
            assert secret.encode() not in p.read_bytes(), p


def test_bind_and_tmpfs_mounts_leave_no_trace(registry, base_image, kade_build, tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "conf").mkdir(parents=True)
    (ctx / "conf" / "app.conf").write_text("answer=42\n")
    (ctx / "Dockerfile").write_text(
        f"FROM {base_image.ref} AS gen\nRUN mkdir /out && echo generated > /out/g.txt\n"
        f"FROM {base_image.ref}\n"
        "RUN --mount=type=bind,source=conf,target=/mnt/conf cp /mnt/conf/app.conf /app.conf\n"
        "RUN --mount=type=bind,from=gen,source=/out,target=/mnt/gen cat /mnt/gen/g.txt > /g.txt\n"
        "RUN --mount=type=tmpfs,target=/scratch echo tmp > /scratch/t && cat /scratch/t > /t.txt\n")
    tag = f"{registry.host}/run/mounts:v1"
    res = kade_build(str(ctx), "--tag", tag, "--cache-dir", str(tmp_path / "c"), "--output", "json").ok()
    assert res["steps"]["built"] == 4
    out = podman_run(tag, "sh", "-c", "cat /app.conf /g.txt /t.txt; ls /mnt /scratch 2>&1 | grep -c 'No such'")
    assert out.stdout == "answer=42\ngenerated\ntmp\n2\n"
    # a changed file under the bind source changes the key of that RUN only
    (ctx / "conf" / "app.conf").write_text("answer=43\n")
    res = kade_build(str(ctx), "--tag", tag, "--cache-dir", str(tmp_path / "c2"), "--output", "json").ok()
    assert res["steps"] == {"built": 3, "cached": 1}


def test_ssh_agent_socket_is_forwarded(registry, base_image, kade_build, ssh_agent, tmp_path):
    """A real ssh-agent; the RUN sees its socket at SSH_AUTH_SOCK, and nothing of it stays in the image."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base_image.ref}\n"
                                    "RUN --mount=type=ssh test -S $SSH_AUTH_SOCK && echo $SSH_AUTH_SOCK > /sock.txt\n")
    tag = f"{registry.host}/run/ssh:v1"
    kade_build(str(ctx), "--tag", tag, "--ssh", f"default={ssh_agent}", "--cache-dir", str(tmp_path / "c"),
               "--output", "json").ok()
    out = podman_run(tag, "sh", "-c", "cat /sock.txt; test -e /run/buildkit && echo leaked || echo clean")
    assert out.stdout == "/run/buildkit/ssh_agent.default\nclean\n"
    missing = kade_build(str(ctx), "--tag", tag, "--no-cache", "--cache-dir", str(tmp_path / "c"))
    assert missing.code == 0 and "an ssh agent was not given" in missing.stderr and "--ssh" in missing.stderr
    (ctx / "Dockerfile").write_text(f"FROM {base_image.ref}\nRUN --mount=type=ssh,required=true true\n")
    required = kade_build(str(ctx), "--tag", tag, "--no-cache", "--cache-dir", str(tmp_path / "c"))
    assert required.code == 1 and "--ssh" in required.stderr


DEEP_CHAIN = "RUN mkdir /deep && cd /deep && i=0 && while [ $i -lt {levels} ]; do mkdir {name} && cd {name}; " \
             "i=$((i+1)); done && echo bottom > f\n"


@pytest.mark.parametrize("levels,name,expect", [
    (1200, "d", "ok"),                # deeper than Python's recursion limit, shorter than PATH_MAX
    (1500, "dir", "longer than"),     # a path beyond PATH_MAX (4096): no tool can name it
])
def test_a_run_that_leaves_a_deep_directory_chain(registry, base_image, kade_build, tmp_path, levels, name, expect):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base_image.ref}\n" + DEEP_CHAIN.format(levels=levels, name=name))
    tag = f"{registry.host}/deep/chain{levels}:1"
    try:
        run = kade_build(str(ctx), "--tag", tag, "--output", "json", "--cache-dir", str(tmp_path / "cache"))
    finally:
        remove_tree(tmp_path / "cache")  # pytest's own cleanup of old temp dirs recurses per level
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    if expect != "ok":
        assert run.code != 0 and expect in run.stderr and "Dockerfile:2" in run.stderr, run.stderr[-3000:]
        return
    assert run.code == 0, run.stderr[-3000:]
    files = image_files(registry.url, f"deep/chain{levels}", "1")
    assert files["deep/" + f"{name}/" * levels + "f"][1] == b"bottom\n"


@pytest.mark.parametrize("levels,name,expect", [
    (1200, "d", "ok"),                                  # deeper than Python's recursion limit
    (1500, "dir", "longer than 4096 bytes"),            # a path beyond PATH_MAX: refused by name
])
def test_a_base_image_with_a_deep_directory_chain(registry, base_image, kade_build, tmp_path, levels, name, expect):
    deep = "/".join([name] * levels) + "/f"
    evil = push_layers(registry.host, f"deep/base{levels}", "1", [make_tar([E(deep, data=b"bottom\n")])])
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base_image.ref} AS tools\nFROM {evil.ref}\n"
                                    "COPY --from=tools /bin/busybox /bin/busybox\n"
                                    'RUN ["/bin/busybox", "touch", "/top"]\n')
    tag = f"{registry.host}/deep/on{levels}:1"
    try:
        run = kade_build(str(ctx), "--tag", tag, "--output", "json", "--cache-dir", str(tmp_path / "cache"))
    finally:
        remove_tree(tmp_path / "cache")
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    if expect != "ok":
        error = [line for line in run.stderr.splitlines() if line.startswith("kade: error:")]
        assert run.code != 0 and expect in error[0] and f"deep/base{levels}@sha256:" in error[0], run.stderr[-3000:]
        return
    assert run.code == 0, run.stderr[-3000:]
    files = image_files(registry.url, f"deep/on{levels}", "1")
    assert files[deep][1] == b"bottom\n" and "top" in files
