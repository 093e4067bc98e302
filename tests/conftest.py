"""Shared pytest fixtures: every module in tests/fixtures/ is loaded as a plugin, so each part of
kade (registry, cluster, builder, ...) keeps its fixtures in a file of its own."""
from pathlib import Path

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py") if p.stem != "__init__"
)
