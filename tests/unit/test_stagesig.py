"""Signatures of step images and build records (registry/stagesig.py): what they bind, and that a
change to any of it (or another key) is refused."""
from __future__ import annotations

import base64
import json

import pytest

from registry import mediatypes as mt
from registry import stagesig
from registry.model import Descriptor, Manifest
from registry.sigkeys import generate

KEY, OTHER = generate(), generate()
D = "sha256:" + "1" * 64


def manifest(layer: str = D, annotations: dict | None = None) -> Manifest:
    return Manifest(Descriptor(mt.OCI_CONFIG, "sha256:" + "2" * 64, 10), [Descriptor(mt.OCI_LAYER_GZIP, layer, 5)],
                    mt.OCI_MANIFEST, annotations)


def signed(**kw) -> bytes:
    return stagesig.sign(manifest(**kw), "step", "reg/app-stages", "a" * 64, KEY).to_bytes()


def tamper(body: bytes, change) -> bytes:
    doc = json.loads(body)
    change(doc)
    return json.dumps(doc).encode()


@pytest.mark.parametrize("body, kind, repo, tag, key, why", [
    (signed(), "step", "reg/app-stages", "a" * 64, KEY, None),
    (signed(annotations={"x": "y"}), "step", "reg/app-stages", "a" * 64, KEY, None),
    (manifest().to_bytes(), "step", "reg/app-stages", "a" * 64, KEY, "it is not signed"),
    (signed(), "step", "reg/app-stages", "b" * 64, KEY, "does not match"),        # replayed under another key
    (signed(), "step", "reg/other-stages", "a" * 64, KEY, "does not match"),      # into another tenant's repo
    (signed(), "record", "reg/app-stages", "a" * 64, KEY, "does not match"),      # as another kind of thing
    (signed(), "step", "reg/app-stages", "a" * 64, OTHER, "signed by another key"),
    (tamper(signed(), lambda d: d["layers"][0].update(digest="sha256:" + "9" * 64)), "step", "reg/app-stages",
     "a" * 64, KEY, "does not match"),
    (tamper(signed(), lambda d: d["annotations"].update({"org.opencontainers.image.title": "x"})), "step",
     "reg/app-stages", "a" * 64, KEY, "does not match"),
    (tamper(signed(), lambda d: d["annotations"].update({stagesig.SIGNATURE: "!!"})), "step", "reg/app-stages",
     "a" * 64, KEY, "not base64"),
    (b"not json", "step", "reg/app-stages", "a" * 64, KEY, "not a JSON manifest"),
])
def test_problem(body, kind, repo, tag, key, why):
    found = stagesig.problem(body, kind, repo, tag, key.public)
    assert (found is None) if why is None else (why in found), found


def test_signatures_are_deterministic_so_a_step_has_one_digest_per_key_and_content():
    assert signed() == signed()
    sig = json.loads(signed())["annotations"][stagesig.SIGNATURE]
    assert KEY.public.verify(stagesig.payload("step", "reg/app-stages", "a" * 64, manifest().to_dict()),
                             base64.b64decode(sig))
