"""Per-resource tracking options from annotations (`kade.io/...`, `werf.io/...` accepted), pure."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from deployer.durations import parse_duration
from deployer.errors import DeployError, UsageError
from deployer.readiness.expressions import ExpressionError, compile_expression
from deployer.resources import Resource

FAIL_FAST = "FailWholeDeployProcessImmediately"
HOPE = "HopeUntilEndOfDeployProcess"
IGNORE = "IgnoreAndContinueDeployProcess"
FAIL_MODES = (FAIL_FAST, HOPE, IGNORE)
WAIT_READY, NON_BLOCKING = "WaitUntilResourceReady", "NonBlocking"
TERMINATION_MODES = (WAIT_READY, NON_BLOCKING)
POD_IS_READY, CONTROLLER_IS_READY, END_OF_DEPLOY = "PodIsReady", "ControllerIsReady", "EndOfDeploy"
SHOW_LOGS_UNTIL = (POD_IS_READY, CONTROLLER_IS_READY, END_OF_DEPLOY)
DEFAULT_NO_ACTIVITY = 240.0


@dataclass
class TrackOptions:
    fail_mode: str = FAIL_FAST
    failures_allowed_per_replica: int = 1
    termination_mode: str = WAIT_READY
    no_activity_timeout: float = DEFAULT_NO_ACTIVITY
    show_logs_until: str = CONTROLLER_IS_READY
    skip_logs: bool = False
    skip_logs_for_containers: frozenset[str] = frozenset()
    log_regex: re.Pattern[str] | None = None
    show_service_messages: bool = False
    ignore_readiness_probe_fails_for: dict[str, float] = field(default_factory=dict)


def _bool(value: str, what: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise DeployError(f"{what}: expected true or false, got {value!r}")


def _choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value.strip() not in choices:
        raise DeployError(f"{what}: expected one of {', '.join(choices)}, got {value!r}")
    return value.strip()


def _duration(value: str, what: str) -> float:
    try:
        return parse_duration(value)
    except UsageError as exc:
        raise DeployError(f"{what}: {exc}") from None


def track_options(resource: Resource, default_no_activity: float = DEFAULT_NO_ACTIVITY) -> TrackOptions:
    where = f"{resource.source}: {resource.key}: annotation"
    opts = TrackOptions(no_activity_timeout=default_no_activity)
    if resource.kind == "Job" and resource.group == "batch":
        opts.failures_allowed_per_replica = 0
    get = resource.annotation
    if (v := get("fail-mode")) is not None:
        opts.fail_mode = _choice(v, FAIL_MODES, f"{where} fail-mode")
    if (v := get("failures-allowed-per-replica")) is not None:
        if not v.strip().isdigit():
            raise DeployError(f"{where} failures-allowed-per-replica: expected a whole number >= 0, got {v!r}")
        opts.failures_allowed_per_replica = int(v)
    if (v := get("track-termination-mode")) is not None:
        opts.termination_mode = _choice(v, TERMINATION_MODES, f"{where} track-termination-mode")
    if (v := get("no-activity-timeout")) is not None:
        opts.no_activity_timeout = _duration(v, f"{where} no-activity-timeout")
    if (v := get("show-logs-until")) is not None:
        opts.show_logs_until = _choice(v, SHOW_LOGS_UNTIL, f"{where} show-logs-until")
    if (v := get("skip-logs")) is not None:
        opts.skip_logs = _bool(v, f"{where} skip-logs")
    if (v := get("skip-logs-for-containers")) is not None:
        opts.skip_logs_for_containers = frozenset(c.strip() for c in v.split(",") if c.strip())
    if (v := get("log-regex")) is not None:
        try:
            opts.log_regex = re.compile(v)
        except re.error as exc:
            raise DeployError(f"{where} log-regex: invalid regular expression: {exc}") from None
    if (v := get("show-service-messages")) is not None:
        opts.show_service_messages = _bool(v, f"{where} show-service-messages")
    for name in ("ready-when", "failed-when"):
        if (v := get(name)) is not None:
            try:
                compile_expression(v)
            except ExpressionError as exc:
                raise DeployError(f"{where} {name}: {exc} in {v!r} (see docs/deploy.md, readiness rules)") from None
    for container, value in resource.annotations_with_prefix("ignore-readiness-probe-fails-for-").items():
        opts.ignore_readiness_probe_fails_for[container] = _duration(value, f"{where} ignore-readiness-probe-fails-for-{container}")
    return opts


def log_line_shown(opts: TrackOptions, text: str, *, controller_ready: bool, stamp: float | None = None,
                   pod_ready_at: float | None = None) -> bool:
    """Is a log line of a tracked resource shown? `controller_ready`: the resource was found ready;
    `stamp`: when the container wrote the line; `pod_ready_at`: when the line's pod became Ready
    (its condition's lastTransitionTime, whole seconds), None while it has not been. PodIsReady shows
    the lines written before that second ended, whenever they arrive. skip-logs and
    skip-logs-for-containers act earlier: those containers are not followed at all."""
    if opts.log_regex is not None and not opts.log_regex.search(text):
        return False
    if opts.show_logs_until == CONTROLLER_IS_READY:
        return not controller_ready
    if opts.show_logs_until == POD_IS_READY:
        return pod_ready_at is None or (stamp is not None and stamp < pod_ready_at + 1.0)
    return opts.show_logs_until == END_OF_DEPLOY
