"""An ApiClient whose every wait is bounded: 5 s to connect, then $KADE_TIMEOUT (default 30 s) for the
answer unless a call asks for its own `_request_timeout` (a followed log stream), a read that timed
out is not retried (it had its time), and an API server that does not answer is named with the
request it did not answer (ApiUnanswered). The `kubernetes` package's own default waits forever."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from urllib3.exceptions import HTTPError

from common.timeouts import request_timeout
from kube.config import load_configuration
from kube.errors import KubeAccessError


class ApiUnanswered(KubeAccessError, HTTPError):
    """The API server did not accept a connection or did not answer in time (the message says which
    request). An urllib3 HTTPError too, so that code which copes with the client's connection errors
    (Lease renewers, best-effort deletes) copes with it the same way."""


def api_client(kubeconfig: str | None = None, context: str | None = None, *, connect_retries: int = 2,
               pool_size: int | None = None) -> Any:
    """An ApiClient for the configured cluster (kube.config), waits bounded, connection failures retried
    `connect_retries` times (0: the caller retries itself)."""
    from kubernetes import client
    from urllib3.util.retry import Retry

    cfg = load_configuration(kubeconfig, context)
    cfg.retries = Retry(total=connect_retries, connect=connect_retries, read=0, status=0, redirect=0) \
        if connect_retries else 0
    if pool_size:
        cfg.connection_pool_maxsize = pool_size
    return bounded(client.ApiClient(cfg))


def bounded(api: Any) -> Any:
    """Give every request of `api` `request_timeout()` unless it asks for its own `_request_timeout`."""
    from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, ReadTimeoutError

    default = request_timeout()
    rest = api.rest_client
    send = rest.request
    host = api.configuration.host

    def request(method: str, url: str, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        timeout = _request_timeout or default
        try:
            return send(method, url, *args, _request_timeout=timeout, **kwargs)
        except (MaxRetryError, ReadTimeoutError, ConnectTimeoutError) as exc:
            reason = exc.reason if isinstance(exc, MaxRetryError) else exc
            what = f"{method} {urlsplit(url).path}"
            if isinstance(reason, ReadTimeoutError):
                raise ApiUnanswered(f"the Kubernetes API server {host} accepted the connection but did not answer "
                                    f"within {_part(timeout, 1):g} s (waiting for {what}); check that the API server "
                                    "is healthy and --kubeconfig names the right cluster") from None
            if isinstance(reason, ConnectTimeoutError):
                raise ApiUnanswered(f"the Kubernetes API server {host} did not accept a connection within "
                                    f"{_part(timeout, 0):g} s (for {what}); check the address in the kubeconfig "
                                    "and that it is reachable") from None
            raise

    rest.request = request
    return api


def _part(timeout: Any, index: int) -> float:
    return timeout[index] if isinstance(timeout, tuple) else timeout
