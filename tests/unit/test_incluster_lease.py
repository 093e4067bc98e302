"""Lease renewal through an API outage: a real kubernetes client against a port nothing listens on
(connection refused, what a restarting API server gives) must make `renew` answer False, not raise,
so the renewer threads of a build and of its steps live on and renew again once the API is back."""
from __future__ import annotations

import socket

from builder.backends.lease import Leases


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_renew_survives_an_unreachable_api_server():
    from kubernetes import client

    conf = client.Configuration()
    conf.host = f"https://127.0.0.1:{closed_port()}"
    conf.verify_ssl = False
    conf.retries = 0
    leases = Leases(client.ApiClient(conf), "kade-builds", "me", 6)
    assert leases.renew("kade-build-x") is False
    assert leases.renew("kade-build-x") is False  # and again: nothing is left broken
