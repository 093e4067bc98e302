"""Prints the differential corpus's summary (tests/differential/summary.py) after the run."""
from tests.differential import summary


def pytest_terminal_summary(terminalreporter):
    rows = summary.lines()
    if rows:
        terminalreporter.section("differential corpus: kade vs BuildKit")
        for row in rows:
            terminalreporter.write_line(row)
