"""Turn what the user gives (YAML files, folders, Jinja2 templates, stdin) into a list of Resources.

- `.yaml`, `.yml`, `.json` files are plain manifests (multi-document; `kind: List` is expanded).
- `.j2`, `.jinja`, `.jinja2` files (e.g. `app.yaml.j2`) are Jinja2 templates, rendered in a sandbox
  with `values` (values files merged in order, then `--set`), `images` (name -> reference of a
  build), `release` and `namespace`. Undefined names are errors.
- `-` reads plain manifests from stdin, so `helm template ...` or `kustomize build ...` can be piped in.
Folders are read recursively in name order; hidden files and other suffixes are skipped.
"""
from __future__ import annotations

import base64
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

import jinja2
import jinja2.sandbox
from jinja2.loaders import split_template_path
import yaml

from common import fsutil, yamlsafe
from deployer.errors import RenderError, UsageError
from deployer.resources import Resource

PLAIN_SUFFIXES = (".yaml", ".yml", ".json")
TEMPLATE_SUFFIXES = (".j2", ".jinja", ".jinja2")
MAX_EXPANDED_NODES = 2_000_000  # bounds YAML alias bombs ("billion laughs")
MAX_DEPTH = 200  # levels of nesting: no Kubernetes object comes near; copies and diffs recurse per level


@dataclass
class RenderInput:
    paths: list[str]
    values_files: list[str] = field(default_factory=list)
    set_values: list[str] = field(default_factory=list)
    images: dict[str, str] = field(default_factory=dict)
    release: str = ""
    namespace: str = ""


def render(inputs: RenderInput, stdin: TextIO | None = None, values: dict[str, Any] | None = None) -> list[Resource]:
    """All resources of `inputs`; pass `values` when already loaded (a values file may be stdin)."""
    if values is None:
        values = load_values(inputs.values_files, inputs.set_values)
    context = {"values": values, "images": _Images(inputs.images), "release": inputs.release,
               "namespace": inputs.namespace}
    resources: list[Resource] = []
    stdin_used = False
    for raw in inputs.paths:
        if raw == "-":
            if stdin_used:
                raise UsageError("stdin ('-') can be given only once")
            stdin_used = True
            resources += parse_documents((stdin or sys.stdin).read(), "<stdin>")
            continue
        path = Path(raw)
        if not path.exists():
            raise UsageError(f"{raw}: no such file or folder")
        root = path if path.is_dir() else path.parent
        for file in _manifest_files(path):
            if path.is_dir() and not fsutil.inside(path, file):
                raise RenderError(f"{file}: a symlink out of {path} (to {file.resolve()}); kade does not follow it "
                                  "out of the manifests folder")
            resources += render_file(file, context, root=root)
    return resources


def _manifest_files(path: Path) -> Iterable[Path]:
    if path.is_file():
        yield path
        return
    stack = [path]   # os.walk's order (a folder's files, then each sub-folder), without its recursion
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if not entry.is_dir() and not entry.name.startswith(".") and \
                    entry.name.endswith(PLAIN_SUFFIXES + TEMPLATE_SUFFIXES):
                yield folder / entry.name
        stack += reversed([folder / e.name for e in entries
                           if e.is_dir() and not e.is_symlink() and not e.name.startswith(".")])


def render_file(file: Path, context: dict[str, Any], root: Path) -> list[Resource]:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RenderError(f"{file}: cannot read: {exc}") from exc
    if file.name.endswith(TEMPLATE_SUFFIXES):
        text = render_template(text, str(file), context, root)
        return parse_documents(text, f"{file} (rendered)")
    return parse_documents(text, str(file))


class _FolderLoader(jinja2.FileSystemLoader):
    """Templates from the manifests folder only: an include that a symlink leads out of it is refused
    (a repository's template must not pull this machine's files into a manifest)."""

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        folder = self.searchpath[0]
        path = Path(folder, *split_template_path(template))   # checked before anything is opened
        if not fsutil.inside(folder, path):
            raise jinja2.TemplateNotFound(template, f"{template} leads out of {folder} (a symlink to "
                                                    f"{path.resolve()}); kade does not follow it")
        return super().get_source(environment, template)


def _environment(root: Path) -> jinja2.sandbox.SandboxedEnvironment:
    env = jinja2.sandbox.SandboxedEnvironment(
        loader=_FolderLoader(str(root)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["to_yaml"] = lambda v: yaml.safe_dump(v, default_flow_style=False, sort_keys=False).rstrip("\n")
    env.filters["b64encode"] = lambda v: base64.b64encode(str(v).encode()).decode()
    env.filters["b64decode"] = lambda v: base64.b64decode(str(v)).decode()
    return env


def render_template(text: str, name: str, context: dict[str, Any], root: Path | None = None) -> str:
    env = _environment(root or Path("."))
    try:
        template = env.from_string(text)
        template.filename = name
        return template.render(**context)
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"{name}:{exc.lineno}: template syntax error: {exc.message}") from None
    except jinja2.TemplateError as exc:
        line = _template_line(exc, name)
        where = f"{name}:{line}" if line else name
        hint = _undefined_hint(exc.message or "", context) if isinstance(exc, jinja2.UndefinedError) else ""
        raise RenderError(f"{where}: {exc.message or exc}{hint}") from None


class _Images(dict):
    """`images` in templates (its type name shows in undefined-name errors, so they can name the image)."""


def _undefined_hint(message: str, context: dict[str, Any]) -> str:
    missing = re.search(r"_Images object' has no attribute '([^']+)'", message)
    if missing:
        known = ", ".join(sorted(context.get("images") or {})) or "none"
        return f" (no image {missing.group(1)!r}; the images are: {known})"
    return " (pass it with --values or --set)"


def _template_line(exc: BaseException, name: str) -> int | None:
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename in (name, "<template>"):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def parse_documents(text: str, source: str) -> list[Resource]:
    """Multi-document YAML (or JSON) into Resources; empty documents are skipped."""
    resources: list[Resource] = []
    try:
        documents = yamlsafe.load_all(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise RenderError(f"{where}: invalid YAML: {problem}") from None
    for index, doc in enumerate(documents, start=1):
        if doc is None:
            continue
        label = f"{source} (document {index})"
        _check_size(doc, label)
        for item in _expand_lists(doc, label):
            resources.append(Resource(item, label))
    return resources


def _expand_lists(doc: Any, label: str) -> list[dict[str, Any]]:
    if not isinstance(doc, dict):
        raise RenderError(f"{label}: a manifest must be a mapping, got {type(doc).__name__}")
    if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
        out: list[dict[str, Any]] = []
        for i, item in enumerate(doc["items"]):
            out += _expand_lists(item, f"{label} item {i}")
        return out
    validate_manifest(doc, label)
    return [doc]


def validate_manifest(doc: dict[str, Any], label: str) -> None:
    for field_name in ("apiVersion", "kind"):
        if not isinstance(doc.get(field_name), str) or not doc.get(field_name):
            raise RenderError(f"{label}: missing {field_name}")
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        raise RenderError(f"{label}: {doc['kind']} has no metadata")
    if not isinstance(meta.get("name"), str) or not meta["name"]:
        hint = " (generateName is not supported: resources must have stable names)" if meta.get("generateName") else ""
        raise RenderError(f"{label}: {doc['kind']} has no metadata.name{hint}")
    for key in ("annotations", "labels"):
        value = meta.get(key)
        if value is not None and not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
            raise RenderError(f"{label}: {doc['kind']} {meta['name']}: metadata.{key} values must be strings (quote them)")


def _check_size(doc: Any, label: str) -> None:
    """Count nodes as if aliases were expanded; refuse alias bombs and absurd nesting before anything
    copies them."""
    budget = MAX_EXPANDED_NODES
    stack = [(doc, 0)]
    while stack:
        node, depth = stack.pop()
        budget -= 1
        if budget < 0:
            raise RenderError(f"{label}: document too large once YAML aliases are expanded (over {MAX_EXPANDED_NODES} nodes)")
        if depth > MAX_DEPTH:
            raise RenderError(f"{label}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)


# ---- values ---------------------------------------------------------------------------------------

def load_values(files: list[str], set_values: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in files:
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"values file {name}: {exc.strerror or exc}") from None
        try:
            loaded = yamlsafe.load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise RenderError(f"{name}:{mark.line + 1 if mark else '?'}: invalid YAML in values file") from None
        if loaded is None:
            continue
        if not isinstance(loaded, dict):
            raise RenderError(f"{name}: a values file must be a mapping at the top level")
        _check_size(loaded, name)
        values = deep_merge(values, loaded)
    for item in set_values:
        path, value = parse_set(item)
        set_path(values, path, value)
    return values


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_set(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], typed value). `\\.` keeps a dot inside a key. Values are typed
    as YAML scalars/flow collections (`3` int, `true` bool, `null`, `[a, b]`); quote to force a string."""
    if "=" not in item:
        raise UsageError(f"--set {item!r}: expected KEY=VALUE (dotted keys, e.g. image.tag=v2)")
    raw_key, raw_value = item.split("=", 1)
    parts: list[str] = []
    current = ""
    i = 0
    while i < len(raw_key):
        ch = raw_key[i]
        if ch == "\\" and i + 1 < len(raw_key) and raw_key[i + 1] == ".":
            current += "."
            i += 2
            continue
        if ch == ".":
            parts.append(current)
            current = ""
        else:
            current += ch
        i += 1
    parts.append(current)
    if any(not p for p in parts):
        raise UsageError(f"--set {item!r}: empty key segment")
    if raw_value == "":
        return parts, ""
    try:
        value = yamlsafe.load(raw_value)
    except yaml.YAMLError:
        value = raw_value
    if isinstance(value, (dict, list)):
        _check_size(value, f"--set {raw_key}")
    return parts, value


def set_path(values: dict[str, Any], path: list[str], value: Any) -> None:
    node = values
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def load_images(image_args: list[str], images_files: list[str]) -> dict[str, str]:
    """Images for templates: `--image NAME=REF` and `--images FILE` where FILE is a mapping
    {name: ref} or a kade build record ({"images": [{"name", "repository", "digest", "tags"}]})."""
    images: dict[str, str] = {}
    for name in images_files:
        try:
            data = yamlsafe.load(Path(name).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise UsageError(f"images file {name}: {exc}") from None
        images.update(images_from_data(data, name))
    for item in image_args:
        if "=" not in item:
            raise UsageError(f"--image {item!r}: expected NAME=REFERENCE")
        key, ref = item.split("=", 1)
        images[key] = ref
    return images


def images_from_data(data: Any, source: str) -> dict[str, str]:
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        out: dict[str, str] = {}
        for entry in data["images"]:
            if not isinstance(entry, dict) or "repository" not in entry:
                raise UsageError(f"{source}: each build record image needs a repository")
            name = str(entry.get("name") or "default")
            if entry.get("digest"):
                out[name] = f"{entry['repository']}@{entry['digest']}"
            elif entry.get("tags"):
                out[name] = f"{entry['repository']}:{entry['tags'][0]}"
            else:
                raise UsageError(f"{source}: image {name} has neither digest nor tags")
        return out
    if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
        return {str(k): v for k, v in data.items()}
    raise UsageError(f"{source}: expected a mapping name -> image reference, or a kade build record")
