"""kade.io/ready-when / failed-when expressions, table-driven over one object."""
import pytest

from deployer.readiness.expressions import ExpressionError, compile_expression, holds

OBJ = {
    "metadata": {"generation": 3, "annotations": {"example.com/state": "ok"}},
    "spec": {"replicas": 2, "suspend": False},
    "status": {"phase": "Ready", "readyReplicas": 2, "observedGeneration": 3, "message": "",
               "conditions": [{"type": "Synced", "status": "True"},
                              {"type": "Ready", "status": "False", "reason": "Waiting"}],
               "endpoints": ["a", "b"]},
}

CASES = [
    ('.status.phase == "Ready"', True),
    (".status.phase == 'Ready'", True),
    ('.status.phase != "Ready"', False),
    ('.status.conditions[?(@.type=="Ready")].status == "True"', False),
    ('.status.conditions[?(@.type=="Synced")].status == "True"', True),
    ('.status.conditions[?(@.type=="Missing")].status == "True"', False),
    ('.status.conditions[?(@.type=="Missing")].status == null', True),
    (".status.readyReplicas >= .spec.replicas", True),
    (".status.readyReplicas > .spec.replicas", False),
    (".status.observedGeneration == .metadata.generation", True),
    (".status.readyReplicas == 2.0", True),
    ('.status.readyReplicas == "2"', False),  # a number is not a string
    ('.status.readyReplicas > "1"', False),
    (".spec.suspend == false", True),
    (".spec.suspend", False),
    ("!.spec.suspend", True),
    (".status.message", False),
    (".status.nothing.deeper", False),
    (".status.nothing == null", True),
    ('.metadata.annotations["example.com/state"] == "ok"', True),
    (".status.endpoints[1] == \"b\"", True),
    (".status.endpoints[5] == \"b\"", False),
    (".status.endpoints[-1] == \"b\"", True),
    (".status.endpoints", True),
    ('.status.phase == "Ready" && .status.readyReplicas >= 2', True),
    ('.status.phase == "Failed" || .status.readyReplicas >= 2', True),
    ('!(.status.phase == "Failed" || .status.readyReplicas < 2)', True),
    ('.status.phase == "Ready" && !(.spec.replicas == 2)', False),
    (".status.phase.sub == 1", False),  # walking into a string is null, not a crash
]


@pytest.mark.parametrize("text,expected", CASES, ids=[c[0] for c in CASES])
def test_expression(text, expected):
    assert holds(text, OBJ) is expected


@pytest.mark.parametrize("text,where", [
    ("", "empty"),
    ("status.phase == 1", "expected a path"),
    ('.status.phase = "x"', "position"),
    ('.status.phase == "Ready" &&', "found the end"),
    ('.status.conditions[?(@.type)]', "comparison"),
    (".status[", "position"),
    ('.status.phase == "x" extra', "position"),
    ("(.status.phase", "expected ')'"),
    ("$.status", "unexpected"),
])
def test_bad_expressions_say_where(text, where):
    with pytest.raises(ExpressionError, match=where.replace("(", r"\(").replace(")", r"\)")):
        compile_expression(text)
