"""Messages that point at the user's own file and the flag or key that fixes it (issue 21), and a JSON
result for every failure with -o json."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest


def commit_project(root: Path, kade_yaml: str, files: dict[str, str]) -> Path:
    root.mkdir()
    (root / "kade.yaml").write_text(kade_yaml)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    return root


def test_a_kade_yaml_error_names_the_users_file(kade_cli, tmp_path):
    project = commit_project(tmp_path / "shop", "project: shop\nimages:\n  web: {context: web\n",
                             {"web/Dockerfile": "FROM scratch\n"})
    done = kade_cli("build", "--dir", str(project), "--repo", "127.0.0.1:1/shop", cwd=tmp_path)
    assert done.returncode == 1
    assert "kade: error: shop/kade.yaml:4: not valid YAML" in done.stderr
    assert "kade-project-" not in done.stderr  # never the temporary export, deleted by now


def test_a_missing_dockerfile_names_the_kade_yaml_key_not_a_flag(kade_cli, tmp_path):
    project = commit_project(tmp_path / "shop", "project: shop\nimages:\n  web: {context: web, dockerfile: Nope}\n",
                             {"web/Dockerfile": "FROM scratch\n"})
    done = kade_cli("build", "--repo", "127.0.0.1:1/shop", cwd=project)
    assert done.returncode == 1
    assert "images.web.dockerfile: 'Nope' is not in folder 'web'" in done.stderr
    assert "-f" not in done.stderr.split("kade: error:", 1)[1]


def test_ssh_with_a_missing_socket_says_so(kade_cli, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    done = kade_cli("build", str(tmp_path), "--ssh", f"default={tmp_path}/missing.sock")
    assert done.returncode == 2
    assert f"--ssh default={tmp_path}/missing.sock: no such socket" in done.stderr


def test_ssh_with_a_file_that_is_not_a_socket(kade_cli, tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    done = kade_cli("build", str(tmp_path), "--ssh", f"default={tmp_path}/Dockerfile")
    assert done.returncode == 2 and "not a socket" in done.stderr


@pytest.mark.parametrize("args,code,kind", [
    (["build", "{tmp}", "-t", "127.0.0.1:1/x/y:1"], 1, "failed"),
    (["build", "{tmp}/missing"], 2, "usage"),
    (["build", "{tmp}", "--parallel", "x"], 2, "usage"),
    (["cache", "prune", "--older-than", "-5"], 2, "usage"),
    (["image", "inspect", "127.0.0.1:1/x/y:1"], 1, "failed"),  # inspect's result is JSON, so is its error
])
def test_every_failure_with_json_output_prints_a_json_result(kade_cli, tmp_path, args, code, kind):
    (tmp_path / "Dockerfile").write_text("FROM 127.0.0.1:1/base:1\n")
    argv = [a.format(tmp=tmp_path) for a in args]
    done = kade_cli(*argv, *(["-o", "json"] if argv[:2] != ["image", "inspect"] else []),
                    env={"KADE_TIMEOUT": "1", "KADE_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == code, done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] is False and result["kind"] == kind and result["exit_code"] == code
    assert result["error"] and result["error"] in done.stderr
