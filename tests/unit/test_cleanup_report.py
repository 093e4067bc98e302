from datetime import datetime, timezone

from registry.cleanup.execute import Outcome
from registry.cleanup.plan import Plan, PlanItem
from registry.cleanup.report import render_text, to_json

NOW = datetime(2026, 11, 26, tzinfo=timezone.utc)
D = "sha256:" + "1" * 64
ITEMS = (
    PlanItem("r/app", "keep-me", D, "image", "keep", ("branch main: newest image (policy 1: branch /[a-z]+/, images last 1)",)),
    PlanItem("r/app", "old", D, "image", "delete", ("commit 0123456789 is in no branch",), "tag"),
    PlanItem("r/app", "gone", D, "image", "delete", ("purge",), "tag"),
)
PLAN = Plan(NOW, "r/app-stages", ITEMS, frozenset())


def test_text_report_keeps_regexes_literal_and_shows_outcomes():
    outcomes = [Outcome(ITEMS[1], "deleted", "tag removed"), Outcome(ITEMS[2], "skipped", "moved since the plan")]
    text = render_text(PLAN, outcomes, dry_run=False, width=300)
    assert "branch /[a-z]+/" in text
    assert "skipped: moved since the plan" in text
    assert text.splitlines()[-1] == "plan: keep 1, delete 2 (images 2); deleted 1, skipped 1, failed 0"
    assert render_text(PLAN, None, dry_run=True).endswith("dry run: nothing was deleted")


def test_json_report_marks_each_item():
    doc = to_json(PLAN, [Outcome(ITEMS[1], "failed", "HTTP 500")], dry_run=False)
    by_tag = {i["tag"]: i for i in doc["items"]}
    assert by_tag["old"]["status"] == "failed" and "status" not in by_tag["keep-me"]
    assert doc["result"] == {"deleted": 0, "skipped": 0, "failed": 1} and doc["dryRun"] is False
