"""SBOM documents from an inventory: SPDX 2.3 JSON (the default) and CycloneDX 1.5 JSON, both
deterministic (namespace and ids from the image digest and the packages; time from the caller), and
reading them back as (type, name, version) rows for `kade image sbom diff`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from builder.sbom.licenses import license_refs, to_spdx
from builder.sbom.packages import Package
from common import jsonsafe

SPDX_MEDIA_TYPE = "application/spdx+json"
CYCLONEDX_MEDIA_TYPE = "application/vnd.cyclonedx+json"
NAMESPACE_ROOT = "https://kade.io/spdx"


@dataclass(frozen=True)
class Subject:
    repository: str   # host/repo
    digest: str       # manifest digest
    created: str      # RFC 3339 UTC (the image config's created, or SOURCE_DATE_EPOCH)
    tool: str         # "kade-<version>"
    architecture: str = ""


def _q(text: str, safe: str = "") -> str:
    return quote(text, safe=safe)


def purl(p: Package, os_facts: dict[str, str]) -> str:
    """The package URL of a package (purl spec: type/namespace/name@version?qualifiers)."""
    qualifiers: dict[str, str] = {}
    version = p.version
    if p.type in ("deb", "apk"):
        distro_id = os_facts.get("ID") or ("debian" if p.type == "deb" else "alpine")
        namespace, name = [distro_id], p.name
        if p.arch:
            qualifiers["arch"] = p.arch
        if os_facts.get("VERSION_ID"):
            qualifiers["distro"] = f"{distro_id}-{os_facts['VERSION_ID']}"
        if p.source and p.source != p.name and p.type == "deb":
            qualifiers["upstream"] = p.source
    elif p.type == "pypi":
        namespace, name = [], "-".join(p.name.lower().replace("_", "-").replace(".", "-").split("-"))
    elif p.type == "npm":
        scope, _, rest = p.name.rpartition("/")
        namespace, name = ([scope] if scope else []), rest
    elif p.type == "golang":
        *namespace, name = p.name.split("/")
        version = version[2:] if p.name == "stdlib" and version.startswith("go") else version
    else:
        namespace, name = [], p.name
    out = "pkg:" + p.type + "/" + "".join(_q(n) + "/" for n in namespace if n) + _q(name)
    if version and version != "(devel)":
        out += "@" + _q(version)
    if qualifiers:
        out += "?" + "&".join(f"{k}={_q(v, ':/')}" for k, v in sorted(qualifiers.items()))
    return out


def image_purl(subject: Subject) -> str:
    name = subject.repository.rsplit("/", 1)[-1].lower()
    qualifiers = {"repository_url": subject.repository}
    if subject.architecture:
        qualifiers["arch"] = subject.architecture
    return f"pkg:oci/{_q(name)}@{_q(subject.digest)}?" + "&".join(f"{k}={_q(v, ':/')}" for k, v in
                                                                  sorted(qualifiers.items()))


def _package_ids(packages: list[Package], prefix: str) -> list[str]:
    ids, seen = [], set()
    for p in packages:
        base = prefix + hashlib.sha256(f"{p.type}\0{p.name}\0{p.version}\0{p.location}".encode()).hexdigest()[:16]
        ident, n = base, 1
        while ident in seen:
            n += 1
            ident = f"{base}-{n}"
        seen.add(ident)
        ids.append(ident)
    return ids


def spdx(packages: list[Package], os_facts: dict[str, str], subject: Subject, notes: list[str]) -> bytes:
    hexpart = subject.digest.split(":", 1)[-1]
    doc: dict[str, Any] = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{subject.repository}@{subject.digest}",
        "documentNamespace": f"{NAMESPACE_ROOT}/{_q(subject.repository, '/')}/sha256-{hexpart}",
        "creationInfo": {"created": subject.created, "creators": [f"Tool: {subject.tool}"]},
    }
    if notes:
        doc["creationInfo"]["comment"] = "Not listed: " + "; ".join(notes)
    image = {"SPDXID": "SPDXRef-Image", "name": subject.repository, "versionInfo": subject.digest,
             "downloadLocation": "NOASSERTION", "filesAnalyzed": False, "primaryPackagePurpose": "CONTAINER",
             "licenseConcluded": "NOASSERTION", "licenseDeclared": "NOASSERTION", "copyrightText": "NOASSERTION",
             "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                               "referenceLocator": image_purl(subject)}]}
    rows = [image]
    relationships = [{"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                      "relatedSpdxElement": "SPDXRef-Image"}]
    extracted: dict[str, str] = {}
    for ident, p in zip(_package_ids(packages, "SPDXRef-Package-"), packages):
        declared = to_spdx(p.license)
        for ref in license_refs(declared):
            extracted.setdefault(ref, p.license)
        row: dict[str, Any] = {"SPDXID": ident, "name": p.name, "versionInfo": p.version,
                               "downloadLocation": "NOASSERTION", "filesAnalyzed": False,
                               "licenseConcluded": "NOASSERTION", "licenseDeclared": declared,
                               "copyrightText": "NOASSERTION", "sourceInfo": f"found in {p.location}",
                               "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                                                 "referenceLocator": purl(p, os_facts)}]}
        rows.append(row)
        relationships.append({"spdxElementId": "SPDXRef-Image", "relationshipType": "CONTAINS",
                              "relatedSpdxElement": ident})
    doc["packages"] = rows
    doc["relationships"] = relationships
    if extracted:
        doc["hasExtractedLicensingInfos"] = [{"licenseId": ref, "extractedText": text or ref, "name": text or ref}
                                             for ref, text in sorted(extracted.items())]
    return json.dumps(doc, indent=1, ensure_ascii=False).encode()


def cyclonedx(packages: list[Package], os_facts: dict[str, str], subject: Subject, notes: list[str]) -> bytes:
    name, _, version = subject.tool.rpartition("-")
    metadata: dict[str, Any] = {
        "timestamp": subject.created,
        "tools": {"components": [{"type": "application", "name": name or subject.tool, "version": version}]},
        "component": {"type": "container", "bom-ref": "image", "name": subject.repository,
                      "version": subject.digest, "purl": image_purl(subject)},
    }
    if notes:
        metadata["properties"] = [{"name": "kade:not-listed", "value": n} for n in notes]
    components = []
    for ident, p in zip(_package_ids(packages, "pkg-"), packages):
        row: dict[str, Any] = {"type": "library", "bom-ref": ident, "name": p.name, "version": p.version,
                               "purl": purl(p, os_facts), "properties": [{"name": "kade:location",
                                                                          "value": p.location}]}
        declared = to_spdx(p.license)
        if declared != "NOASSERTION":
            row["licenses"] = ([{"license": {"name": p.license}}] if declared.startswith("LicenseRef-")
                               else [{"expression": declared}])
        components.append(row)
    import uuid   # here: CycloneDX only (uuid.py loads platform.py; SPDX, the default, needs neither)

    doc = {"bomFormat": "CycloneDX", "specVersion": "1.5",
           "serialNumber": "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"{NAMESPACE_ROOT}/{subject.digest}")),
           "version": 1, "metadata": metadata, "components": components,
           "dependencies": [{"ref": "image", "dependsOn": [c["bom-ref"] for c in components]}]}
    return json.dumps(doc, indent=1, ensure_ascii=False).encode()


# ---- reading back ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    type: str
    name: str
    version: str


def read_rows(data: bytes) -> list[Row]:
    """The packages an SPDX or CycloneDX JSON document lists (the image itself left out)."""
    try:
        doc = jsonsafe.loads(data)
    except ValueError as exc:
        raise ValueError(f"not a JSON SBOM: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON SBOM")
    rows = []
    if doc.get("spdxVersion"):
        for p in doc.get("packages") or []:
            if not isinstance(p, dict) or p.get("primaryPackagePurpose") == "CONTAINER":
                continue
            refs = [r.get("referenceLocator", "") for r in p.get("externalRefs") or []
                    if isinstance(r, dict) and r.get("referenceType") == "purl"]
            rows.append(Row(_purl_type(refs[0] if refs else ""), str(p.get("name", "")), str(p.get("versionInfo", ""))))
    elif doc.get("bomFormat") == "CycloneDX":
        for c in doc.get("components") or []:
            if isinstance(c, dict):
                rows.append(Row(_purl_type(str(c.get("purl", ""))), str(c.get("name", "")), str(c.get("version", ""))))
    else:
        raise ValueError("neither SPDX nor CycloneDX JSON")
    return rows


def _purl_type(p: str) -> str:
    return p[4:].split("/", 1)[0] if p.startswith("pkg:") else "unknown"


def diff(a: list[Row], b: list[Row]) -> dict[str, list[dict[str, Any]]]:
    """Packages added, removed and changed (by type and name; versions compared as sorted sets)."""
    def versions(rows: list[Row]) -> dict[tuple[str, str], list[str]]:
        out: dict[tuple[str, str], set[str]] = {}
        for r in rows:
            out.setdefault((r.type, r.name), set()).add(r.version)
        return {k: sorted(v) for k, v in out.items()}

    va, vb = versions(a), versions(b)
    row = lambda k, **kw: {"type": k[0], "name": k[1], **kw}  # noqa: E731
    return {
        "added": [row(k, versions=vb[k]) for k in sorted(vb.keys() - va.keys())],
        "removed": [row(k, versions=va[k]) for k in sorted(va.keys() - vb.keys())],
        "changed": [row(k, before=va[k], after=vb[k]) for k in sorted(va.keys() & vb.keys()) if va[k] != vb[k]],
    }
