"""Hostile Dockerfiles against kade's host-side file operations, built for real (local backend,
real registry): a symlink that a RUN or an image puts at a path component of COPY, ADD, heredocs,
WORKDIR, COPY --from, bind/cache mount sources and targets, /etc/passwd; ignored context files
behind a bind mount. Each case runs with the canaries of tests/fixtures/canary.py armed: a host
file holding a secret (it must appear in no pushed blob and no output), an empty host directory
(it must stay empty). A case may build or fail; it may never reach a canary."""
from __future__ import annotations

import json
import os
import stat

import pytest

from tests.fixtures.build import push_layers
from tests.fixtures.canary import assert_secret_absent, image_blobs, image_files
from tests.fixtures.layers import E, make_tar

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="RUN with several users needs root")

STAGE = "FROM {base} AS evil\nRUN {setup}\n"

# name -> (Dockerfile, "ok" or the words the error must hold, files the image must hold: path -> bytes)
CASES = {
    "heredoc-over-absolute-symlink": (
        "FROM {base}\nRUN ln -s {host}/victim /victim\nCOPY <<EOF /victim\npwned\nEOF\n",
        "ok", {"{host_rel}/victim": b"pwned\n"}),
    "heredoc-over-relative-symlink": (
        "FROM {base}\nRUN ln -s ../../../../../../../../..{host}/victim /victim\nCOPY <<EOF /victim\npwned\nEOF\n",
        "ok", {"{host_rel}/victim": b"pwned\n"}),
    "heredoc-through-symlinked-parent": (
        "FROM {base}\nRUN ln -s {host} /d\nCOPY <<EOF /d/victim\npwned\nEOF\n", "ok", {"{host_rel}/victim": b"pwned\n"}),
    "copy-into-symlinked-dir": (
        "FROM {base}\nRUN ln -s {host} /d\nCOPY a.txt /d/\n", "ok", {"{host_rel}/a.txt": b"a\n"}),
    "copy-through-a-chain": (
        "FROM {base}\nRUN ln -s /c2 /c1 && ln -s {host} /c2\nCOPY a.txt /c1/sub/x\n", "ok",
        {"{host_rel}/sub/x": b"a\n"}),
    "copy-dir-through-dotdot": (
        "FROM {base}\nRUN mkdir -p /r/s && ln -s ../../../../../../../.. /r/s/up\nCOPY dir/ /r/s/up{host}/\n", "ok",
        {"{host_rel}/inner.txt": b"inner\n"}),
    "copy-onto-a-loop": (
        "FROM {base}\nRUN ln -s /l2 /l1 && ln -s /l1 /l2\nCOPY a.txt /l1/x\n", "symbolic links", {}),
    "workdir-through-symlink": (
        "FROM {base}\nRUN ln -s {host} /w\nWORKDIR /w/deeper/still\n", "ok", {}),
    "add-archive-into-symlinked-dir": (
        "FROM {base}\nRUN ln -s {host} /a\nADD archive.tar /a/\n", "ok", {"{host_rel}/from-archive.txt": b"arch\n"}),
    "copy-from-stage-absolute-symlink": (
        STAGE.replace("{setup}", "ln -s {secret} /x") + "FROM {base}\nCOPY --from=evil /x /leak\n",
        "not found", {}),
    "copy-from-stage-relative-symlink": (
        STAGE.replace("{setup}", "ln -s ../../../../../../../../..{secret} /x") + "FROM {base}\nCOPY --from=evil /x /leak\n",
        "not found", {}),
    "copy-from-stage-symlinked-parent": (
        STAGE.replace("{setup}", "ln -s {secret_dir} /d") + "FROM {base}\nCOPY --from=evil /d/secret /leak\n",
        "not found", {}),
    "copy-from-stage-dir-with-symlinks": (
        STAGE.replace("{setup}", "mkdir /d && ln -s {secret} /d/link && ln -s {secret_dir} /d/dirlink")
        + "FROM {base}\nCOPY --from=evil /d /out\nRUN cat /out/link /out/dirlink/secret > /read 2>&1 || true\n",
        "ok", {}),
    "bind-from-stage-absolute-symlink": (
        STAGE.replace("{setup}", "ln -s {secret} /x")
        + "FROM {base}\nRUN --mount=type=bind,from=evil,source=/x,target=/m cat /m > /read 2>&1; cat /m || true\n",
        "not found", {}),
    "bind-from-stage-symlinked-parent": (
        STAGE.replace("{setup}", "ln -s {secret_dir} /d")
        + "FROM {base}\nRUN --mount=type=bind,from=evil,source=/d/secret,target=/m cat /m || true\n",
        "not found", {}),
    "bind-from-image-absolute-symlink": (
        "FROM {base}\nRUN --mount=type=bind,from={evil_image},source=/x,target=/m cat /m || true\n", "not found", {}),
    "bind-from-stage-symlink-resolving-inside": (
        STAGE.replace("{setup}", "mkdir -p /real{secret_dir} && echo stage-own > /real{secret} && ln -s /real{secret} /x")
        + "FROM {base}\nRUN --mount=type=bind,from=evil,source=/x,target=/m cat /m > /read\n",
        "ok", {"read": b"stage-own\n"}),
    "copy-from-image-absolute-symlink": (
        "FROM {base}\nCOPY --from={evil_image} /x /leak\n", "not found", {}),
    "cache-target-through-symlink": (
        "FROM {base}\nRUN ln -s {host} /c\nRUN --mount=type=cache,target=/c/x touch /c/x/pwned\n", "ok", {}),
    "passwd-symlinked-to-the-host": (
        "FROM {base}\nRUN rm /etc/passwd && ln -s {fake_passwd} /etc/passwd\nUSER evil\nRUN id\n",
        "unable to find user evil", {}),
    "ignored-context-files-behind-a-bind-mount": (
        "FROM {base}\nRUN --mount=type=bind,target=/ctx ls -laR /ctx; cat /ctx/secret.env /ctx/.git/config; "
        "find /ctx > /listing; true\n", "ok", {}),
    "ignored-files-in-a-bound-subdir": (
        "FROM {base}\nRUN --mount=type=bind,source=dir,target=/ctx,rw cat /ctx/secret.env; ls -la /ctx; "
        "find /ctx > /listing; true\n", "ok", {}),
}


def _context(tmp_path, host_secret, dockerfile: str) -> str:
    ctx = tmp_path / "ctx"
    (ctx / "dir").mkdir(parents=True)
    (ctx / ".git").mkdir()
    (ctx / "a.txt").write_text("a\n")
    (ctx / "dir" / "inner.txt").write_text("inner\n")
    (ctx / "secret.env").write_bytes(host_secret.value)           # ignored: never visible to a RUN
    (ctx / "dir" / "secret.env").write_bytes(host_secret.value)
    (ctx / ".git" / "config").write_bytes(host_secret.value)
    (ctx / ".dockerignore").write_text(".git\nsecret.env\n**/secret.env\n")
    (ctx / "archive.tar").write_bytes(make_tar([E("from-archive.txt", data=b"arch\n")]))
    (ctx / "Dockerfile").write_text(dockerfile)
    return str(ctx)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_file_operation(case, registry, base_image, kade_build, tmp_path, host_secret, empty_host_dir):
    template, expect, files = CASES[case]
    fake_passwd = tmp_path / "fake-passwd"
    fake_passwd.write_text("evil:x:4242:4242::/:/bin/sh\n")
    evil = push_layers(registry.host, f"hostile/evil-{case}", "1",
                       [make_tar([E("x", "symlink", link=str(host_secret.path))])])
    values = dict(base=base_image.ref, host=str(empty_host_dir.path), secret=str(host_secret.path),
                  secret_dir=str(host_secret.path.parent), fake_passwd=str(fake_passwd), evil_image=evil.ref,
                  host_rel=str(empty_host_dir.path).lstrip("/"))
    dockerfile = template
    for key, value in values.items():
        dockerfile = dockerfile.replace("{" + key + "}", value)
    tag = f"{registry.host}/hostile/{case}:1"
    run = kade_build(_context(tmp_path, host_secret, dockerfile), "--tag", tag, "--output", "json",
                     "--cache-dir", str(tmp_path / "cache"))
    assert_secret_absent(host_secret, run.stdout, run.stderr)
    stages = f"hostile/{case}-stages"
    for tag_name in _tags(registry.url, stages):
        assert_secret_absent(host_secret, list(image_blobs(registry.url, stages, tag_name).values()))
    if expect != "ok":
        assert run.code != 0 and expect in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
        return
    assert run.code == 0, run.stderr
    assert_secret_absent(host_secret, list(image_blobs(registry.url, f"hostile/{case}", "1").values()))
    image = image_files(registry.url, f"hostile/{case}", "1")
    for path, content in files.items():
        path = path.replace("{host_rel}", values["host_rel"])
        assert image[path][1] == content, f"{path} in the image"
    if "listing" in image:
        listing = image["listing"][1] or b""
        assert b"secret.env" not in listing and b".git" not in listing and b"inner.txt" in listing + b"inner.txt"


def _tags(url: str, repo: str) -> list[str]:
    import requests

    r = requests.get(f"{url}/v2/{repo}/tags/list", timeout=10)
    return [] if r.status_code == 404 else list(r.json().get("tags") or [])


def test_keep_failed_rootfs_is_kept_where_only_root_can_reach_it(registry, base_image, kade_build, tmp_path,
                                                                  host_secret):
    """--keep-failed leaves the failed rootfs (setuid binaries and all) in a 0700 work dir."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base_image.ref}\nRUN cp /bin/busybox /suid && chmod 4755 /suid "
                                    "&& false\n")
    run = kade_build(str(ctx), "--output", "json", "--keep-failed", "--cache-dir", str(tmp_path / "cache"))
    assert run.code != 0
    kept = [line for line in run.stderr.splitlines() if "kept at" in line]
    assert kept, run.stderr
    rootfs = kept[0].split("kept at", 1)[1].strip().strip("'\"").rstrip(")")
    holder = os.path.dirname(rootfs)
    assert stat.S_IMODE(os.stat(holder).st_mode) == 0o700, "the kept rootfs is reachable by other users"
    assert json.dumps(run.stderr).count(host_secret.text) == 0
