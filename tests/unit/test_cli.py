import subprocess
import sys

import pytest

from kade.cli import main


def test_no_command_is_usage_error(capsys):
    assert main([]) == 2


def test_unknown_command_exits_2():
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_help_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "kade", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "usage: kade" in out.stdout
