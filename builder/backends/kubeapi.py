"""The Kubernetes API client of in-cluster builds, with every wait bounded.

The `kubernetes` package waits forever by default (no connect or read timeout) and retries a read
that timed out three times. Here each request gets `api_timeout()` (5 s to connect, then an answer
within $KADE_TIMEOUT, default 30 s) unless its caller asks for another (a followed log stream), reads
are not retried, and an API server that does not answer is named with the request it did not answer.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from urllib3.exceptions import ConnectTimeoutError, HTTPError, MaxRetryError, ReadTimeoutError

from builder.errors import BuildError
from registry.transport import CONNECT_TIMEOUT, answer_timeout


def api_timeout() -> tuple[float, float]:
    """Seconds to connect, then to get the answer."""
    return CONNECT_TIMEOUT, answer_timeout()


class ApiUnanswered(BuildError, HTTPError):
    """The API server did not accept a connection or did not answer in time. An urllib3 HTTPError too,
    so that code which already copes with the client's connection errors (Lease renewers, best-effort
    deletes) copes with it the same way."""


def kube_api_client(kubeconfig: str | None, context: str | None) -> Any:
    """An ApiClient from the kubeconfig (default $KUBECONFIG or ~/.kube/config), waits bounded."""
    from kubernetes import client, config
    from urllib3.util.retry import Retry

    cfg = client.Configuration()
    try:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg,
                                persist_config=False)
    except Exception as exc:  # noqa: BLE001 - the kubernetes loader raises plain exceptions (and YAML errors)
        raise BuildError(f"cannot load the kubeconfig ({kubeconfig or '$KUBECONFIG or ~/.kube/config'}"
                         f"{', context ' + context if context else ''}): {_one_line(exc)}",
                         hint="pass --kubeconfig FILE (a valid kubeconfig) or set KUBECONFIG") from None
    cfg.retries = Retry(total=2, connect=2, read=0, status=0, redirect=0)
    return bounded(client.ApiClient(cfg))


def bounded(api_client: Any) -> Any:
    """Give every request of `api_client` `api_timeout()` unless it asks for its own `_request_timeout`."""
    default = api_timeout()
    rest = api_client.rest_client
    send = rest.request
    host = api_client.configuration.host

    def request(method: str, url: str, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        timeout = _request_timeout or default
        try:
            return send(method, url, *args, _request_timeout=timeout, **kwargs)
        except (MaxRetryError, ReadTimeoutError, ConnectTimeoutError) as exc:
            reason = exc.reason if isinstance(exc, MaxRetryError) else exc
            what = f"{method} {urlsplit(url).path}"
            if isinstance(reason, ReadTimeoutError):
                raise ApiUnanswered(f"the Kubernetes API server {host} accepted the connection but did not answer "
                                    f"within {_read(timeout):g} s (waiting for {what})",
                                    hint="check that the API server is healthy and --kubeconfig names the "
                                         "right cluster") from None
            if isinstance(reason, ConnectTimeoutError):
                raise ApiUnanswered(f"the Kubernetes API server {host} did not accept a connection within "
                                    f"{_connect(timeout):g} s (for {what})",
                                    hint="check the address in the kubeconfig and that it is reachable") from None
            raise

    rest.request = request
    return api_client


def _read(timeout: Any) -> float:
    return timeout[1] if isinstance(timeout, tuple) else timeout


def _connect(timeout: Any) -> float:
    return timeout[0] if isinstance(timeout, tuple) else timeout


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else text or type(exc).__name__
