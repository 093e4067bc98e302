"""Authentication against the real registry: htpasswd basic auth, and bearer tokens from the
test token issuer (tests/fixtures/registry.py), with credentials from every supported source."""
from __future__ import annotations

import base64
import io
import json
import os
import stat
import uuid

import pytest

from registry.auth import CredentialResolver, Credentials
from registry.client import ClientOptions, RegistryClient
from registry.digest import sha256_digest
from registry.errors import Unauthorized
from tests.fixtures.registry import _htpasswd


def _client(resolver: CredentialResolver) -> RegistryClient:
    return RegistryClient(ClientOptions(credentials=resolver))


def _roundtrip(client: RegistryClient, host: str) -> None:
    repo = client.repository(f"{host}/auth/{uuid.uuid4().hex[:8]}")
    data = os.urandom(2000)
    assert repo.upload_blob(io.BytesIO(data)).digest == sha256_digest(data)
    assert repo.head_blob(sha256_digest(data)) == len(data)


def _docker_config(tmp_path, doc: dict) -> dict[str, str]:
    d = tmp_path / "docker"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(doc))
    return {"DOCKER_CONFIG": str(d), "HOME": str(tmp_path)}


def _auth_entry(user: str, password: str) -> dict:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize("source", ["explicit", "docker_config", "registry_auth_file", "cred_helper", "creds_store"])
def test_basic_auth_credentials_sources(registry_basic, tmp_path, source):
    host, user, pw = registry_basic.host, registry_basic.username, registry_basic.password
    env: dict[str, str] = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    explicit = None
    if source == "explicit":
        explicit = {host: Credentials(user, pw, source="test")}
    elif source == "docker_config":
        env.update(_docker_config(tmp_path, {"auths": {host: _auth_entry(user, pw)}}))
    elif source == "registry_auth_file":
        (tmp_path / "auth.json").write_text(json.dumps({"auths": {host: _auth_entry(user, pw)}}))
        env["REGISTRY_AUTH_FILE"] = str(tmp_path / "auth.json")
    else:
        # A real credential helper program (the protocol is stdin host -> JSON on stdout).
        bindir = tmp_path / "bin"
        bindir.mkdir()
        helper = bindir / "docker-credential-kadetest"
        helper.write_text("#!/bin/sh\nread host\n"
                          f"[ \"$host\" = \"{host}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\n"
                          f"printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{pw}\"}}' \"$host\"\n")
        helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
        env["PATH"] = f"{bindir}:{env['PATH']}"
        key = {"credHelpers": {host: "kadetest"}} if source == "cred_helper" else {"credsStore": "kadetest"}
        env.update(_docker_config(tmp_path, key))
    resolver = CredentialResolver(explicit, env=env)
    _roundtrip(_client(resolver), host)
    if source in ("cred_helper", "creds_store"):
        assert resolver.get(host).source == "credential helper docker-credential-kadetest"


def test_basic_auth_failures_name_the_source_never_the_secret(registry_basic, tmp_path):
    host = registry_basic.host
    with pytest.raises(Unauthorized) as anon:
        _roundtrip(_client(CredentialResolver(env={"HOME": str(tmp_path)})), host)
    assert host in str(anon.value) and "anonymous" in str(anon.value)
    secret = "wrong-" + uuid.uuid4().hex
    env = _docker_config(tmp_path, {"auths": {host: _auth_entry("kade", secret)}})
    with pytest.raises(Unauthorized) as wrong:
        _roundtrip(_client(CredentialResolver(env=env)), host)
    message = str(wrong.value)
    assert "config.json" in message and "podman login" in message
    assert secret not in message and base64.b64encode(f"kade:{secret}".encode()).decode() not in message


def test_token_auth_push_pull_and_token_cache(registry_token):
    issuer = registry_token.issuer
    creds = CredentialResolver({registry_token.host: Credentials(registry_token.username, registry_token.password,
                                                                 source="test")}, env={})
    client = _client(creds)
    before = len(issuer.requests)
    repo = client.repository(f"{registry_token.host}/tok/{uuid.uuid4().hex[:8]}")
    blobs = [os.urandom(500) for _ in range(5)]
    for data in blobs:
        repo.upload_blob(io.BytesIO(data))  # HEAD (pull) then POST/PUT (pull,push)
    for data in blobs:
        assert repo.head_blob(sha256_digest(data)) == len(data)
    issued = issuer.requests[before:]
    assert issued and all(r["user"] == registry_token.username and r["service"] == issuer.service for r in issued)
    assert len(issued) == 2  # one token per scope (pull; pull,push), reused for 15 requests
    granted = {(s.rsplit(":", 1)[0], frozenset(s.rsplit(":", 1)[1].split(","))) for r in issued for s in r["scopes"]}
    assert granted == {(f"repository:{repo.name}", frozenset({"pull"})),
                       (f"repository:{repo.name}", frozenset({"pull", "push"}))}


def test_token_renewed_after_401(registry_token):
    issuer = registry_token.issuer
    creds = CredentialResolver({registry_token.host: Credentials(registry_token.username, registry_token.password,
                                                                 source="test")}, env={})
    repo = _client(creds).repository(f"{registry_token.host}/tok/{uuid.uuid4().hex[:8]}")
    issuer.expired_next = 1  # the first token is already expired: the registry answers 401
    before = len(issuer.requests)
    try:
        assert repo.head_blob(sha256_digest(b"x")) is None
    finally:
        issuer.expired_next = 0
    assert len(issuer.requests) - before == 2


def test_token_auth_denied_push_names_credentials(registry_token, tmp_path):
    client = _client(CredentialResolver(env={"HOME": str(tmp_path)}))
    with pytest.raises(Unauthorized, match=rf"registry {registry_token.host} .*no credentials \(anonymous\)"):
        _roundtrip(client, registry_token.host)


def test_identity_token_from_docker_config(registry_token, tmp_path):
    """A Docker `identitytoken` (OAuth refresh token) is exchanged at the realm by POST."""
    issuer = registry_token.issuer
    refresh = "refresh-" + uuid.uuid4().hex
    issuer.refresh_tokens[refresh] = registry_token.username
    env = _docker_config(tmp_path, {"auths": {registry_token.host: {"identitytoken": refresh}}})
    _roundtrip(_client(CredentialResolver(env=env)), registry_token.host)
    assert issuer.requests[-1]["user"] == registry_token.username


def test_tls_registry_on_loopback_is_spoken_to_over_https(registry_tls):
    """Docker's rule for insecure (here: loopback) registries: HTTPS when the host speaks TLS."""
    client = _client(CredentialResolver(env={}))
    _roundtrip(client, registry_tls.host)
    assert client.transport.base_url(registry_tls.host) == f"https://{registry_tls.host}"


def test_credentials_go_only_to_the_registrys_own_origin(registry_factory, tmp_path):
    """A registry whose upload Locations name it otherwise (http.host: localhost, while it is reached
    as 127.0.0.1) gets 127.0.0.1's credentials only on 127.0.0.1: the upload to "localhost" goes
    without them, is refused, and the error names localhost. With credentials for that name too, the
    same upload works, so the refusal was the missing credentials (the real registry takes them)."""
    workdir = tmp_path / "htpasswd"
    workdir.mkdir()
    user, password = "kade", "origin-test-pw"
    _htpasswd(workdir / "htpasswd", user, password)
    server = registry_factory(auth={"htpasswd": {"realm": "kade-test", "path": str(workdir / "htpasswd")}},
                              public_name="localhost")
    other = f"localhost:{server.port}"
    only_ip = CredentialResolver(explicit={server.host: Credentials(user, password, source="test")}, env={})
    with pytest.raises(Unauthorized, match=f"registry {other} refused authentication"):
        _roundtrip(_client(only_ip), server.host)
    both = CredentialResolver(explicit={name: Credentials(user, password, source="test")
                                        for name in (server.host, other)}, env={})
    _roundtrip(_client(both), server.host)
