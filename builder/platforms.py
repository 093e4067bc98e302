"""Target and build platforms of a build (pure): `--platform` values, the host's platform, and the
automatic platform args as BuildKit defines them (dockerfile2llb `defaultArgs`).

A build has one build platform (where its commands run natively: this machine) and one or more target
platforms (what its images are for). Platforms are normalised as containerd does (registry.model.Platform):
`linux/arm64/v8` and `linux/aarch64` are `linux/arm64`, so they key, resolve and publish as one.
"""
from __future__ import annotations

import os
import re

from builder.errors import BuildError
from registry.model import Platform

DEFAULT_PLATFORM = "linux/amd64"
_NAME = re.compile(r"[a-z0-9_.-]+")
# uname -m of the machines kade runs on -> the OCI architecture
_MACHINE_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm", "armv6l": "arm",
                 "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}
_MACHINE_VARIANT = {"armv7l": "v7", "armv6l": "v6"}


def parse_platform(text: str, what: str = "--platform") -> Platform:
    """One platform (`os/arch[/variant]`, normalised); a clear error naming `what` otherwise."""
    parts = text.strip().split("/")
    if not 2 <= len(parts) <= 3 or not all(_NAME.fullmatch(p.lower()) for p in parts):
        raise BuildError(f"{what} {text!r} is not a platform",
                         hint="write os/arch[/variant], e.g. linux/amd64 or linux/arm64 or linux/arm/v7")
    return Platform(*parts).normalized()


def parse_platforms(text: str, what: str = "--platform") -> list[Platform]:
    """A comma-separated list of platforms, normalised, duplicates dropped, in the order given."""
    out: list[Platform] = []
    for item in text.split(","):
        if not item.strip():
            raise BuildError(f"{what} {text!r} has an empty entry", hint="e.g. --platform linux/amd64,linux/arm64")
        p = parse_platform(item, what)
        if p not in out:
            out.append(p)
    return out


def host_platform(machine: str | None = None) -> Platform:
    """The platform this machine runs natively (the build platform)."""
    machine = machine or os.uname().machine   # what platform.machine() returns on Linux, without loading platform.py
    return Platform("linux", _MACHINE_ARCH.get(machine, machine), _MACHINE_VARIANT.get(machine, "")).normalized()


def automatic_args(target: Platform, build: Platform) -> dict[str, str]:
    """BUILDPLATFORM, BUILDOS, BUILDARCH, BUILDVARIANT and TARGET* as BuildKit sets them in the global
    scope (a stage sees one only after `ARG NAME`; a --build-arg of the same name replaces it)."""
    return {"BUILDPLATFORM": str(build), "BUILDOS": build.os, "BUILDARCH": build.architecture,
            "BUILDVARIANT": build.variant,
            "TARGETPLATFORM": str(target), "TARGETOS": target.os, "TARGETARCH": target.architecture,
            "TARGETVARIANT": target.variant}
