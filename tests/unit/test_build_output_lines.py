"""A RUN's output as lines (builder/execute.py): bounded whatever a line's length, cuts said."""
import pytest

from builder import execute as ex


def lines_of(chunks, guard=0):
    out = []
    lines = ex.OutputLines(out.append, guard=guard)
    for chunk in chunks:
        lines.feed(chunk)
    lines.close()
    return out


@pytest.mark.parametrize("chunks,expected", [
    ([b"a\nb\n"], ["a", "b"]),
    ([b"a", b"b\nc"], ["ab", "c"]),
    ([b"\n\n"], ["", ""]),
    ([b"no newline"], ["no newline"]),
    ([], []),
])
def test_lines(chunks, expected):
    assert lines_of(chunks) == expected


def test_an_endless_line_is_cut_and_counted_in_pieces():
    big = b"x" * (8 << 20)
    pieces = [big[i:i + 65536] for i in range(0, len(big), 65536)] + [b"\nafter\n"]
    out = lines_of(pieces)
    assert out[0] == "x" * ex.LINE_MAX + f" [... {len(big) - ex.LINE_MAX} more bytes of this line cut]"
    assert out[1:] == ["after"]


def test_a_cut_drops_the_guard_so_a_secret_cut_in_two_never_shows_its_start():
    secret = b"s3cr3t-value"
    line = b"y" * (ex.LINE_MAX - 4) + secret + b"\n"
    out = lines_of([line], guard=len(secret))
    assert "s3cr" not in out[0]
    shown = ex.LINE_MAX - len(secret)
    assert out[0] == "y" * shown + f" [... {len(line) - 1 - shown} more bytes of this line cut]"


@pytest.mark.parametrize("length", [0, ex.TAIL_LINE_MAX, ex.TAIL_LINE_MAX + 1, 10 * ex.TAIL_LINE_MAX])
def test_tail_line(length):
    kept = ex.tail_line("z" * length)
    if length <= ex.TAIL_LINE_MAX:
        assert kept == "z" * length
    else:
        assert kept == "z" * ex.TAIL_LINE_MAX + f" [... {length - ex.TAIL_LINE_MAX} more characters cut]"
