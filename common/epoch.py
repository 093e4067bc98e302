"""SOURCE_DATE_EPOCH, read in one place, and the times that follow it.

One epoch governs a build: layer entries' mtimes are clamped to it (BuildKit's rewrite-timestamp
rule), what a step makes up rather than copies (WORKDIR, new parent directories, heredoc files) gets
it, and the image config's `created`, the manifest's created annotation and every step's history
time are it (no history time after it). Without one, layers keep the sources' times, a step's history
entry gets the time the step ran, and `created` is the newest history time (BuildKit's rule: a rebuild
that reuses every step makes the same image, not a new one of the same content). In a kade.yaml project the
epoch defaults to the commit time of HEAD (kade/converge.py), so a project's images are the same
bytes wherever they are built."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone

from common.errors import SettingError

VARIABLE = "SOURCE_DATE_EPOCH"


def source_date_epoch(environ: Mapping[str, str] | None = None) -> int | None:
    """SOURCE_DATE_EPOCH as an int, None when unset or blank; a clear error when it is not a number."""
    value = (os.environ if environ is None else environ).get(VARIABLE, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise SettingError(f"{VARIABLE}={value!r} is not a whole number of seconds since 1970; unset "
                           f"{VARIABLE} or set it to e.g. $(git log -1 --format=%ct)")
    return int(value)


def created_at(epoch: int | None) -> datetime:
    """The image's creation time: the epoch when there is one, else now."""
    return datetime.fromtimestamp(epoch, timezone.utc) if epoch is not None else datetime.now(timezone.utc)


def rfc3339(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 time as image configs carry it (nanoseconds cut to microseconds); None when it is
    not one (a base image's history is not ours to reject)."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def step_time(epoch: int | None) -> str:
    """The history time of a step that runs now: the epoch when there is one."""
    return rfc3339(created_at(epoch))


def image_created(history_times: Sequence[str | None], epoch: int | None) -> str:
    """An image's `created`: the epoch when there is one, else its newest step's time (the last
    history entry that has a time), else now."""
    if epoch is None:
        for text in reversed(history_times):
            if text and parse_time(text) is not None:
                return text
    return rfc3339(created_at(epoch))


def clamped(text: str | None, epoch: int | None) -> str | None:
    """A history time no later than the epoch (BuildKit clamps them so): a step reused from a build
    with a later epoch, or none, takes this build's."""
    if epoch is None or not text:
        return text
    t = parse_time(text)
    return rfc3339(created_at(epoch)) if t is not None and t.timestamp() > epoch else text
