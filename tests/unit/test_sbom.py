"""SBOM scanning as pure functions: the package parsers, the layered walk (whiteouts, opaque dirs, links,
limits, the ChainID cache), Go build info from crafted and real binaries, licenses, purls, documents
(validated with spdx-tools' validator), and diffs."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.sbom import Subject, generate
from builder.sbom import documents as docs
from builder.sbom import golang
from builder.sbom import packages as pk
from builder.sbom.licenses import to_spdx
from builder.sbom.walk import CAPS, LayerInput, State, classify, inventory, scan_image, scan_layer
from tests.fixtures.layers import E, make_tar

DPKG = b"""Package: bash
Status: install ok installed
Architecture: amd64
Source: bash (5.2)
Version: 5.2.15-2+b2
Description: GNU Bourne Again SHell
 Bash is an sh-compatible command language interpreter.

Package: gone
Status: deinstall ok config-files
Version: 1.0

Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u4

Package: half
Status: install ok half-configured
Version: 1:2.0
"""
APK = b"C:Q1abc=\nP:musl\nV:1.2.4-r2\nA:x86_64\nL:MIT\no:musl\n\nP:busybox\nV:1.36.1-r5\nL:GPL-2.0-only\n\n"
METADATA = b"Metadata-Version: 2.1\nName: Requests_Toolbelt\nVersion: 1.0.0\nLicense: UNKNOWN\n" \
           b"Classifier: License :: OSI Approved :: Apache Software License\n\nLicense: not a header\n"
COPYRIGHT = b"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n" \
            b"Files: *\nCopyright: someone\nLicense: GPL-2+\n\nFiles: x/*\nLicense: Expat\n\nLicense: GPL-2+\n text\n"


@pytest.mark.parametrize("data, expected", [
    (DPKG, [("bash", "5.2.15-2+b2", "bash"), ("libc6", "2.36-9+deb12u4", "glibc"), ("half", "1:2.0", "")]),
    (b"", []),
    (b"garbage without colon\n\n\x00\xff\n", []),
    (b"Package: noversion\nStatus: install ok installed\n", []),
])
def test_dpkg_status(data, expected):
    assert [(p.name, p.version, p.source) for p in pk.dpkg_status(data, "/var/lib/dpkg/status")] == expected


def test_apk_python_npm_parsers():
    assert [(p.name, p.version, p.license, p.arch) for p in pk.apk_installed(APK, "/lib/apk/db/installed")] == \
        [("musl", "1.2.4-r2", "MIT", "x86_64"), ("busybox", "1.36.1-r5", "GPL-2.0-only", "")]
    (p,) = pk.python_metadata(METADATA, "/x/METADATA")
    assert (p.name, p.version, p.license) == ("Requests_Toolbelt", "1.0.0", "Apache Software License")
    (p,) = pk.python_metadata(b"Name: a\nVersion: 1\nLicense-Expression: MIT OR Apache-2.0\nLicense: BSD\n", "/m")
    assert p.license == "MIT OR Apache-2.0"
    cases = {b'{"name":"@s/x","version":"1.0.0","license":"MIT"}': ("@s/x", "MIT"),
             b'{"name":"y","version":"2","license":{"type":"ISC"}}': ("y", "ISC"),
             b'{"name":"z","version":"3","licenses":[{"type":"MIT"},{"type":"GPL-2.0"}]}': ("z", "MIT OR GPL-2.0"),
             b'{"name":"n"}': None, b"[1,2]": None, b"not json": None, b"[" * 100_000: None}
    for data, want in cases.items():
        got = pk.npm_package(data, "/p")
        assert ((got[0].name, got[0].license) if got else None) == want


def test_os_release_and_copyright():
    assert pk.os_release(b'ID=debian\nVERSION_ID="12"\nHOME_URL="x"\n') == {"ID": "debian", "VERSION_ID": "12"}
    assert pk.copyright_licenses(COPYRIGHT) == ["GPL-2+", "Expat"]
    assert pk.copyright_licenses(b"This package was debianized by someone.\nLicense: GPL\n") == []


@pytest.mark.parametrize("path, mode, kind", [
    ("var/lib/dpkg/status", 0o644, "dpkg"),
    ("var/lib/dpkg/status.d/base", 0o644, "dpkg"),
    ("var/lib/dpkg/status.d/base.md5sums", 0o644, None),
    ("lib/apk/db/installed", 0o644, "apk"),
    ("usr/lib/python3/dist-packages/six-1.16.0.dist-info/METADATA", 0o644, "python"),
    ("usr/lib/python3/dist-packages/x.egg-info/PKG-INFO", 0o644, "python"),
    ("usr/lib/python3.11/site-packages/old.egg-info", 0o644, "python"),
    ("app/node_modules/left-pad/package.json", 0o644, "npm"),
    ("app/node_modules/@scope/pkg/package.json", 0o644, "npm"),
    ("app/node_modules/a/node_modules/b/package.json", 0o644, "npm"),
    ("app/node_modules/left-pad/test/fixture/package.json", 0o644, None),
    ("app/package.json", 0o644, None),
    ("usr/share/doc/bash/copyright", 0o644, "copyright"),
    ("usr/share/doc/bash/examples/copyright", 0o644, None),
    ("etc/os-release", 0o644, "os-release"),
    ("usr/bin/app", 0o755, "go"),
    ("etc/passwd", 0o644, None),
])
def test_classify(path, mode, kind):
    assert classify(path, mode) == kind


@pytest.mark.parametrize("name, path", [
    (b"usr/bin/app", "usr/bin/app"), (b"usr/share/", "usr/share"), (b"./etc/os-release", "etc/os-release"),
    (b"/etc//os-release", "etc/os-release"), (b"a/./b/", "a/b"), (b".hidden/x", ".hidden/x"),
    (b"a/.b/..c", "a/.b/..c"), (b"a/../b", None), (b"../a", None), (b"a/..", None), (b".", None), (b"./", None),
    (b"/", None), (b"", None), (b"a/b/.", "a/b"), (b"\xff/x", "\udcff/x"),
])
def test_entry_names_are_normalized_and_dotdot_refused(name, path):
    from builder.sbom.walk import _normalize

    assert _normalize(name) == path


def _scan(*layers: list[E]) -> State:
    state = State()
    for i, entries in enumerate(layers):
        scan_layer(io.BytesIO(make_tar(entries)), state, i)
    return state


def _names(state: State) -> list[str]:
    return [p.name for p in inventory(state)[0]]


STATUS = E("var/lib/dpkg/status", data=DPKG)
NODE = E("app/node_modules/x/package.json", data=b'{"name":"x","version":"1.0.0"}')


def test_whiteouts_opaque_dirs_and_replacements():
    assert _names(_scan([STATUS, NODE])) == ["bash", "half", "libc6", "x"]
    # a whiteout of the file, of a parent folder, an opaque parent, a file replacing a folder
    assert _names(_scan([STATUS, NODE], [E("var/lib/dpkg/.wh.status")])) == ["x"]
    assert _names(_scan([STATUS, NODE], [E("app/.wh.node_modules")])) == ["bash", "half", "libc6"]
    assert _names(_scan([STATUS, NODE], [E("app/node_modules", "dir"), E("app/node_modules/.wh..wh..opq")])) == \
        ["bash", "half", "libc6"]
    assert _names(_scan([STATUS, NODE], [E("app", "symlink", link="/elsewhere")])) == ["bash", "half", "libc6"]
    # an opaque dir keeps what its own layer adds, whatever the tar order
    layer = [E("app/node_modules/y/package.json", data=b'{"name":"y","version":"2"}'),
             E("app/node_modules/.wh..wh..opq")]
    assert _names(_scan([NODE], layer)) == ["y"]
    # a directory over a directory merges; an upper status file replaces the lower one
    assert _names(_scan([STATUS, NODE], [E("app/node_modules", "dir")])) == ["bash", "half", "libc6", "x"]
    newer = E("var/lib/dpkg/status", data=b"Package: zsh\nVersion: 5.9\n")
    assert _names(_scan([STATUS], [newer])) == ["zsh"]


def test_links_are_never_followed_and_names_stay_inside():
    state = _scan([E("etc/real", data=DPKG), E("var/lib/dpkg/status", "symlink", link="/etc/real"),
                   E("../../var/lib/dpkg/status", data=DPKG),
                   E("usr/lib/node_modules/x/package.json", "symlink", link="/proc/self/environ")])
    assert _names(state) == []
    linked = _scan([E("usr/lib/node_modules/x/package.json", data=b'{"name":"x","version":"1"}'),
                    E("usr/lib/node_modules/y/package.json", "hardlink", link="usr/lib/node_modules/x/package.json")])
    assert [p.location for p in inventory(linked)[0]] == ["/usr/lib/node_modules/x/package.json",
                                                          "/usr/lib/node_modules/y/package.json"]


def test_oversized_files_are_reported_not_read():
    big = E("var/lib/dpkg/status", data=b"x", size=CAPS["dpkg"] + 1)
    tar = make_tar([big])
    state = State()
    # a declared size over the cap: reported and skipped, never buffered (the stream is short: the
    # reader would fail if it tried to read it all): the short tar's end is what fails
    from builder.tarformat import TarFormatError

    with pytest.raises(TarFormatError):
        scan_layer(io.BytesIO(tar), state, 0)
    assert state.notes and "over the" in state.notes[0]


def test_chain_cache_reads_only_new_layers(tmp_path):
    opened: list[str] = []

    def layer(name: str, entries: list[E]) -> LayerInput:
        data = make_tar(entries)

        def open_() -> io.BytesIO:
            opened.append(name)
            return io.BytesIO(data)
        return LayerInput("sha256:" + name * 64, open_)

    base = [layer("a", [STATUS]), layer("b", [NODE])]
    first = scan_image(base, tmp_path)
    assert opened == ["a", "b"]
    opened.clear()
    second = scan_image(base + [layer("c", [E("var/lib/dpkg/.wh.status")])], tmp_path)
    assert opened == ["c"]
    assert _names(first) == ["bash", "half", "libc6", "x"] and _names(second) == ["x"]


# ---- Go build info ---------------------------------------------------------------------------------

def _buildinfo(version: bytes, modinfo: bytes, flags: int = 2, pad: int = 0) -> bytes:
    def varint(n: int) -> bytes:
        out = b""
        while True:
            b, n = n & 0x7F, n >> 7
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out
    sentinel = b"\x30\x77\xaf\x0c\x92\x74\x08\x02\x41\xe1\xc1\x07\xe6\xd6\x18\xe6"
    body = sentinel + modinfo + b"\n" + sentinel[::-1] if modinfo else b""
    header = golang.MAGIC + bytes([8, flags]) + b"\0" * 16
    return b"\0" * pad + header + varint(len(version)) + version + varint(len(body)) + body


MODINFO = b"path\texample.com/app\nmod\texample.com/app\t(devel)\t\ndep\tgolang.org/x/sys\tv0.1.0\th1:x=\n" \
          b"dep\tgithub.com/a/b\tv1.0.0\th1:y=\n=>\tgithub.com/fork/b\tv1.0.1\th1:z=\nbuild\tGOOS=linux"


def _stream(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


@pytest.mark.parametrize("blob, expect", [
    (golang.ELF + b"\0" * 12 + _buildinfo(b"go1.22.1", MODINFO), "ok"),
    (golang.ELF + b"\0" * 13 + _buildinfo(b"go1.22.1", MODINFO), None),            # not 16-byte aligned
    (golang.ELF + b"\0" * 12 + _buildinfo(b"go1.22.1", MODINFO, flags=0), golang.OLD_FORMAT),
    (b"#!/bin/sh\n" + _buildinfo(b"go1.22.1", MODINFO), None),                        # not ELF
    (golang.ELF + b"\0" * 12 + golang.MAGIC + bytes([8, 2]) + b"\0" * 16 + b"\xff" * 12, None),  # varint overflow
    (golang.ELF + b"\0" * 12 + golang.MAGIC + bytes([8, 2]) + b"\0" * 16 + b"\x80\x80\x80\x04", None),  # 8 MiB claimed
    (golang.ELF + b"\0" * 12 + _buildinfo(b"not a go version", MODINFO), None),
    # the toolchain's own string constant (garbage after it) before the real section: the real one wins
    (golang.ELF + b"\0" * 12 + golang.MAGIC + b"\x08\x02" + b"\0" * 16 + b"\x05junk!" + b"\0" * 10
     + _buildinfo(b"go1.21.0", MODINFO), "ok"),
])
def test_go_buildinfo_crafted(blob, expect):
    found = golang.scan(_stream(blob).read)
    if expect == "ok":
        assert isinstance(found, golang.BuildInfo)
        assert found.path == "example.com/app" and found.main.path == "example.com/app"
        assert [(d.path, d.version) for d in found.deps] == [("golang.org/x/sys", "v0.1.0"), ("github.com/fork/b", "v1.0.1")]
        assert found.settings == {"GOOS": "linux"}
    else:
        assert found == expect


def test_go_buildinfo_across_block_boundaries():
    at = golang.BLOCK - 16  # the magic straddles the first read and its strings come with the next ones
    blob = golang.ELF + b"\0" * (at - 4) + _buildinfo(b"go1.22.1", MODINFO + b"\ndep\tx.io/y\tv9\th1:q=" * 3000)
    found = golang.scan(_stream(blob).read)
    assert isinstance(found, golang.BuildInfo) and len(found.deps) > 3000


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain (tests/cluster builds use it)")
def test_go_buildinfo_of_a_real_binary_matches_go_version_m():
    go = shutil.which("go")
    binary = Path(go).resolve().parent / "gofmt"
    out = subprocess.run([go, "version", "-m", str(binary)], capture_output=True, text=True, check=True).stdout
    lines = [line.split("\t") for line in out.splitlines()[1:]]
    with open(binary, "rb") as f:
        found = golang.scan(f.read)
    assert isinstance(found, golang.BuildInfo)
    assert found.go_version == out.split(":", 1)[1].split()[0]
    assert found.path == next(x[2] for x in lines if x[1] == "path")
    assert [d.path for d in found.deps] == [x[2] for x in lines if x[1] == "dep"]


# ---- licenses, purls, documents, diff ---------------------------------------------------------------

@pytest.mark.parametrize("declared, spdx", [
    ("", "NOASSERTION"), ("MIT", "MIT"), ("mit", "MIT"), ("Expat", "MIT"), ("GPL-2+", "GPL-2.0-or-later"),
    ("LGPL-2.1+", "LGPL-2.1-or-later"), ("GPL-2.0", "GPL-2.0-only"), ("Apache Software License", "Apache-2.0"),
    ("(MIT OR Apache-2.0) AND BSD-3-Clause", "(MIT OR Apache-2.0) AND BSD-3-Clause"),
    ("GPL-2.0-or-later WITH Classpath-exception-2.0", "GPL-2.0-or-later WITH Classpath-exception-2.0"),
    ("GPL-2+ AND public-domain", "GPL-2.0-or-later AND LicenseRef-public-domain"),
    ("BSD", "LicenseRef-BSD"), ("MIT OR", "LicenseRef-MIT-OR"), ("see LICENSE.txt", "LicenseRef-see-LICENSE.txt"),
])
def test_licenses(declared, spdx):
    assert to_spdx(declared) == spdx


@pytest.mark.parametrize("package, purl", [
    (pk.Package("deb", "libc6", "2.36-9", "/s", arch="amd64", source="glibc"),
     "pkg:deb/debian/libc6@2.36-9?arch=amd64&distro=debian-12&upstream=glibc"),
    (pk.Package("deb", "apt", "1:2.6+b1", "/s"), "pkg:deb/debian/apt@1%3A2.6%2Bb1?distro=debian-12"),
    (pk.Package("pypi", "Requests_Toolbelt", "1.0.0", "/m"), "pkg:pypi/requests-toolbelt@1.0.0"),
    (pk.Package("npm", "@babel/core", "7.0.0", "/p"), "pkg:npm/%40babel/core@7.0.0"),
    (pk.Package("golang", "github.com/a/b", "v1.0.0", "/b"), "pkg:golang/github.com/a/b@v1.0.0"),
    (pk.Package("golang", "stdlib", "go1.22.1", "/b"), "pkg:golang/stdlib@1.22.1"),
    (pk.Package("golang", "example.com/app", "(devel)", "/b"), "pkg:golang/example.com/app"),
])
def test_purls(package, purl):
    assert docs.purl(package, {"ID": "debian", "VERSION_ID": "12"}) == purl


SUBJECT = Subject("127.0.0.1:5000/team/app", "sha256:" + "ab" * 32, "2024-05-01T10:00:00Z", "kade-0.1.0", "amd64")


def _layers() -> list[LayerInput]:
    tars = [make_tar([STATUS, E("etc/os-release", data=b"ID=debian\nVERSION_ID=12\n"),
                      E("usr/share/doc/bash/copyright", data=COPYRIGHT)]),
            make_tar([NODE, E("usr/lib/python3/dist-packages/rt-1.dist-info/METADATA", data=METADATA),
                      E("app/node_modules/w/package.json", data=b'{"name":"w","version":"1","license":"Weird 1"}')])]
    return [LayerInput(f"sha256:{i:064x}", lambda t=t: io.BytesIO(t)) for i, t in enumerate(tars)]


def test_spdx_document_validates_and_is_deterministic(tmp_path):
    from spdx_tools.spdx.parser.parse_anything import parse_file
    from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

    first, media_type, packages = generate(_layers(), SUBJECT)
    again, _, _ = generate(_layers(), SUBJECT)
    assert media_type == "application/spdx+json" and first == again
    path = tmp_path / "sbom.spdx.json"
    path.write_bytes(first)
    assert [m.validation_message for m in validate_full_spdx_document(parse_file(str(path)))] == []
    doc = json.loads(first)
    assert doc["documentNamespace"].endswith("/127.0.0.1%3A5000/team/app/sha256-" + "ab" * 32)
    assert doc["creationInfo"]["created"] == SUBJECT.created
    rows = {p["name"]: p for p in doc["packages"]}
    assert rows["bash"]["licenseDeclared"] == "GPL-2.0-or-later AND MIT"   # from its copyright file
    assert rows["w"]["licenseDeclared"].startswith("LicenseRef-")
    assert {e["licenseId"] for e in doc["hasExtractedLicensingInfos"]} >= {rows["w"]["licenseDeclared"]}
    assert len(doc["relationships"]) == len(packages) + 1


def test_cyclonedx_document_and_reading_back():
    data, media_type, packages = generate(_layers(), SUBJECT, fmt="cyclonedx")
    doc = json.loads(data)
    assert media_type == "application/vnd.cyclonedx+json" and doc["specVersion"] == "1.5"
    assert doc["metadata"]["component"]["version"] == SUBJECT.digest
    assert {c["name"] for c in doc["components"]} == {p.name for p in packages}
    spdx_rows = docs.read_rows(generate(_layers(), SUBJECT)[0])
    assert sorted(docs.read_rows(data), key=str) == sorted(spdx_rows, key=str)
    with pytest.raises(ValueError):
        docs.read_rows(b'{"hello": 1}')


def test_sbom_diff():
    a = [docs.Row("deb", "bash", "5.1"), docs.Row("deb", "zlib", "1"), docs.Row("npm", "x", "1")]
    b = [docs.Row("deb", "bash", "5.2"), docs.Row("npm", "x", "1"), docs.Row("npm", "y", "2")]
    assert docs.diff(a, b) == {
        "added": [{"type": "npm", "name": "y", "versions": ["2"]}],
        "removed": [{"type": "deb", "name": "zlib", "versions": ["1"]}],
        "changed": [{"type": "deb", "name": "bash", "before": ["5.1"], "after": ["5.2"]}]}


def test_many_whiteouts_hide_exactly_what_they_name():
    """A layer of many whiteouts over many findings (hostile input): each hides its own folder only,
    and what the whiting-out layer itself adds stays."""
    n = 2000
    lower = [E(f"app/node_modules/p{i}/package.json", data=b'{"name":"p%d","version":"1"}' % i) for i in range(n)]
    upper = [E(f"app/node_modules/.wh.p{i}") for i in range(0, n, 2)]
    upper += [E("app/node_modules/p0/package.json", data=b'{"name":"again","version":"2"}'),
              E("app/node_modules/.wh.p0")]  # a whiteout after the layer's own file: the file stays
    names = _names(_scan(lower, upper))
    assert len(names) == n // 2 + 1 and "again" in names and "p0" not in names and "p1" in names and "p2" not in names


# -- a layer kade wrote is scanned from its table of contents (builder/layer.py), not its headers ----------

def _tree(root: Path, entries: dict[str, bytes | tuple[bytes, int] | str]) -> None:
    """Files (bytes, or (bytes, mode)), hard links ("=target") and symlinks ("->target") under `root`."""
    import os

    for name, what in entries.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(what, str) and what.startswith("="):
            os.link(root / what[1:], path)
        elif isinstance(what, str):
            os.symlink(what[2:], path)
        else:
            data, mode = what if isinstance(what, tuple) else (what, 0o644)
            path.write_bytes(data)
            path.chmod(mode)


GO_BINARY = golang.ELF + b"\0" * 12 + _buildinfo(b"go1.22.1", MODINFO)
LONG = "usr/lib/python3/dist-packages/" + "a" * 90 + "-1.0.dist-info/METADATA"   # over ustar's 100: PAX path

TOC_CASES = {
    "packages of every kind": ({"var/lib/dpkg/status": DPKG, "lib/apk/db/installed": APK, LONG: METADATA,
                                "app/node_modules/y/package.json": b'{"name":"y","version":"2"}',
                                "etc/os-release": b'ID=debian\nVERSION_ID="12"\n',
                                "usr/share/doc/bash/copyright": COPYRIGHT}, []),
    "go binaries among other executables": ({"usr/bin/a-script": (b"#!/bin/sh\necho hi\n", 0o755),
                                             "usr/bin/tool": (b"\0" * 300_000 + GO_BINARY, 0o755),
                                             "usr/bin/zz-elf": (golang.ELF + b"\0" * 5000, 0o755),
                                             "usr/local/bin/app": (GO_BINARY, 0o755)}, []),
    "hard links and symlinks": ({"app/node_modules/x/package.json": b'{"name":"x","version":"3"}',
                                 "app/node_modules/z/package.json": "=app/node_modules/x/package.json",
                                 "var/lib/dpkg/status": "->/etc/passwd"}, []),
    "deletions and an opaque dir over the lower layer": ({"app/node_modules/w/package.json": b'{"name":"w","version":"1"}'},
                                                         [("var/lib/dpkg/status", "delete"), ("app/node_modules", "opaque")]),
    "a file over the cap": ({"app/node_modules/big/package.json": b" " * (CAPS["npm"] + 1),
                             "var/lib/dpkg/status": b"Package: zsh\nVersion: 5.9\n"}, []),
    "nothing a scanner reads": ({f"data/f{i}": b"%d" % i for i in range(300)}, []),
}


@pytest.mark.parametrize("case", sorted(TOC_CASES))
def test_a_scan_from_the_table_of_contents_equals_a_scan_of_the_blob(case, tmp_path):
    from builder.changes import Change
    from builder.layer import walk_directory, write_layer
    from builder.sbom import blob_layer
    from builder.sbom.walk import scan_with_toc

    files, removed = TOC_CASES[case]
    _tree(tmp_path / "tree", files)
    changes = list(walk_directory(tmp_path / "tree")) + [Change(p, kind) for p, kind in removed]
    blob = tmp_path / "blob"
    with open(blob, "wb") as out:
        info = write_layer(changes, out, "gzip", 0, toc=True)
    assert info.toc is not None and len(info.toc) == len(changes)
    layer = blob_layer(info.digest, lambda: open(blob, "rb"))
    parsed, listed = _scan([STATUS, NODE]), _scan([STATUS, NODE])
    with contextlib.closing(layer.open()) as stream:
        scan_layer(stream, parsed, 1)
    with contextlib.closing(layer.open()) as stream:
        scan_with_toc(stream, info.toc, listed, 1)
    assert listed.to_json() == parsed.to_json()
    assert parsed.findings or parsed.notes or case == "nothing a scanner reads"


def test_scan_image_reads_the_table_of_contents_it_is_given(tmp_path):
    """A toc is trusted as the blob's own (kade wrote both): one that lies shows in the result."""
    from builder.layer import walk_directory, write_layer
    from builder.sbom import blob_layer

    _tree(tmp_path / "tree", {"var/lib/dpkg/status": DPKG})
    with open(tmp_path / "blob", "wb") as out:
        info = write_layer(walk_directory(tmp_path / "tree"), out, "gzip", 0, toc=True)
    assert info.toc is not None
    moved = tuple(e._replace(name=e.name.replace(b"var/lib/dpkg/status", b"etc/status")) for e in info.toc)
    opened = lambda: open(tmp_path / "blob", "rb")  # noqa: E731
    assert _names(scan_image([blob_layer(info.digest, opened, info.toc)])) == ["bash", "half", "libc6"]
    assert _names(scan_image([blob_layer(info.digest, opened, moved)])) == []
