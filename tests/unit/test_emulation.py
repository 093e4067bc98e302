"""User-mode emulation checks (builder/emulation.py): which platforms need qemu, what a binfmt_misc
handler must be, and the errors that name the package. The binfmt_misc directory is a temporary one
here (registering on the host is the integration test's business)."""
from pathlib import Path

import pytest

from builder.emulation import Handler, ensure_emulation, handler_name, handler_problem, needs_emulation, parse_handler
from builder.errors import BuildError
from registry.model import Platform

AMD64, ARM64 = Platform("linux", "amd64"), Platform("linux", "arm64")
REGISTERED = """enabled
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
flags: POF
offset 0
magic 7f454c460201010000000000000000000200b700
"""


@pytest.mark.parametrize("target, host, needed", [
    (AMD64, AMD64, False),
    (ARM64, AMD64, True),
    (Platform("linux", "arm64", "v8"), ARM64, False),
    (Platform("linux", "386"), AMD64, False),
    (AMD64, ARM64, True),
    (Platform("linux", "arm", "v7"), AMD64, True),
])
def test_which_platforms_need_emulation(target, host, needed):
    assert needs_emulation(target, host) is needed


@pytest.mark.parametrize("platform, name", [(ARM64, "qemu-aarch64"), (AMD64, "qemu-x86_64"),
                                            (Platform("linux", "arm", "v7"), "qemu-arm"),
                                            (Platform("linux", "riscv64"), "qemu-riscv64")])
def test_handler_names(platform, name):
    assert handler_name(platform) == name


def test_unknown_architecture_has_no_handler():
    with pytest.raises(BuildError, match="no qemu handler for sparc64"):
        handler_name(Platform("linux", "sparc64"))


def test_parse_handler():
    assert parse_handler(REGISTERED) == Handler(True, "/usr/libexec/qemu-binfmt/aarch64-binfmt-P", "POF")
    assert parse_handler("disabled\ninterpreter /x\nflags: \n").enabled is False


@pytest.mark.parametrize("handler, problem", [
    (None, "not registered"),
    (Handler(False, "/q", "F"), "disabled"),
    (Handler(True, "/usr/bin/qemu-aarch64", "P"), "lacks the F flag"),
    (Handler(True, "/q", "OCF"), None),
])
def test_handler_problems(handler, problem):
    found = handler_problem("qemu-aarch64", handler)
    assert (found is None) if problem is None else (problem in found)


def test_missing_package_is_named(tmp_path: Path):
    (tmp_path / "register").write_text("")
    with pytest.raises(BuildError) as err:
        ensure_emulation(ARM64, AMD64, binfmt=tmp_path, confs=(tmp_path / "none",))
    text = str(err.value)
    assert "RUN for linux/arm64 on this linux/amd64 machine needs user-mode emulation" in text
    assert "qemu-aarch64 is not registered" in text and "apt-get install qemu-user-static" in text


def test_a_handler_without_f_is_refused(tmp_path: Path):
    (tmp_path / "qemu-aarch64").write_text(REGISTERED.replace("flags: POF", "flags: P"))
    with pytest.raises(BuildError, match="lacks the F flag"):
        ensure_emulation(ARM64, AMD64, binfmt=tmp_path)


def test_the_package_file_is_registered_when_only_the_handler_is_missing(tmp_path: Path):
    binfmt, confs = tmp_path / "binfmt", tmp_path / "binfmt.d"
    binfmt.mkdir()
    confs.mkdir()
    (binfmt / "register").write_text("")
    line = ":qemu-aarch64:M::\\x7fELF:\\xff\\xff:/usr/libexec/qemu-binfmt/aarch64-binfmt-P:OPF"
    (confs / "qemu-aarch64.conf").write_text("# qemu\n" + line + "\n")
    with pytest.raises(BuildError, match="not registered"):  # a plain directory registers nothing...
        ensure_emulation(ARM64, AMD64, binfmt=binfmt, confs=(confs,))
    assert (binfmt / "register").read_text() == line  # ...but the package's line was written to it


def test_registered_handler_and_native_platforms_pass(tmp_path: Path):
    (tmp_path / "qemu-aarch64").write_text(REGISTERED)
    ensure_emulation(ARM64, AMD64, binfmt=tmp_path)
    ensure_emulation(AMD64, AMD64, binfmt=tmp_path / "absent")
