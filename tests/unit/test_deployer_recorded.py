"""The readiness rules and the verdict on states recorded from the test cluster during real rollouts
(tests/data/deploy/recorded/record.py made them): never ready while the pods say otherwise, ready at
the end."""
import json
from pathlib import Path

import pytest

from deployer import readiness
from deployer.options import TrackOptions
from deployer.resources import ResourceKey
from deployer.revision import new_revision_pods
from deployer.verdict import READY, Memory, Observation, judge

RECORDED = sorted((Path(__file__).resolve().parents[1] / "data" / "deploy" / "recorded").glob("*.json"))


def _load(path):
    return json.loads(path.read_text())


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
def test_rules_never_call_ready_what_the_pods_deny(path):
    data = _load(path)
    states = data["states"]
    assert len(states) >= 5, "a recording shows a rollout, not one moment"
    assert any(s["oracle"] == "progressing" for s in states) and states[-1]["oracle"] == "ready"
    verdicts = [readiness.evaluate(s["object"], "apps", data["kind"], s["replicasets"]).state for s in states]
    wrong = [(s["t"], v) for s, v in zip(states, verdicts) if v == readiness.READY and s["oracle"] != "ready"]
    assert not wrong, f"called ready while pods of the old template ran or were not ready: {wrong}"
    assert verdicts[-1] == readiness.READY
    # the second rollout (after the change) is not ready before its first state the oracle calls ready
    assert verdicts.count(readiness.PROGRESSING) >= 2


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
def test_verdict_over_the_recording(path):
    data = _load(path)
    key = ResourceKey("apps", data["kind"], "ns", "w")
    memory = Memory.start(TrackOptions(), 0.0)
    states = data["states"]
    # from the first state after the change (ready -> not ready), as a deploy of the change would see it
    after = [i for i in range(1, len(states)) if states[i]["oracle"] != "ready" and states[i - 1]["oracle"] == "ready"]
    change = after[-1] if after else 0
    outcome_at = None
    for state in states[change:]:
        pods = new_revision_pods("apps", data["kind"], state["object"], state["pods"], state["replicasets"])
        observation = Observation(key, state["object"], pods, state["replicasets"], [])
        memory, decision = judge(observation, memory, state["t"], TrackOptions(), settle=0.0)
        assert decision.outcome != "failed", decision
        if decision.outcome == READY:
            outcome_at = state
            break
    assert outcome_at is not None and outcome_at["oracle"] == "ready", "the rollout after the change is judged ready"
