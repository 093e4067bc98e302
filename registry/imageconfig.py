"""The image config (OCI image config, Docker image JSON) as a typed, immutable value.

`ImageConfig` types what kade reads and writes (platform, created, the runtime config, rootfs
diffIDs, history) and keeps everything else as it came (`extra`: Docker's container_config, author,
os.version, ...; a known field holding JSON null too), so that a config read and written back is the
same JSON, and a base image's config passes through a build unchanged but for what the build sets.
The runtime config (`"config"`: Env, Cmd, User, Labels, ...) is an open mapping read through typed
accessors and changed with `with_runtime`: Docker writes fields there that no spec lists, and nulls
that must survive.

`to_bytes` is the one serialisation (sorted keys, compact, ASCII-escaped, as kade has always written
configs), so the same config always has the same digest. Methods return new values; nothing mutates.
"""
from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from registry.digest import is_digest, sha256_digest
from registry.errors import InvalidManifest
from registry.model import Platform
from common import jsonsafe

MAX_CONFIG_BYTES = 16 << 20   # what kade reads of a config: real ones are kB (MBs with a long history); more is hostile
_ROOTFS_TYPE = "layers"
_SCALARS = ("architecture", "os", "variant", "created", "author")  # the top-level string fields


def _require(cond: bool, what: str) -> None:
    if not cond:
        raise InvalidManifest(what)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def _string_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(x, str) for x in value.values())


def _set(value: Any) -> bool:   # Go's map[string]struct{}: each value an object ({} in practice)
    return isinstance(value, dict) and all(isinstance(x, dict) for x in value.values())


def _healthcheck(value: Any) -> bool:
    return isinstance(value, dict) and _strings(value.get("Test") or []) and all(
        isinstance(value.get(k) or 0, int) and not isinstance(value.get(k), bool)
        for k in ("Interval", "Timeout", "StartPeriod", "StartInterval", "Retries"))


# The runtime fields a build reads, typed as the image spec's Go structs type them: Docker, containerd
# and BuildKit refuse a config that breaks one when they unmarshal it (null is allowed, as there), and
# kade would otherwise crash on one (an integer Shell, an Env that is a string).
_RUNTIME_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{k: (lambda v: isinstance(v, str), "a string") for k in ("User", "WorkingDir", "StopSignal")},
    **{k: (_strings, "a list of strings") for k in ("Env", "Entrypoint", "Cmd", "OnBuild", "Shell")},
    "Labels": (_string_map, "an object of strings"),
    **{k: (_set, "an object of objects") for k in ("ExposedPorts", "Volumes")},
    "Healthcheck": (_healthcheck, "an object with a Test list of strings and whole-number times"),
}


def check_runtime(runtime: Mapping[str, Any]) -> None:
    """Refuse a runtime config whose known fields have the wrong JSON types, naming the field."""
    for key, (ok, what) in _RUNTIME_FIELDS.items():
        value = runtime.get(key)
        if value is not None and not ok(value):
            raise InvalidManifest(f"image config: config.{key} must be {what}, not {json.dumps(value)[:80]}")


@dataclass(frozen=True)
class History:
    """One history entry: the instruction that made a layer (or changed only the config)."""

    created_by: str | None = None
    comment: str | None = None
    created: str | None = None
    author: str | None = None
    empty_layer: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # fields kept as they came

    _TYPES = {"created_by": str, "comment": str, "created": str, "author": str, "empty_layer": bool}

    @classmethod
    def from_dict(cls, doc: Any, what: str = "history entry") -> "History":
        _require(isinstance(doc, dict), f"image config: {what} must be an object")
        typed: dict[str, Any] = {k: v for k, v in doc.items() if k in cls._TYPES and isinstance(v, cls._TYPES[k])}
        return cls(**typed, extra={k: v for k, v in doc.items() if k not in typed})

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        for key in self._TYPES:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True)
class ImageConfig:
    """An image config. A field that is None was absent (and stays absent when written)."""

    architecture: str | None = None
    os: str | None = None
    variant: str | None = None
    created: str | None = None
    author: str | None = None
    runtime: Mapping[str, Any] | None = None      # "config": Env, Cmd, Entrypoint, User, WorkingDir, ...
    diff_ids: tuple[str, ...] | None = None       # "rootfs": {"type": "layers", "diff_ids": [...]}
    history: tuple[History, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls, platform: Platform, runtime: Mapping[str, Any] | None = None) -> "ImageConfig":
        """A config with no layers and no history (a `FROM scratch` starts from one)."""
        return cls(platform.architecture, platform.os, platform.variant or None, runtime=dict(runtime or {}),
                   diff_ids=(), history=())

    # -- parsing and writing ----------------------------------------------------------------------
    @classmethod
    def from_bytes(cls, body: bytes) -> "ImageConfig":
        """Parse an (untrusted) config blob; raise InvalidManifest naming the field at fault."""
        try:
            doc = jsonsafe.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidManifest(f"image config is not valid JSON: {exc}") from None
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Any) -> "ImageConfig":
        _require(isinstance(doc, dict), "image config must be a JSON object")
        extra = {k: v for k, v in doc.items()
                 if k not in (*_SCALARS, "config", "rootfs", "history")}
        fields: dict[str, Any] = {}
        for key in _SCALARS:
            value = doc.get(key)
            _require(key not in ("architecture", "os") or value is None or isinstance(value, str),
                     f"image config: {key} must be a string")
            if isinstance(value, str):
                fields[key] = value
            elif key in doc:
                extra[key] = value
        runtime = doc.get("config")
        _require(runtime is None or isinstance(runtime, dict), "image config: config must be an object")
        if runtime is not None:
            check_runtime(runtime)
        if runtime is not None:
            fields["runtime"] = runtime
        elif "config" in doc:
            extra["config"] = None
        rootfs = doc.get("rootfs")
        _require(rootfs is None or isinstance(rootfs, dict), "image config: rootfs must be an object")
        if rootfs is not None:
            diff_ids = rootfs.get("diff_ids", [])
            _require(isinstance(diff_ids, list) and all(isinstance(x, str) and is_digest(x) for x in diff_ids),
                     "image config: rootfs.diff_ids must be a list of digests")
            fields["diff_ids"] = tuple(diff_ids)
        elif "rootfs" in doc:
            extra["rootfs"] = None
        history = doc.get("history")
        _require(history is None or isinstance(history, list), "image config: history must be a list of objects")
        if history is not None:
            fields["history"] = tuple(History.from_dict(h, f"history[{i}]") for i, h in enumerate(history))
        elif "history" in doc:
            extra["history"] = None
        return cls(**fields, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The config as a new JSON document (the caller may change it)."""
        return copy.deepcopy(self._document())

    def _document(self) -> dict[str, Any]:
        """The JSON document, sharing this value's nested objects (to read only)."""
        out: dict[str, Any] = dict(self.extra)
        for key in _SCALARS:
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.runtime is not None:
            out["config"] = self.runtime
        if self.diff_ids is not None:
            out["rootfs"] = {"type": _ROOTFS_TYPE, "diff_ids": list(self.diff_ids)}
        if self.history is not None:
            out["history"] = [h.to_dict() for h in self.history]
        return out

    def to_bytes(self) -> bytes:
        """The config blob: sorted keys, no whitespace, non-ASCII escaped (stable: same config, same digest)."""
        return json.dumps(self._document(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def digest(self) -> str:
        return sha256_digest(self.to_bytes())

    # -- reading ----------------------------------------------------------------------------------
    @property
    def platform(self) -> Platform:
        return Platform(self.os or "", self.architecture or "", self.variant or "")

    def get(self, key: str, default: Any = None) -> Any:
        """A runtime config field (`Env`, `WorkingDir`, `Labels`, ...), `default` when absent or null."""
        value = (self.runtime or {}).get(key)
        return default if value is None else value

    @property
    def env(self) -> list[str]:
        return list(self.get("Env", []))

    def env_map(self) -> dict[str, str]:
        """The environment as a new dict: the last of a repeated name wins, an item without "=" is that
        name with an empty value."""
        return dict(_parsed_env(self.get("Env", []))[0])

    def with_env(self, pairs: list[tuple[str, str]]) -> "ImageConfig":
        """ENV: a replaced variable keeps its place (as Docker does), new ones go last. An Env with
        repeated names or items without "=" (a base image's) is normalized, the last one winning.

        A Dockerfile of N ENV lines makes N configs of up to N variables: the items not changed stay
        the previous config's strings, and the parsed environment goes on to the new config's list
        (`_parsed_env`) rather than being parsed again for every line."""
        old = self.get("Env", [])
        values, index = _parsed_env(old)
        if index is None:
            values = {**values, **dict(pairs)}
            env = [f"{k}={v}" for k, v in values.items()]
            index = {k: at for at, k in enumerate(values)}
        else:
            env = list(old)
            for k, v in pairs:
                at = index.get(k)
                if at is None:
                    index[k] = len(env)
                    env.append(f"{k}={v}")
                else:
                    env[at] = f"{k}={v}"
                values[k] = v
        _ENV.last = (env, values, index)   # the old list's parse was updated in place: it is the new one's
        return replace(self, runtime={**(self.runtime or {}), "Env": env}, extra=_without(self.extra, "config"))

    @property
    def cmd(self) -> list[str] | None:
        return self.get("Cmd")

    @property
    def entrypoint(self) -> list[str] | None:
        return self.get("Entrypoint")

    @property
    def working_dir(self) -> str:
        return str(self.get("WorkingDir", ""))

    @property
    def user(self) -> str:
        return str(self.get("User", ""))

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.get("Labels", {}))

    @property
    def layer_count(self) -> int:
        return len(self.diff_ids or ())

    # -- changing (new values) -------------------------------------------------------------------
    def with_runtime(self, **changes: Any) -> "ImageConfig":
        """The runtime config with `changes` set (a None value removes the field). The fields not
        changed are shared with this value (nothing mutates them): a copy of all of them per step made
        N steps cost O(N^2)."""
        runtime = dict(self.runtime or {})
        for key, value in changes.items():
            if value is None:
                runtime.pop(key, None)
            else:
                runtime[key] = _fresh(value)
        return replace(self, runtime=runtime, extra=_without(self.extra, "config"))

    def with_layer(self, history: History, diff_id: str | None) -> "ImageConfig":
        """One more history entry and, for a step that made a layer, its diffID."""
        diff_ids = tuple(self.diff_ids or ()) + ((diff_id,) if diff_id else ())
        return replace(self, history=tuple(self.history or ()) + (history,),
                       diff_ids=diff_ids if diff_id or self.diff_ids is not None else None,
                       extra=_without(self.extra, "history", *(("rootfs",) if diff_id else ())))

    def with_created(self, created: str) -> "ImageConfig":
        return replace(self, created=created, extra=_without(self.extra, "created"))

    def with_build_state(self, diff_ids: tuple[str, ...], history: tuple[History, ...]) -> "ImageConfig":
        """This config over a parent's layers and history (a step image's config)."""
        return replace(self, diff_ids=tuple(diff_ids), history=tuple(history),
                       extra=_without(self.extra, "rootfs", "history"))

    def without_build_state(self) -> "ImageConfig":
        """What a Dockerfile stage inherits of its base: everything but layers, history and created."""
        return replace(self, diff_ids=None, history=None, created=None,
                       extra=_without(self.extra, "rootfs", "history", "created"))


_ENV = threading.local()   # .last: (an Env list, its parse), the last one parsed in this thread


def _parsed_env(env: list[str]) -> tuple[dict[str, str], dict[str, int] | None]:
    """(name -> value, name -> position; None when some item is not NAME=VALUE with a name of its own)
    of an Env list. The last one parsed is kept (one per thread): a plan reads the config of each step
    several times, and configs derived without an ENV share their Env list. Callers may change what
    they get only when they set `_ENV.last` to what they made of it."""
    last = getattr(_ENV, "last", None)
    if last is not None and last[0] is env:
        return last[1], last[2]
    values: dict[str, str] = {}
    index: dict[str, int] = {}
    regular = True
    for at, item in enumerate(env):
        k, eq, v = item.partition("=")
        regular = regular and bool(eq) and k not in values
        values[k] = v
        index[k] = at
    _ENV.last = (env, values, index if regular else None)
    return values, (index if regular else None)


_IMMUTABLE = {str, int, float}   # JSON values a copy may share


def _fresh(value: Any) -> Any:
    """A JSON value with new containers and its strings and numbers shared (they cannot change): what
    deepcopy gives here, without its memo (`with_runtime` copies what it is given, once per step). A
    flat one (Labels, Env) is copied at C speed: its types checked by `map`, not item by item."""
    if isinstance(value, dict):
        if set(map(type, value.values())) <= _IMMUTABLE:
            return dict(value)
        return {k: v if isinstance(v, (str, int, float)) else _fresh(v) for k, v in value.items()}
    if isinstance(value, list):
        if set(map(type, value)) <= _IMMUTABLE:
            return list(value)
        return [v if isinstance(v, (str, int, float)) else _fresh(v) for v in value]
    return value


def _without(extra: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in extra.items() if k not in keys}
