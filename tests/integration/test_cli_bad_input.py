"""Every flag and argument of every command, given bad values: exit 1 or 2, a message that names the flag
or the file, never a traceback (issue 21).

The cases are made from the argparse definitions: each argument that takes a value is classified by its
metavar, dest or type (a path, a directory, a file to write, a duration, a number, a reference, a host,
...) and gets that kind's bad values. A new argument that fits no kind fails `test_every_argument_is_
classified` until it is classified here, so nothing new goes untested.

Nothing here needs a server: registries are 127.0.0.1:1 and the kubeconfig points at it too (refused at
once), with KADE_TIMEOUT short, so a bad value that slips through fails on the network instead and the
assertion that the message names the flag catches it."""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kade.cli import build_parser, main

NOWHERE = "127.0.0.1:1"
SKIPPED_COMMANDS = {("build-stage",)}  # internal: what a builder pod runs, never typed by a user

# kinds by metavar, then by dest; `type=int/float` is a number; `choices` are argparse's own check
KIND_BY_METAVAR = {
    "DOCKERFILE": "file", "CONTEXT": "dir", "REF": "ref", "SRC": "ref", "DST": "ref", "REPO": "repo",
    "STAGES_REPO": "repo", "HOST": "host", "K=V": "buildarg", "KEY=VALUE": "keyvalue", "NAME=REF": "keyvalue",
    "TEMPLATE": "template", "default[=SOCKET]": "ssh", "id=ID,src=PATH|env=VAR": "secret", "PATH_OR_URL": "git",
    "PATH|k8s://NS/NAME": "key", "A": "ref", "B": "ref", "PREFIX": "outprefix", "SIZE": "size",
}
KIND_BY_DEST = {
    "report": "outfile", "cache_dir": "cachedir", "dir": "dir", "kubeconfig": "yamlfile", "values": "yamlfile",
    "images": "yamlfile", "policy": "yamlfile", "config": "yamlfile", "filename": "file", "ca_file": "pemfile",
    "timeout": "duration", "settle": "duration0", "no_activity_timeout": "duration", "older_than": "number",
    "target": "stage", "only_images": "image", "use_plan": "file", "save_plan": "outfile", "verify_repo": "git",
    "tenant": "tenant", "share": "shares",
}
KIND_BY_COMMAND_DEST = {(("image", "verify"), "repo"): "git",  # (a git checkout there, a registry one elsewhere)
                        (("build",), "platform"): "platform"}
# names the cluster or the registry judges (any string is a valid input here), and hidden flags
FREE_TEXT = {"namespace", "cache_pvc", "kube_context", "context", "service_account", "registry_secret",
             "env_name", "release", "platform", "resources", "builder_id", "trusted_builder", "scan_namespace",
             "cluster_name", "forget"}


@dataclass
class Case:
    command: tuple[str, ...]
    action: argparse.Action
    value: str
    kind: str

    @property
    def id(self) -> str:
        name = self.action.option_strings[0] if self.action.option_strings else self.action.dest
        return f"{' '.join(self.command)} {name}={self.value!r}"


@dataclass
class Workspace:
    root: Path
    files: dict[str, Path] = field(default_factory=dict)

    def bad_values(self, kind: str) -> list[str]:
        r = self.root
        under_file = str(r / "afile" / "sub")
        return {
            "file": [str(r / "missing.txt"), str(r / "adir")],
            "yamlfile": [str(r / "missing.yaml"), str(r / "adir"), str(r / "bad.yaml")],
            "pemfile": [str(r / "missing.pem"), str(r / "adir"), str(r / "afile")],
            "outfile": [under_file + "/report.json", str(r / "adir")],
            "dir": [str(r / "missing-dir"), str(r / "afile")],
            "cachedir": [str(r / "afile"), under_file],
            "duration": ["-5", "5 minutes", "0", "soon"],
            "duration0": ["-5", "5 minutes", "soon"],  # 0 is a value (off)
            "number": ["-5", "soon", "nan"],
            "size": ["-5", "soon", "1P", "5 GB extra"],
            "ref": ["http://x y", "team/UPPER:1", f"{NOWHERE}/app:bad tag!", "a@sha256:zz"],
            "repo": ["http://x y", "team/UPPER", f"{NOWHERE}/a b"],
            "host": ["http://x y", "x y", "a/b"],
            "keyvalue": ["novalue"],
            "buildarg": ["=x", "1abc=x"],
            "template": ["{{ unclosed", "{{ nosuch }}"],
            "ssh": [f"default={r / 'missing.sock'}", "other=/x"],
            "secret": [f"id=s,src={r / 'missing'}", f"src={r / 'afile'}", f"id=s,src={r / 'adir'}"],
            "git": [str(r / "missing-repo"), str(r / "afile")],
            "key": [str(r / "missing.key"), str(r / "adir"), "k8s://no-name"],
            "outprefix": [under_file + "/k", str(r / "missing-dir" / "k")],
            "stage": ["nosuch"],
            "tenant": ["", "team\x01a", "x" * 513],
            "shares": ["nosuch", "trees,bogus"],
            "platform": ["linux", "linux/amd64,", "linux/am d64", "linux/arm64/v8/x"],
            "image": ["nosuch"],
        }[kind]


def classify(action: argparse.Action, command: tuple[str, ...] = ()) -> str | None:
    """The kind of an argument that takes a value; "free" for free text; None if unknown."""
    if action.nargs == 0 or action.choices is not None:
        return "choices"
    if (command, action.dest) in KIND_BY_COMMAND_DEST:
        return KIND_BY_COMMAND_DEST[(command, action.dest)]
    if action.dest in FREE_TEXT:
        return "free"
    if action.dest in KIND_BY_DEST:
        return KIND_BY_DEST[action.dest]
    if action.metavar in KIND_BY_METAVAR:
        return KIND_BY_METAVAR[action.metavar]
    if getattr(action.type, "__name__", "") in ("int", "float", "positive_int", "hours"):
        return "number"
    return None


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, path + (name,))
    if path:  # a command with subcommands (cleanup) runs on its own too
        yield path, parser


def value_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
            and a.nargs != 0 and a.help != argparse.SUPPRESS]


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    r = tmp_path_factory.mktemp("bad-input")
    (r / "afile").write_text("just a file\n")
    (r / "adir").mkdir()
    (r / "bad.yaml").write_text("key: [unclosed\n  - {: x\n")
    (r / "keys").mkdir()
    subprocess.run([sys.executable, "-m", "kade", "image", "keygen", str(r / "key")], check=True, capture_output=True,
                   env={**os.environ, "KADE_SIGN_PASSWORD": ""})
    (r / "ctx").mkdir()
    (r / "ctx" / "Dockerfile").write_text(f"FROM {NOWHERE}/base/img:1\nRUN true\n")
    (r / "manifests").mkdir()
    (r / "manifests" / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    (r / "kubeconfig").write_text(
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'http://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
        "current-context: x\n")
    project = r / "project"
    (project / "web").mkdir(parents=True)
    (project / "web" / "Dockerfile").write_text(f"FROM {NOWHERE}/base/img:1\nRUN true\n")
    (project / "deploy").mkdir()
    (project / "deploy" / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    (project / "kade.yaml").write_text(f"project: demo\nrepo: {NOWHERE}/demo\nimages:\n  web:\n    context: web\n"
                                       "deploy:\n  manifests: deploy\n")
    git = ["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    return Workspace(r)


def baseline(command: tuple[str, ...], action: argparse.Action, ws: Workspace) -> tuple[dict[str, str], list[str]]:
    """(positional values, options) that make `command` consume `action`'s value, and otherwise valid."""
    r = ws.root
    kube = ["--kubeconfig", str(r / "kubeconfig")]
    group = getattr(action, "container", None)
    in_cluster = getattr(group, "title", "") and "in-cluster" in group.title
    match command:
        case ("build",) if action.dest in ("dir", "env_name", "stages_repo", "add_tag", "report", "only_images"):
            return {}, ["--dir", str(r / "project"), "--cache-dir", str(r / "cache")]
        case ("build",) if in_cluster:
            return {"context": str(r / "ctx")}, ["-t", f"{NOWHERE}/t/app:1", "--cache-dir", str(r / "cache"),
                                                 "--backend", "kubernetes", "--builder-image",
                                                 f"{NOWHERE}/kade/builder:1", *kube]
        case ("build",):
            return {"context": str(r / "ctx")}, ["-t", f"{NOWHERE}/t/app:1", "--cache-dir", str(r / "cache")]
        case ("converge",):
            return {}, ["--dir", str(r / "project"), "--cache-dir", str(r / "cache"), *kube]
        case ("deploy",) | ("plan",):
            return {}, ["-f", str(r / "manifests"), "--release", "r", *kube]
        case ("rollback",) | ("history",) | ("uninstall",):
            return {"release": "r"}, kube
        case ("track",):
            return {"resources": "deployment/x"}, kube
        case ("cleanup",):
            scan = [] if action.dest in ("kubeconfig", "kube_context") else ["--without-kube"]
            return {}, ["--repo", f"{NOWHERE}/t/app", "--git", str(r / "project"), *scan]
        case ("cleanup", "report"):
            return {}, ["--repo", f"{NOWHERE}/t/app", *kube]
        case ("cleanup", "clusters"):
            return {}, ["--repo", f"{NOWHERE}/t/app"]
        case ("purge",):
            return {}, ["--repo", f"{NOWHERE}/t/app", "--yes"]
        case ("image", "inspect") | ("image", "delete"):
            return {"ref": f"{NOWHERE}/t/app:1"}, []
        case ("image", "tags"):
            return {"repo": f"{NOWHERE}/t/app"}, []
        case ("image", "copy"):
            return {"src": f"{NOWHERE}/t/app:1", "dst": f"oci:{r / 'layout'}:1"}, []
        case ("image", "verify"):
            return {"ref": f"{NOWHERE}/t/app:1"}, ["--key", str(r / "key.pub")]
        case ("image", "sbom", "diff"):
            return {"a": f"{NOWHERE}/t/app:1", "b": f"{NOWHERE}/t/app:2"}, []
        case ("image", "keygen"):
            return {"prefix": str(r / "keys" / "k")}, []
        case ("cache", "prune"):
            return {}, ["--cache-dir", str(r / "cache")]
    raise AssertionError(f"no baseline for {command}: add one")


def argv_for(case: Case, ws: Workspace) -> list[str]:
    positionals, options = baseline(case.command, case.action, ws)
    if case.action.option_strings:
        flags = set(case.action.option_strings)
        kept, skip = [], False
        for item in options:  # the baseline's own value of this flag goes
            if skip:
                skip = False
                continue
            if item in flags:
                skip = True
                continue
            kept.append(item)
        options = kept + [case.action.option_strings[0], case.value]
    else:
        positionals = {**positionals, case.action.dest: case.value}
    parser = dict(commands(build_parser()))[case.command]
    ordered = [positionals[a.dest] for a in parser._actions if not a.option_strings and a.dest in positionals]
    return [*case.command, *ordered, *options]


def all_cases(ws: Workspace | None = None) -> list[Case]:
    cases = []
    for command, parser in commands(build_parser()):
        if command in SKIPPED_COMMANDS:
            continue
        for action in value_actions(parser):
            kind = classify(action, command)
            if kind in ("free", "choices", None):
                continue
            for value in (ws or Workspace(Path("/ws"))).bad_values(kind):
                cases.append(Case(command, action, value, kind))
    return cases


def test_every_argument_is_classified():
    unknown = [f"{' '.join(c)} {a.option_strings or a.dest} (metavar {a.metavar})"
               for c, p in commands(build_parser()) if c not in SKIPPED_COMMANDS
               for a in value_actions(p) if classify(a, c) is None]
    assert not unknown, f"classify these arguments in {__file__}: {unknown}"


def test_the_walk_covers_every_command_and_kind():
    cases = all_cases()
    assert {c.command for c in cases} >= {("build",), ("converge",), ("deploy",), ("cleanup",), ("purge",),
                                          ("image", "copy"), ("cache", "prune"), ("track",)}
    assert {c.kind for c in cases} >= {"file", "yamlfile", "outfile", "dir", "cachedir", "duration", "number",
                                       "ref", "repo", "host", "secret", "ssh"}


@pytest.mark.parametrize("index", range(len(all_cases())), ids=[c.id.replace("/ws", "") for c in all_cases()])
def test_bad_value_is_a_message_naming_it(ws, index, monkeypatch):
    case = all_cases(ws)[index]
    argv = argv_for(case, ws)
    monkeypatch.setenv("KADE_TIMEOUT", "0.5")
    monkeypatch.setenv("CI", "1")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.chdir(ws.root)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # only --help/--version exit this way
            code = exc.code
    stderr = err.getvalue()
    assert "Traceback" not in stderr
    assert code in (1, 2), f"{argv} exited {code}:\n{stderr[-2000:]}"
    names = [*case.action.option_strings, *([case.value] if len(case.value) > 2 else [])]  # "0" is in any address
    message = stderr.split("kade: error:", 1)[-1]
    assert any(n and n in message for n in names), f"{argv}: the message names neither the flag nor the value:\n" \
                                                   f"{stderr[-2000:]}"
