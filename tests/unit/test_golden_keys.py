"""Golden step keys (and layer diffIDs): an accidental change of the key encoding, of what a key
covers, or of how COPY/WORKDIR write a layer fails here, loudly. A deliberate change of the keys
bumps builder/keys.VERSION (every cached step is then rebuilt once) and updates GOLDEN; a deliberate
change of the layers updates LAYERS and says why in the commit (digests of built images change)."""
from __future__ import annotations

import hashlib
import os

import pytest

from builder import keys
from builder.context import BuildContext
from builder.dockerfile import parse_string
from builder.execute import copy_step, ensure_dir, write_layer
from builder.plan import BaseImage, make_plan
from registry.imageconfig import ImageConfig

BASE_CONFIG = ImageConfig("amd64", "linux", runtime={"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["sh"]})

DOCKERFILES = {
    "run-env-arg": """\
ARG VERSION=1.2
FROM base:1
ARG VERSION
ENV APP=/app MODE=prod
RUN echo "$VERSION" > /version && mkdir -p $APP
USER 1000:1000
CMD ["sh"]
""",
    "copy-context": """\
FROM base:1
WORKDIR /srv
COPY --chown=10:20 --chmod=0640 app/ ./app/
COPY *.txt /texts/
ADD data.tar /data/
""",
    "multi-stage-mounts": """\
FROM base:1 AS build
RUN --mount=type=cache,target=/root/.cache,sharing=locked --mount=type=bind,source=app,target=/src make
FROM base:1
COPY --from=build /out /usr/local/bin/
RUN --mount=type=bind,from=build,source=/out,target=/mnt --mount=type=secret,id=tok,env=TOKEN true
RUN --mount=type=tmpfs,target=/tmp,size=64m --network=none true
""",
    "heredocs": """\
FROM base:1
COPY <<EOF /etc/app.conf
mode=${MODE:-dev}
EOF
RUN <<EOF
#!/bin/sh
echo hi
EOF
RUN cat <<EOF > /x
y
EOF
""",
}

GOLDEN = {
    "run-env-arg": [
        "a3e2f7c516761c4ad306c959d01e3d253e3921f39cd6a42436f1f1b5c16da287",
        "bf8dbbb95dfb05d67dc3a83106b9f3f9f0004ed5af4abb939ed144adf1fdca40",
        "9eccbb1d4db604b7ac40a0007ba7c62c5ade155a8ef7fd080335d407aead154a",
        "36432e3638466c5c5af667fc928a053322ec6441a5545ec2b225192763dde0ae",
    ],
    "copy-context": [
        "9dbbe5553f97ba97a5b0435b82ea22b45761269ebdf3f3e5b368f554fc162701",
        "29eaaaa36fbb0cbed861522b65585d3674503aba79a9c8a26a419fb54340ee66",
        "0a0ee9b398e3e720d6c17b49bed4c4c9716a3ac21c4a5a1fd456e34847298459",
        "46e11a5d3807ff4b6bc35506a12899d6302c300d89ee2225ff9d805a100db967",
    ],
    "multi-stage-mounts": [
        "e60f5c206973eba1743fb9c80b0004847484dac669b4498b77cd96d5ae5146b8",
        "b49c31aa96a42338fa7d42529f6188d7bddd446f50e3898a492a7ab2fc0cee6d",
        "f123f8c1fddd349f0c4c89997dfdf2a5290b300bc1246a019a91fcc16905fbdd",
        "4848195d009c1cd6e87ee60a7d0d7d138332bbcc5681fd87012b732bcbdd086b",
    ],
    "heredocs": [
        "d4da9f979d51a9817f9f8b9c92ee2857514ff2f112c836b35622affb243df918",
        "77dc66f66aa79f82de95c866710198b7361a084aaf644d6efbb48c7ffd8712d5",
        "b7f1659f64e10daeed2b4fcbadeaa14aff9304b3c471196ab003ef534edbc427",
    ],
}

# diffID of each COPY/WORKDIR layer of "copy-context" applied to an empty rootfs, SOURCE_DATE_EPOCH set
LAYERS = [
    "sha256:fc5c3fe4b5538dbe9f88c8513547c0cb4f6b5ce3f70419572054c52cc57f1610",  # WORKDIR /srv
    "sha256:a1adc9dbeaf65523d1846280a9cc344d563d0582b500b15bdc872c26002db3b9",  # COPY --chown --chmod app/ (app/ made 0640, its source's mtime)
    "sha256:1173c62c3c12778966ae0a92f7cea69b73bd6b3d91568ec53ae5bf2f0b7fb1d4",  # COPY *.txt
    "sha256:0c0d4a2623a706835d7bef9301a92f172d82ace1a1be18f5801e2ac89a327d7c",  # ADD data.tar (its implied d/ too)
]
EPOCH = 1_700_000_000


def test_the_key_version_is_the_one_the_goldens_were_made_with():
    assert keys.VERSION == b"kade-step-key/1"


def _resolve(ref: str, platform: str) -> BaseImage:
    return BaseImage(ref=ref, digest="sha256:" + hashlib.sha256(f"{ref} {platform}".encode()).hexdigest(),
                     config=BASE_CONFIG)


@pytest.fixture
def context(tmp_path):
    from tests.fixtures.layers import E, make_tar

    root = tmp_path / "ctx"
    (root / "app" / "lib").mkdir(parents=True)
    files = {"app/main.py": b"print('main')\n", "app/lib/util.py": b"def f():\n    return 1\n",
             "a.txt": b"a\n", "b.txt": b"b\n", ".dockerignore": b"*.log\n", "skip.log": b"ignored\n"}
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    (root / "data.tar").write_bytes(make_tar([E("d/x", data=b"x", mtime=1_600_000_000, mode=0o644)]))
    for p in sorted(root.rglob("*")):  # what a key sees of a file: content and mode, never time or owner
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.utime(p, (1_650_000_000, 1_650_000_000))
    os.chmod(root, 0o755)
    return root


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_golden_step_keys(name, context):
    plan = make_plan(parse_string(DOCKERFILES[name], "Dockerfile"), BuildContext.open(context), _resolve)
    assert [s.key for s in plan.all_steps()] == GOLDEN[name], f"the step keys of {name} changed"


@pytest.mark.skipif(os.geteuid() != 0, reason="layer entries carry owners only root can set")
def test_golden_layers(context, tmp_path):
    plan = make_plan(parse_string(DOCKERFILES["copy-context"], "Dockerfile"), BuildContext.open(context), _resolve)
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir(mode=0o755)
    got = []
    for step in plan.all_steps():
        workdir = step.image_config.working_dir or "/"
        if step.kind == "workdir":
            changes = ensure_dir(rootfs, workdir, epoch=EPOCH)
        else:
            changes = copy_step(rootfs, step.copy, workdir, None, context_root=context, epoch=EPOCH)
        with open(tmp_path / "layer", "wb") as out:
            got.append(write_layer(changes, out, "none", EPOCH).diff_id)
    assert got == LAYERS, f"the layers COPY/ADD/WORKDIR write changed: {got}"
