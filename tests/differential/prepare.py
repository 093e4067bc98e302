"""Build what the differential corpus needs before pytest runs it, once per machine (scripts/test runs this):
BuildKit (tests/buildkit/build), the Debian layout (tests/cluster/images --layouts-only) and every stand-in
base the corpus names (standins.py, built by BuildKit into /var/cache/kade-differential/bases). On a fresh
machine that takes minutes, longer than pytest's 600 s per-test timeout would give a fixture; cached, it
starts nothing and takes a second.

    .venv/bin/python -m tests.differential.prepare
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from tests.differential.builders import entries, prepare
from tests.differential.standins import ensure_standins, missing_standins
from tests.fixtures.buildkit import BuildKitDaemon, build_buildkit
from tests.fixtures.registry import RegistryServer

MAPPING_HOST = "127.0.0.1:1"  # only to map the Dockerfiles: nothing is pushed there


def needed_standins(work: Path) -> set[tuple[str, str]]:
    """(stand-in, tag) of every base the corpus names."""
    needed: set[tuple[str, str]] = set()
    for entry in entries():
        needed |= prepare(entry, MAPPING_HOST, Path(tempfile.mkdtemp(prefix=f"{entry.name}-", dir=work)))[1]
    return needed


def main() -> int:
    start = time.monotonic()
    bin_dir = build_buildkit()
    print(f"prepare: BuildKit in {bin_dir}", flush=True)
    with tempfile.TemporaryDirectory(prefix="kade-differential-prepare-") as scratch:
        work = Path(scratch)
        needed = needed_standins(work)
        missing = missing_standins(needed)
        if not missing:
            print(f"prepare: every stand-in base is cached ({time.monotonic() - start:.1f}s)", flush=True)
            return 0
        print(f"prepare: building the stand-in bases {', '.join(sorted(missing))}", flush=True)
        registry = RegistryServer(work / "registry").start()
        daemon = None
        try:
            daemon = BuildKitDaemon(work / "buildkitd", bin_dir, insecure=(registry.host,)).start()
            ensure_standins(daemon, registry.host, {(n, t) for n, t in needed if n in missing or n == "debian"},
                            work / "standins")
        finally:
            if daemon is not None:
                daemon.stop()
            registry.stop()
    print(f"prepare: stand-in bases built in {time.monotonic() - start:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
