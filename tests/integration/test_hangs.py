"""A server that accepts and never answers: every command gives up within its timeout and names what
it waited for (issue 21: `kade image inspect` was silent for 609 s). The silent server is a real
listening socket (the real fault); the stalled download is the real registry behind a proxy that stops
passing bytes. KADE_TIMEOUT shortens the wait where the default itself is not what is tested."""
from __future__ import annotations

import io
import json
import random
import tarfile
import subprocess

import pytest

from tests.fixtures.build import push_layers

SHORT = {"KADE_TIMEOUT": "3"}


def test_registry_that_never_answers_is_named_within_the_default_30_s(silent_server, kade_cli):
    done = kade_cli("image", "inspect", f"{silent_server.host}/team/app:1")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert (f"registry {silent_server.host} accepted the connection but did not answer within 30 s "
            "(waiting for manifest 1)") in done.stderr
    assert done.elapsed < 45  # the 30 s budget (the plain-HTTP probe included), not 5 attempts x 120 s


@pytest.mark.parametrize("command", [
    ["image", "tags", "{host}/team/app"],
    ["image", "copy", "{host}/team/app:1", "oci:{tmp}/layout:1"],
    ["image", "delete", "{host}/team/app:1"],
    ["cleanup", "--repo", "{host}/team/app", "--without-kube", "--git", "{tmp}", "--dry-run"],
    ["purge", "--repo", "{host}/team/app", "--yes"],
])
def test_every_registry_command_gives_up_and_says_on_what(silent_server, kade_cli, tmp_path, command):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    args = [a.format(host=silent_server.host, tmp=tmp_path) for a in command]
    done = kade_cli(*args, "--output", "json", env=SHORT)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"registry {silent_server.host} accepted the connection but did not answer within 3 s" in done.stderr
    error = json.loads(done.stdout)  # -o json: the failure is a JSON result too
    assert error["kind"] == "failed" and error["exit_code"] == 1 and silent_server.host in error["error"]
    assert done.elapsed < 30


def test_build_from_a_base_on_a_silent_registry(silent_server, kade_cli, tmp_path):
    (tmp_path / "Dockerfile").write_text(f"FROM {silent_server.host}/base/busybox:1\nRUN true\n")
    done = kade_cli("build", str(tmp_path), "--cache-dir", str(tmp_path / "cache"), env=SHORT)
    assert done.returncode == 1, done.stderr
    assert "Dockerfile:1:" in done.stderr
    assert f"registry {silent_server.host} accepted the connection but did not answer within 3 s " \
           "(waiting for manifest 1)" in done.stderr


def test_a_registry_that_stops_sending_a_blob_is_given_up_on(registry, fault_proxy, kade_cli, tmp_path):
    layer = random.Random(7).randbytes(3 << 20)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("noise")
        info.size = len(layer)
        tf.addfile(info, io.BytesIO(layer))
    image = push_layers(registry.host, "hang/blob", "1", [buf.getvalue()])
    proxy = fault_proxy(registry.host)
    proxy.cut(downstream_after=1 << 20, stall=True, times=100)
    done = kade_cli("image", "copy", f"{proxy.host}/hang/blob:1", f"oci:{tmp_path}/out:1", env=SHORT)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"registry {proxy.host} sent nothing for 3 s while downloading blob {image.layer_digest}" in done.stderr \
        or f"registry {proxy.host} accepted the connection but did not answer within 3 s" in done.stderr
    assert done.elapsed < 30
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.endswith(".part")]


def test_api_server_that_never_answers_a_build(silent_kubeconfig, base_image, registry, kade_cli, tmp_path):
    (tmp_path / "Dockerfile").write_text(f"FROM {base_image.ref}\nRUN true\n")
    done = kade_cli("build", str(tmp_path), "--backend", "kubernetes", "--kubeconfig", str(silent_kubeconfig),
                    "--builder-image", f"{registry.host}/kade/builder:none", "-t", f"{registry.host}/hang/app:1",
                    "--cache-dir", str(tmp_path / "cache"), env=SHORT)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    host = silent_kubeconfig.read_text().split('server: "')[1].split('"')[0]
    assert f"the Kubernetes API server {host} accepted the connection but did not answer within 3 s " \
           "(waiting for GET /apis/coordination.k8s.io/v1/namespaces/kade-builds/leases)" in done.stderr
    assert done.elapsed < 30


def test_api_server_that_never_answers_a_cleanup_scan(silent_kubeconfig, registry, kade_cli, tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    done = kade_cli("cleanup", "--repo", f"{registry.host}/hang/app", "--kubeconfig", str(silent_kubeconfig),
                    "--git", str(tmp_path), "--dry-run", env=SHORT)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "did not answer within 3 s" in done.stderr and "--without-kube" in done.stderr
    assert done.elapsed < 30


def test_kade_timeout_that_is_not_a_number(kade_cli):
    done = kade_cli("image", "tags", "127.0.0.1:1/team/app", env={"KADE_TIMEOUT": "soon"})
    assert done.returncode == 1 and "$KADE_TIMEOUT='soon': expected a number of seconds" in done.stderr
    assert "Traceback" not in done.stderr
