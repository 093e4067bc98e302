"""Shared pytest fixtures: every module in tests/fixtures/ is loaded as a plugin, so each part of
kade (registry, cluster, builder, ...) keeps its fixtures in a file of its own."""
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (Path(__file__).parent / "fixtures").glob("*.py") if p.stem != "__init__"
)

# pytest writes os.environ (PYTEST_CURRENT_TEST) on the main thread at every test phase, while some tests
# spawn processes from worker threads (the differential corpus, concurrent builds). With vfork, a child
# execs with the parent's live `environ`, which that write may have moved: exec then fails with EFAULT
# ("Bad address", seen once in CI; 428 of 2,972 spawns in a 20 s reproduction beside os.environ writes,
# none with fork). kade's code never writes its environment, so only the test process needs this.
subprocess._USE_VFORK = False  # type: ignore[attr-defined]  # CPython's switch (this interpreter, 3.11.7, has it)


@pytest.fixture(scope="session", autouse=True)
def private_build_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Builds that name no cache dir use one of this session's (pytest keeps only its last 3 base temps):
    in the default ~/.cache/kade, tenants named after each run's random registry port were never reused
    and grew by ~750 MB a run, until a reused machine's disk filled."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KADE_CACHE_DIR", str(tmp_path_factory.mktemp("kade-cache")))
        yield
