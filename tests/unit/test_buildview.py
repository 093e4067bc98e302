"""The build's event stream as users see it (kade/buildview.py): the tally behind the closing summary,
plain lines with step times in CI, JSON records, and the live view's rows in a terminal."""
import io
import json

import pytest

from kade.buildview import BuildTally, BuildView, build_reporter, human_bytes

A = {"image": "default", "stage": "build", "key": "a" * 64, "step": "RUN make"}
B = {"image": "default", "stage": "build", "key": "b" * 64, "step": "COPY . /src"}
C = {"image": "default", "stage": "final", "key": "c" * 64, "step": "COPY --from=build /out /"}


def feed(tally, events):
    for t, kind, message, fields in events:
        tally.feed(kind, message, fields, now=t)


EVENTS = [
    (0.0, "plan", "3 step(s) planned", {"steps": 3, "cached": 1, "image": "default"}),
    (0.1, "cached", "[build] COPY . /src", B),
    (0.2, "step", "[build] RUN make", A),
    (0.5, "output", "compiling", {k: A[k] for k in ("image", "stage", "key")}),
    (2.7, "step-done", "[build] RUN make", {**A, "seconds": 2.5, "layer_bytes": 2_500_000, "pushed_bytes": 2_600_000}),
    (2.8, "shared", "[final] COPY --from=build /out /", C),
    (3.0, "pushed", "reg/app:1@sha256:x", {"ref": "reg/app:1", "digest": "sha256:x", "pushed_bytes": 1_200}),
    (3.1, "warning", "something", {}),
]


def test_the_tally_adds_up_a_build():
    tally = BuildTally(started=0.0)
    feed(tally, EVENTS)
    assert tally.planned == 3 and tally.images == 1 and tally.pushed_bytes == 2_601_200
    assert [(r.text, r.state) for r in tally.steps.values()] == [
        ("COPY . /src", "cached"), ("RUN make", "done"), ("COPY --from=build /out /", "shared")]
    row = tally.steps["default/" + "a" * 64]
    assert row.seconds == 2.5 and row.layer_bytes == 2_500_000 and list(row.output) == ["compiling"]
    text, fields = tally.summary(now=4.0)
    assert text == "1 step(s) built, 1 cached, 1 taken from identical steps running at once, 2.6 MB pushed in 4.0s"
    assert fields == {"built": 1, "cached": 1, "elsewhere": 1, "pushed_bytes": 2_601_200, "seconds": 4.0}


def test_the_same_key_in_two_images_is_two_rows():
    tally = BuildTally(started=0.0)
    feed(tally, [(0, "step", "x", A), (1, "cached", "x", {**A, "image": "tools"})])
    assert [(r.image, r.state) for r in tally.steps.values()] == [("default", "running"), ("tools", "cached")]


@pytest.mark.parametrize("n,text", [(0, "0 B"), (999, "999 B"), (1_500, "1.5 kB"), (2_600_000, "2.6 MB"),
                                    (7_300_000_000, "7.3 GB")])
def test_human_bytes(n, text):
    assert human_bytes(n) == text


def _run(output):
    stream = io.StringIO()
    with build_reporter(output, stream) as report:
        for _, kind, message, fields in EVENTS:
            report(kind, message, **fields)
    return stream.getvalue()


def test_plain_lines_carry_each_steps_time_and_end_with_the_summary():
    lines = _run("text").splitlines()
    done = next(line for line in lines if " step-done " in line)
    assert done.endswith("[build] RUN make (2.5s, 2.5 MB layer)")
    assert " summary " in lines[-1] and "1 step(s) built, 1 cached" in lines[-1]


def test_json_records_keep_their_fields_and_end_with_a_summary_record():
    records = [json.loads(line) for line in _run("json").splitlines()]
    assert [r["kind"] for r in records] == [e[1] for e in EVENTS] + ["summary"]
    assert records[4]["seconds"] == 2.5 and records[4]["message"] == "[build] RUN make"
    assert records[-1]["built"] == 1 and records[-1]["pushed_bytes"] == 2_601_200


def test_the_live_view_shows_rows_and_prints_the_rest_above():
    stream = io.StringIO()
    tally = BuildTally(started=0.0)
    view = BuildView(stream, tally)
    try:
        for _, kind, message, fields in EVENTS[:4]:
            view(kind, message, **fields)
        from rich.console import Console

        out = io.StringIO()
        Console(file=out, width=100).print(view._render())
        rows = out.getvalue().splitlines()
        assert rows[0].startswith("[+] Building") and rows[0].endswith("(1/3)")
        assert rows[1] == " => CACHED [build] COPY . /src"
        assert rows[2].startswith(" => [build] RUN make") and rows[3] == "    | compiling"
        view("warning", "something")
    finally:
        view.close()
    assert "warning  something" in stream.getvalue()
