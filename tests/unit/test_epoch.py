"""common/epoch.py: SOURCE_DATE_EPOCH and the times that follow it (image created, history times)."""
from __future__ import annotations

import pytest

from builder import image_config as ic
from common.epoch import clamped, image_created, parse_time, source_date_epoch
from common.errors import SettingError
from registry.imageconfig import History, ImageConfig

EPOCH = 1_700_000_000          # 2023-11-14T22:13:20Z
AT_EPOCH = "2023-11-14T22:13:20Z"


@pytest.mark.parametrize("times, epoch, want", [
    (["2020-01-01T00:00:00Z", "2024-05-01T10:00:00Z"], None, "2024-05-01T10:00:00Z"),   # the newest step's
    (["2024-05-01T10:00:00Z", None], None, "2024-05-01T10:00:00Z"),       # the last entry that has a time
    (["2024-05-01T10:00:00.123456789Z"], None, "2024-05-01T10:00:00.123456789Z"),   # kept as written
    (["2024-05-01T10:00:00Z", "not a time"], None, "2024-05-01T10:00:00Z"),
    (["2024-05-01T10:00:00Z"], EPOCH, AT_EPOCH),                           # the epoch wins
    ([], EPOCH, AT_EPOCH),
])
def test_image_created(times, epoch, want):
    assert image_created(times, epoch) == want


def test_image_created_without_any_time_is_now():
    got = parse_time(image_created([None, "garbage"], None))
    assert got is not None and got.year >= 2026


@pytest.mark.parametrize("text, epoch, want", [
    ("2030-01-01T00:00:00Z", EPOCH, AT_EPOCH),          # later than the epoch: clamped
    ("2020-01-01T00:00:00Z", EPOCH, "2020-01-01T00:00:00Z"),
    (AT_EPOCH, EPOCH, AT_EPOCH),
    ("2023-11-14T23:13:20+01:00", EPOCH, "2023-11-14T23:13:20+01:00"),   # the epoch itself, in another zone
    ("2023-11-14T22:13:20.5Z", EPOCH, AT_EPOCH),
    ("2030-01-01T00:00:00Z", None, "2030-01-01T00:00:00Z"),   # no epoch: as it is
    ("yesterday", EPOCH, "yesterday"),                  # a base image's odd history is not ours to change
    (None, EPOCH, None),
])
def test_clamped(text, epoch, want):
    assert clamped(text, epoch) == want


def test_with_times_clamps_the_history_and_sets_created():
    cfg = ImageConfig(architecture="amd64", os="linux", diff_ids=("sha256:" + "a" * 64,),
                      history=(History(created_by="base", created="2020-01-01T00:00:00Z"),
                               History(created_by="RUN x", created="2030-01-01T00:00:00Z", comment="kade")))
    out = ic.with_times(cfg, EPOCH)
    assert [h.created for h in out.history or ()] == ["2020-01-01T00:00:00Z", AT_EPOCH]
    assert out.created == AT_EPOCH and out.diff_ids == cfg.diff_ids
    assert ic.with_times(cfg, None).created == "2030-01-01T00:00:00Z"
    assert ic.with_times(cfg, None).history == cfg.history


@pytest.mark.parametrize("value, want", [("", None), ("  ", None), ("0", 0), ("1700000000", EPOCH)])
def test_source_date_epoch(value, want):
    assert source_date_epoch({"SOURCE_DATE_EPOCH": value}) == want


def test_source_date_epoch_that_is_no_number_is_a_clear_error():
    with pytest.raises(SettingError, match="SOURCE_DATE_EPOCH='soon' is not a whole number"):
        source_date_epoch({"SOURCE_DATE_EPOCH": "soon"})
