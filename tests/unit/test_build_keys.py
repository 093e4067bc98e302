"""Step keys: same inputs -> same key; every input changes it; framing is unambiguous."""
import dataclasses

import pytest

from builder.keys import KeyInputs, frame, is_step_key, step_key

BASE = KeyInputs(parent="sha256:" + "a" * 64, instruction='["RUN", ["/bin/sh", "-c", "make"]]',
                 build_args={"A": "1", "B": "2"}, sources=[("src/x.py", "file", 0o644, 0, 0, "f" * 64)],
                 from_key=None, mounts=["id=/c,sharing=shared,target=/c,type=cache"], platform="linux/amd64")


def test_same_inputs_same_key_and_format():
    again = KeyInputs(**{f.name: getattr(BASE, f.name) for f in dataclasses.fields(BASE)})
    assert step_key(BASE) == step_key(again)
    assert is_step_key(step_key(BASE))
    # dict order does not matter
    assert step_key(dataclasses.replace(BASE, build_args={"B": "2", "A": "1"})) == step_key(BASE)


@pytest.mark.parametrize("change", [
    {"parent": "sha256:" + "b" * 64},
    {"instruction": '["RUN", ["/bin/sh", "-c", "make all"]]'},
    {"build_args": {"A": "1", "B": "3"}},
    {"build_args": {"A": "1"}},
    {"build_args": {"A": "1", "B": "2", "C": ""}},
    {"sources": [("src/x.py", "file", 0o755, 0, 0, "f" * 64)]},
    {"sources": [("src/x.py", "file", 0o644, 1, 0, "f" * 64)]},
    {"sources": [("src/x.py", "file", 0o644, 0, 1, "f" * 64)]},
    {"sources": [("src/x.py", "file", 0o644, 0, 0, "e" * 64)]},
    {"sources": [("src/y.py", "file", 0o644, 0, 0, "f" * 64)]},
    {"sources": []},
    {"from_key": "c" * 64},
    {"mounts": []},
    {"mounts": ["id=/d,sharing=shared,target=/d,type=cache"]},
    {"platform": "linux/arm64"},
])
def test_every_input_changes_the_key(change):
    assert step_key(dataclasses.replace(BASE, **change)) != step_key(BASE)


@pytest.mark.parametrize("a,b", [
    (["ab", "c"], ["a", "bc"]),
    (["a", ""], ["a"]),
    ([["a"], "b"], [["a", "b"]]),
    ([1], ["1"]),
    ([None], [""]),
    ([b"x"], ["x"]),
])
def test_framing_is_unambiguous(a, b):
    assert frame(a) != frame(b)


def test_bool_is_refused():
    with pytest.raises(TypeError):
        frame([True])
