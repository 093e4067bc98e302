"""`kade build-stage` (hidden): what a builder pod runs for `kade build --backend kubernetes`.

It prints JSON report records on stdout (the CLI streams and re-prefixes them), then one
`stage-result` record, or a `stage-failed` record naming the step, exit code and last lines.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from builder.errors import BuildError, StepFailedError
from kade.errors import is_expected
from kade.output import relay_reporter


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("build-stage", description="(internal) build one stage of an uploaded plan in a "
                                                         "builder pod")
    p.add_argument("--plan", required=True, metavar="DIGEST", help="stage plan blob in the stages repo")
    p.add_argument("--stage", required=True, metavar="LABEL")
    p.add_argument("--repo", required=True, metavar="STAGES_REPO")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST")
    p.add_argument("--ssh-relay", action="store_true", help="tunnel RUN --mount=type=ssh to the CLI's agent")
    p.add_argument("--secrets-relay", action="store_true", help="ask the CLI for the build's --secret values")
    p.add_argument("--tenant", metavar="NAME", help="the tenant whose caches on the PVC the stage uses")
    p.add_argument("--share", default="", metavar="PARTS", help="cache parts the tenant shares")
    p.set_defaults(func=run)


def _emit(kind: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"time": round(time.time(), 3), "kind": kind, **fields}, default=str) + "\n")
    sys.stdout.flush()


def _process_start() -> float:
    """When this process started (the container's command: the pod just turned Running), epoch seconds."""
    try:
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime "))
        return round(boot + ticks / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, StopIteration):
        return round(time.time(), 3)


def run(args: argparse.Namespace) -> int:
    from builder.backends.kubernetes import FAILED_KIND, RESULT_KIND
    from builder.backends.podspec import BUILD_KEY_MOUNT
    from builder.backends.podstage import StageTask, build_stage
    from builder.tenant import parse_shares

    report = relay_reporter(sys.stdout)
    report("timeline", "process started", at=_process_start())
    task = StageTask(args.plan, args.stage, args.repo, insecure=tuple(args.insecure_registry),
                     ssh_relay=args.ssh_relay, secrets_relay=args.secrets_relay, tenant=args.tenant,
                     share=parse_shares(args.share), build_key_dir=os.environ.get("KADE_BUILD_KEY_DIR", BUILD_KEY_MOUNT))
    report("timeline", "imports done", at=round(time.time(), 3))
    try:
        result = build_stage(task, report)
    except StepFailedError as exc:
        _emit(FAILED_KIND, message=exc.detail, step=exc.detail.rsplit(" failed with exit code", 1)[0],
              exit_code=exc.exit_code, output_tail=exc.output_tail, file=exc.file, line=exc.line)
        return 1
    except BuildError as exc:  # the CLI puts file:line in front and the hint after, once
        _emit(FAILED_KIND, message=exc.detail, hint=exc.hint, file=exc.file, line=exc.line)
        return 1
    except Exception as exc:  # noqa: BLE001 - only the expected ones are reported, the rest re-raised
        if not is_expected(exc):
            raise
        _emit(FAILED_KIND, message=str(exc))
        return 1
    _emit(RESULT_KIND, message=f"stage {args.stage} done", **result)
    return 0
