"""kade behind a forward proxy (tinyproxy, tests/fixtures/proxy.py), as on a corporate network: the
proxy comes from the environment (`http_proxy`, `https_proxy`, `no_proxy`, upper case too), plain
HTTP goes through it as absolute URLs, HTTPS through a CONNECT tunnel, and its log shows what
passed. The registries behind the proxy are in a network namespace of their own (`registry_remote`):
loopback is never proxied, as Go's clients have it."""
from __future__ import annotations

import json
import uuid
from urllib.parse import quote

import pytest

from tests.fixtures.proxy import PASSWORD, USER
from tests.fixtures.registry import free_port
from tests.fixtures.silent import run_kade

PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def only_the_proxies_each_test_sets(monkeypatch):
    for name in (*PROXY_VARS, "REGISTRY_AUTH_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", "/nonexistent-kade-test")


def trusting(server) -> list[str]:
    """The options that let kade reach a test registry off loopback: its CA, or plain HTTP."""
    return ["--ca-file", str(server.cert)] if server.tls else ["--insecure-registry", server.host]


def copied(sample_layout, target: str, env: dict[str, str], options: list[str] = []) -> None:  # noqa: B006
    """`kade image copy` of the sample image to `target` succeeded and printed its digest."""
    layout, tag, digest = sample_layout
    done = run_kade("image", "copy", *options, f"oci:{layout}:{tag}", target, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == digest


def test_plain_http_registry_through_the_proxy(registry_remote, forward_proxy, sample_layout):
    repo = f"{registry_remote.host}/proxied/{uuid.uuid4().hex[:8]}"
    copied(sample_layout, f"{repo}:v1", {"HTTP_PROXY": forward_proxy.url}, trusting(registry_remote))
    asked = forward_proxy.requests()
    assert f"PUT http://{repo.split('/', 1)[0]}/v2/{repo.split('/', 1)[1]}/manifests/v1" in asked, asked
    assert not [line for line in asked if not line.startswith(("GET http://", "HEAD http://", "POST http://",
                                                               "PUT http://", "PATCH http://"))], asked
    # read back without the proxy: what went through it landed whole
    direct = run_kade("image", "inspect", *trusting(registry_remote), f"{repo}:v1")
    assert json.loads(direct.stdout)["digest"] == sample_layout[2]
    assert len(forward_proxy.requests()) == len(asked)


def test_https_registry_through_a_connect_tunnel(registry_remote_tls, forward_proxy, sample_layout):
    repo = f"{registry_remote_tls.host}/tunnel/{uuid.uuid4().hex[:8]}"
    env = {"https_proxy": forward_proxy.url}
    copied(sample_layout, f"{repo}:v1", env, trusting(registry_remote_tls))
    inspected = run_kade("image", "inspect", *trusting(registry_remote_tls), f"{repo}:v1", env=env)
    assert json.loads(inspected.stdout)["digest"] == sample_layout[2]
    asked = forward_proxy.requests()
    assert asked and set(asked) == {f"CONNECT {registry_remote_tls.host}"}, asked


@pytest.mark.parametrize("no_proxy", ["10.246.0.2", "localhost,10.246.0.2:{port}", "10.246.0.0/24", "*"])
def test_no_proxy_goes_direct(registry_remote, forward_proxy, sample_layout, no_proxy):
    port = registry_remote.host.rsplit(":", 1)[1]
    env = {"http_proxy": forward_proxy.url, "no_proxy": no_proxy.format(port=port)}
    copied(sample_layout, f"{registry_remote.host}/direct/x:v1", env, trusting(registry_remote))
    assert forward_proxy.requests() == []


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost"])
def test_loopback_is_never_proxied(registry, sample_layout, name):
    """A local registry beside a corporate proxy (no no_proxy set): the proxy could not reach this
    machine's loopback, so kade goes direct, as skopeo and BuildKit do (the proxy here is not there)."""
    dead = f"http://127.0.0.1:{free_port()}"
    port = registry.host.rsplit(":", 1)[1]
    copied(sample_layout, f"{name}:{port}/loopback/x:v1", {"http_proxy": dead, "HTTPS_PROXY": dead})


@pytest.mark.parametrize("kind", ["registry_remote", "registry_remote_tls"])
def test_proxy_credentials(request, kind, forward_proxy_auth, sample_layout):
    """Without credentials the proxy answers 407 (to the request itself over plain HTTP, to the CONNECT
    over HTTPS): said at once, not retried; with them in the proxy URL, the copy goes through."""
    registry = request.getfixturevalue(kind)
    variable = "https_proxy" if kind == "registry_remote_tls" else "http_proxy"
    layout, tag, _ = sample_layout
    target = f"{registry.host}/authproxy/x:v1"
    refused = run_kade("image", "copy", *trusting(registry), f"oci:{layout}:{tag}", target,
                       env={variable: forward_proxy_auth.url})
    assert refused.returncode == 1
    assert "407" in refused.stderr and registry.host in refused.stderr and "Traceback" not in refused.stderr
    assert "http://user:password@host:port" in refused.stderr
    with_login = forward_proxy_auth.url.replace("://", f"://{USER}:{quote(PASSWORD, safe='')}@")
    copied(sample_layout, target, {variable: with_login}, trusting(registry))
    assert PASSWORD not in refused.stderr


def test_a_proxy_that_is_not_http_is_named(registry_remote, sample_layout):
    layout, tag, _ = sample_layout
    done = run_kade("image", "copy", *trusting(registry_remote), f"oci:{layout}:{tag}", f"{registry_remote.host}/x/y:v1",
                    env={"HTTP_PROXY": "socks5://127.0.0.1:1080"})
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "socks5://127.0.0.1:1080" in done.stderr and "http://host:port" in done.stderr
