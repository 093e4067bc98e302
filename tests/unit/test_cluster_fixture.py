"""The pure parts of tests/fixtures/cluster.py: reading what tests/cluster/up reports."""
import json

import pytest

from tests.fixtures.cluster import load_cluster, parse_up_output


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        ("export KUBECONFIG=/var/lib/kade-cluster/admin.kubeconfig\n", "/var/lib/kade-cluster/admin.kubeconfig"),
        ("noise\nmore noise\nexport KUBECONFIG=/a b/c\n\n", "/a b/c"),
        ("export KUBECONFIG=/x", "/x"),
    ],
)
def test_parse_up_output(stdout: str, expected: str) -> None:
    assert parse_up_output(stdout) == expected


@pytest.mark.parametrize("stdout", ["", "\n", "export KUBECONFIG=/x\nsomething after", "KUBECONFIG=/x"])
def test_parse_up_output_rejects_other_last_lines(stdout: str) -> None:
    with pytest.raises(ValueError, match="did not end with"):
        parse_up_output(stdout)


def test_load_cluster(tmp_path) -> None:
    info = tmp_path / "cluster.json"
    info.write_text(json.dumps({
        "kubeconfig": "/ignored", "registry": "10.245.0.1:5000", "logs": "/var/lib/kade-cluster/logs",
        "base_image": "10.245.0.1:5000/kade/debian:bookworm", "kubernetes_version": "v1.34.4",
    }))
    cluster = load_cluster(info, "/k/admin.kubeconfig")
    assert cluster.kubeconfig == "/k/admin.kubeconfig"
    assert cluster.registry == "10.245.0.1:5000"
    assert cluster.base_image == "10.245.0.1:5000/kade/debian:bookworm"
    assert cluster.logs == "/var/lib/kade-cluster/logs"


def test_load_cluster_names_a_missing_key(tmp_path) -> None:
    info = tmp_path / "cluster.json"
    info.write_text(json.dumps({"registry": "r:1"}))
    with pytest.raises(ValueError, match="cluster.json lacks base_image, logs: run tests/cluster/up"):
        load_cluster(info, "/k")
