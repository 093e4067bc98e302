"""What the corpus run prints at the end (tests/differential/conftest.py): per entry its build times, the
known differences it showed and what was normalised because a builder did not reproduce it itself."""
from __future__ import annotations

import json
import os
from collections import Counter

from tests.differential.compare import Verdict

NOTES: list[str] = []
ROWS: list[str] = []


def note(text: str) -> None:
    NOTES.append(text)


def record(entry: str, verdict: Verdict, kade: tuple[float, ...], buildkit: tuple[float, ...],
           noisy: list[str]) -> None:
    """One entry's line: each builder's build time(s) (two where the entry repeats it), the known
    differences it showed, and what was normalised because a builder (`noisy`) differed from itself."""
    known = Counter(f"{e.where} {'/'.join(e.fields) or '*'}" for _, e in verdict.known)
    normalised = Counter(d.field for d in verdict.normalised)
    ROWS.append(f"{entry}: kade {_times(kade)}, BuildKit {_times(buildkit)}; "
                f"new {len(verdict.new)}, known {sum(known.values())} ({', '.join(known) or '-'}), "
                f"normalised {sum(normalised.values())} "
                f"({', '.join(f'{k} {v}' for k, v in sorted(normalised.items())) or '-'}; "
                f"noisy: {', '.join(noisy) or '-'})")
    for d in verdict.normalised[:8]:
        ROWS.append(f"    normalised (a builder differs from itself): {d.where} {d.field}")
    report = os.environ.get("KADE_DIFFERENTIAL_REPORT")  # one JSON line per entry, written as it finishes
    if report:
        with open(report, "a") as f:
            f.write(json.dumps({"entry": entry, "kade_s": kade, "buildkit_s": buildkit, "noisy": noisy,
                                "new": [[d.where, d.field, repr(d.left), repr(d.right)] for d in verdict.new],
                                "stale": [e.where for e in verdict.stale],
                                "normalised": [[d.where, d.field] for d in verdict.normalised]}) + "\n")


def _times(seconds: tuple[float, ...]) -> str:
    return "/".join(f"{s:.1f}s" for s in seconds) or "-"


def lines() -> list[str]:
    return [*NOTES, *ROWS]
