"""The build context: .dockerignore rules, COPY/ADD source selection, and content hashing.

Matching follows moby/patternmatcher: patterns are cleaned and made relative, `*` and `?` never
cross `/`, `**` spans any number of directories, a pattern that matches a parent directory
matches everything below it, `!` re-includes, and the last matching pattern wins.
`<Dockerfile>.dockerignore` next to the Dockerfile takes precedence over `<context>/.dockerignore`.
The wildcards themselves are builder/globs.py's.
"""
from __future__ import annotations

import os
import posixpath
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from builder.digests import FileDigests
from builder.errors import BuildError, ContextError, MissingSourceError
from builder.globs import Glob, GlobError
from common import fsutil, utf8
from common.utf8 import NotUtf8

_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Pattern:
    raw: str
    glob: Glob
    exclusion: bool  # `!pattern`: re-include


def clean_path(p: str) -> str:
    """Go's filepath.Clean, made relative: "/a/./b/" -> "a/b", "" -> "."."""
    cleaned = posixpath.normpath("/" + p).lstrip("/")
    return cleaned or "."


def parse_ignore(text: str, source: str = ".dockerignore") -> list[Pattern]:
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        if not line:
            raise ContextError(f"illegal exclusion pattern '!' in {source}")
        cleaned = clean_path(line)
        try:
            glob = Glob(cleaned)
        except GlobError as exc:
            raise ContextError(f"bad pattern {raw!r} in {source}: {exc}") from None
        patterns.append(Pattern(raw=raw, glob=glob, exclusion=exclusion))
    return patterns


class IgnoreRules:
    def __init__(self, patterns: list[Pattern]):
        self.patterns = patterns
        self.has_exclusions = any(p.exclusion for p in patterns)

    @classmethod
    def load(cls, context: Path, dockerfile: Path | None = None) -> "IgnoreRules":
        candidates = []
        if dockerfile is not None:
            candidates.append(dockerfile.with_name(dockerfile.name + ".dockerignore"))
        candidates.append(context / ".dockerignore")
        for path in candidates:
            if path.is_symlink() and not fsutil.inside(path.parent, path):
                raise ContextError(f"{path} is a symlink out of its folder (to {path.resolve()}); kade reads it "
                                   "inside its folder only, as BuildKit does")
            if path.is_file():
                try:
                    return cls(parse_ignore(utf8.decode(path.read_bytes()), str(path)))
                except NotUtf8 as exc:
                    raise ContextError(f"{path}:{exc.line}: not UTF-8 text (byte 0x{exc.byte:02x})",
                                       hint="save it as UTF-8") from None
                except OSError as exc:
                    raise ContextError(f"cannot read {path}: {exc}") from None
        return cls([])

    def excluded(self, rel: str) -> bool:
        """Is this context-relative path excluded (itself or through a parent directory)?"""
        if not self.patterns:
            return False
        rel = clean_path(rel)
        matched = False
        for pat in self.patterns:
            if pat.exclusion != matched:
                continue
            if pat.glob.covers(rel):
                matched = not pat.exclusion
        return matched


@dataclass(frozen=True)
class Entry:
    """One file, directory or symlink selected from the context."""
    rel: str  # path relative to the selected source root ("" for the source itself)
    path: Path  # absolute on disk
    kind: str  # "file" | "dir" | "symlink"
    mode: int  # permission bits incl. setuid/setgid/sticky
    size: int
    link: str = ""
    digest: str = ""  # sha256 hex of a file whose content was checked already (an ADD <url> download)


@dataclass(frozen=True)
class Source:
    """A COPY/ADD source after glob expansion: a context path and what it contains."""
    rel: str  # context-relative, cleaned
    path: Path
    is_dir: bool
    entries: tuple[Entry, ...]
    keep: str = ""  # COPY --parents: the parent path it keeps under the destination


UrlFetcher = Callable[[str, "str | None"], "tuple[Path, str]"]  # (url, expected sha256 or None) -> (file, digest)


def is_wildcard(src: str) -> bool:
    """Whether a COPY/ADD source is a pattern (`*`, `?`, `[...]`) rather than a path."""
    return bool(_GLOB_CHARS.search(src))


class BuildContext:
    def __init__(self, root: Path, ignore: IgnoreRules, fetcher: UrlFetcher | None = None,
                 digests: FileDigests | None = None):
        self.root = root.resolve()
        self.ignore = ignore
        self.fetcher = fetcher
        self.digests = digests or FileDigests()   # what its files hash to (builder/digests.py)
        self._prefetched: dict[str, list[Source]] = {}   # selected by prefetch, for select's next call

    def fetch(self, url: str, checksum: str | None) -> Source:
        """ADD <url>: the downloaded file as a source named after the URL's last path segment (mode 0600)."""
        if self.fetcher is None:
            raise ContextError(f"cannot download {url}: no downloader configured")
        path, digest = self.fetcher(url, checksum)
        st = path.stat()
        entry = Entry(rel="", path=path, kind="file", mode=0o600, size=st.st_size, digest=digest.split(":", 1)[1])
        return Source(rel=url, path=path, is_dir=False, entries=(entry,))

    @classmethod
    def open(cls, root: str | Path, dockerfile: Path | None = None) -> "BuildContext":
        r = Path(root)
        if not r.is_dir():
            raise ContextError(f"build context {r} is not a directory", hint="pass the context directory as CONTEXT")
        return cls(r, IgnoreRules.load(r.resolve(), dockerfile))

    # -- selection ---------------------------------------------------------------------------------
    def select(self, src: str) -> list[Source]:
        """Expand one COPY/ADD source (glob or path) into the sources it names. A wildcard that matches
        nothing names nothing (BuildKit's AllowEmptyWildcard: `COPY package.json package-lock.json* ./`
        copies package.json alone); a path that does not exist is an error."""
        rel = clean_path(src)
        found = self._prefetched.pop(rel, None)
        return found if found is not None else self._select(src, rel)

    def _select(self, src: str, rel: str) -> list[Source]:
        if rel == ".." or rel.startswith("../"):
            raise MissingSourceError(f"source {src!r} is outside the build context")
        if is_wildcard(rel):   # a fifo, socket or device is not in the context BuildKit sees: never matched
            return [self._source(m) for m in sorted(self._glob(rel)) if not _special(self.root / m)]
        if rel != "." and (self.ignore.excluded(rel) and not self._has_included_below(rel)):
            raise MissingSourceError(f"{src!r} is excluded by .dockerignore", hint="remove it from .dockerignore")
        path = self.root / rel
        if not os.path.lexists(path):
            raise MissingSourceError(f"{src!r} not found in the build context {self.root}",
                                     hint="check the path; sources are relative to the context directory")
        return [self._source(rel)]

    def prefetch(self, srcs: Iterable[str]) -> None:
        """Select these sources now (what planning will ask `select` for) and start hashing their files
        in the background (`FileDigests.prefetch`), while planning waits for base images. A source
        that can't be selected is left for planning to report, naming its instruction."""
        for src in srcs:
            rel = clean_path(src)
            try:
                sources = self._prefetched[rel] = self._select(src, rel)
            except BuildError:
                continue
            self.digests.prefetch((e.path, e.size) for s in sources for e in s.entries
                                  if e.kind == "file" and not e.digest)

    def _has_included_below(self, rel: str) -> bool:
        path = self.root / rel
        if not self.ignore.has_exclusions or not path.is_dir():
            return False
        return any(True for _ in self._walk(rel))

    def _glob(self, pattern: str) -> list[str]:
        """Match pattern component by component (`*` never crosses `/`), skipping ignored paths."""
        parts = pattern.split("/")
        current = [""]
        for part in parts:
            nxt = []
            try:
                glob = Glob(part)
            except GlobError as exc:
                raise ContextError(f"COPY/ADD source {pattern!r}: {exc}") from None
            if part == "**":  # any number of directories, none included (COPY --parents ./src/**/*.txt)
                current = self._dirs_under(current)
                continue
            for base in current:
                d = self.root / base if base else self.root
                if not _GLOB_CHARS.search(part):
                    cand = f"{base}/{part}" if base else part
                    if os.path.lexists(self.root / cand):
                        nxt.append(cand)
                    continue
                try:
                    names = sorted(os.listdir(d))
                except (NotADirectoryError, FileNotFoundError):
                    continue
                for name in names:
                    if glob.match(name):
                        nxt.append(f"{base}/{name}" if base else name)
            current = nxt
        return [c for c in current if not self.ignore.excluded(c)]

    def _dirs_under(self, bases: list[str]) -> list[str]:
        """Each of `bases` and every directory under one (symlinks not followed), context-relative, once:
        a base under another is in that one's walk already (`**/**/x`, `a/**/b/**/x` on a deep tree
        would list each directory once per ancestor, a polynomial in the depth). An explicit stack:
        a context's chain of directories may be deeper than Python's recursion limit."""
        given = set(bases)
        out: list[str] = []
        for top in dict.fromkeys(bases):
            if any(up in given for up in _ancestors(top)):
                continue
            stack = [top]
            while stack:
                rel = stack.pop()
                out.append(rel)
                try:
                    with os.scandir(self.root / rel if rel else self.root) as it:
                        names = sorted((e.name for e in it if e.is_dir(follow_symlinks=False)), reverse=True)
                except OSError:
                    continue
                stack.extend(f"{rel}/{name}" if rel else name for name in names)
        return out

    def _source(self, rel: str) -> Source:
        path = self.root / rel if rel != "." else self.root
        # The named source itself is followed if it is a symlink (Docker copies the target).
        real = path.resolve()
        if not _inside(real, self.root):
            raise MissingSourceError(f"{rel!r} points outside the build context")
        if real.is_dir():
            return Source(rel=rel, path=real, is_dir=True,
                          entries=tuple(sorted(self._walk(rel, real), key=lambda e: e.rel)))
        st = real.stat()
        if not stat.S_ISREG(st.st_mode):   # reading a fifo would wait for a writer for ever
            raise MissingSourceError(f"{rel!r} is a {_kind(st.st_mode)}: a build context holds files, directories and "
                                     "symlinks only (BuildKit leaves the others out); copy a regular file")
        entry = Entry(rel="", path=real, kind="file", mode=stat.S_IMODE(st.st_mode), size=st.st_size)
        return Source(rel=rel, path=real, is_dir=False, entries=(entry,))

    def _walk(self, rel: str, top: Path | None = None):
        """Entries below a directory (not the directory itself), sorted, minus ignored ones."""
        top = top or (self.root / rel)
        base_rel = "" if rel == "." else rel
        stack = [(top, "")]
        while stack:
            d, sub = stack.pop()
            try:
                names = sorted(os.listdir(d), reverse=True)
            except OSError as exc:
                raise ContextError(f"cannot read {d}: {exc.strerror}") from None
            for name in names:
                p = d / name
                inner = f"{sub}/{name}" if sub else name
                ctx_rel = f"{base_rel}/{inner}" if base_rel else inner
                st = os.lstat(p)
                is_dir = stat.S_ISDIR(st.st_mode)
                if self.ignore.excluded(ctx_rel):
                    if is_dir and self.ignore.has_exclusions:
                        stack.append((p, inner))  # a `!` pattern may bring children back
                    continue
                if is_dir:
                    yield Entry(inner, p, "dir", stat.S_IMODE(st.st_mode), 0)
                    stack.append((p, inner))
                elif stat.S_ISLNK(st.st_mode):
                    yield Entry(inner, p, "symlink", 0o777, 0, os.readlink(p))
                elif stat.S_ISREG(st.st_mode):
                    yield Entry(inner, p, "file", stat.S_IMODE(st.st_mode), st.st_size)
                # sockets, fifos and devices in a context are skipped, as BuildKit does


def _special(path: Path) -> bool:
    """A fifo, socket or device (a symlink followed)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False   # _source says what is wrong with it
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "special file"


def _ancestors(rel: str) -> Iterator[str]:
    """"a/b/c" -> "a/b", "a", "" (the context itself)."""
    while rel:
        rel = rel.rpartition("/")[0]
        yield rel


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def exclude_sources(sources: list[Source], patterns: list[str]) -> list[Source]:
    """COPY --exclude: drop the sources and entries a pattern matches (dockerignore syntax), matched
    against the context-relative path and the path inside the source."""
    if not patterns:
        return sources
    rules = IgnoreRules(parse_ignore("\n".join(patterns), "--exclude"))
    kept = []
    for src in sources:
        if rules.excluded(src.rel) or rules.excluded(posixpath.basename(src.rel)):
            continue
        entries = tuple(e for e in src.entries if not e.rel or not (
            rules.excluded(e.rel) or rules.excluded(f"{src.rel}/{e.rel}" if src.rel != "." else e.rel)))
        kept.append(Source(src.rel, src.path, src.is_dir, entries, src.keep))
    return kept


def hash_sources(sources: list[Source], uid: int = 0, gid: int = 0,
                 chmod: "Callable[[int, bool], int] | None" = None,
                 digests: FileDigests | None = None) -> list[tuple[str, str, int, int, int, str]]:
    """(path, kind, mode, uid, gid, sha256|link) for every selected entry, sorted; never mtime.

    uid/gid are the ownership the copy will have (0:0 unless --chown), so the key doesn't depend on
    who checked the context out; `chmod` gives the mode --chmod makes of each entry's. `digests`: the
    context's file digests (builder/digests.py; default: every file hashed now).
    """
    files = {e.path: e.size for src in sources for e in src.entries if e.kind == "file" and not e.digest}
    known = (digests or FileDigests()).of(files.items())
    rows = []
    for src in sources:
        for e in src.entries:
            path = f"{src.rel}/{e.rel}" if e.rel else src.rel
            mode = chmod(e.mode, e.kind == "dir") if chmod is not None and e.kind != "symlink" else e.mode
            if e.kind == "file":
                digest = e.digest or known[e.path]
            elif e.kind == "symlink":
                digest = e.link
            else:
                digest = ""
            rows.append((path, e.kind, mode, uid, gid, digest))
    rows.sort()
    return rows
