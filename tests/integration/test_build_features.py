"""More of the Dockerfile surface end to end: parallel stages, ONBUILD, zstd, users, args, --no-cache."""
import json
import subprocess

import pytest

from tests.fixtures.build import podman_run, skopeo_inspect


def write(ctx, dockerfile, **files):
    ctx.mkdir(parents=True, exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, text in files.items():
        (ctx / name).write_text(text)
    return ctx


def test_independent_stages_run_at_the_same_time(registry, base_image, kade_build, tmp_path):
    """Each stage waits (bounded) for the other's marker in a shared cache mount: this only
    finishes if both RUNs are in flight together."""
    wait = ("RUN --mount=type=cache,target=/sync,id=sync-{n} touch /sync/{me} && i=0; "
            "while [ ! -e /sync/{other} ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; "
            "test -e /sync/{other} && rm -f /sync/{other} && echo {me} > /{me}.txt")
    nonce = tmp_path.name
    df = (f"FROM {base_image.ref} AS a\n" + wait.format(n=nonce, me="a", other="b") + "\n"
          f"FROM {base_image.ref} AS b\n" + wait.format(n=nonce, me="b", other="a") + "\n"
          f"FROM {base_image.ref}\nCOPY --from=a /a.txt /\nCOPY --from=b /b.txt /\n")
    ctx = write(tmp_path / "ctx", df)
    res = kade_build(str(ctx), "--tag", f"{registry.host}/feat/parallel:v1", "--parallel", "2",
                     "--cache-dir", str(tmp_path / "c"), "--output", "json")
    assert res.code == 0, res.stderr
    assert res.json()["steps"]["built"] == 4


def test_onbuild_triggers_run_in_the_child(registry, base_image, kade_build, tmp_path):
    parent_tag = f"{registry.host}/feat/onbuild-parent:v1"
    parent = write(tmp_path / "parent", f"FROM {base_image.ref}\nONBUILD COPY marker.txt /marker.txt\n"
                                        "ONBUILD RUN echo triggered > /onbuild.txt\n")
    assert kade_build(str(parent), "--tag", parent_tag, "--cache-dir", str(tmp_path / "c")).code == 0
    assert skopeo_inspect(f"docker://{parent_tag}", config=True)["config"]["OnBuild"] == [
        "COPY marker.txt /marker.txt", "RUN echo triggered > /onbuild.txt"]
    child_tag = f"{registry.host}/feat/onbuild-child:v1"
    child = write(tmp_path / "child", f"FROM {parent_tag}\nRUN cat /onbuild.txt /marker.txt > /both.txt\n",
                  **{"marker.txt": "marker\n"})
    res = kade_build(str(child), "--tag", child_tag, "--cache-dir", str(tmp_path / "c"))
    assert res.code == 0, res.stderr
    assert podman_run(child_tag, "cat", "/both.txt").stdout == "triggered\nmarker\n"
    assert not skopeo_inspect(f"docker://{child_tag}", config=True)["config"].get("OnBuild")


def test_zstd_layers_podman_reads(registry, base_image, kade_build, tmp_path):
    ctx = write(tmp_path / "ctx", f"FROM {base_image.ref}\nRUN echo zstd > /z.txt\nCOPY f.txt /f.txt\n",
                **{"f.txt": "f\n"})
    tag = f"{registry.host}/feat/zstd:v1"
    res = kade_build(str(ctx), "--tag", tag, "--compression", "zstd", "--cache-dir", str(tmp_path / "c"))
    assert res.code == 0, res.stderr
    raw = json.loads(subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{tag}"],
                                    capture_output=True, text=True, check=True).stdout)
    assert [layer["mediaType"].rsplit("+", 1)[-1] for layer in raw["layers"][1:]] == ["zstd", "zstd"]
    assert podman_run(tag, "cat", "/z.txt", "/f.txt").stdout == "zstd\nf\n"


def test_unknown_user_names_the_line(registry, base_image, kade_build, tmp_path):
    ctx = write(tmp_path / "ctx", f"FROM {base_image.ref}\nUSER nobody-here\nRUN true\n")
    res = kade_build(str(ctx), "--tag", f"{registry.host}/feat/nouser:v1", "--cache-dir", str(tmp_path / "c"))
    assert res.code == 1
    assert "Dockerfile:3:" in res.stderr and "nobody-here" in res.stderr and "/etc/passwd" in res.stderr


def test_unused_build_arg_is_named_and_no_cache_rebuilds(registry, base_image, kade_build, tmp_path):
    ctx = write(tmp_path / "ctx", f"FROM {base_image.ref}\nARG USED=1\nRUN echo $USED > /u.txt\n")
    tag = f"{registry.host}/feat/args:v1"
    res = kade_build(str(ctx), "--tag", tag, "--build-arg", "UNUSED_THING=1", "--cache-dir", str(tmp_path / "c"),
                     "--output", "json")
    assert res.code == 0, res.stderr
    assert "UNUSED_THING" in res.stderr
    res = kade_build(str(ctx), "--tag", tag, "--no-cache", "--cache-dir", str(tmp_path / "c"), "--output", "json")
    assert res.json()["steps"] == {"built": 1, "cached": 0}


def test_concurrent_builds_share_one_cache_dir(registry, base_image, tmp_path):
    """Two kade processes, same cache dir, same base: both succeed (file locks + atomic renames)."""
    import os
    import sys
    procs = []
    for i in range(2):
        ctx = write(tmp_path / f"ctx{i}", f"FROM {base_image.ref}\nRUN echo {i} > /n.txt\n")
        procs.append(subprocess.Popen([sys.executable, "-m", "kade", "build", str(ctx), "--tag",
                                       f"{registry.host}/feat/concurrent{i}:v1", "--cache-dir", str(tmp_path / "c")],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      cwd=os.getcwd()))
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    for i in range(2):
        assert podman_run(f"{registry.host}/feat/concurrent{i}:v1", "cat", "/n.txt").stdout == f"{i}\n"


def test_add_url_with_checksum(registry, base_image, kade_build, tmp_path, monkeypatch):
    """A local HTTP server stands in for the internet (no network here): real HTTP, real downloads."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    import hashlib
    import http.server
    import threading
    from functools import partial

    served = tmp_path / "www"
    served.mkdir()
    (served / "tool.txt").write_text("downloaded\n")
    digest = "sha256:" + hashlib.sha256(b"downloaded\n").hexdigest()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/tool.txt"
    try:
        ctx = write(tmp_path / "ctx", f"FROM {base_image.ref}\nADD --checksum={digest} {url} /opt/\n")
        tag = f"{registry.host}/feat/addurl:v1"
        res = kade_build(str(ctx), "--tag", tag, "--cache-dir", str(tmp_path / "c"), "--output", "json")
        assert res.code == 0, res.stderr
        out = podman_run(tag, "sh", "-c", "cat /opt/tool.txt; stat -c '%a %Y' /opt/tool.txt")
        assert out.stdout == "downloaded\n600 0\n"   # no epoch: 0, not the time this machine downloaded it
        # another machine (a fresh cache, another download time) makes the same layers
        import time

        time.sleep(1.1)
        again = kade_build(str(ctx), "--tag", f"{registry.host}/feat/addurl2:v1", "--cache-dir",
                           str(tmp_path / "c2"), "--no-cache", "--output", "json")
        assert again.code == 0, again.stderr
        from tests.fixtures.canary import registry_get

        layers = [[la["digest"] for la in registry_get(registry.url, repo, "manifests", "v1").json()["layers"]]
                  for repo in ("feat/addurl", "feat/addurl2")]
        assert layers[0] == layers[1]
        monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
        epoch = kade_build(str(ctx), "--tag", f"{registry.host}/feat/addurl3:v1", "--cache-dir", str(tmp_path / "c3"))
        assert epoch.code == 0, epoch.stderr
        out = podman_run(f"{registry.host}/feat/addurl3:v1", "stat", "-c", "%Y", "/opt/tool.txt")
        assert out.stdout == "1700000000\n"
        monkeypatch.delenv("SOURCE_DATE_EPOCH")
        bad = write(tmp_path / "bad", f"FROM {base_image.ref}\nADD --checksum=sha256:{'0' * 64} {url} /opt/\n")
        res = kade_build(str(bad), "--tag", tag, "--cache-dir", str(tmp_path / "c"))
        assert res.code == 1 and "checksum mismatch" in res.stderr and "Dockerfile:2:" in res.stderr
    finally:
        server.shutdown()


def test_copy_from_image_digest_base_and_bare_from(registry, base_image, kade_build, tmp_path):
    by_digest = f"{base_image.ref.rsplit(':', 1)[0]}@{base_image.digest}"
    ctx = write(tmp_path / "ctx", f"FROM scratch\nCOPY --from={by_digest} /bin/busybox /bin/busybox\n"
                                  "COPY --from=" + base_image.ref + " /etc/passwd /etc/passwd\n"
                                  'ENTRYPOINT ["/bin/busybox"]\n')
    tag = f"{registry.host}/feat/fromimage:v1"
    res = kade_build(str(ctx), "--tag", tag, "--cache-dir", str(tmp_path / "c"))
    assert res.code == 0, res.stderr
    assert podman_run(tag, "head", "-1", "/etc/passwd").stdout == "root:x:0:0:root:/root:/bin/sh\n"
    # a target with no instructions republishes its base, blobs mounted, nothing built
    bare = write(tmp_path / "bare", f"FROM {by_digest}\n")
    res = kade_build(str(bare), "--tag", f"{registry.host}/feat/bare:v1", "--cache-dir", str(tmp_path / "c2"),
                     "--output", "json")
    assert res.code == 0, res.stderr
    assert res.json()["steps"] == {"built": 0, "cached": 0}
    assert podman_run(f"{registry.host}/feat/bare:v1", "echo", "ok").stdout == "ok\n"


def test_identical_steps_in_parallel_stages_run_once(registry, base_image, kade_build, tmp_path):
    nonce = tmp_path.name
    shared = f"RUN --mount=type=cache,target=/c,id=once-{nonce} echo ran >> /c/count && mkdir -p /common && cp /c/count /common/\n"
    df = (f"FROM {base_image.ref} AS a\n{shared}RUN echo a > /common/who\n"
          f"FROM {base_image.ref} AS b\n{shared}RUN echo b > /common/who\n"
          f"FROM {base_image.ref}\nCOPY --from=a /common /a\nCOPY --from=b /common /b\n")
    ctx = write(tmp_path / "ctx", df)
    tag = f"{registry.host}/feat/once:v1"
    res = kade_build(str(ctx), "--tag", tag, "--parallel", "2", "--cache-dir", str(tmp_path / "c"),
                     "--output", "json").ok()
    assert res["steps"] == {"built": 5, "cached": 1}
    out = podman_run(tag, "cat", "/a/count", "/b/count", "/a/who", "/b/who")
    assert out.stdout == "ran\nran\na\nb\n"


@pytest.mark.parametrize("compression", ["xz", "bz2", "gz"])
def test_from_scratch_add_rootfs_tarball_runs(registry, kade_build, tmp_path, compression):
    """How official base images are made: FROM scratch + ADD rootfs.tar.<xz|bz2|gz> /. The tarball's
    absolute symlinks, ownership and modes survive, and the image runs under podman."""
    import io
    import tarfile

    from tests.fixtures.build import base_rootfs_tar

    src = tarfile.open(fileobj=io.BytesIO(base_rootfs_tar()))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}") as out:
        for member in src.getmembers():
            out.addfile(member, src.extractfile(member) if member.isfile() else None)
        link = tarfile.TarInfo("usr/local/bin/owned-link")
        link.type, link.linkname = tarfile.SYMTYPE, "/srv/owned.txt"
        owned = tarfile.TarInfo("srv/owned.txt")
        owned.size, owned.uid, owned.gid, owned.mode = 3, 1234, 5678, 0o640
        for info in (tarfile.TarInfo("usr/local"), tarfile.TarInfo("usr/local/bin"), tarfile.TarInfo("srv")):
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            out.addfile(info)
        out.addfile(link)
        out.addfile(owned, io.BytesIO(b"own"))
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / f"rootfs.tar.{compression}").write_bytes(buf.getvalue())
    (ctx / "Dockerfile").write_text(f"FROM scratch\nADD rootfs.tar.{compression} /\nCMD [\"/bin/sh\"]\n")
    tag = f"{registry.host}/feat/scratch-{compression}:v1"
    res = kade_build(str(ctx), "--tag", tag, "--cache-dir", str(tmp_path / "c"))
    assert res.code == 0, res.stderr
    out = podman_run(tag, "/bin/sh", "-c", "stat -c '%u:%g %a' /srv/owned.txt; readlink /usr/local/bin/owned-link; "
                                           "cat /usr/local/bin/owned-link")
    assert out.stdout.split("\n")[:3] == ["1234:5678 640", "/srv/owned.txt", "own"], out.stdout + out.stderr


def test_dockerfile_from_standard_input(registry, base_image, tmp_path):
    """`-f -`, as docker build and buildah take it: the context's files and .dockerignore, the Dockerfile
    from stdin (a Dockerfile in the context is not read); its errors name the line."""
    import sys
    ctx = write(tmp_path / "ctx", "FROM scratch\nthis file is not read\n", **{"a.txt": "from the context\n",
                                                                                ".dockerignore": "b.txt\n",
                                                                                "b.txt": "ignored\n"})
    tag = f"{registry.host}/feat/stdin:v1"

    def kade(dockerfile: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "kade", "build", str(ctx), "-f", "-", "--tag", tag,
                               "--cache-dir", str(tmp_path / "c")], input=dockerfile, capture_output=True,
                              text=True, timeout=300)

    done = kade(f"FROM {base_image.ref}\nCOPY a.txt /\n")
    assert done.returncode == 0, done.stderr
    assert podman_run(tag, "cat", "/a.txt").stdout == "from the context\n"
    refused = kade(f"FROM {base_image.ref}\nCOPY b.txt /\n")
    assert refused.returncode == 1 and "Dockerfile:2" in refused.stderr and "b.txt" in refused.stderr
