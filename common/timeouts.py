"""How long kade waits on the network: 5 s for a connection, then $KADE_TIMEOUT (default 30 s) for the
answer to one request, retries included (registries and the Kubernetes API alike)."""
from __future__ import annotations

import os

from common.errors import SettingError

DEFAULT_TIMEOUT = 30.0  # seconds for one request to be answered, retries included
CONNECT_TIMEOUT = 5.0  # seconds for a connection to be accepted
TIMEOUT_ENV = "KADE_TIMEOUT"


def answer_timeout() -> float:
    """Seconds to wait for the answer to one request: $KADE_TIMEOUT, else 30."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise SettingError(f"${TIMEOUT_ENV}={text!r}: expected a number of seconds above 0, e.g. 60")
    return value


def request_timeout() -> tuple[float, float]:
    """(seconds to connect, seconds to get the answer) of one request."""
    return CONNECT_TIMEOUT, answer_timeout()
