"""OCI image layouts on disk (`oci-layout`, `index.json`, `blobs/sha256/...`), as skopeo and
podman read them (`oci:PATH:REF`). Blobs go through BlobCache (atomic); index.json is rewritten
atomically and only after the manifest it names is complete.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from registry import mediatypes as mt
from registry.cache import BlobCache
from registry.digest import sha256_digest
from registry.errors import LayoutError
from registry.model import Descriptor, Index
from common import jsonsafe

LAYOUT_VERSION = {"imageLayoutVersion": "1.0.0"}
SCHEME = "oci:"


def parse_layout_ref(s: str) -> tuple[str, str | None]:
    """`oci:PATH[:REF]` -> (PATH, REF or None), as skopeo splits it (at the first ':' after oci:)."""
    if not s.startswith(SCHEME):
        raise LayoutError(f"{s!r} is not an OCI layout reference: expected oci:PATH[:TAG]")
    path, _, ref = s[len(SCHEME):].partition(":")
    if not path:
        raise LayoutError(f"{s!r} has no path: expected oci:PATH[:TAG]")
    return path, ref or None


class OCILayout:
    def __init__(self, path: str | os.PathLike, create: bool = False) -> None:
        self.path = Path(path)
        self.blobs = BlobCache(self.path)
        if create:
            try:
                self._init()
            except OSError as exc:
                raise LayoutError(f"cannot create an OCI layout at {self.path}: {exc.strerror}; check the path "
                                  "and its permissions") from None
        elif not (self.path / "oci-layout").is_file():
            raise LayoutError(f"{self.path} is not an OCI image layout (no oci-layout file); "
                              "copy an image there first, e.g. `kade image copy REF oci:PATH:TAG`")

    def _init(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        marker = self.path / "oci-layout"
        if not marker.exists():
            self._write_json(marker, LAYOUT_VERSION)
        if not (self.path / "index.json").exists():
            self._write_json(self.path / "index.json", Index([]).to_dict())
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)

    def _write_json(self, target: Path, doc: object) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
        os.replace(tmp, target)

    def index(self) -> Index:
        try:
            doc = jsonsafe.loads((self.path / "index.json").read_text())
        except (OSError, ValueError) as exc:
            raise LayoutError(f"cannot read {self.path / 'index.json'}: {exc}") from None
        return Index.from_dict(doc, mt.OCI_INDEX)

    def write_blob(self, data: bytes, expected: str | None = None) -> str:
        return self.blobs.put_bytes(data, expected)

    def write_manifest(self, body: bytes, media_type: str) -> Descriptor:
        digest = self.blobs.put_bytes(body, sha256_digest(body))
        return Descriptor(media_type, digest, len(body))

    def tag(self, desc: Descriptor, ref_name: str) -> None:
        """Point `ref_name` at `desc` in index.json (replacing an entry of that name)."""
        if not self.blobs.has(desc.digest):
            raise LayoutError(f"refusing to tag {ref_name} in {self.path}: manifest {desc.digest} is not written")
        annotations = dict(desc.annotations or {})
        annotations[mt.ANNOTATION_REF_NAME] = ref_name
        entry = Descriptor(desc.media_type, desc.digest, desc.size, annotations, desc.platform)
        with self._index_lock():
            index = self.index()
            keep = [m for m in index.manifests if (m.annotations or {}).get(mt.ANNOTATION_REF_NAME) != ref_name]
            index.manifests = keep + [entry]
            self._write_json(self.path / "index.json", index.to_dict())

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        """Held while index.json is read, changed and replaced: builds writing one layout at once (kade's
        cache has one) would otherwise drop each other's tags. A lock on the directory itself, so the
        layout holds no file skopeo or podman don't expect."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with contextlib.suppress(OSError):   # a filesystem without locks: as before, unlocked
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def resolve(self, ref_name: str | None) -> Descriptor:
        """The index entry named `ref_name`; with None, the only entry there is."""
        entries = self.index().manifests
        if ref_name is None:
            if len(entries) == 1:
                return entries[0]
            raise LayoutError(f"{self.path} holds {len(entries)} images: name one as oci:{self.path}:TAG")
        if ref_name.startswith("sha256:"):
            for e in entries:
                if e.digest == ref_name:
                    return e
            if self.blobs.has(ref_name):
                body = self.blobs.read(ref_name)
                from registry.model import detect_media_type

                return Descriptor(detect_media_type(jsonsafe.loads(body), None), ref_name, len(body))
        for e in entries:
            if (e.annotations or {}).get(mt.ANNOTATION_REF_NAME) == ref_name:
                return e
        names = sorted((e.annotations or {}).get(mt.ANNOTATION_REF_NAME, "?") for e in entries)
        raise LayoutError(f"no image named {ref_name!r} in {self.path} (it has: {', '.join(names) or 'none'})")
