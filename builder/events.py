"""The build's event stream: what the solver, the executors and the publisher tell the user, through
the `report(kind, message, **fields)` callable every package takes (kade/output.py and
kade/buildview.py render it: a live view in a terminal, plain lines in CI, JSON lines with
`--output json`). The kinds and their fields, in one place:

| kind | when | fields |
|---|---|---|
| `plan` | the plan is made and looked up | `steps` (planned), `cached` (found in the stages repo), `image` |
| `cached` | a step is taken from the stages repo | `image`, `stage`, `key`, `step` |
| `step` | a step starts running | `image`, `stage`, `key`, `step` |
| `step-done` | a step ran and its image is pushed (it may come after the next step's `step`: step images go up behind the steps) | `image`, `stage`, `key`, `step`, `seconds`, `layer_bytes`, `pushed_bytes` |
| `shared` | a step is taken from an identical step of another stage running at once | `image`, `stage`, `key`, `step` |
| `reused` | a step is taken from another build that pushed it meanwhile (`--backend kubernetes`: the CLI waited for its step Lease) | `image`, `stage`, `key`, `step` |
| `output` | a line a RUN printed | `image`, `stage`, `key` |
| `pushed` | the final image is at a tag | `ref`, `digest`, `pushed_bytes` |

Other kinds (`resolve`, `pull`, `unpack`, `upload`, `pod`, `attest`, `sign`, `sbom`, `record`,
`written`, `warning`) carry a message and, where useful, a few fields of their own.
"""
from __future__ import annotations

from typing import Any

from builder.plan import PlannedStage, Step

PLAN, CACHED, STEP, STEP_DONE, SHARED, REUSED, OUTPUT, PUSHED = (
    "plan", "cached", "step", "step-done", "shared", "reused", "output", "pushed")
STEP_KINDS = (CACHED, STEP, STEP_DONE, SHARED, REUSED)


def step_fields(image: str, stage: PlannedStage, step: Step) -> dict[str, Any]:
    """The fields every event about one step carries."""
    return {"image": image, "stage": stage.label, "key": step.key, "step": step.text}


def step_message(stage: PlannedStage, step: Step) -> str:
    return f"[{stage.label}] {step.text}"
