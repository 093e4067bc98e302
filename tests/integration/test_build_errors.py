"""What a failing build says: file:line, the stage or source at fault, exit code 1, nothing pushed."""
import pytest

from registry.client import RegistryClient


@pytest.mark.parametrize("dockerfile,args,fragments", [
    ("FROM {base}\nCOPY a /a\nBOGUS x\n", [], ["Dockerfile:3:", "unknown instruction: BOGUS"]),
    ("FROM {base}\nLABEL onlykey\n", [], ["Dockerfile:2:", "LABEL must have two arguments"]),
    ("FROM {base} AS one\nCOPY a /a\n", ["--target", "two"], ["target stage 'two' not found", "one"]),
    ("FROM {base}\nCOPY missing.txt /x\n", [], ["Dockerfile:2:", "'missing.txt' not found"]),
    ("FROM {base}\nCOPY --from=7 /a /b\n", [], ["Dockerfile:2:", "stage 7"]),
    ("FROM {registry}/nope/nothing:1\n", [], ["Dockerfile:1: FROM", "nope/nothing"]),
])
def test_build_errors(registry, base_image, kade_build, tmp_path, dockerfile, args, fragments):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a").write_text("a")
    (ctx / "Dockerfile").write_text(dockerfile.format(base=base_image.ref, registry=registry.host))
    tag = f"{registry.host}/err/app:v1"
    res = kade_build(str(ctx), "--tag", tag, "--cache-dir", str(tmp_path / "c"), *args)
    assert res.code == 1
    assert "Traceback" not in res.stderr
    for f in fragments:
        assert f in res.stderr
    with RegistryClient() as client:
        assert client.repository(f"{registry.host}/err/app").head_manifest("v1") is None


def test_missing_context_is_usage_error(kade_build, tmp_path):
    res = kade_build(str(tmp_path / "nope"))
    assert res.code == 2 and "not a directory" in res.stderr
