"""The cluster tests read `kade cleanup --output json`'s report out of a pod log, where the runtime
interleaves stdout and stderr lines in no fixed order (tests/fixtures/cleanup.py `job_report`)."""
import io
import json

import pytest

from kade.output import make_reporter
from tests.fixtures.cleanup import job_report

REPORT = {"result": {"deleted": 12, "failed": 0}, "items": [{"tag": f"t{i}", "action": "delete"} for i in range(3)]}


def _record(message: str) -> str:
    stream = io.StringIO()
    make_reporter("json", stream)("progress", message, done=12, total=12)
    return stream.getvalue().rstrip("\n")


@pytest.mark.parametrize("where", [0, 1, 5, -2, -1, None])
def test_the_report_is_read_wherever_a_progress_record_lands_in_it(where):
    lines = json.dumps(REPORT, indent=2).splitlines()
    if where is not None:
        lines.insert(where if where >= 0 else len(lines) + 1 + where, _record("12/12 deletions done"))
    logs = "\n".join([_record("planning"), *lines, _record("done")]) + "\n"
    assert job_report(logs) == REPORT


def test_a_log_without_a_report_fails_the_test():
    with pytest.raises(pytest.fail.Exception, match="no JSON report"):
        job_report(_record("planning") + "\nTraceback: boom\n")
