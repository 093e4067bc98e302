"""Job: Complete=True is ready; Failed=True (BackoffLimitExceeded, DeadlineExceeded, ...) or
FailureTarget=True is failed; a suspended Job is still progressing."""
from __future__ import annotations

from typing import Any

from deployer.readiness.common import Status, condition_is, condition, count, describe, failed, progressing, ready


def job_status(job: dict[str, Any]) -> Status:
    if (job.get("metadata") or {}).get("deletionTimestamp"):
        return progressing("terminating")
    for failure in ("Failed", "FailureTarget"):
        if condition_is(job, failure):
            return failed(describe(condition(job, failure)) or "job failed")
    if condition_is(job, "Complete"):
        return ready("completed")
    status = job.get("status") or {}
    if (job.get("spec") or {}).get("suspend"):
        return progressing("suspended")
    completions = (job.get("spec") or {}).get("completions")
    return progressing(f"{count(status, 'succeeded')}/{completions if completions is not None else 1} completed, "
                       f"{count(status, 'active')} active, {count(status, 'failed')} failed")
