"""The live deploy table (terminal output) and the choice of reporter."""
import io
import json

from kade.live import LiveTable, close_reporter, make_deploy_reporter


def test_live_table_keeps_one_row_per_resource_and_prints_the_rest():
    out = io.StringIO()
    table = LiveTable(out)
    table("apply", "created Deployment ns/web", resource="Deployment.apps ns/web")
    table("status", "deployment/web: 0/2 new replicas ready", resource="Deployment.apps ns/web", state="progressing")
    table("log", "web-1/app: listening on [::]:80 [bold]x[/bold]")
    table("status", "deployment/web: 2/2 new replicas ready", resource="Deployment.apps ns/web", state="ready")
    table("ready", "deployment/web ready", resource="Deployment.apps ns/web")
    close_reporter(table)
    text = out.getvalue()
    assert "listening on [::]:80 [bold]x[/bold]" in text  # markup in logs is printed literally
    final = text[text.rindex("RESOURCE"):]
    assert final.count("Deployment.apps ns/web") == 1 and "ready" in final


def test_not_a_terminal_gets_plain_or_json_lines():
    out = io.StringIO()
    report = make_deploy_reporter("json", out)
    report("ready", "deployment/web ready", resource="x")
    close_reporter(report)  # no-op for line reporters
    assert json.loads(out.getvalue())["kind"] == "ready"
    plain = io.StringIO()
    make_deploy_reporter("text", plain)("warning", "careful")
    assert plain.getvalue().endswith("warning  careful\n")
