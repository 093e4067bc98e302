"""kade behind a forward proxy (tinyproxy, tests/fixtures/proxy.py), as on a corporate network: the
proxy comes from the environment (`http_proxy`, `https_proxy`, `no_proxy`, upper case too), plain
HTTP goes through it as absolute URLs, HTTPS through a CONNECT tunnel, and its log shows what
passed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from urllib.parse import quote

import pytest

from tests.fixtures.proxy import PASSWORD, USER

PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


def kade(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    full_env = {**clean, "DOCKER_CONFIG": "/nonexistent-kade-test", "CI": "1", **env}
    full_env.pop("REGISTRY_AUTH_FILE", None)
    return subprocess.run([sys.executable, "-m", "kade", *args], capture_output=True, text=True, env=full_env,
                          timeout=120)


def test_plain_http_registry_through_the_proxy(registry, forward_proxy, sample_layout):
    layout, tag, digest = sample_layout
    repo = f"{registry.host}/proxied/{uuid.uuid4().hex[:8]}"
    env = {"HTTP_PROXY": forward_proxy.url}
    done = kade("image", "copy", f"oci:{layout}:{tag}", f"{repo}:v1", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == digest
    asked = forward_proxy.requests()
    assert f"PUT http://{repo.split('/', 1)[0]}/v2/{repo.split('/', 1)[1]}/manifests/v1" in asked, asked
    assert not [line for line in asked if not line.startswith(("GET http://", "HEAD http://", "POST http://",
                                                               "PUT http://", "PATCH http://"))], asked
    # read back without the proxy: what went through it landed whole
    direct = kade("image", "inspect", f"{repo}:v1", env={})
    assert json.loads(direct.stdout)["digest"] == digest
    assert len(forward_proxy.requests()) == len(asked)


def test_https_registry_through_a_connect_tunnel(registry_tls, forward_proxy, sample_layout):
    layout, tag, digest = sample_layout
    repo = f"{registry_tls.host}/tunnel/{uuid.uuid4().hex[:8]}"
    env = {"https_proxy": forward_proxy.url}
    done = kade("image", "copy", f"oci:{layout}:{tag}", f"{repo}:v1", env=env)
    assert done.returncode == 0, done.stderr
    inspected = kade("image", "inspect", f"{repo}:v1", env=env)
    assert json.loads(inspected.stdout)["digest"] == digest
    asked = forward_proxy.requests()
    assert asked and set(asked) == {f"CONNECT {registry_tls.host}"}, asked


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.1:{port}", "*"])
def test_no_proxy_goes_direct(registry, forward_proxy, sample_layout, no_proxy):
    layout, tag, _ = sample_layout
    port = registry.host.rsplit(":", 1)[1]
    env = {"http_proxy": forward_proxy.url, "no_proxy": no_proxy.format(port=port)}
    done = kade("image", "copy", f"oci:{layout}:{tag}", f"{registry.host}/direct/x:v1", env=env)
    assert done.returncode == 0, done.stderr
    assert forward_proxy.requests() == []


@pytest.mark.parametrize("kind", ["registry", "registry_tls"])
def test_proxy_credentials(request, kind, forward_proxy_auth, sample_layout):
    """Without credentials the proxy answers 407 (to the request itself over plain HTTP, to the CONNECT
    over HTTPS): said at once, not retried; with them in the proxy URL, the copy goes through."""
    registry = request.getfixturevalue(kind)
    variable = "https_proxy" if kind == "registry_tls" else "http_proxy"
    layout, tag, digest = sample_layout
    target = f"{registry.host}/authproxy/x:v1"
    refused = kade("image", "copy", f"oci:{layout}:{tag}", target, env={variable: forward_proxy_auth.url})
    assert refused.returncode == 1
    assert "407" in refused.stderr and registry.host in refused.stderr and "Traceback" not in refused.stderr
    assert "http://user:password@host:port" in refused.stderr
    with_login = forward_proxy_auth.url.replace("://", f"://{USER}:{quote(PASSWORD, safe='')}@")
    done = kade("image", "copy", f"oci:{layout}:{tag}", target, env={variable: with_login})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == digest
    assert PASSWORD not in done.stderr + refused.stderr


def test_a_proxy_that_is_not_http_is_named(registry, sample_layout):
    layout, tag, _ = sample_layout
    done = kade("image", "copy", f"oci:{layout}:{tag}", f"{registry.host}/x/y:v1",
                env={"HTTP_PROXY": "socks5://127.0.0.1:1080"})
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "socks5://127.0.0.1:1080" in done.stderr and "http://host:port" in done.stderr
