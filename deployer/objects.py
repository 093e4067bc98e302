"""Small readers over object dicts as the API server returns them (pure)."""
from __future__ import annotations


def name(obj: dict | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("name", ""))


def namespace(obj: dict | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("namespace", ""))


def uid(obj: dict | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("uid", ""))


def resource_version(obj: dict | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("resourceVersion", ""))


def involved_uid(event: dict) -> str:
    """The uid of the object an event is about (core/v1 involvedObject or events.k8s.io regarding)."""
    return str((event.get("involvedObject") or event.get("regarding") or {}).get("uid", ""))
