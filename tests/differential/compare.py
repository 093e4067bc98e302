"""Comparing two built images (pure functions over imagetree.Image).

A difference names where (a path, `config.<Field>` or `image.<what>`), the field and both values.
Rules:
- Files: presence, type, mode, uid, gid, size, sha256, link target, xattrs, hard-link group, mtime.
- mtime: a file's mtime is "build time" when it is at or after the start of the build that made it
  (minus 1 s: tar keeps whole seconds), else its own value. Two images agree when both are build time
  or both carry the same second: files made by RUN carry the clock, files from a base or the context
  carry the time they had there.
- Config: Env, Cmd, Entrypoint, WorkingDir, User, ExposedPorts, Volumes, Labels, StopSignal,
  Healthcheck, Shell, OnBuild (absent, null and empty are the same); the image's layer count and its
  history (one letter a step: L with a layer, E empty).
- Noise: what one builder does not reproduce itself is found by comparing two of its own builds (`noise`);
  a difference there, or a file appearing in one build only under a folder whose listing changed between
  a builder's own builds, is not held against the other builder.
"""
from __future__ import annotations

import fnmatch
import posixpath
from dataclasses import dataclass
from typing import Iterable

from tests.differential.imagetree import CONFIG_FIELDS, Entry, Image, iter_fields

BUILD_TIME = "build time"
ABSENT = "(absent)"


@dataclass(frozen=True)
class Difference:
    where: str
    field: str
    left: object
    right: object

    def show(self, left: str, right: str) -> str:
        return f"{self.where}: {self.field}: {left}={_short(self.left)} {right}={_short(self.right)}"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 160 else text[:157] + "..."


def mtime_value(mtime: float, started: float) -> object:
    return BUILD_TIME if mtime >= started - 1 else int(mtime)


def entry_differences(path: str, a: Entry, a_started: float, b: Entry, b_started: float) -> list[Difference]:
    out = [Difference(path, name, va, vb) for (name, va), (_, vb) in zip(iter_fields(a), iter_fields(b)) if va != vb]
    ma, mb = mtime_value(a.mtime, a_started), mtime_value(b.mtime, b_started)
    if ma != mb:
        out.append(Difference(path, "mtime", ma, mb))
    return out


def history_letters(image: Image) -> str:
    return "".join("E" if h.get("empty_layer") else "L" for h in image.history)


def image_differences(a: Image, a_started: float, b: Image, b_started: float) -> list[Difference]:
    out: list[Difference] = []
    for path in sorted(a.files.keys() | b.files.keys()):
        ea, eb = a.files.get(path), b.files.get(path)
        if ea is None or eb is None:
            out.append(Difference(path, "presence", ea.type if ea else ABSENT, eb.type if eb else ABSENT))
        else:
            out.extend(entry_differences(path, ea, a_started, eb, b_started))
    for name in CONFIG_FIELDS:
        if a.field(name) != b.field(name):
            out.append(Difference(f"config.{name}", "value", a.field(name), b.field(name)))
    if a.layers != b.layers:
        out.append(Difference("image.layers", "count", a.layers, b.layers))
    if history_letters(a) != history_letters(b):
        out.append(Difference("image.history", "steps", history_letters(a), history_letters(b)))
    return out


@dataclass
class Noise:
    """What a builder does not reproduce: (where, field) pairs and folders whose listing changed."""
    fields: set[tuple[str, str]]
    folders: set[str]

    @classmethod
    def of(cls, *self_differences: Iterable[Difference]) -> "Noise":
        fields, folders = set(), set()
        for diffs in self_differences:
            for d in diffs:
                fields.add((d.where, d.field))
                if d.field == "presence":
                    folders.add(posixpath.dirname(d.where))
        return cls(fields, folders)

    def covers(self, d: Difference) -> bool:
        if (d.where, d.field) in self.fields:
            return True
        if d.field != "presence" or not d.where.startswith("/"):
            return False
        parent = posixpath.dirname(d.where)
        while True:
            if parent in self.folders:
                return True
            if parent == "/":
                return False
            parent = posixpath.dirname(parent)


@dataclass(frozen=True)
class Expected:
    """A difference an entry is known to have: `where` (a path glob, `config.X` or `image.X`), `fields`
    (empty: any) and why (the line of docs/builder.md that lists it)."""
    where: str
    fields: tuple[str, ...]
    why: str

    @classmethod
    def load(cls, items: list[dict] | None) -> list["Expected"]:
        out = []
        for item in items or []:
            fields = item.get("field", ())
            out.append(cls(item["where"], (fields,) if isinstance(fields, str) else tuple(fields), item["why"]))
        return out

    def matches(self, d: Difference) -> bool:
        return fnmatch.fnmatchcase(d.where, self.where) and (not self.fields or d.field in self.fields)


@dataclass
class Verdict:
    new: list[Difference]  # differences no expectation names: the test fails
    known: list[tuple[Difference, Expected]]
    stale: list[Expected]  # expectations that matched nothing: the test fails (remove them)
    normalised: list[Difference]  # covered by a builder's own noise


def judge(diffs: list[Difference], noise: Noise, expected: list[Expected]) -> Verdict:
    verdict = Verdict([], [], [], [])
    used: set[int] = set()
    for d in diffs:
        hits = [i for i, e in enumerate(expected) if e.matches(d)]
        hit = next((i for i in hits if expected[i].where == d.where), hits[0] if hits else None)  # exact first
        if noise.covers(d):
            # a known difference the other builder happens not to reproduce this time still happens: not stale
            used.update([hit] if hit is not None else [])
            verdict.normalised.append(d)
            continue
        if hit is None:
            verdict.new.append(d)
        else:
            used.add(hit)
            verdict.known.append((d, expected[hit]))
    verdict.stale = [e for i, e in enumerate(expected) if i not in used]
    return verdict
