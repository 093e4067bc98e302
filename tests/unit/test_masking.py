"""Secret masking in RUN output (builder/masking.py): a secret is hidden whole in every shape a
RUN prints it in, and nothing else is hidden."""
from __future__ import annotations

import base64
import subprocess
import textwrap
from urllib.parse import quote, quote_plus

import pytest

from builder.masking import MASK, SecretMask, _Automaton

PEM = subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
                     capture_output=True, check=True).stdout  # a real multi-line secret, fresh each run
TOKEN = b"ghp_s3cretT0kenValue/with+chars=&more"


def shown(secret: bytes, text: str) -> str:
    """`text` as a RUN's output lines, each masked."""
    mask = SecretMask([secret])
    return "\n".join(mask.mask(line) for line in text.split("\n"))


def leaks(secret: bytes, output: str) -> list[str]:
    """Pieces of the secret (its lines, any 12 base64 characters of it) still visible."""
    found = [ln for ln in secret.decode().splitlines() if len(ln.strip()) >= 8 and ln.strip() in output]
    b64 = base64.b64encode(secret).decode()
    found += [b64[i:i + 12] for i in range(0, len(b64) - 12, 6) if b64[i:i + 12] in output]
    return found


@pytest.mark.parametrize("printed", [
    pytest.param(lambda s: s.decode(), id="cat"),
    pytest.param(lambda s: "\n".join("> " + ln for ln in s.decode().splitlines()), id="prefixed-lines"),
    pytest.param(lambda s: "\n".join(s.decode().splitlines()[3:6]), id="some-lines"),
    pytest.param(lambda s: base64.b64encode(s).decode(), id="base64-one-line"),
    pytest.param(lambda s: "\n".join(textwrap.wrap(base64.b64encode(s).decode(), 76)), id="base64-wrapped"),
    pytest.param(lambda s: base64.b64encode(b"x" + s + b"tail").decode(), id="base64-inside-1"),
    pytest.param(lambda s: base64.b64encode(b"xy" + s).decode(), id="base64-inside-2"),
    pytest.param(lambda s: base64.urlsafe_b64encode(s).decode().rstrip("="), id="base64url"),
    pytest.param(lambda s: "key=" + quote(s.decode(), safe="") + "&x=1", id="url-encoded"),
    pytest.param(lambda s: quote_plus(s.decode()), id="form-encoded"),
])
def test_a_multi_line_key_is_masked_whole_in_every_shape(printed):
    out = shown(PEM, "before\n" + printed(PEM) + "\nafter")
    assert not leaks(PEM, out), out
    assert out.startswith("before\n") and out.endswith("\nafter") and MASK in out


@pytest.mark.parametrize("printed, expected", [
    (TOKEN.decode(), MASK),
    ("token: " + TOKEN.decode() + " (ok)", f"token: {MASK} (ok)"),
    (base64.b64encode(TOKEN + b"\n").decode(), MASK),          # echo "$TOKEN" | base64
    (base64.b64encode(TOKEN).decode(), MASK),
    (quote(TOKEN.decode(), safe=""), MASK),
    ("Authorization: Bearer " + quote_plus(TOKEN.decode()), f"Authorization: Bearer {MASK}"),
    ("nothing secret here, not even aGVsbG8gd29ybGQgaGVsbG8=", "nothing secret here, not even aGVsbG8gd29ybGQgaGVsbG8="),
])
def test_a_token(printed, expected):
    assert shown(TOKEN + b"\n", printed) == expected   # a secret file's trailing newline is not part of it


def test_short_and_empty_secrets():
    assert shown(b"pw1", "user pw1 pw12") == f"user {MASK} {MASK}2"
    assert not SecretMask([b"", b"  \n"])
    assert SecretMask([]).mask("anything") == "anything"


def test_lines_of_a_multi_line_secret_are_masked_alone_only_when_long_enough():
    secret = b"user: admin\npassword: hunter2\nx\n"
    assert shown(secret, "password: hunter2") == MASK
    assert shown(secret, "x marks") == "x marks"


def test_the_automaton_finds_the_longest_substring_at_each_position():
    a = _Automaton(["abcab", "bcd"])
    assert a.matches("zabcdz", 3) == [(1, 4), (2, 5)]
    assert a.matches("zzz", 1) == []


def test_a_key_printed_in_part_across_lines_is_masked_piecewise():
    window = PEM.decode()[300:700]       # starts and ends in the middle of a line
    out = shown(PEM, window)
    for ln in window.splitlines():
        ln = ln.strip()
        if len(ln) >= 16 and "-----" not in ln:
            assert ln not in out, out


def test_words_of_a_secret_file_stay_visible_where_the_file_is_not_printed():
    npmrc = b"//registry.npmjs.org/:_authToken=npm_Abcdefghijklmnopqrstuvwxyz0123\n"
    assert shown(npmrc, "GET https://registry.npmjs.org/left-pad") == "GET https://registry.npmjs.org/left-pad"
    assert shown(npmrc, "token npm_Abcdefghijklmnopqrstuvwxyz0123 ok") == f"token {MASK} ok"
