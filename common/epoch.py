"""SOURCE_DATE_EPOCH, read in one place, and the times that follow it.

One epoch governs a build: layer entries' mtimes are clamped to it (BuildKit's rewrite-timestamp
rule), what a step makes up rather than copies (WORKDIR, new parent directories, heredoc files) gets
it, and the image config's `created` and the manifest's created annotation are it. Without one,
layers keep the sources' times and `created` is the time of the build. In a kade.yaml project the
epoch defaults to the commit time of HEAD (kade/converge.py), so a project's images are the same
bytes wherever they are built."""
from __future__ import annotations

import os
from collections.abc import Mapping
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
