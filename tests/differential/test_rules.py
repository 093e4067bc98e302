"""The differential corpus's own machinery, table-driven: the FROM mapping to stand-ins, the independent
layer reader (whiteouts, opaque dirs, hard links) and the comparison rules (mtime classes, noise, expectations)."""
from __future__ import annotations

import io
import tarfile

import pytest

from tests.differential.compare import (BUILD_TIME, Difference, Expected, Noise, image_differences, judge,
                                        mtime_value)
from tests.differential.imagetree import Entry, Image, Tree
from tests.differential.standins import MappingError, map_dockerfile, split_ref

REG = "127.0.0.1:5000"


@pytest.mark.parametrize("ref, want", [
    ("python:3.11-slim", ("python", "3.11-slim")),
    ("docker.io/library/node:20", ("node", "20")),
    ("golang", ("golang", "latest")),
    ("nginx:1.25@sha256:" + "a" * 64, ("nginx", "1.25")),
    ("gcr.io/distroless/static-debian12:nonroot", ("gcr.io/distroless/static-debian12", "nonroot")),
    ("localhost:5000/x/y", ("localhost:5000/x/y", "latest")),
])
def test_split_ref(ref, want):
    assert split_ref(ref) == want


@pytest.mark.parametrize("dockerfile, want_lines, needed", [
    ("FROM python:3.11-slim AS build\nFROM build\nCOPY --from=build /a /b\n",
     [f"FROM {REG}/standin/python:3.11-slim AS build", "FROM build", "COPY --from=build /a /b"],
     {("python", "3.11-slim")}),
    ("ARG V=alpine\nFROM nginx:${V}\nLABEL v=$V\n",
     ["ARG V=alpine", f"FROM {REG}/standin/nginx:${{V}}", "LABEL v=$V"], {("nginx", "alpine")}),
    ("ARG BASE=debian:bookworm\nFROM $BASE\n",
     [f"ARG BASE={REG}/standin/debian:bookworm", "FROM $BASE"], {("debian", "bookworm")}),
    ("FROM scratch\nCOPY --from=gcr.io/distroless/static:latest /etc/passwd /p\nCOPY --from=0 /a /b\n",
     ["FROM scratch", f"COPY --from={REG}/standin/distroless:latest /etc/passwd /p", "COPY --from=0 /a /b"],
     {("distroless", "latest")}),
    ("from --platform=$BUILDPLATFORM golang:1.22 as b\nRUN --mount=type=cache,from=b,target=/x true\n",
     [f"from --platform=$BUILDPLATFORM {REG}/standin/golang:1.22 as b", "RUN --mount=type=cache,from=b,target=/x true"],
     {("golang", "1.22")}),
    ("FROM debian\nRUN --mount=type=bind,from=rust:1.80,source=/usr,target=/r true\n",
     [f"FROM {REG}/standin/debian:latest", f"RUN --mount=type=bind,from={REG}/standin/rust:1.80,source=/usr,target=/r true"],
     {("debian", "latest"), ("rust", "1.80")}),
])
def test_map_dockerfile(dockerfile, want_lines, needed):
    mapped = map_dockerfile(dockerfile, REG)
    assert mapped.text.split("\n")[:len(want_lines)] == want_lines
    assert mapped.needed == needed


@pytest.mark.parametrize("dockerfile", ["FROM quay.io/someone/thing:1\n", "FROM $NOPE\n", "ARG T\nFROM python:$T\n"])
def test_map_dockerfile_refuses_what_it_cannot_map(dockerfile):
    with pytest.raises(MappingError):
        map_dockerfile(dockerfile, REG)


def layer(*members: tuple) -> io.BytesIO:
    """(name, kind, data_or_target) tuples -> an uncompressed tar layer."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.mtime = 100
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "link": tarfile.LNKTYPE, "sym": tarfile.SYMTYPE}[kind]
            info.linkname = payload or ""
            tar.addfile(info)
    buf.seek(0)
    return buf


def test_tree_applies_whiteouts_opaque_dirs_and_hard_links():
    tree = Tree()
    tree.apply_layer(layer(("etc", "dir", None), ("etc/a", "file", b"a"), ("etc/b", "file", b"b"),
                           ("opt", "dir", None), ("opt/old", "file", b"o"), ("bin", "dir", None),
                           ("bin/x", "file", b"x"), ("bin/y", "link", "bin/x"), ("./.hidden", "file", b"h")))
    tree.apply_layer(layer(("etc/.wh.a", "file", b""), ("opt/.wh..wh..opq", "file", b""), ("opt/new", "file", b"n"),
                           ("bin/y", "file", b"replaced"), ("lnk", "sym", "etc/b")))
    files = tree.final()
    assert sorted(files) == ["/.hidden", "/bin", "/bin/x", "/bin/y", "/etc", "/etc/b", "/lnk", "/opt", "/opt/new"]
    assert files["/bin/x"].hardlinks == () and files["/bin/y"].size == len(b"replaced")
    assert files["/lnk"].type == "symlink" and files["/lnk"].link == "etc/b"


def test_tree_keeps_hard_link_groups():
    tree = Tree()
    tree.apply_layer(layer(("a", "file", b"same"), ("b", "link", "a"), ("c", "link", "a")))
    files = tree.final()
    assert files["/b"].hardlinks == ("/a", "/b", "/c") and files["/b"].sha256 == files["/a"].sha256


def entry(mtime: float = 50.0, **kw) -> Entry:
    base = dict(type="file", mode=0o644, uid=0, gid=0, size=1, sha256="x", link="", mtime=mtime, xattrs=())
    base.update(kw)
    return Entry(**base)


def image(files: dict[str, Entry], config: dict | None = None, history: list | None = None) -> Image:
    return Image({"config": config or {}, "history": history or []}, files, 1)


@pytest.mark.parametrize("mtime, started, want", [
    (999.0, 1000.0, BUILD_TIME),  # tar's whole seconds: up to 1 s before the start is still the build's
    (1500.0, 1000.0, BUILD_TIME),
    (998.9, 1000.0, 998),
    (5.0, 1000.0, 5),
])
def test_mtime_value(mtime, started, want):
    assert mtime_value(mtime, started) == want


@pytest.mark.parametrize("a, b, want", [
    (entry(), entry(), []),
    (entry(mode=0o755), entry(), [("/f", "mode")]),
    (entry(uid=7, gid=7), entry(), [("/f", "uid"), ("/f", "gid")]),
    (entry(mtime=1200), entry(mtime=2500), []),  # both made during their build
    (entry(mtime=50), entry(mtime=1200), [("/f", "mtime")]),  # kept its source's time vs the build's
    (entry(xattrs=(("security.capability", "x"),)), entry(), [("/f", "xattrs")]),
])
def test_image_differences_of_a_file(a, b, want):
    diffs = image_differences(image({"/f": a}), 1000.0, image({"/f": b}), 2000.0)
    assert [(d.where, d.field) for d in diffs] == want


def test_image_differences_of_config_presence_and_history():
    a = image({"/only-a": entry()}, {"Env": ["A=1"], "Cmd": []}, [{"created_by": "x"}, {"empty_layer": True}])
    b = image({"/only-b": entry()}, {"Env": ["A=2"]}, [{"created_by": "y"}])
    got = {(d.where, d.field): (d.left, d.right) for d in image_differences(a, 0, b, 0)}
    assert got == {("/only-a", "presence"): ("file", "(absent)"), ("/only-b", "presence"): ("(absent)", "file"),
                   ("config.Env", "value"): (["A=1"], ["A=2"]), ("image.history", "steps"): ("LE", "L")}


def test_judge_normalises_noise_keeps_expectations_and_reports_stale_ones():
    noise = Noise.of([Difference("/var/log/apt/history.log", "sha256", "a", "b"),
                      Difference("/tmp/tmpA1", "presence", "dir", "(absent)")])
    diffs = [Difference("/var/log/apt/history.log", "sha256", "x", "y"),
             Difference("/tmp/tmpZZ/f", "presence", "file", "(absent)"),
             Difference("/app/main.py", "mtime", BUILD_TIME, 5),
             Difference("/app/new", "mode", 0o600, 0o644)]
    expected = Expected.load([{"where": "/app/*.py", "field": "mtime", "why": "COPY mtime"},
                              {"where": "config.Healthcheck", "why": "never happens"}])
    verdict = judge(diffs, noise, expected)
    assert [d.where for d in verdict.normalised] == ["/var/log/apt/history.log", "/tmp/tmpZZ/f"]
    assert [d.where for d, _ in verdict.known] == ["/app/main.py"]
    assert [d.where for d in verdict.new] == ["/app/new"]
    assert [e.where for e in verdict.stale] == ["config.Healthcheck"]


def test_judge_prefers_the_expectation_naming_the_exact_path():
    diffs = [Difference("/etc/nginx", "mtime", 5, BUILD_TIME), Difference("/etc/nginx/a.conf", "mtime", BUILD_TIME, 5)]
    expected = Expected.load([{"where": "/etc/nginx*", "field": "mtime", "why": "copied files"},
                              {"where": "/etc/nginx", "field": "mtime", "why": "the folder copied into"}])
    verdict = judge(diffs, Noise(set(), set()), expected)
    assert [(d.where, e.why) for d, e in verdict.known] == [("/etc/nginx", "the folder copied into"),
                                                           ("/etc/nginx/a.conf", "copied files")]
    assert not verdict.stale and not verdict.new


def test_an_entry_repeats_only_builders_the_corpus_has(tmp_path):
    from tests.differential.builders import Entry
    (tmp_path / "SOURCE").write_text("repository: x\npath: Dockerfile\n")
    (tmp_path / "build.yaml").write_text("repeat: [buildkit]\n")
    assert Entry.load(tmp_path).repeat == ("buildkit",)
    (tmp_path / "build.yaml").write_text("repeat: [docker]\n")
    with pytest.raises(ValueError, match="docker"):
        Entry.load(tmp_path)


def test_an_expected_difference_the_noise_also_covers_is_not_stale():
    """BuildKit's repeat sometimes differs from itself where kade differs from it deliberately (the
    context directory's time): the expectation still holds, whichever way the repeat went."""
    diff = Difference("/app", "mtime", 1700000000, BUILD_TIME)
    expected = Expected.load([{"where": "/app", "field": "mtime", "why": "the context directory's mtime"}])
    noisy = judge([diff], Noise.of([Difference("/app", "mtime", BUILD_TIME, 1700000001)]), expected)
    quiet = judge([diff], Noise(set(), set()), expected)
    assert [d.where for d in noisy.normalised] == ["/app"] and not noisy.stale and not noisy.new
    assert [d.where for d, _ in quiet.known] == ["/app"] and not quiet.stale and not quiet.new
