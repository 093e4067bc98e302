"""Building one corpus entry with each builder, into OCI layouts the independent reader opens.

An entry is a folder of tests/differential/corpus/: `context/` (the build context, Dockerfile inside as
in its repository), `SOURCE` (where the Dockerfile comes from), and optionally `build.yaml` (dockerfile,
target, build_args, secrets: {id: text}, archives: {path: kind}, repeat: [kade, buildkit]: the builders
that build it a second time, --no-cache, because they don't reproduce it themselves) and
`expected.yaml` (the differences it is known to have; compare.Expected).
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.differential.compare import Expected
from tests.differential.standins import map_dockerfile

CORPUS = Path(__file__).resolve().parent / "corpus"
ROOT = CORPUS.parents[2]
BUILDERS = ("kade", "buildkit")


@dataclass
class Entry:
    name: str
    folder: Path
    dockerfile: str = "Dockerfile"
    target: str | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    archives: dict[str, str] = field(default_factory=dict)
    expected: list[Expected] = field(default_factory=list)
    repeat: tuple[str, ...] = ()  # "kade", "buildkit": built twice to tell their own noise

    @classmethod
    def load(cls, folder: Path) -> "Entry":
        opts = yaml.safe_load((folder / "build.yaml").read_text()) if (folder / "build.yaml").exists() else {}
        exp = yaml.safe_load((folder / "expected.yaml").read_text()) if (folder / "expected.yaml").exists() else []
        repeat = tuple(opts.get("repeat") or ())
        if set(repeat) - set(BUILDERS):
            raise ValueError(f"{folder}/build.yaml: repeat names {sorted(set(repeat) - set(BUILDERS))}; "
                             f"the builders are {', '.join(BUILDERS)}")
        return cls(folder.name, folder, opts.get("dockerfile", "Dockerfile"), opts.get("target"),
                   {k: str(v) for k, v in (opts.get("build_args") or {}).items()}, opts.get("secrets") or {},
                   opts.get("archives") or {}, Expected.load(exp), repeat)


def entries() -> list[Entry]:
    return [Entry.load(p) for p in sorted(CORPUS.iterdir()) if (p / "SOURCE").exists()]


@dataclass
class Prepared:
    """An entry ready to build: its context (archives made), mapped Dockerfile and secret files."""
    entry: Entry
    context: Path
    dockerfile: Path
    secrets: dict[str, Path]
    build_args: dict[str, str]


def prepare(entry: Entry, registry: str, work: Path) -> tuple[Prepared, set[tuple[str, str]]]:
    """Copy the context (adding generated archives), map its Dockerfile's bases to stand-ins in `registry`."""
    context = work / "context"
    shutil.copytree(entry.folder / "context", context, symlinks=True)
    for rel, kind in entry.archives.items():
        write_archive(context / rel, kind)
    mapped = map_dockerfile((entry.folder / "context" / entry.dockerfile).read_text(), registry,
                            frozenset(entry.build_args))
    (work / "dockerfile").mkdir()
    dockerfile = work / "dockerfile" / "Dockerfile"
    dockerfile.write_text(mapped.text)
    secrets = {}
    for sid, text in entry.secrets.items():
        secrets[sid] = work / f"secret-{len(secrets)}"
        secrets[sid].write_text(text)
    args = {k: v.format(registry=registry) for k, v in entry.build_args.items()}
    needed = set(mapped.needed)
    for value in entry.build_args.values():
        if "{registry}/standin/" in value:
            name, tag = value.split("{registry}/standin/", 1)[1].split(":", 1)
            needed.add((name, tag))
    return Prepared(entry, context, dockerfile, secrets, args), needed


def write_archive(path: Path, kind: str) -> None:
    """A small tar (kind "tar" or "tar.gz") of a tree with modes, owners, a symlink and a hard link: made
    here with tarfile, so no binary archive sits in the repository."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, data: bytes | None = None, mode: int = 0o644, uid: int = 0, kind_: bytes = tarfile.REGTYPE,
                link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.mtime, info.type, info.linkname = mode, uid, uid, 1_600_000_000, kind_, link
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        add("usr", mode=0o755, kind_=tarfile.DIRTYPE)
        add("usr/local", mode=0o755, kind_=tarfile.DIRTYPE)
        add("usr/local/bin", mode=0o755, kind_=tarfile.DIRTYPE)
        add("usr/local/bin/hello", b"#!/bin/sh\necho hello from the archive\n", 0o755)
        add("usr/local/bin/hello-again", kind_=tarfile.LNKTYPE, link="usr/local/bin/hello", mode=0o755)
        add("usr/local/bin/hi", kind_=tarfile.SYMTYPE, link="hello", mode=0o777)
        add("etc", mode=0o755, kind_=tarfile.DIRTYPE)
        add("etc/archive.conf", b"from=archive\n", 0o640, uid=7)
        add("srv", mode=0o750, uid=33, kind_=tarfile.DIRTYPE)
        add("srv/data.txt", b"data\n" * 100, 0o600, uid=33)
    data = buf.getvalue()
    if kind == "tar.gz":
        import gzip
        data = gzip.compress(data, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@dataclass
class Built:
    layout: Path
    digest: str | None
    started: float
    seconds: float


def cli_options(p: Prepared) -> list[str]:
    """--target, --build-arg and --secret as `kade build` and `buildah bud` both spell them."""
    out = ["--target", p.entry.target] if p.entry.target else []
    for k, v in p.build_args.items():
        out += ["--build-arg", f"{k}={v}"]
    for sid, path in p.secrets.items():
        out += ["--secret", f"id={sid},src={path}"]
    return out


def build_kade(p: Prepared, cache: Path, registry: str, no_cache: bool) -> Built:
    cmd = [sys.executable, "-m", "kade", "build", str(p.context), "-f", str(p.dockerfile), "--cache-dir", str(cache),
           "--output", "json", "--insecure-registry", registry, *cli_options(p)]
    cmd += ["--no-cache"] if no_cache else []
    started = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT)
    if out.returncode != 0:
        raise BuildFailed("kade", p.entry.name, out.stderr[-4000:] or out.stdout[-4000:])
    image = json.loads(out.stdout)["images"][0]
    layout = Path(image["ref"].split(":", 2)[1])
    return Built(layout, image["digest"], started, time.time() - started)


def build_buildkit(p: Prepared, daemon, dest: Path, no_cache: bool) -> Built:
    """buildctl with the built-in Dockerfile frontend (a `# syntax=` line is not followed: no frontend
    image can be pulled here), exported as an OCI layout directory."""
    args = ["build", "--frontend", "dockerfile.v0", "--local", f"context={p.context}",
            "--local", f"dockerfile={p.dockerfile.parent}", "--opt", "cmdline=",
            "--output", f"type=oci,dest={dest},tar=false"]
    args += ["--no-cache"] if no_cache else []
    args += ["--opt", f"target={p.entry.target}"] if p.entry.target else []
    for k, v in p.build_args.items():
        args += ["--opt", f"build-arg:{k}={v}"]
    for sid, path in p.secrets.items():
        args += ["--secret", f"id={sid},src={path}"]
    started = time.time()
    out = daemon.buildctl(*args, check=False)
    if out.returncode != 0:
        raise BuildFailed("BuildKit", p.entry.name, out.stderr[-4000:])
    return Built(dest, None, started, time.time() - started)


def build_buildah(p: Prepared, store: Path, dest: Path) -> Built:
    """buildah bud (its default storage driver, overlay) into an OCI layout: a second opinion, on demand."""
    base = ["buildah", "--root", str(store / "root"), "--runroot", str(store / "run")]
    cmd = [*base, "bud", "--layers", "--isolation", "chroot", "--tls-verify=false", "-f", str(p.dockerfile),
           "-t", "differential", "--format", "oci", *cli_options(p)]
    started = time.time()
    out = subprocess.run([*cmd, str(p.context)], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise BuildFailed("buildah", p.entry.name, out.stderr[-4000:])
    push = subprocess.run([*base, "push", "differential", f"oci:{dest}:differential"], capture_output=True, text=True,
                          timeout=600)
    if push.returncode != 0:
        raise BuildFailed("buildah push", p.entry.name, push.stderr[-4000:])
    return Built(dest, None, started, time.time() - started)


class BuildFailed(AssertionError):
    def __init__(self, builder: str, entry: str, log: str) -> None:
        super().__init__(f"corpus entry {entry}: {builder} failed to build it:\n{log}")
