"""argparse `type=` checks for values every command takes alike: bad input is a usage error (exit 2)
that names the flag and says what is wanted, before anything runs. argparse prints them as
`kade: error: argument --flag: <message>`. Each takes the text and returns it (or its value)."""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any, Callable

from registry.errors import RegistryError


def registry_host(text: str) -> str:
    from registry.reference import validate_host

    try:
        return validate_host(text)
    except RegistryError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def repository(text: str) -> str:
    """A repository (or repository prefix) without tag or digest: `host[:port]/path`."""
    from registry.reference import Reference

    try:
        ref = Reference.parse(text, default_tag=None)
    except RegistryError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if ref.tag or ref.digest:
        raise argparse.ArgumentTypeError(f"{text!r} names an image; give the repository only, e.g. {ref.name}")
    return text


def image_reference(text: str) -> str:
    from registry.reference import Reference

    try:
        Reference.parse(text)
    except RegistryError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def existing_dir(text: str) -> str:
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such directory")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: not a directory")
    return text


def readable_file(text: str) -> str:
    path = Path(text).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: a directory, not a file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text}: not readable")
    return text


def key_source(text: str) -> str:
    """A key file, or `k8s://NAMESPACE/NAME` (a Secret): the file checked now, the Secret when it is read."""
    if text.startswith("k8s://"):
        namespace, _, name = text[len("k8s://"):].partition("/")
        if not namespace or not name or "/" in name:
            raise argparse.ArgumentTypeError(f"{text}: expected k8s://NAMESPACE/NAME")
        return text
    return readable_file(text)


def yaml_file(text: str) -> str:
    """A readable file holding a YAML mapping (a kubeconfig, a values file): said here, not deep in a loader."""
    import yaml

    from common import yamlsafe

    readable_file(text)
    try:
        doc = yamlsafe.load(Path(text).expanduser().read_text(errors="replace"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise argparse.ArgumentTypeError(f"{text}: not valid YAML{where}: "
                                         f"{getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(doc, dict):
        raise argparse.ArgumentTypeError(f"{text}: expected a YAML mapping, got {type(doc).__name__}")
    return text


def output_file(text: str) -> str:
    """A file to write at the end (a report): checked now, so that nothing is pushed before it fails."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: a directory; give a file name")
    parent = path.parent
    for up in (parent, *parent.parents):
        if up.exists():
            if not up.is_dir():
                raise argparse.ArgumentTypeError(f"{text}: {up} is a file, not a directory")
            break
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: its directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"{text}: its directory {parent} is not writable")
    return text


def duration(text: str) -> str:
    """A positive duration (90s, 5m, 1h30m, seconds), kept as text for the command to parse again."""
    return _duration(text, allow_zero=False)


def duration_or_zero(text: str) -> str:
    return _duration(text, allow_zero=True)


def _duration(text: str, allow_zero: bool) -> str:
    from deployer.durations import parse_duration
    from deployer.errors import DeployError

    try:
        value = parse_duration(text)
    except DeployError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value < 0 or (value == 0 and not allow_zero):
        raise argparse.ArgumentTypeError(f"{text!r}: give a duration above 0{' (or 0: off)' if allow_zero else ''}, "
                                         "e.g. 90s or 5m")
    return text


def positive_int(text: str) -> int:
    return _number(text, int, "a whole number", lambda v: v >= 1, "must be at least 1")


def hours(text: str) -> float:
    return _number(text, float, "a number of hours", lambda v: math.isfinite(v) and v >= 0,
                   "give 0 or more hours (e.g. 24)")


def size(text: str) -> int:
    """Bytes, or a number with a binary unit: 500M, 20G, 1.5T (K, M, G, T; an optional B or iB)."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; give bytes or a unit: 500M, 20G")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2).lower() or " "))


def _number(text: str, convert: Callable[[str], Any], what: str, valid: Callable[[Any], bool], wanted: str) -> Any:
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not valid(value):
        raise argparse.ArgumentTypeError(f"{text!r}: {wanted}")
    return value
