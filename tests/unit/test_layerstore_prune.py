"""Which layer dirs `kade cache prune` removes: least recently used first, by age and a size budget."""
import pytest

from builder.layerstore import Entry, chain_of, prunable

NOW = 1_000_000.0
DAY = 86400.0
ENTRIES = [Entry("old-big", NOW - 10 * DAY, 500), Entry("old-small", NOW - 9 * DAY, 100),
           Entry("recent", NOW - 1 * DAY, 300), Entry("fresh", NOW - 60, 200)]


@pytest.mark.parametrize("older_than,max_bytes,expected", [
    (0, None, {"old-big", "old-small", "recent", "fresh"}),          # plain prune: everything
    (2 * DAY, None, {"old-big", "old-small"}),                       # by age only
    (0, 10_000, set()),                                              # everything fits the budget
    (0, 600, {"old-big"}),                                           # LRU until the rest (600) fits
    (0, 499, {"old-big", "old-small", "recent"}),                    # the least recent go first
    (0, 0, {"old-big", "old-small", "recent", "fresh"}),
    (9.5 * DAY, 599, {"old-big", "old-small"}),                      # age first, then the budget
    (2 * DAY, 10_000, {"old-big", "old-small"}),                     # age applies with a budget too
])
def test_prunable(older_than, max_bytes, expected):
    assert prunable(ENTRIES, NOW, older_than, max_bytes) == expected


def test_unreadable_entries_count_as_least_recent():
    entries = ENTRIES + [Entry("incomplete", 0.0, 0)]   # no record: `usage` gives it time 0
    assert prunable(entries, NOW, 0, 1099) == {"incomplete", "old-big"}


def test_chain_of_follows_the_oci_definition():
    import hashlib

    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    assert chain_of(None, a) == a
    assert chain_of(a, b) == "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
