"""Work a build skips or overlaps must not change what it pushes: with SOURCE_DATE_EPOCH the step images
are bit-identical whether or not the shortcut applied."""
import gzip
import io
import json
import subprocess
import tarfile

import pytest

from registry.client import RegistryClient
from registry.model import parse_manifest

STAGE_A = """\
FROM {base} AS a
RUN mkdir -p /data/sub && for i in 1 2 3; do echo $i > /data/sub/f$i; done && rm /bin/vi && chmod 700 /data
RUN echo second > /data/second && rm /data/sub/f2
CMD ["sh"]
"""
# the same stage a, now read by another stage: its last RUN must be merged into its rootfs
READ_BY_B = STAGE_A + """\
FROM {base}
COPY --from=a /data /data
"""


def step_digests(client: RegistryClient, repo: str) -> dict[str, str]:
    r = client.repository(repo)
    return {t: r.head_manifest(t).digest for t in r.list_tags() if len(t) == 64}


def layer_names(client: RegistryClient, ref: str) -> set[str]:
    repo, _, tag = ref.rpartition(":")
    r = client.repository(repo)
    body, desc = r.get_manifest(tag)
    layer = parse_manifest(body, desc.media_type).layers[-1]
    with r.open_blob(layer.digest) as f:
        data = gzip.decompress(f.read())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.rstrip("/") for m in tar.getmembers()}


@pytest.fixture
def epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")


def test_an_unmerged_last_run_pushes_the_same_step_images(registry, base_image, kade_build, tmp_path, epoch):
    stages = f"{registry.host}/fast/stages"
    client = RegistryClient()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(STAGE_A.format(base=base_image.ref))
    common = ["--repo", stages, "--no-cache", "--output", "json"]
    kade_build(str(ctx), "--tag", f"{registry.host}/fast/a:v1", *common, "--cache-dir", str(tmp_path / "c1")).ok()
    alone = step_digests(client, stages)
    assert len(alone) == 3

    (ctx / "Dockerfile").write_text(READ_BY_B.format(base=base_image.ref))
    kade_build(str(ctx), "--tag", f"{registry.host}/fast/b:v1", *common, "--cache-dir", str(tmp_path / "c2")).ok()
    read = step_digests(client, stages)
    assert {k: read[k] for k in alone} == alone  # stage a's steps: same keys, same image digests
    # and stage a's rootfs held its last RUN's result when stage b copied from it
    names = layer_names(client, f"{registry.host}/fast/b:v1")
    assert {"data/second", "data/sub/f1", "data/sub/f3"} <= names and "data/sub/f2" not in names


FROM_IMAGE = """\
FROM scratch AS files
COPY --from={base} /etc/passwd /copied/passwd
FROM {base}
COPY --from=files /copied/passwd /passwd
RUN --mount=type=bind,from={base},target=/m cat /m/etc/group > /group && ls /m/bin/vi
RUN --mount=type=bind,from={base},target=/w,rw=true rm -rf /w/bin && ls /w
"""


def test_an_image_read_by_copy_from_is_unpacked_once_into_the_layer_store_and_never_written(
        registry, base_image, busybox_tar, tmp_path, epoch):
    from builder.build import build as run_build
    from builder.options import BuildOptions
    from builder.cache import LocalCache
    from tests.fixtures.layers import tree_state

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(FROM_IMAGE.format(base=base_image.ref))
    from builder.tenant import Tenant

    cache = LocalCache(tmp_path / "cache", Tenant(f"{registry.host}/fast/from-stages"))  # the build's tenant
    unpacks: list[dict] = []

    def report(kind, message, **fields):
        if kind == "unpack":
            unpacks.append(fields)

    def build(tag: str):
        return run_build(BuildOptions(context=ctx, tags=[f"{registry.host}/fast/from:{tag}"], no_cache=True, parallel=1,
                                      cache_dir=str(cache.root)), report)

    first = build("1")
    import hashlib

    layers = cache.trees / "layers"
    base = layers / hashlib.sha256(busybox_tar).hexdigest() / "fs"   # one layer: its ChainID is its diffID
    state = tree_state(base)
    assert (base / "bin" / "vi").exists()   # the rw bind's rm worked on a copy
    assert list((layers / "tmp").iterdir()) == []   # nothing partial left
    # COPY --from unpacked the image once into the layer store and read it there; the final stage's rootfs
    # is an overlay over the same layer dir, and both mounts read it in place
    assert unpacks == [{"reused": 0, "unpacked": 1}, {"reused": 1, "unpacked": 0}]
    unpacks.clear()
    second = build("2")
    assert unpacks == [{"reused": 1, "unpacked": 0}, {"reused": 1, "unpacked": 0}]
    assert tree_state(base) == state
    assert second.images[0]["digest"] != "" and first.built == second.built == 4


def test_a_big_layer_streamed_while_written_is_the_layer_pushed(registry, base_image, kade_build, tmp_path):
    """A layer past registry/growing.py's threshold goes up while it is written; the image then names
    that very blob, whole (the registry checked its digest at the end of the upload) and counted as pushed."""
    import hashlib
    import json

    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {base_image.ref}\nRUN head -c 12582912 /dev/urandom > /big\n")
    tag = f"{registry.host}/fast/streamed:v1"
    run = kade_build(str(ctx), "--tag", tag, "--cache-dir", str(tmp_path / "c"), "--output", "json")
    run.ok()
    events = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    streamed = [e for e in events if e.get("kind") == "upload" and "while it was written" in e.get("message", "")]
    assert len(streamed) == 1, [e.get("message") for e in events]
    assert not [e for e in events if e.get("kind") == "warning"]

    repo = RegistryClient().repository(f"{registry.host}/fast/streamed")
    body, desc = repo.get_manifest("v1")
    layer = parse_manifest(body, desc.media_type).layers[-1]
    assert layer.digest == streamed[0]["digest"] and layer.size == streamed[0]["bytes"]
    with repo.open_blob(layer.digest) as f:
        blob = b"".join(iter(lambda: f.read(1 << 20), b""))
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer.digest
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        assert tar.getmember("big").size == 12582912
    done = [e for e in events if e.get("kind") == "step-done" and "RUN" in e.get("step", "")]
    assert done and done[0]["pushed_bytes"] >= layer.size


CONFIG_STEPS = """\
FROM {base}
ENV A=1
LABEL b=2
RUN echo $A > /a
ENV C=3
EXPOSE 80
CMD ["sh"]
"""


def test_config_only_steps_between_others_are_not_step_images(registry, base_image, kade_build, tmp_path, epoch):
    """ENV/LABEL/EXPOSE before another step are applied in memory: the stages repo holds the RUN's
    image and the stage's last; the image is the same, a rebuild finds it all, and a changed ENV
    value still changes the RUN's key (it was the old path's O(N^2): N images of a growing config)."""
    stages, client = f"{registry.host}/cfg/stages", RegistryClient()
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(CONFIG_STEPS.format(base=base_image.ref))
    common = ["--repo", stages, "--output", "json", "--cache-dir", str(tmp_path / "cache")]
    first = kade_build(str(ctx), "--tag", f"{registry.host}/cfg/app:1", *common).ok()
    assert first["steps"]["built"] == 6
    assert len(step_digests(client, stages)) == 2   # RUN and CMD, not ENV A, LABEL, ENV C, EXPOSE
    config = json.loads(subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--config", "--raw",
                                        f"docker://{registry.host}/cfg/app:1"], capture_output=True, text=True,
                                       check=True).stdout)
    assert {"A=1", "C=3"} <= set(config["config"]["Env"]) and config["config"]["Labels"] == {"b": "2"}
    assert config["config"]["ExposedPorts"] == {"80/tcp": {}} and config["config"]["Cmd"] == ["sh"]
    assert [h.get("created_by", "") for h in config["history"]][-6:] == [
        "ENV A=1", "LABEL b=2", "RUN /bin/sh -c echo $A > /a", "ENV C=3", "EXPOSE 80",
        'CMD ["sh"]']

    again = kade_build(str(ctx), "--tag", f"{registry.host}/cfg/app:2", *common).ok()
    assert again["steps"]["built"] == 0 and again["images"][0]["digest"] == first["images"][0]["digest"]

    (ctx / "Dockerfile").write_text(CONFIG_STEPS.format(base=base_image.ref).replace("ENV A=1", "ENV A=9"))
    changed = kade_build(str(ctx), "--tag", f"{registry.host}/cfg/app:3", *common).ok()
    assert changed["steps"]["built"] == 6 and len(step_digests(client, stages)) == 4
