"""Pure helpers of builder/build.py: stages repo names, platform choice, layer media types."""
import pytest

from builder.options import stages_repo_for
from builder.store import pick_platform as _pick_platform
from builder.errors import BuildError
from registry import mediatypes as mt
from registry.image import Layer
from registry.model import Descriptor, Index

D = "sha256:" + "a" * 64


@pytest.mark.parametrize("tag,repo", [
    ("127.0.0.1:5000/team/app:v1", "127.0.0.1:5000/team/app-stages"),
    ("registry.example.com/app", "registry.example.com/app-stages"),
    ("app:v2", "docker.io/library/app-stages"),
    ("localhost:5000/a/b/c@sha256:" + "b" * 64, "localhost:5000/a/b/c-stages"),
])
def test_stages_repo_for(tag, repo):
    assert stages_repo_for(tag) == repo


def _index(*platforms):
    return Index(manifests=[Descriptor(mt.OCI_MANIFEST, "sha256:" + str(i) * 64, 1,
                                       platform=dict(zip(("os", "architecture", "variant"), p.split("/"))))
                            for i, p in enumerate(platforms, 1)], media_type=mt.OCI_INDEX)


@pytest.mark.parametrize("platforms,want,index", [
    (["linux/arm64/v8", "linux/amd64"], "linux/amd64", 1),
    (["linux/arm/v6", "linux/arm/v7"], "linux/arm/v7", 1),
    (["linux/arm64"], "linux/arm64", 0),
])
def test_pick_platform(platforms, want, index):
    idx = _index(*platforms)
    assert _pick_platform(idx, want, "r").digest == idx.manifests[index].digest


def test_pick_platform_names_what_exists():
    with pytest.raises(BuildError) as exc:
        _pick_platform(_index("linux/arm64", "windows/amd64"), "linux/amd64", "host/base")
    assert "host/base" in str(exc.value) and "linux/arm64" in str(exc.value)


def test_docker_layers_become_oci_in_our_manifests():
    assert Layer(Descriptor(mt.DOCKER_LAYER_GZIP, D, 3), D).as_oci().media_type == mt.OCI_LAYER_GZIP
    assert Layer(Descriptor(mt.OCI_LAYER_ZSTD, D, 3), D).as_oci().media_type == mt.OCI_LAYER_ZSTD
