"""`kade deploy`/`plan` input errors are caught before any cluster is contacted: usage errors exit 2,
bad manifests exit 1 naming file and line."""
import json
import socket
import subprocess
import sys
import time

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


def test_a_missing_kubeconfig_is_one_clear_usage_error(tmp_path):
    (tmp_path / "cm.yaml").write_text(CM)
    done = kade("deploy", "-f", "cm.yaml", "--release", "r", cwd=tmp_path)
    assert done.returncode == 2
    assert "kubeconfig" in done.stderr.lower() and "Traceback" not in done.stderr


def _kubeconfig(tmp_path, port):
    path = tmp_path / "kubeconfig"
    path.write_text("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:%d'}}]\n"
                    "users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
                    "current-context: x\n" % port)
    return path


@pytest.mark.parametrize("command", [
    ["deploy", "-f", "cm.yaml", "--release", "r"], ["plan", "-f", "cm.yaml", "--release", "r"],
    ["rollback", "r"], ["history", "r"], ["uninstall", "r"], ["track", "deployment/web"],
])
def test_kubeconfig_that_is_not_yaml_names_the_file_and_json_still_answers(tmp_path, command):
    (tmp_path / "cm.yaml").write_text(CM)
    (tmp_path / "kubeconfig").write_text("clusters: [\n  - name: a\n users: {")
    done = kade(*command, "--kubeconfig", "kubeconfig", "--output", "json", cwd=tmp_path)
    assert done.returncode == 2, done.stderr  # bad input, as for every command that reads a kubeconfig
    assert "Traceback" not in done.stderr and "kubeconfig kubeconfig is not valid YAML at line" in done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] is False and "not valid YAML" in result["error"] and result["exit_code"] == 2


def test_usage_error_with_json_output_prints_json(tmp_path):
    done = kade("deploy", "-f", "cm.yaml", "--release", "r", "--timeout", "5 minutes", "--output", "json", cwd=tmp_path)
    assert done.returncode == 2
    assert json.loads(done.stdout)["exit_code"] == 2


def test_an_api_server_that_never_answers_is_given_up_within_the_timeout(tmp_path):
    """A listener that accepts connections and never answers (issue 21: --timeout 20s took 181 s)."""
    (tmp_path / "cm.yaml").write_text(CM)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        _kubeconfig(tmp_path, listener.getsockname()[1])
        start = time.monotonic()
        done = kade("deploy", "-f", "cm.yaml", "--release", "r", "--kubeconfig", "kubeconfig", "--timeout", "4s",
                    cwd=tmp_path)
        took = time.monotonic() - start
    finally:
        listener.close()
    assert done.returncode == 1, done.stderr
    assert "did not answer GET" in done.stderr and "127.0.0.1" in done.stderr and "Traceback" not in done.stderr
    assert took < 4 + 15, took  # its timeout, plus starting Python (a hang check, not a speed one)


def test_converge_timeout_is_a_usage_error(tmp_path):
    done = kade("converge", "--timeout", "5 minutes", cwd=tmp_path)
    assert done.returncode == 2 and "invalid duration '5 minutes'" in done.stderr
