"""Stand-ins for the Docker Hub base images the corpus names, and the FROM mapping to them.

Nothing can be pulled from Docker Hub here, so each base a corpus Dockerfile names is replaced by a local
stand-in: the cluster's debootstrap Debian (tests/cluster/images) for `debian`, and images built from it
by BuildKit from `bases/<name>/Dockerfile` for the others, once per machine, kept as OCI layouts under
$KADE_DIFFERENTIAL_CACHE (default /var/cache/kade-differential/bases) and pushed to the session's
registry. `map_dockerfile` rewrites a Dockerfile's image names (FROM, `ARG` defaults used by FROM,
`--from=<image>`) to `<registry>/standin/<name>:<tag>`, keeping tags (and the ARGs in them): the same
mapped Dockerfile goes to both builders.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
BASES = HERE / "bases"
CACHE = Path(os.environ.get("KADE_DIFFERENTIAL_CACHE", "/var/cache/kade-differential")) / "bases"
CLUSTER_CACHE = Path(os.environ.get("KADE_CLUSTER_CACHE", "/var/cache/kade-cluster"))
DEBIAN_LAYOUT = CLUSTER_CACHE / "images" / "v2" / "debian"
STANDIN_VERSION = "1"  # bump to rebuild every stand-in
# The stand-ins trust what this machine trusts: its extra CA certificates (here egress to the package
# registries passes a TLS-inspecting proxy whose CA sits in this folder), so pip, npm and go reach the
# registries from RUN steps as they do on the host. Both builders get the same bases.
EXTRA_CAS = Path("/usr/local/share/ca-certificates")

# Image names (Docker Hub's short form, or a prefix ending in "/") -> stand-in. `alpine` and `ubuntu` map to
# Debian only because the corpus entries that name them use no apk and nothing Ubuntu-specific (their
# SOURCE says so); an entry that needs Alpine itself does not belong in the corpus (no Alpine mirror here).
NAMES = {
    "debian": "debian",
    "alpine": "debian",
    "ubuntu": "debian",
    "python": "python",
    "node": "node",
    "golang": "golang",
    "rust": "rust",
    "nginx": "nginx",
    "gcr.io/distroless/": "distroless",
}


class MappingError(ValueError):
    pass


def split_ref(ref: str) -> tuple[str, str]:
    """`docker.io/library/python:3.11-slim@sha256:...` -> ("python", "3.11-slim"): Docker Hub's short name,
    the tag (default "latest"), the digest dropped (stand-ins have their own)."""
    ref = ref.split("@", 1)[0]
    name, tag = ref, "latest"
    colon = ref.rfind(":")
    if colon > ref.rfind("/"):
        name, tag = ref[:colon], ref[colon + 1:]
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/", "library/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return name, tag


def standin_for(name: str) -> str | None:
    for pattern, standin in NAMES.items():
        if name == pattern or (pattern.endswith("/") and name.startswith(pattern)):
            return standin
    return None


_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)(?::?[-+][^}]*)?\}?")


def expand(text: str, args: dict[str, str]) -> str:
    """Expand $X / ${X} / ${X:-default} with the global ARG defaults (enough to name a base's tag)."""
    def one(m: re.Match) -> str:
        whole = m.group(0)
        if m.group(1) in args:
            return args[m.group(1)]
        default = re.match(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-(.*)\}$", whole)
        if default:
            return default.group(1)
        raise MappingError(f"cannot expand {whole!r}: no default for ARG {m.group(1)}")
    return _VAR.sub(one, text)


@dataclass
class Mapped:
    text: str
    needed: set[tuple[str, str]]  # (stand-in, tag) to push


_FROM = re.compile(r"^(\s*FROM\s+(?:--platform=\S+\s+)?)(\S+)(.*)$", re.IGNORECASE)
_ARG = re.compile(r"^(\s*ARG\s+)([A-Za-z_][A-Za-z0-9_]*)=(\"?)([^\s\"]+)(\"?\s*)$", re.IGNORECASE)
_FROM_FLAG = re.compile(r"((?:--|,)from=)([^\s,]+)")  # COPY --from=, RUN --mount=...,from=
_STAGE = re.compile(r"\s+AS\s+(\S+)", re.IGNORECASE)


def map_dockerfile(text: str, registry: str, build_args: frozenset[str] = frozenset()) -> Mapped:
    """Rewrite every base image of `text` to its stand-in in `registry`; raise MappingError for an image
    with no stand-in (the corpus must not depend on an image nobody can pull here). `FROM $X` where X is
    one of `build_args` is left alone: the entry passes the stand-in itself."""
    lines = text.split("\n")
    global_args: dict[str, str] = {}
    stages: set[str] = set()
    needed: set[tuple[str, str]] = set()
    seen_from = False

    def map_ref(ref: str) -> str:
        name_expr, tag_expr = split_ref(ref)
        name = expand(name_expr, global_args) if "$" in name_expr else name_expr
        standin = standin_for(name)
        if standin is None:
            raise MappingError(f"no stand-in for image {ref!r} (tests/differential/standins.py NAMES)")
        needed.add((standin, expand(tag_expr, global_args)))
        return f"{registry}/standin/{standin}:{tag_expr}"

    def is_image(value: str) -> bool:
        return value.lower() not in stages and value.lower() != "scratch" and not value.isdigit()

    # --from= and mount from= may name any stage, a later one too (FROM only those before it)
    every_stage = {st.group(1).lower() for line in lines if (f := _FROM.match(line)) and (st := _STAGE.search(f.group(3)))}

    for i, line in enumerate(lines):
        arg = _ARG.match(line)
        if arg and not seen_from:
            global_args[arg.group(2)] = arg.group(4)
            continue
        m = _FROM.match(line)
        if m:
            seen_from = True
            ref = m.group(2)
            whole_var = re.fullmatch(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", ref)
            if whole_var and whole_var.group(1) in build_args:
                pass
            elif whole_var:  # FROM $BASE: map the global ARG's default instead (the ARG stays in use)
                _map_arg_default(lines, whole_var.group(1), map_ref, is_image)
            elif is_image(ref):
                lines[i] = m.group(1) + map_ref(ref) + m.group(3)
            stage = _STAGE.search(m.group(3))
            if stage:
                stages.add(stage.group(1).lower())
            continue
        if seen_from and "from=" in line:
            lines[i] = _FROM_FLAG.sub(lambda f: f.group(1) + (map_ref(f.group(2)) if is_image(f.group(2))
                                                              and f.group(2).lower() not in every_stage
                                                              else f.group(2)), line)
    return Mapped("\n".join(lines), needed)


def _map_arg_default(lines: list[str], name: str, map_ref, is_image) -> None:
    for j, line in enumerate(lines):
        arg = _ARG.match(line)
        if arg and arg.group(2) == name:
            if is_image(arg.group(4)):
                lines[j] = f"{arg.group(1)}{name}={arg.group(3)}{map_ref(arg.group(4))}{arg.group(5)}"
            return
        if _FROM.match(line):
            break
    raise MappingError(f"FROM ${name}: no global ARG {name} with a default to map")


# ---------------------------------------------------------------- making and pushing stand-ins

def _layout_digest(layout: Path) -> str:
    index = json.loads((layout / "index.json").read_text())
    return index["manifests"][0]["digest"]


def debian_layout() -> Path:
    """The cluster's Debian layout, made (without a push) when this machine has none yet."""
    if not (DEBIAN_LAYOUT / "index.json").exists():
        out = subprocess.run([str(ROOT / "tests" / "cluster" / "images"), "--layouts-only"], capture_output=True,
                             text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(f"tests/cluster/images --layouts-only failed:\n{out.stderr[-3000:]}")
    return DEBIAN_LAYOUT


def extra_cas() -> list[Path]:
    return sorted(EXTRA_CAS.glob("*.crt")) if EXTRA_CAS.is_dir() else []


def standin_key(name: str, debian_digest: str) -> str:
    data = (BASES / name / "Dockerfile").read_bytes() + debian_digest.encode() + STANDIN_VERSION.encode()
    data += b"".join(ca.name.encode() + ca.read_bytes() for ca in extra_cas())
    return hashlib.sha256(data).hexdigest()[:12]


def standin_context(name: str, work: Path) -> Path:
    """The build context of a stand-in: its Dockerfile and ca/ (this machine's extra CA certificates)."""
    ctx = work / f"context-{name}"
    (ctx / "ca").mkdir(parents=True)
    shutil.copy(BASES / name / "Dockerfile", ctx / "Dockerfile")
    for ca in extra_cas():
        shutil.copy(ca, ctx / "ca" / ca.name)
    return ctx


def skopeo_push(layout: Path, dest: str) -> None:
    index = json.loads((layout / "index.json").read_text())
    ref = index["manifests"][0].get("annotations", {}).get("org.opencontainers.image.ref.name", "")
    out = subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--preserve-digests",
                          f"oci:{layout}:{ref}" if ref else f"oci:{layout}", f"docker://{dest}"],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"skopeo copy {layout} -> {dest} failed:\n{out.stderr[-3000:]}")


def standin_layout(name: str) -> Path:
    """Where the stand-in `name` is cached (the Debian layout for "debian"), built or not."""
    debian = debian_layout()
    return debian if name == "debian" else CACHE / f"{name}-{standin_key(name, _layout_digest(debian))}"


def missing_standins(needed: set[tuple[str, str]]) -> set[str]:
    """The stand-ins of `needed` this machine has not built yet."""
    return {n for n, _ in needed if not (standin_layout(n) / "index.json").exists()}


def ensure_standins(buildkitd, registry: str, needed: set[tuple[str, str]], work: Path) -> None:
    """Push each needed (stand-in, tag) to `registry`, building missing stand-ins with `buildkitd` first."""
    debian = debian_layout()
    debian_ref = f"{registry}/standin/debian:bookworm"
    skopeo_push(debian, debian_ref)
    CACHE.mkdir(parents=True, exist_ok=True)
    for name in sorted({n for n, _ in needed} - {"debian"}):
        layout = standin_layout(name)
        with open(CACHE / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (layout / "index.json").exists():
                tmp, ctx = work / f"standin-{name}", standin_context(name, work)
                buildkitd.buildctl("build", "--frontend", "dockerfile.v0", "--local", f"context={ctx}",
                                   "--local", f"dockerfile={ctx}", "--opt", f"build-arg:DEBIAN={debian_ref}",
                                   "--output", f"type=oci,dest={tmp},tar=false,name=standin", timeout=1800)
                shutil.rmtree(layout, ignore_errors=True)
                shutil.move(str(tmp), layout)
                for stale in CACHE.glob(f"{name}-*"):  # the same stand-in under an older key
                    if stale != layout:
                        shutil.rmtree(stale, ignore_errors=True)
    for name, tag in sorted(needed):
        skopeo_push(standin_layout(name), f"{registry}/standin/{name}:{tag}")
