"""kade's layers as real consumers read them: podman (containers/storage's Go tar reader and its
whiteout handling) runs an image made of a gzip base layer and a zstd layer with a whiteout, an opaque
directory, a setuid file and an odd file name."""
import io
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from builder.changes import Change
from builder.layer import layer_from_directory, write_layer
from registry import mediatypes as mt
from registry.layout import OCILayout
from registry.model import Descriptor, Manifest

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("podman") is None,
                                reason="needs root and podman (installed by scripts/setup)")


def build_image(tiny_base: Path, tmp: Path) -> Path:
    base = tmp / "base"
    shutil.copytree(tiny_base, base, symlinks=True)
    for d in ("data", "opq/sub"):
        (base / d).mkdir(parents=True)
    (base / "data" / "keep").write_text("keep\n")
    (base / "data" / "gone").write_text("gone\n")
    (base / "opq" / "old").write_text("old\n")
    (base / "opq" / "sub" / "older").write_text("older\n")
    out = io.BytesIO()
    base_info = layer_from_directory(base, out, "gzip", epoch=1_700_000_000)
    blobs = [(out.getvalue(), base_info)]

    top = tmp / "top"
    top.mkdir()
    (top / "opq").mkdir()
    (top / "opq" / "new").write_text("new\n")
    (top / "suid").write_text("#!/bin/sh\n")
    os.chmod(top / "suid", 0o4755)
    odd = os.fsdecode(b"odd \xff name")
    (top / odd).write_text("odd\n")
    changes = [Change("data/gone", "delete"), Change("opq", source=str(top / "opq")), Change("opq", "opaque"),
               Change("opq/new", source=str(top / "opq" / "new")), Change("suid", source=str(top / "suid")),
               Change(odd, source=str(top / odd))]
    out = io.BytesIO()
    info = write_layer(changes, out, "zstd", epoch=1_700_000_000)
    blobs.append((out.getvalue(), info))

    layout_dir = tmp / "layout"
    layout = OCILayout(layout_dir, create=True)
    for data, layer_info in blobs:
        layout.write_blob(data, layer_info.digest)
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
              "rootfs": {"type": "layers", "diff_ids": [i.diff_id for _, i in blobs]}}
    config_bytes = json.dumps(config).encode()
    config_digest = layout.write_blob(config_bytes)
    manifest = Manifest(config=Descriptor(mt.OCI_CONFIG, config_digest, len(config_bytes)),
                        layers=[Descriptor(i.media_type, i.digest, i.size) for _, i in blobs])
    layout.tag(layout.write_manifest(manifest.to_bytes(), mt.OCI_MANIFEST), "test")
    return layout_dir


def test_podman_runs_an_image_of_kade_layers(tiny_base, tmp_path):
    layout = build_image(tiny_base, tmp_path)
    storage = Path(tempfile.mkdtemp(prefix="kade-pm-"))   # podman wants a short runroot path
    podman = ["podman", "--root", str(storage / "root"), "--runroot", str(storage / "run"),
              "--storage-driver", "vfs"]
    script = "ls /data; echo --; ls /opq; echo --; stat -c %a /suid; ls / | grep odd | wc -l; cat /opq/new"
    try:
        proc = subprocess.run(podman + ["run", "--rm", "--runtime", "runc", "--network", "none",
                                        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
                                        f"oci:{layout}:test", "/bin/sh", "-c", script],
                              capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run(podman + ["rmi", "--all", "--force"], capture_output=True, timeout=120)
        subprocess.run(podman + ["system", "reset", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(storage, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:-1] == ["keep", "--", "new", "--", "4755", "1", "new"]


def test_layers_written_by_buildah_unpack_to_the_same_tree(tmp_path):
    """The other direction: a layer from buildah (Go's archive/tar via containers/storage) applied by
    kade's unpack gives back the tree buildah was given."""
    from builder.unpack import apply_layer
    from tests.fixtures.layers import tree_state

    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed (scripts/setup installs it)")
    src = tmp_path / "src"
    (src / "dir" / "empty").mkdir(parents=True)
    (src / "dir" / "file").write_bytes(b"content\n" * 100)
    os.link(src / "dir" / "file", src / "dir" / "hardlink")
    os.symlink("/etc/passwd", src / "dir" / "abs-link")
    (src / "suid").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "suid", 0o4755)
    (src / ("long-name-" * 15)).write_bytes(b"long")
    storage = Path(tempfile.mkdtemp(prefix="kade-bh-"))
    buildah = ["buildah", "--root", str(storage / "root"), "--runroot", str(storage / "run"), "--storage-driver", "vfs"]
    try:
        ctr = subprocess.run(buildah + ["from", "scratch"], check=True, capture_output=True, text=True).stdout.strip()
        subprocess.run(buildah + ["copy", ctr, str(src), "/"], check=True, capture_output=True)
        layout = tmp_path / "layout"
        subprocess.run(buildah + ["commit", "--quiet", "--disable-compression=false", ctr, f"oci:{layout}:t"],
                       check=True, capture_output=True, timeout=120)
        subprocess.run(buildah + ["rm", ctr], capture_output=True)
    finally:
        subprocess.run(buildah + ["rmi", "--all", "--force"], capture_output=True)
        shutil.rmtree(storage, ignore_errors=True)
    oci = OCILayout(layout)
    manifest = json.loads(oci.blobs.read(oci.resolve("t").digest))
    config = json.loads(oci.blobs.read(manifest["config"]["digest"]))
    (layer,) = manifest["layers"]
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    with open(oci.blobs.path(layer["digest"]), "rb") as f:
        apply_layer(f, rootfs, layer["mediaType"], digest=layer["digest"],
                    expected_diff_id=config["rootfs"]["diff_ids"][0])
    assert tree_state(rootfs) == tree_state(src)
    assert os.stat(rootfs / "dir" / "file").st_ino == os.stat(rootfs / "dir" / "hardlink").st_ino
