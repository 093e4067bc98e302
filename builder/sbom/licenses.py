"""Declared licenses as SPDX license expressions.

A declaration made of known SPDX ids (spdx_ids.txt, the list spdx-tools validates against), the
operators AND / OR / WITH and parentheses is kept, with ids in their canonical case. Common
non-SPDX names (Debian copyright short names such as `GPL-2+` or `Expat`, Python classifiers such as
`MIT License`) are mapped. Anything else becomes `LicenseRef-<name>`, and the SBOM carries the
declared text for it (SPDX requires every LicenseRef used to be defined in the document).
"""
from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

ALIASES = {
    "expat": "MIT", "mit license": "MIT", "the mit license": "MIT", "mit/x11": "MIT",
    "apache 2.0": "Apache-2.0", "apache-2": "Apache-2.0", "apache 2": "Apache-2.0", "apache2": "Apache-2.0",
    "apache license 2.0": "Apache-2.0", "apache software license": "Apache-2.0",
    "apache license, version 2.0": "Apache-2.0", "bsd license": "BSD-3-Clause", "new bsd": "BSD-3-Clause",
    "bsd-3-clause": "BSD-3-Clause", "bsd-2-clause": "BSD-2-Clause", "isc license": "ISC",
    "isc license (iscl)": "ISC", "mozilla public license 2.0 (mpl 2.0)": "MPL-2.0",
    "python software foundation license": "PSF-2.0", "psf": "PSF-2.0", "public-domain": "LicenseRef-public-domain",
    "gnu general public license v2 (gplv2)": "GPL-2.0-only",
    "gnu general public license v3 (gplv3)": "GPL-3.0-only",
    "gnu lesser general public license v2 or later (lgplv2+)": "LGPL-2.0-or-later",
    "gnu lesser general public license v3 (lgplv3)": "LGPL-3.0-only",
    "gnu library or lesser general public license (lgpl)": "LGPL-2.0-or-later",
}
# Debian short names: GPL-2 / GPL-2+ / LGPL-2.1+ / GFDL-1.3+ ...
_DEBIAN_VERSIONED = re.compile(r"^(A?GPL|LGPL|GFDL)-(\d(?:\.\d)?)(\+?)$", re.I)
_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")
_OPERATORS = {"AND", "OR", "WITH"}


@lru_cache(maxsize=1)
def _known() -> tuple[dict[str, str], dict[str, str]]:
    """(license ids, exception ids), each lower-case -> canonical."""
    licenses: dict[str, str] = {}
    exceptions: dict[str, str] = {}
    text = resources.files("builder.sbom").joinpath("spdx_ids.txt").read_text()
    for line in text.splitlines():
        kind, _, key = line.partition(" ")
        if kind in ("L", "X"):
            (licenses if kind == "L" else exceptions)[key.lower()] = key
    return licenses, exceptions


def _debian(name: str) -> str | None:
    m = _DEBIAN_VERSIONED.match(name)
    if not m:
        return None
    family, version, plus = m.group(1).upper(), m.group(2), m.group(3)
    version = version if "." in version else version + ".0"
    spdx = f"{family}-{version}-{'or-later' if plus else 'only'}"
    return spdx if spdx.lower() in _known()[0] else None


def _one(name: str) -> str | None:
    licenses, _ = _known()
    debian = _debian(name)  # GPL-2 / GPL-2.0 / LGPL-2.1+: the current ids rather than deprecated ones
    if debian:
        return debian
    if name.lower() in licenses:
        return licenses[name.lower()]
    if name.startswith("LicenseRef-") and re.fullmatch(r"LicenseRef-[A-Za-z0-9.\-]+", name):
        return name
    return ALIASES.get(name.lower())


def to_spdx(declared: str) -> str:
    """The SPDX license expression of a declared license ("" -> "NOASSERTION")."""
    declared = declared.strip()
    if not declared:
        return "NOASSERTION"
    whole = _one(declared)
    if whole:
        return whole
    parsed = _expression(declared)
    if parsed:
        return parsed
    parts = [p.strip() for p in re.split(r"\s+AND\s+", declared, flags=re.I) if p.strip()]
    if len(parts) > 1:  # e.g. Debian copyright names joined: convert each, unknown ones as LicenseRefs
        return " AND ".join(dict.fromkeys(_expression(p) or _one(p) or license_ref(p) for p in parts))
    return license_ref(declared)


def _expression(declared: str) -> str | None:
    """`declared` as an SPDX expression of known ids, or None."""
    tokens = [m.group(1) for m in _TOKEN.finditer(declared)]
    out: list[str] = []
    after_with = False
    for tok in tokens:
        if tok.upper() in _OPERATORS:
            out.append(tok.upper())
            after_with = tok.upper() == "WITH"
        elif tok in "()":
            out.append(tok)
        else:
            known = _known()[1].get(tok.lower()) if after_with else _one(tok)
            if not known:
                return None
            out.append(known)
            after_with = False
    if not _balanced(out):
        return None
    return " ".join(out).replace("( ", "(").replace(" )", ")")


def _balanced(tokens: list[str]) -> bool:
    depth, expect_operand = 0, True
    for tok in tokens:
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
            if depth < 0 or expect_operand:
                return False
        elif tok in _OPERATORS:
            if expect_operand:
                return False
            expect_operand = True
        else:
            if not expect_operand:
                return False
            expect_operand = False
    return depth == 0 and not expect_operand


def license_ref(declared: str) -> str:
    return "LicenseRef-" + (re.sub(r"[^A-Za-z0-9.\-]+", "-", declared).strip("-")[:64] or "unknown")


def license_refs(expression: str) -> list[str]:
    return sorted(set(re.findall(r"LicenseRef-[A-Za-z0-9.\-]+", expression)))
