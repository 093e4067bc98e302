"""`kade deploy`/`plan` input errors are caught before any cluster is contacted: usage errors exit 2,
bad manifests exit 1 naming file and line."""
import subprocess
import sys

import pytest

CM = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"


def kade(*args, cwd=None):
    env = {"PATH": "/usr/bin:/bin", "KUBECONFIG": "/nonexistent/kubeconfig"}
    return subprocess.run([sys.executable, "-m", "kade", *args], capture_output=True, text=True, env=env, cwd=cwd)


@pytest.mark.parametrize("args,message", [
    (["deploy", "-f", "missing.yaml", "--release", "r"], "missing.yaml: no such file"),
    (["deploy", "-f", "cm.yaml", "--release", "r", "--set", "novalue"], "expected KEY=VALUE"),
    (["deploy", "-f", "cm.yaml", "--release", "r", "--timeout", "soon"], "invalid duration 'soon'"),
    (["deploy", "-f", "cm.yaml", "--release", "r", "--image", "noref"], "expected NAME=REFERENCE"),
    (["deploy", "-f", "-", "--values", "-", "--release", "r"], "stdin ('-') can be used only once"),
    (["plan", "-f", "cm.yaml"], "--release"),
    (["deploy", "-f", "empty", "--release", "r"], "no manifests found"),
])
def test_usage_errors_exit_2(tmp_path, args, message):
    (tmp_path / "cm.yaml").write_text(CM)
    (tmp_path / "empty").mkdir()
    done = kade(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_bad_manifest_exits_1_naming_file_and_line(tmp_path):
    (tmp_path / "bad.yaml").write_text(CM + "data:\n  a: [1,\n")
    done = kade("deploy", "-f", "bad.yaml", "--release", "r", cwd=tmp_path)
    assert done.returncode == 1
    assert "bad.yaml:" in done.stderr and "invalid YAML" in done.stderr and "Traceback" not in done.stderr


def test_unreachable_cluster_is_one_clear_error(tmp_path):
    (tmp_path / "cm.yaml").write_text(CM)
    done = kade("deploy", "-f", "cm.yaml", "--release", "r", cwd=tmp_path)
    assert done.returncode == 1
    assert "kubeconfig" in done.stderr.lower() and "Traceback" not in done.stderr
