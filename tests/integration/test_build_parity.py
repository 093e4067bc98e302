"""Parity with buildah (`buildah bud --format docker --isolation chroot`): the same Dockerfiles, the same
base, built by both; flattened file trees (type, mode, uid, gid, content, link target) and config
(Env, Cmd, Entrypoint, WorkingDir, User, ExposedPorts, Labels, Volumes, StopSignal, Healthcheck) must match.

Deliberate differences (documented, not compared): buildah's `io.buildah.version` label; timestamps;
the order of Env entries when ENV replaces an inherited variable (kade keeps it in place, as BuildKit's
addEnv does; buildah 1.28 moves it to the end), so Env is compared as a set; an ENTRYPOINT that
resets the inherited CMD leaves no Cmd in kade (as BuildKit) and `[]` in buildah — both mean none
(empty and absent fields are compared as equal).
`COPY --chmod` writes into an existing directory: the directories an octal --chmod creates take its
mode in BuildKit and kade, 0755 in buildah 1.28 (tests/integration/test_build_semantics.py).
buildah leaves its RUN mountpoints (/dev, /proc, /sys, /run, /etc/hosts, ...) in the image; kade doesn't.
Where buildah departs from Docker's documented rules, DOCKER_RULES pins the Docker behaviour instead
(shell-form CMD/ENTRYPOINT use the current SHELL: buildah 1.28 ignores SHELL there).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from registry.client import RegistryClient
from registry.model import parse_manifest

pytestmark = pytest.mark.skipif(shutil.which("buildah") is None, reason="buildah is not installed")

CONFIG_KEYS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts", "Labels", "Volumes",
               "StopSignal", "Healthcheck")

CORPUS = {
    "copy-config": """\
FROM {base}
COPY one.txt /one.txt
COPY dir /opt/dir
COPY --chown=1000:50 dir/ /home/app/dir/
COPY --chmod=600 two.sh /opt/dir/
COPY *.txt /globbed/
ENV A=1 B="two words" PATH=/opt/bin:$PATH
LABEL org.example.a=1 "b c"=d
WORKDIR /srv/app
WORKDIR sub
USER app:staff
EXPOSE 80 53/udp
VOLUME /data
STOPSIGNAL SIGINT
HEALTHCHECK --interval=30s --retries=2 CMD wget -q localhost
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo ok"]
""",
    "multistage": """\
ARG BASE={base}
FROM $BASE AS build
COPY dir /src
FROM scratch AS files
COPY one.txt /one.txt
FROM $BASE
COPY --from=build /src /app
COPY --from=files /one.txt /app/one.txt
ENTRYPOINT ["/bin/cat"]
""",
    "run": """\
FROM {base}
RUN mkdir -p /opt/app/bin && echo hi > /opt/app/bin/hi && chmod 4750 /opt/app/bin/hi && ln -s bin/hi /opt/app/link
RUN rm -f /bin/vi /etc/group && mkdir -p /etc/empty.d && ln /opt/app/bin/hi /opt/app/hard
RUN rm -rf /home/app && mkdir -p /home/app/fresh && chown 1000:1000 /home/app/fresh
WORKDIR /work
USER app
RUN touch /tmp/by-app && mkdir -p /home/app/fresh/sub
""",
    "shell-forms": """\
FROM {base}
SHELL ["/bin/sh", "-e", "-c"]
CMD echo $HOME
ENTRYPOINT exec /bin/sh
""",
}


# buildah (chroot isolation) leaves the mountpoints and files of its RUN environment in the image when
# the base lacks them; kade's sandbox removes what it created, so a RUN's layer holds only the RUN's work.
BUILDAH_RUN_RESIDUE = ("dev", "proc", "sys", "run", "etc/hostname", "etc/hosts", "etc/resolv.conf")

DOCKER_RULES = {
    "shell-forms": {"Cmd": ["/bin/sh", "-e", "-c", "echo $HOME"],
                    "Entrypoint": ["/bin/sh", "-e", "-c", "exec /bin/sh"]},
}


@pytest.fixture(scope="module")
def parity_context(tmp_path_factory):
    ctx = tmp_path_factory.mktemp("parity-ctx")
    (ctx / "dir" / "nested").mkdir(parents=True)
    (ctx / "dir" / "nested" / "deep.txt").write_text("deep\n")
    (ctx / "dir" / "x.txt").write_text("x\n")
    os.symlink("x.txt", ctx / "dir" / "link")
    (ctx / "one.txt").write_text("one\n")
    (ctx / "two.sh").write_text("#!/bin/sh\necho two\n")
    os.chmod(ctx / "two.sh", 0o755)
    return ctx


def buildah(store: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = ["buildah", "--root", str(store / "root"), "--runroot", str(store / "run"), "--storage-driver", "vfs",
           *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stderr}"
    return out


def flatten(ref: str, dest: Path) -> dict:
    """Apply every layer of `ref` (pulled with kade's registry client) onto `dest`; return the config."""
    from builder.unpack import apply_layer

    dest.mkdir(parents=True)
    with RegistryClient() as client:
        repo = client.repository(ref.rsplit(":", 1)[0])
        body, desc = repo.get_manifest(ref.rsplit(":", 1)[1])
        manifest = parse_manifest(body, desc.media_type)
        for layer in manifest.layers:
            with repo.open_blob(layer.digest) as f:
                apply_layer(f, dest, layer.media_type)
        with repo.open_blob(manifest.config.digest) as f:
            return json.loads(f.read())


def tree(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(p.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(p)
            else:
                content = ""
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, content)
    return out


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_parity_with_buildah(name, registry, base_image, parity_context, kade_build, tmp_path):
    (tmp_path / "Dockerfile").write_text(CORPUS[name].format(base=base_image.ref))
    kade_ref = f"{registry.host}/parity/kade-{name}:1"
    bah_ref = f"{registry.host}/parity/buildah-{name}:1"
    res = kade_build(str(parity_context), "-f", str(tmp_path / "Dockerfile"), "--tag", kade_ref,
                     "--cache-dir", str(tmp_path / "cache"))
    assert res.code == 0, res.stderr
    store = tmp_path / "buildah"
    buildah(store, "bud", "--format", "docker", "--isolation", "chroot", "--tls-verify=false", "-q",
            "-f", str(tmp_path / "Dockerfile"), "-t", bah_ref, str(parity_context))
    buildah(store, "push", "--tls-verify=false", bah_ref)

    kcfg = flatten(kade_ref, tmp_path / "kade-tree")
    bcfg = flatten(bah_ref, tmp_path / "buildah-tree")
    kt, bt = tree(tmp_path / "kade-tree"), tree(tmp_path / "buildah-tree")
    for residue in BUILDAH_RUN_RESIDUE:
        bt.pop(residue, None)
    assert {k: v for k, v in kt.items() if bt.get(k) != v} == {k: v for k, v in bt.items() if kt.get(k) != v}
    bcfg["config"].get("Labels", {}).pop("io.buildah.version", None)
    if not bcfg["config"].get("Labels"):
        bcfg["config"].pop("Labels", None)
    for key in CONFIG_KEYS:
        if key in DOCKER_RULES.get(name, {}):
            assert kcfg["config"].get(key) == DOCKER_RULES[name][key], key
            continue
        if key == "Env":
            assert sorted(kcfg["config"]["Env"]) == sorted(bcfg["config"]["Env"])
            continue
        # buildah writes every field, empty ones as "" / [] / null; absent and empty mean the same
        assert (kcfg["config"].get(key) or None) == (bcfg["config"].get(key) or None), key
