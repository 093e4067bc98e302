"""Release records: encoding, split into Secrets past the size limit, join, history pruning, lease expiry."""
import base64
import os

import pytest

from deployer.errors import DeployError
from deployer.release import (DEPLOYED, FAILED, SUPERSEDED, ReleaseRecord, decode, encode, lease_expired,
                              record_secrets, records_from_secrets, revisions_to_prune, split)


def record(revision=1, status=DEPLOYED, manifests=None):
    return ReleaseRecord("shop", "team", revision, status, manifests or [{"kind": "ConfigMap", "metadata": {"name": "a"}}])


def test_round_trip():
    r = record(manifests=[{"kind": "ConfigMap", "metadata": {"name": "ü"}}])
    r.images = {"web": "x@sha256:1"}
    assert decode(encode(r)) == r


def test_small_record_is_one_secret():
    [secret] = record_secrets(record())
    assert secret["metadata"]["name"] == "kade.release.v1.shop.v1"
    assert secret["metadata"]["labels"]["kade.io/parts"] == "1"
    assert secret["type"] == "kade.io/release.v1"


def test_big_record_splits_and_joins_back():
    noise = base64.b64encode(os.urandom(3 * 1024 * 1024)).decode()  # incompressible, ~4 MiB of text
    big = record(revision=7, manifests=[{"kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"blob": noise}}])
    secrets = record_secrets(big)
    assert len(secrets) >= 4
    for s in secrets:
        assert len(base64.b64decode(s["data"]["release"])) <= 700 * 1024
    assert [s["metadata"]["name"] for s in secrets[:2]] == ["kade.release.v1.shop.v7.0", "kade.release.v1.shop.v7.1"]
    # the API returns them in any order, mixed with other revisions
    mixed = list(reversed(secrets)) + record_secrets(record(revision=8))
    assert [r.revision for r in records_from_secrets(mixed)] == [7, 8]
    assert records_from_secrets(mixed)[0] == big


def test_missing_part_is_a_clear_error():
    secrets = record_secrets(record(), size=10)
    assert len(secrets) > 2
    with pytest.raises(DeployError, match=r"revision 1 is incomplete: part\(s\) \[1\]"):
        records_from_secrets([s for s in secrets if s["metadata"]["labels"]["kade.io/part"] != "1"])


def test_incomplete_record_is_left_out_and_named_not_fatal():
    """A deploy that died while writing a multi-part record must not block the next one."""
    broken = [s for s in record_secrets(record(revision=3), size=10) if s["metadata"]["labels"]["kade.io/part"] != "1"]
    good = record_secrets(record(revision=2))
    incomplete: list[int] = []
    assert [r.revision for r in records_from_secrets(broken + good, incomplete)] == [2]
    assert incomplete == [3]


def test_records_of_older_kade_versions_still_read():
    """The reading API (used by kade cleanup) keeps reading records without newer fields, and ignores
    fields it does not know."""
    import gzip
    import json

    old = {"name": "shop", "namespace": "team", "revision": 1, "status": "deployed",
           "manifests": [{"kind": "ConfigMap", "metadata": {"name": "a"}}], "description": "", "from_the_future": 1}
    blob = gzip.compress(json.dumps(old).encode())
    assert decode(blob).images == {} and decode(blob).rollback_of is None


def test_split_edges():
    assert split(b"", 4) == [b""]
    assert split(b"abcdefghij", 4) == [b"abcd", b"efgh", b"ij"]


PRUNE_CASES = [
    ("under limit", [(1, SUPERSEDED), (2, DEPLOYED)], 3, []),
    ("oldest go", [(1, SUPERSEDED), (2, SUPERSEDED), (3, FAILED), (4, DEPLOYED)], 2, [1, 2]),
    ("last deployed is kept even when old", [(1, DEPLOYED), (2, FAILED), (3, FAILED), (4, FAILED)], 2, [2]),
    ("zero means unlimited", [(1, SUPERSEDED), (2, DEPLOYED)], 0, []),
]


@pytest.mark.parametrize("name,rows,keep,expected", PRUNE_CASES, ids=[c[0] for c in PRUNE_CASES])
def test_revisions_to_prune(name, rows, keep, expected):
    assert revisions_to_prune([record(rev, status) for rev, status in rows], keep) == expected


LEASE_CASES = [
    ("fresh", {"holderIdentity": "a", "renewTime": "2027-01-15T08:00:00.000000Z", "leaseDurationSeconds": 30}, 1_800_000_010, False),
    ("expired", {"holderIdentity": "a", "renewTime": "2027-01-15T08:00:00.000000Z", "leaseDurationSeconds": 30}, 1_800_000_031, True),
    ("no holder", {"renewTime": "2027-01-15T08:00:00Z", "leaseDurationSeconds": 30}, 1_800_000_001, True),
    ("never renewed", {"holderIdentity": "a"}, 1_800_000_001, True),
]


@pytest.mark.parametrize("name,spec,now,expected", LEASE_CASES, ids=[c[0] for c in LEASE_CASES])
def test_lease_expired(name, spec, now, expected):
    assert lease_expired({"spec": spec}, now) is expected


@pytest.mark.parametrize("mangle,message", [
    (lambda s: s["data"].update(release="!!not base64!!"), "not base64"),
    (lambda s: s["data"].update(release=base64.b64encode(b"not gzip").decode()), "revision 1 is corrupt"),
    (lambda s: s["data"].update(release=base64.b64encode(__import__("gzip").compress(b"[1, 2]")).decode()), "revision 1 is corrupt"),
])
def test_corrupt_records_are_clear_errors(mangle, message):
    [secret] = record_secrets(record())
    mangle(secret)
    with pytest.raises(DeployError, match=message):
        records_from_secrets([secret])


def test_secrets_without_kade_labels_are_ignored():
    assert records_from_secrets([{"metadata": {"name": "x", "labels": {"kade.io/revision": "abc"}}, "data": {}}]) == []
