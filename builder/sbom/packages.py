"""What package databases inside an image say, as pure parsers of their bytes: Debian's dpkg status
(and distroless `status.d/*`), Alpine's apk installed db, Python distribution metadata
(`*.dist-info/METADATA`, `*.egg-info/PKG-INFO`), Node `package.json` under `node_modules`,
`os-release`, and Debian machine-readable copyright files (the licenses dpkg does not record).

Every input is hostile: parsers never raise on malformed content (they return what they could read)
and callers bound the bytes handed to them.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Iterator

from common import jsonsafe

MAX_FIELD = 4096  # bytes of one kept field value (names, versions, licenses)


@dataclass(frozen=True)
class Package:
    type: str          # deb | apk | pypi | npm | golang
    name: str
    version: str
    location: str      # the file it was found in, absolute inside the image
    license: str = ""  # as declared, "" when not
    arch: str = ""
    source: str = ""   # deb/apk source package, Go main module
    supplier: str = ""

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if v}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Package":
        return cls(**{k: str(d.get(k, "")) for k in cls.__dataclass_fields__})

    @property
    def key(self) -> tuple[str, str]:
        """What identifies a package across two images (type and name)."""
        return self.type, self.name


def _clean(value: str) -> str:
    return value.strip()[:MAX_FIELD]


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _paragraphs(text: str) -> Iterator[list[str]]:
    """Blank-line separated paragraphs of lines (dpkg status, apk db, copyright files)."""
    para: list[str] = []
    for line in text.splitlines():
        if line.strip():
            para.append(line)
        elif para:
            yield para
            para = []
    if para:
        yield para


def deb822_fields(lines: list[str]) -> dict[str, str]:
    """`Key: value` fields with continuation lines folded (first line of each value kept whole)."""
    fields: dict[str, str] = {}
    key = None
    for line in lines:
        if line[:1] in (" ", "\t"):
            if key is not None and len(fields[key]) < MAX_FIELD:
                fields[key] += "\n" + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            key = None
            continue
        key = name.strip().lower()
        fields[key] = value.strip()
    return fields


def dpkg_status(data: bytes, location: str) -> list[Package]:
    """Installed packages of a dpkg status file (paragraphs whose Status is not not-installed or
    config-files: the `ii`, `iU`, `iF`... rows of `dpkg -l`)."""
    out = []
    for para in _paragraphs(_text(data)):
        f = deb822_fields(para)
        name, version = f.get("package", ""), f.get("version", "")
        status = f.get("status", "install ok installed").split()
        if not name or not version or (status and status[-1] in ("not-installed", "config-files")):
            continue
        source = f.get("source", "").split(" ", 1)[0]
        out.append(Package("deb", _clean(name), _clean(version), location, arch=_clean(f.get("architecture", "")),
                           source=_clean(source), supplier=_clean(f.get("maintainer", "").split("\n")[0])))
    return out


def apk_installed(data: bytes, location: str) -> list[Package]:
    out = []
    for para in _paragraphs(_text(data)):
        f: dict[str, str] = {}
        for line in para:
            if len(line) > 2 and line[1] == ":":
                f.setdefault(line[0], line[2:])
        if f.get("P") and f.get("V"):
            out.append(Package("apk", _clean(f["P"]), _clean(f["V"]), location, license=_clean(f.get("L", "")),
                               arch=_clean(f.get("A", "")), source=_clean(f.get("o", "")),
                               supplier=_clean(f.get("m", ""))))
    return out


_CLASSIFIER_LICENSE = re.compile(r"^License :: (?:OSI Approved :: )?(.+)$")


def python_metadata(data: bytes, location: str) -> list[Package]:
    """A distribution's METADATA / PKG-INFO: the header block before the first empty line."""
    headers = _text(data).split("\n\n", 1)[0].splitlines()
    fields: dict[str, list[str]] = {}
    for line in headers:
        if line[:1] in (" ", "\t"):
            continue  # continuation of a long header (e.g. a License text): the first line is enough
        name, sep, value = line.partition(":")
        if sep:
            fields.setdefault(name.strip().lower(), []).append(value.strip())
    name, version = (fields.get("name") or [""])[0], (fields.get("version") or [""])[0]
    if not name or not version:
        return []
    license_ = (fields.get("license-expression") or [""])[0]
    if not license_:
        classifiers = [m.group(1) for c in fields.get("classifier", []) if (m := _CLASSIFIER_LICENSE.match(c))]
        declared = (fields.get("license") or [""])[0]
        license_ = declared if declared and declared.upper() not in ("UNKNOWN", "") and len(declared) < 100 \
            else " AND ".join(classifiers)
    return [Package("pypi", _clean(name), _clean(version), location, license=_clean(license_),
                    supplier=_clean((fields.get("author") or [""])[0]))]


def npm_package(data: bytes, location: str) -> list[Package]:
    try:
        doc = jsonsafe.loads(data)
    except ValueError:
        return []
    if not isinstance(doc, dict):
        return []
    name, version = doc.get("name"), doc.get("version")
    if not isinstance(name, str) or not isinstance(version, str) or not name or not version:
        return []
    return [Package("npm", _clean(name), _clean(version), location, license=_clean(_npm_license(doc)))]


def _npm_license(doc: dict[str, Any]) -> str:
    value = doc.get("license")
    if isinstance(value, dict):
        value = value.get("type")
    if isinstance(value, str):
        return value
    legacy = doc.get("licenses")
    if isinstance(legacy, list):
        names = [x.get("type") if isinstance(x, dict) else x for x in legacy[:16]]
        return " OR ".join(n for n in names if isinstance(n, str) and n)
    return ""


def os_release(data: bytes) -> dict[str, str]:
    out = {}
    for line in _text(data).splitlines()[:200]:
        key, sep, value = line.partition("=")
        if sep and key.strip() in ("ID", "VERSION_ID", "VERSION_CODENAME", "NAME", "PRETTY_NAME"):
            out[key.strip()] = _clean(value.strip().strip("\"'"))
    return out


def copyright_licenses(data: bytes) -> list[str]:
    """License short names of a Debian machine-readable (DEP-5) copyright file, in order, once each;
    [] for a free-form one."""
    text = _text(data)
    if not text.lstrip().startswith(("Format:", "Format-Specification:")):
        return []
    names: list[str] = []
    for para in _paragraphs(text):
        f = deb822_fields(para)
        if "files" in f and "license" in f:
            name = f["license"].split("\n", 1)[0].strip()
            if name and name not in names:
                names.append(name[:200])
    return names[:32]
