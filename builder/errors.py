"""Build errors (owned by the "builder" helper; this minimal version lets the layers modules stand alone
until the branches merge — keep the builder's version on conflict)."""
from __future__ import annotations


class BuildError(Exception):
    """Base class of every expected build failure."""
