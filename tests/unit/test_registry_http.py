"""Pure parts of the HTTP layer: challenges, Link headers, Range, retry policy."""
import pytest

from registry.auth import Challenge, config_keys_for, parse_www_authenticate, token_from_response
from registry.client import parse_range_end
from registry.transport import RetryPolicy, parse_link_next, parse_retry_after, retry_delay, should_retry_status


@pytest.mark.parametrize("header, expected", [
    ('Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull"',
     [Challenge("bearer", {"realm": "https://auth.example.com/token", "service": "registry.example.com",
                           "scope": "repository:a/b:pull"})]),
    ('Bearer realm="https://a/t",scope="repository:a:pull,push repository:b:pull"',
     [Challenge("bearer", {"realm": "https://a/t", "scope": "repository:a:pull,push repository:b:pull"})]),
    ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
    ('basic realm=unquoted', [Challenge("basic", {"realm": "unquoted"})]),
    ('Bearer realm="a\\"b", error="invalid_token"', [Challenge("bearer", {"realm": 'a"b', "error": "invalid_token"})]),
    ('Basic realm="x", Bearer realm="y",service="s"',
     [Challenge("basic", {"realm": "x"}), Challenge("bearer", {"realm": "y", "service": "s"})]),
    ('Bearer', [Challenge("bearer", {})]),
    ('', []),
    ('"garbage', []),
])
def test_parse_www_authenticate(header, expected):
    assert parse_www_authenticate(header) == expected


@pytest.mark.parametrize("header, expected", [
    ('</v2/a/tags/list?last=t05&n=5>; rel="next"', "/v2/a/tags/list?last=t05&n=5"),
    ('<https://r/v2/a/tags/list?n=5&last=x>; rel=next', "https://r/v2/a/tags/list?n=5&last=x"),
    ('</prev>; rel="prev", </next?a,b>; rel="next"', "/next?a,b"),
    ('</x>; rel="prev"', None),
    ('garbage', None),
    ('', None),
    (None, None),
])
def test_parse_link_next(header, expected):
    assert parse_link_next(header) == expected


@pytest.mark.parametrize("value, expected", [
    ("0-0", 1), ("0-1048575", 1048576), ("bytes=0-9", 10), (" 0-4 ", 5), ("1-5", None), ("", None), (None, None),
    ("0-", None), ("0-x", None),
])
def test_parse_range_end(value, expected):
    assert parse_range_end(value) == expected


@pytest.mark.parametrize("status, retry", [(500, True), (502, True), (503, True), (504, True), (429, True),
                                           (408, True), (501, False), (400, False), (401, False), (404, False),
                                           (200, False)])
def test_should_retry_status(status, retry):
    assert should_retry_status(status) is retry


def test_retry_delay_backoff_jitter_and_retry_after():
    policy = RetryPolicy(attempts=6, base_delay=1.0, max_delay=5.0, max_retry_after=30.0)
    assert [retry_delay(policy, a, rand=lambda: 1.0) for a in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert [retry_delay(policy, a, rand=lambda: 0.0) for a in range(1, 4)] == [0.5, 1.0, 2.0]
    assert retry_delay(policy, 1, retry_after="7") == 7.0
    assert retry_delay(policy, 1, retry_after="3600") == 30.0  # capped
    assert retry_delay(policy, 2, retry_after="soon", rand=lambda: 1.0) == 2.0  # bad value ignored


@pytest.mark.parametrize("value, expected", [
    ("120", 120.0), ("0", 0.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 60.0), ("Wed, 21 Oct 2015 07:26:00 GMT", 0.0),
    ("nonsense", None), ("-5", None), (None, None),
])
def test_parse_retry_after(value, expected):
    now = 1445412420.0  # 2015-10-21 07:27:00 UTC
    assert parse_retry_after(value, now=now) == expected


@pytest.mark.parametrize("doc, expected", [
    ({"token": "t", "expires_in": 300}, ("t", 300.0)),
    ({"access_token": "a"}, ("a", 60.0)),
    ({"token": "t", "expires_in": -1}, ("t", 60.0)),
    ({"token": "t", "expires_in": "x"}, ("t", 60.0)),
    ({"token": "eyJhbGciOi.J9-_~+/x=="}, ("eyJhbGciOi.J9-_~+/x==", 60.0)),   # JWT and b64token characters
])
def test_token_from_response(doc, expected):
    assert token_from_response(doc) == expected


@pytest.mark.parametrize("doc", [{}, {"token": ""}, [], "x", {"token": 5},
                                 # it goes into a header: a newline would end it, a non-ASCII byte can't be sent
                                 {"token": "a\r\nX-Injected: 1"}, {"token": "a b"}, {"token": "tök"}])
def test_token_from_response_bad(doc):
    with pytest.raises(ValueError):
        token_from_response(doc)


def test_config_keys_for_docker_hub_and_others():
    assert config_keys_for("docker.io")[0] == "https://index.docker.io/v1/"
    assert config_keys_for("127.0.0.1:5000")[:2] == ["127.0.0.1:5000", "https://127.0.0.1:5000"]
