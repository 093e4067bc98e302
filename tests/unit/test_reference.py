import pytest

from registry.errors import InvalidReference
from registry.reference import Reference, is_loopback_host, split_host_port

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, registry, repository, tag, digest, canonical", [
    ("debian", "docker.io", "library/debian", "latest", None, "docker.io/library/debian:latest"),
    ("debian:12", "docker.io", "library/debian", "12", None, "docker.io/library/debian:12"),
    ("library/debian", "docker.io", "library/debian", "latest", None, "docker.io/library/debian:latest"),
    ("user/app:v1", "docker.io", "user/app", "v1", None, "docker.io/user/app:v1"),
    ("index.docker.io/debian", "docker.io", "library/debian", "latest", None, "docker.io/library/debian:latest"),
    ("docker.io/x/y/z", "docker.io", "x/y/z", "latest", None, "docker.io/x/y/z:latest"),
    ("localhost/app", "localhost", "app", "latest", None, "localhost/app:latest"),
    ("localhost:5000/team/app:v1", "localhost:5000", "team/app", "v1", None, "localhost:5000/team/app:v1"),
    ("127.0.0.1:5000/a@" + D, "127.0.0.1:5000", "a", None, D, "127.0.0.1:5000/a@" + D),
    ("reg.example.com:443/a/b:t@" + D, "reg.example.com:443", "a/b", "t", D, "reg.example.com:443/a/b:t@" + D),
    ("[::1]:5000/app:1", "[::1]:5000", "app", "1", None, "[::1]:5000/app:1"),
    ("ghcr.io/o/a-b_c.d__e:V1.2-rc_3", "ghcr.io", "o/a-b_c.d__e", "V1.2-rc_3", None, "ghcr.io/o/a-b_c.d__e:V1.2-rc_3"),
    ("Host/app", "Host", "app", "latest", None, "Host/app:latest"),  # uppercase first part = a host (Docker)
    ("a---b/c", "docker.io", "a---b/c", "latest", None, "docker.io/a---b/c:latest"),
])
def test_parse_valid(text, registry, repository, tag, digest, canonical):
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert str(ref) == canonical
    assert Reference.parse(str(ref)) == ref  # canonical form round-trips


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("Debian", "lowercase"),
    ("ghcr.io/Org/app", "lowercase"),
    ("app:", "invalid tag"),
    ("app:-x", "invalid tag"),
    ("app:" + "a" * 129, "invalid tag"),
    ("app@sha256:abc", "invalid digest"),
    ("app@md5:" + "a" * 32, "unsupported digest algorithm"),
    ("app@sha256:" + "A" * 64, "lowercase hex"),
    ("a" * 64, "image ID"),
    ("a//b", "invalid repository"),
    ("a/b/", "invalid repository"),
    ("_a/b", "invalid repository"),
    ("a_/b", "invalid repository"),
    ("host:port/app", "invalid registry host"),
    ("-bad.com/app", "invalid registry host"),
    ("a b", "whitespace"),
    (" debian", "whitespace"),
    ("a:b:c", "invalid repository"),
    ("x/" + "a" * 260, "longer than 255"),
])
def test_parse_invalid(text, reason):
    with pytest.raises(InvalidReference, match=reason):
        Reference.parse(text)


def test_no_default_tag_and_helpers():
    ref = Reference.parse("127.0.0.1:5000/team/app", default_tag=None)
    assert ref.tag is None and ref.identifier == "latest"
    assert str(ref.with_tag("v2")) == "127.0.0.1:5000/team/app:v2"
    assert str(ref.with_digest(D)) == f"127.0.0.1:5000/team/app@{D}"
    assert str(Reference.parse("debian:12@" + D).repo_ref()) == "docker.io/library/debian"
    assert Reference.parse("debian").api_host == "registry-1.docker.io"
    assert Reference.parse("localhost:5000/a").api_host == "localhost:5000"
    with pytest.raises(InvalidReference):
        ref.with_tag("bad tag")


@pytest.mark.parametrize("host, loopback", [
    ("localhost", True), ("localhost:5000", True), ("127.0.0.1:5000", True), ("127.8.9.1", True),
    ("[::1]:5000", True), ("::1", True), ("registry.localhost:80", True),
    ("10.0.0.1:5000", False), ("example.com", False), ("localhost.example.com", False), ("[::2]:5000", False),
])
def test_is_loopback_host(host, loopback):
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize("host, expected", [
    ("r.io", ("r.io", None)), ("r.io:5000", ("r.io", 5000)), ("[::1]:5000", ("::1", 5000)), ("[::1]", ("::1", None)),
    ("::1", ("::1", None)), ("127.0.0.1:80", ("127.0.0.1", 80)), ("r.io:x", ("r.io", None)),
])
def test_split_host_port(host, expected):
    assert split_host_port(host) == expected
