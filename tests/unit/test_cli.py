import json
import subprocess
import sys

import pytest

from kade.cli import main


def test_no_command_is_usage_error(capsys):
    assert main([]) == 2


def test_unknown_command_exits_2(capsys):
    assert main(["no-such-command"]) == 2
    assert "invalid choice: 'no-such-command'" in capsys.readouterr().err


def test_usage_error_with_json_output_prints_a_json_error(capsys):
    assert main(["cache", "prune", "--older-than", "soon", "-o", "json"]) == 2
    out = capsys.readouterr().out
    error = json.loads(out)
    assert error["kind"] == "usage" and error["exit_code"] == 2 and "--older-than" in error["error"]


def test_help_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "kade", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "usage: kade" in out.stdout


def test_every_command_is_mapped_to_the_module_that_registers_it():
    """COMMAND_HOME lets a command load only its own module; a stale entry would break it."""
    from kade.cli import COMMAND_HOME, build_parser

    import importlib.util

    written = {c for c, m in COMMAND_HOME.items() if importlib.util.find_spec(f"kade.commands.{m}")}
    assert {"build", "image", "deploy", "cleanup"} <= written
    names = set(build_parser()._subparsers._group_actions[0].choices)
    assert written <= names
    for command in written:
        assert command in build_parser(command)._subparsers._group_actions[0].choices


def test_version_is_printed_on_request_only(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("kade ")


def test_a_command_start_imports_neither_package_metadata_nor_yaml():
    """Start-up cost of every command (`kade image copy` is compared with skopeo in bench/)."""
    probe = "import sys, kade.cli; kade.cli.build_parser('image'); print(sorted({'importlib.metadata', 'yaml'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_image_copy_loads_no_other_package():
    """`kade image copy` loads registry/ and the CLI, not builder/, deployer/, kube/ or kade.config (their
    error classes are looked up among loaded modules), nor what only inspect or tag deletion use, nor
    requests and urllib3 (~45 ms: registry/httpclient.py speaks HTTP on the standard library)."""
    probe = ("import sys, kade.cli, kade.interrupt, registry.copy; kade.cli.build_parser('image'); "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('builder', 'deployer', 'kube', 'requests', "
             "'urllib3') or m in ('kade.config', 'registry.imageconfig', 'uuid')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_a_build_with_nothing_to_run_loads_no_executing_module(tmp_path):
    """`kade build` of a context whose steps are all in the registry (every rebuild in CI) plans, looks up,
    publishes and attests: the sandbox, the Linux syscalls, the layer tar reader and zstd, the emulation
    check, kade.yaml's modules and platform.py are loaded only where something runs (start-up time)."""
    probe = ("import sys, builder.build, builder.local, builder.attest, registry.records\n"
             "from builder import sbom\n"
             "from builder.platforms import host_platform\n"
             "from kade.cli import build_parser\n"
             "from kade.commands.build import options_from_args\n"
             f"args = build_parser('build').parse_args(['build', {str(tmp_path)!r}, '--tag', 'r.example/a:1'])\n"
             "options = options_from_args(args)\n"
             "assert options.isolation.userns == 'auto'\n"
             "host_platform()\n"
             "sbom.render(sbom.Inventory([], {}, []), sbom.Subject('r.example/a', 'sha256:' + '0' * 64, '', 'kade'))\n"
             "builder.local.LocalExecutor._check_emulation(type('Executor', (), {'o': options})(), [])\n"
             "print(sorted(m for m in sys.modules if m in ('builder.sandbox', 'builder.rootfs_ops', 'builder.linux', "
             "'builder.sbom.walk', 'builder.tarformat', 'zstandard', 'builder.emulation', 'kade.workspace', "
             "'kade.config', 'platform', 'fractions', 'ctypes', 'requests', 'urllib3')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr


def test_errors_are_classified_by_the_packages_error_classes():
    from deployer.errors import DeployError, UsageError as DeployUsageError
    from kade import errors
    from registry.errors import NotFound

    assert errors.is_expected(NotFound("x")) and errors.is_expected(DeployError("x"))
    assert errors.is_usage(DeployUsageError("x")) and errors.is_usage(errors.UsageError("x"))
    assert not errors.is_expected(RuntimeError("a bug")) and not errors.is_usage(ValueError("a bug"))


@pytest.mark.parametrize("args,message", [
    (["--userns", "host", "--backend", "kubernetes", "--builder-image", "r/b@sha256:" + "0" * 64],
     "--userns is for RUN on this machine"),
    (["--userns", "root"], "invalid choice: 'root'"),
])
def test_userns_flag_misuse_is_a_usage_error(tmp_path, capsys, args, message):
    code = None
    try:
        code = main(["build", str(tmp_path), *args])
    except SystemExit as exc:   # argparse's own refusals
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err
