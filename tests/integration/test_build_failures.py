"""Wrong behaviour from issue 21, end to end: an image without /etc/passwd runs as root (or a numeric
USER) as BuildKit does, and a RUN that prints one 8 MB line fails with a short message that says
what was cut."""
from __future__ import annotations

import io
import tarfile

import pytest

from tests.fixtures.build import _busybox_static, push_image


@pytest.fixture(scope="module")
def passwdless_image(registry):
    """busybox-static and sh only: no /etc at all (scratch- or distroless-style)."""
    busybox = _busybox_static()
    if busybox is None:
        pytest.skip("busybox-static is not installed")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for d in ("bin", "tmp"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tf.addfile(ti)
        with open(busybox, "rb") as f:
            data = f.read()
        ti = tarfile.TarInfo("bin/busybox")
        ti.size, ti.mode = len(data), 0o755
        tf.addfile(ti, io.BytesIO(data))
        for applet in ("sh", "id", "test", "head", "tr"):
            ti = tarfile.TarInfo(f"bin/{applet}")
            ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, "busybox", 0o777
            tf.addfile(ti)
    return push_image(registry.host, "base/nopasswd", "1", buf.getvalue())


@pytest.mark.parametrize("user,uid", [(None, "0"), ("root", "0"), ("0", "0"), ("1234", "1234"),
                                      ("1234:5678", "1234")])
def test_an_image_without_passwd_runs_as_root_or_a_numeric_user(registry, passwdless_image, kade_build, tmp_path,
                                                                 user, uid):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    lines = [f"FROM {passwdless_image.ref}"] + ([f"USER {user}"] if user else []) + [
        f'RUN test "$(id -u)" = {uid} || {{ id; exit 9; }}']
    (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
    res = kade_build(str(ctx), "-t", f"{registry.host}/fail/nopasswd:{uid}", "--cache-dir", str(tmp_path / "c"),
                     "--no-cache")
    assert res.code == 0, res.stderr


def test_a_named_user_still_needs_passwd(registry, passwdless_image, kade_build, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {passwdless_image.ref}\nUSER app\nRUN true\n")
    res = kade_build(str(ctx), "-t", f"{registry.host}/fail/nopasswd:app", "--cache-dir", str(tmp_path / "c"))
    assert res.code == 1 and "unable to find user app" in res.stderr and "Dockerfile:3" in res.stderr


def test_an_8_mb_line_is_cut_in_the_error(registry, base_image, kade_build, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base_image.ref}\n"
                                    "RUN head -c 8388608 /dev/zero | tr '\\0' x; echo; echo the end; exit 3\n")
    res = kade_build(str(ctx), "-t", f"{registry.host}/fail/longline:1", "--cache-dir", str(tmp_path / "c"))
    assert res.code == 1
    message = res.stderr.split("kade: error:", 1)[1]
    assert "exit code 3" in message and "the end" in message
    assert "more characters cut]" in message
    assert len(message) < 10_000, len(message)
    assert len(res.stderr) < 200_000  # the progress line is cut too (at 64 KiB)


def test_more_layers_than_an_overlay_stacks_is_a_clear_error(registry, kade_build, tmp_path):
    """An overlay mount stacks at most 500 directories: a base image deeper than MAX_LAYERS is refused
    before anything is unpacked, naming it; a step that would go past it names its line (was an
    OSError traceback from the mount)."""
    from builder.stageroot import MAX_LAYERS
    from tests.fixtures.build import push_layers
    from tests.fixtures.layers import E, make_tar

    tars = [make_tar([E(f"f{i}", data=b"x")]) for i in range(MAX_LAYERS + 1)]
    too_deep = push_layers(registry.host, "deep/over", "1", tars)
    at_limit = push_layers(registry.host, "deep/at", "1", tars[:MAX_LAYERS])
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text("a\n")
    common = ["--cache-dir", str(tmp_path / "cache"), "--output", "json"]

    (ctx / "Dockerfile").write_text(f"FROM {too_deep.ref}\nCOPY a.txt /a.txt\n")
    refused = kade_build(str(ctx), "--tag", f"{registry.host}/deep/app:1", *common)
    assert refused.code == 1 and f"has {MAX_LAYERS + 1} layers" in refused.stderr, refused.stderr
    assert f"{registry.host}/deep/over@" in refused.stderr and "Traceback" not in refused.stderr
    unpacked = lambda: list((tmp_path / "cache").glob("tenants/*/trees/layers/*/fs"))  # noqa: E731
    assert unpacked() == [], "nothing unpacked"

    (ctx / "Dockerfile").write_text(f"FROM {at_limit.ref}\nENV A=1\nCOPY a.txt /a.txt\n")
    stepped = kade_build(str(ctx), "--tag", f"{registry.host}/deep/app:2", *common)
    assert stepped.code == 1 and "Dockerfile:3: COPY a.txt /a.txt" in stepped.stderr, stepped.stderr
    assert f"has {MAX_LAYERS + 1} layers" in stepped.stderr and "Traceback" not in stepped.stderr
    assert len(unpacked()) == MAX_LAYERS   # (so the check above looked where layers go)
