"""common/yamlsafe: JSON's types only, as kubectl reads YAML (sigs.k8s.io/yaml over yaml.v2)."""
import json

import pytest

from common import yamlsafe


@pytest.mark.parametrize("text, expected", [
    ("a: 2024-01-01", {"a": "2024-01-01"}),                      # a date stays as written (PyYAML: datetime.date)
    ("a: 2024-01-01T10:00:00Z", {"a": "2024-01-01T10:00:00Z"}),
    ("a: !!timestamp 2001-12-14", {"a": "2001-12-14"}),
    ("a: !!binary aGVs\n  bG8=", {"a": "hello"}),                # PyYAML: bytes
    ("a: !!set {x, y}", {"a": {"x": None, "y": None}}),          # PyYAML: a set
    ("a: '2024-01-01'", {"a": "2024-01-01"}),
    ("a: 1.5\nb: yes\nc: 0x10\nd: ~", {"a": 1.5, "b": True, "c": 16, "d": None}),   # YAML 1.1, as yaml.v2
])
def test_values_are_json_values(text, expected):
    loaded = yamlsafe.load(text)
    assert loaded == expected
    json.dumps(loaded)   # a manifest's body is sent as JSON


def test_deep_nesting_is_a_yaml_error():
    with pytest.raises(yamlsafe.yaml.YAMLError):
        yamlsafe.load("[" * 20000 + "]" * 20000)


def test_a_key_given_twice_is_an_error_naming_its_line():
    """kubectl's strict field validation refuses it; PyYAML kept the last one silently."""
    with pytest.raises(yamlsafe.yaml.YAMLError, match=r"key 'env' is given twice[\s\S]*line 3"):
        yamlsafe.load("name: a\nenv: [x]\nenv: [y]\n")


def test_merge_keys_may_be_overridden():
    assert yamlsafe.load("b: &b {x: 1, y: 2}\nm: {<<: *b, x: 3}\n")["m"] == {"x": 3, "y": 2}
