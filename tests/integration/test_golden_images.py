"""Golden image digests: whole local builds (SOURCE_DATE_EPOCH set, into an OCI layout) give the same
manifest, config and layers on any machine, and through any refactoring of the builder. A deliberate
change of what kade writes updates GOLDEN and says why in its commit (every user's digests change).

The base image is made here from fixed bytes (no host binary in it): its one layer holds a tiny
hand-written x86-64 program, `/bin/mkfile`, that writes /hello.txt ("hello\\n") and exits, so a RUN
runs without a shell and its layer is the same everywhere. The base is pushed uncompressed, so its
digests (and with them every step key) follow from these bytes alone, never from a compressor's
version. The built images' layers are gzip (kade's default): GOLDEN pins their diffIDs apart, so a
compressor that changed its output would show as a changed digest with unchanged diffIDs.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tarfile
from pathlib import Path

import pytest


pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="RUN as root in a user namespace needs root")
EPOCH = "1700000000"

BUILDS = {
    # one stage: config instructions, WORKDIR, COPY with flags, a heredoc, a RUN (exec form)
    "single-stage": ("""\
FROM {base}
ENV APP=/app MODE=prod
WORKDIR /app
COPY --chown=10:20 --chmod=0640 app/ ./app/
COPY <<EOF /etc/app.conf
mode=${{MODE}}
EOF
RUN ["/bin/mkfile"]
USER 1000:1000
LABEL org.example.name=golden
EXPOSE 8080/tcp
CMD ["/bin/mkfile"]
""", None),
    # two stages: a RUN in the first, COPY --from into scratch, context files, ENTRYPOINT
    "multi-stage": ("""\
FROM {base} AS build
WORKDIR /out
RUN ["/bin/mkfile"]
COPY *.txt /out/

FROM scratch
COPY --from=build /hello.txt /out/ /srv/
COPY --from=build /bin/mkfile /bin/mkfile
ENTRYPOINT ["/bin/mkfile"]
""", None),
    # --target picks the first of two stages
    "target": ("""\
FROM {base} AS first
RUN ["/bin/mkfile"]
FROM first AS second
COPY a.txt /
""", "first"),
}

GOLDEN_BASE = "sha256:e5eb8fe39d6992d5c74e0cd3e534f6f971c22cc6548966c05324e40afea419b0"
GOLDEN: dict[str, dict[str, object]] = {
    "multi-stage": {
        "digest": "sha256:dca9f7196ff945e14d6a4bc721b99abb8c049511c77671675573a44e77ade24b",
        "config": "sha256:ac04d88be84f6cdb287d3c0226fbd07082007a5607efa6c5d68ac0810df20808",
        "diff_ids": [
            "sha256:af59ccc06cf5e59b9eb0915ee2aee196b76c2e6aeb7229b77f18851aef9d56a1",
            "sha256:f2e5da5df0884d6dccd2adee3ec2a635274dfb20ddb8b5f3de9ba0549aff31dc",
        ],
        "layers": [
            "sha256:9a1276afe8474c96f1fbfaa25b12a4dded1213a883c71c6c0786cb388505f67c",
            "sha256:27bcef92eda47a54e5cd5807b5d26064d5b1bae05373e9689b2e284d86ac89ef",
        ],
    },
    "single-stage": {
        "digest": "sha256:9c88691eed0fac030ce61058c259d7c35d6b96cc995d71288ed840e124dc6e0a",
        "config": "sha256:d6abd26981b0f17b006df12a2f8437d7707f4f6d3637c2c700adf6bdfd0fcf56",
        "diff_ids": [
            "sha256:bc38164134642fb4f0a8ebe17594958c0569532a1b672569b023a1381f29fd9f",
            "sha256:8102f9539f30466d2765282855b67b200a05c388d7b0233d20a6c7a543fbfb60",
            "sha256:e00a78b52935601bf06c6b8f5d93b5f2ba3ceb2154c263a4e5c9b583531177e6",
            "sha256:9c683c03edf6842a4faea7f59884ef4c19884a4b659f879b44fd326bf2c3b84c",
            "sha256:9ed39d6493ae84273c3a8dc1efa5caa4f3c44af022ab7659c042a3f1659f91a0",
        ],
        "layers": [
            "sha256:bc38164134642fb4f0a8ebe17594958c0569532a1b672569b023a1381f29fd9f",
            "sha256:e688e87f6018fae6b7b9f72fe07594fac012ef692e52d2837e2abb2dc1e6e248",
            "sha256:03ae9be4e0b24a3a13b7fb6e2a578483fc0531c9ea5cc229e8402b209b9f1143",
            "sha256:33f375895d221b2f715c77b4a5a4f2df73cda943c36f9abd36834d7eed7e9a6c",
            "sha256:55b0375aa8f184f9acf7db018a18ab2fb4c22afa3c401b066a54852a290b68bd",
        ],
    },
    "target": {
        "digest": "sha256:5d1a3cdd58d0acfa8fa5977d2a791f1a8f4ead58b53fc2a5acf38af731647745",
        "config": "sha256:4b117b1f865d4176807e3e49e796eed993298f7acb7a8571b42ef651c1b0a093",
        "diff_ids": [
            "sha256:bc38164134642fb4f0a8ebe17594958c0569532a1b672569b023a1381f29fd9f",
            "sha256:9ed39d6493ae84273c3a8dc1efa5caa4f3c44af022ab7659c042a3f1659f91a0",
        ],
        "layers": [
            "sha256:bc38164134642fb4f0a8ebe17594958c0569532a1b672569b023a1381f29fd9f",
            "sha256:55b0375aa8f184f9acf7db018a18ab2fb4c22afa3c401b066a54852a290b68bd",
        ],
    },
}


def mkfile_program() -> bytes:
    """A static x86-64 Linux ELF that does open("/hello.txt", O_WRONLY|O_CREAT|O_TRUNC, 0644),
    write(fd, "hello\\n", 6), exit(0)."""
    path, message = b"/hello.txt\0", b"hello\n"
    code_len = 54
    code = b"".join([
        b"\xb8\x02\x00\x00\x00",                                   # mov eax, 2 (open)
        b"\x48\x8d\x3d" + struct.pack("<i", code_len - 12),         # lea rdi, [rip + path]
        b"\xbe\x41\x02\x00\x00",                                   # mov esi, O_WRONLY|O_CREAT|O_TRUNC
        b"\xba\xa4\x01\x00\x00",                                   # mov edx, 0644
        b"\x0f\x05",                                               # syscall
        b"\x89\xc7",                                               # mov edi, eax
        b"\xb8\x01\x00\x00\x00",                                   # mov eax, 1 (write)
        b"\x48\x8d\x35" + struct.pack("<i", code_len + len(path) - 38),  # lea rsi, [rip + message]
        b"\xba" + struct.pack("<I", len(message)),                 # mov edx, len
        b"\x0f\x05",                                               # syscall
        b"\xb8\x3c\x00\x00\x00",                                   # mov eax, 60 (exit)
        b"\x31\xff",                                               # xor edi, edi
        b"\x0f\x05",                                               # syscall
    ])
    assert len(code) == code_len
    body = code + path + message
    vaddr, headers = 0x400000, 64 + 56
    size = headers + len(body)
    elf = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8
    elf += struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, vaddr + headers, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    elf += struct.pack("<IIQQQQQQ", 1, 5, 0, vaddr, vaddr, size, size, 0x1000)
    return elf + body


def base_layer() -> bytes:
    """The base image's layer: a few directories, /etc/passwd and /bin/mkfile, ustar, mtime 0."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        def add(name: str, data: bytes | None = None, mode: int = 0o755) -> None:
            ti = tarfile.TarInfo(name)
            ti.mode, ti.mtime, ti.uname, ti.gname = mode, 0, "", ""
            if data is None:
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))

        for d in ("bin", "etc", "tmp"):
            add(d, mode=0o1777 if d == "tmp" else 0o755)
        add("bin/mkfile", mkfile_program(), 0o755)
        add("etc/passwd", b"root:x:0:0:root:/root:/bin/mkfile\napp:x:1000:1000:app:/:/bin/mkfile\n", 0o644)
        add("etc/group", b"root:x:0:\napp:x:1000:\n", 0o644)
    return buf.getvalue()


def push_base(host: str) -> str:
    """Push the base image (OCI media types, uncompressed layer); its manifest digest."""
    from registry import mediatypes as mt
    from registry.client import ClientOptions, RegistryClient

    layer = base_layer()
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/mkfile"]},
                         "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
                         "history": [{"created_by": "tests/integration/test_golden_images.py"}]},
                        sort_keys=True, separators=(",", ":")).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                           "config": {"mediaType": mt.OCI_CONFIG, "digest": config_digest, "size": len(config)},
                           "layers": [{"mediaType": mt.OCI_LAYER, "digest": layer_digest, "size": len(layer)}]},
                          separators=(",", ":")).encode()
    with RegistryClient(ClientOptions(insecure=(host,))) as client:
        repo = client.repository(f"{host}/golden/base")
        repo.upload_blob(io.BytesIO(layer), layer_digest, len(layer))
        repo.upload_blob(io.BytesIO(config), config_digest, len(config))
        return repo.put_manifest("1", manifest, mt.OCI_MANIFEST)


def read_layout(ref: str) -> dict[str, object]:
    """What GOLDEN pins of an image in an OCI layout (read as plain JSON, not with kade's code)."""
    _, path, tag = ref.split(":", 2)
    root = Path(path)
    index = json.loads((root / "index.json").read_text())
    (desc,) = [m for m in index["manifests"] if (m.get("annotations") or {}).get(
        "org.opencontainers.image.ref.name") == tag]

    def blob(digest: str) -> bytes:
        return (root / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()

    manifest = json.loads(blob(desc["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))
    return {"digest": desc["digest"], "config": manifest["config"]["digest"],
            "diff_ids": config["rootfs"]["diff_ids"], "layers": [la["digest"] for la in manifest["layers"]]}


@pytest.fixture(scope="module")
def golden_base(registry) -> str:
    return f"{registry.host}/golden/base:1"


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_golden_image_digests(name, golden_base, registry, kade_build, tmp_path, monkeypatch):
    base_digest = push_base(registry.host)
    assert base_digest == GOLDEN_BASE, f"the test's base image changed ({base_digest}): fix the fixture, not GOLDEN"
    dockerfile, target = BUILDS[name]
    context = tmp_path / "ctx"
    (context / "app" / "lib").mkdir(parents=True)
    for rel, data in {"app/main.py": b"print('main')\n", "app/lib/util.py": b"x = 1\n", "a.txt": b"a\n",
                      "b.txt": b"b\n", "Dockerfile": dockerfile.format(base=golden_base).encode()}.items():
        (context / rel).write_bytes(data)
    for p in [context, *context.rglob("*")]:  # a fresh checkout: modes as git gives them, any time
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.utime(p, (1_750_000_000, 1_750_000_000))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    args = ["--output", "json", "--insecure-registry", registry.host, "--cache-dir", str(tmp_path / "cache")]
    if target:
        args += ["--target", target]
    result = kade_build(*args, str(context)).ok()
    (image,) = result["images"]
    got = read_layout(image["ref"])
    assert got["digest"] == image["digest"]
    assert got == GOLDEN.get(name), f"the image of {name} changed: {json.dumps(got, indent=1)}"


GOLDEN_STEP_KEYS = [  # the six steps of multi-stage, sorted
    "5abd200f121a28c0b84151133d594048fe8e4304833c72a7cadda4614040f8a3",
    "67c32568e995cd91eae49dfea76b8128be8452beab8cc4492db7f05f9fc3a402",
    "6cbfd0f414ee9fc583fffebacebf57887a3f5d4aa88f889da0d203db89b369f5",
    "75348f0fa6783f38d451782cf1a26107dd57f46c3375684bcedf96ca65e9f337",
    "b0a232da27aa96c95aa9ceeb3180550ab545a3f15bf6de6c85bff4bcdf975d77",
    "c934698026dcfa0af41e0905fe952427d98cd083e339d4b5d2f076e7ea75228a",
]


def test_golden_pushed_image_and_step_keys(golden_base, registry, kade_build, tmp_path, monkeypatch):
    """The multi-stage build pushed with --tag: the same image digest as in the layout, and the step
    images in the stages repo under the golden keys (resolved through the real registry)."""
    from registry.client import ClientOptions, RegistryClient

    push_base(registry.host)
    context = tmp_path / "ctx"
    context.mkdir()
    for rel, data in {"a.txt": b"a\n", "b.txt": b"b\n",
                      "Dockerfile": BUILDS["multi-stage"][0].format(base=golden_base).encode()}.items():
        (context / rel).write_bytes(data)
    for p in [context, *context.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    tag = f"{registry.host}/golden/pushed:1"
    result = kade_build("--output", "json", "--insecure-registry", registry.host, "--cache-dir",
                        str(tmp_path / "cache"), "--tag", tag, str(context)).ok()
    assert result["images"] == [{"ref": tag, "digest": GOLDEN["multi-stage"]["digest"]}]
    with RegistryClient(ClientOptions(insecure=(registry.host,))) as client:
        tags = client.repository(f"{registry.host}/golden/pushed-stages").list_tags()
    keys = sorted(t for t in tags if len(t) == 64)
    assert keys == GOLDEN_STEP_KEYS
