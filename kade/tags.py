"""Image tags of a project build.

The content tag (always given): the first 32 hex characters of
sha256("kade-content-tag-v1\\0" + final key), where the final key is the step key of the target
stage's last step (or, for a stage without steps, its base's manifest digest or final key). The step
key covers the base image's manifest digest, every instruction with its build args (so the refs and
digests of images it depends on), and the content of every COPY/ADD source — so the same tag means
the same filesystem and config, whatever the commit or machine. The pushed image adds only
`created` and the commit labels/annotations of the build that first made it; a later commit whose
content is the same reuses that image (tag, digest) as it is, so nothing rolls.

Extra tags (`--add-tag TEMPLATE`, repeatable): Jinja2 templates over `image` (the image name),
`project`, `env_name`, `content_tag` and `git.commit`, `git.short_commit`, `git.branch`, `git.tag`.
The result is made a valid tag (characters outside [A-Za-z0-9_.-] become '-', at most 128, no
leading '.' or '-'). A template naming something this commit lacks (e.g. `git.tag` on an untagged
commit) yields no tag, with a warning, so one CI recipe serves tagged and untagged commits.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import jinja2
import jinja2.sandbox

CONTENT_TAG_LENGTH = 32
_BAD_TAG_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


class TagTemplateError(ValueError):
    """A tag template that cannot be parsed or renders to nothing usable."""


def content_tag(final_key: str) -> str:
    digest = hashlib.sha256(b"kade-content-tag-v1\0" + final_key.encode()).hexdigest()
    return digest[:CONTENT_TAG_LENGTH]


def sanitize_tag(text: str) -> str:
    """A valid OCI tag made of `text`, or "" when nothing usable is left."""
    tag = _BAD_TAG_CHARS.sub("-", text.strip())
    tag = tag.lstrip(".-")[:128]
    return tag


@dataclass(frozen=True)
class TagContext:
    image: str
    project: str
    content_tag: str
    git: Mapping[str, str | None]
    env_name: str | None = None

    def variables(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image": self.image, "project": self.project, "content_tag": self.content_tag,
                               "git": {k: v for k, v in self.git.items() if v}}
        if self.env_name:
            out["env_name"] = self.env_name
        return out


_ENV = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)


KNOWN_NAMES = ("image", "project", "content_tag", "git", "env_name")


def check_templates(templates: list[str]) -> None:
    """Syntax and names checked before anything is built (a name of `git` that a commit lacks, such as
    git.tag, only skips the tag: see `extra_tags`)."""
    from jinja2 import meta

    for t in templates:
        try:
            unknown = sorted(meta.find_undeclared_variables(_ENV.parse(t)) - set(KNOWN_NAMES))
        except jinja2.TemplateSyntaxError as exc:
            raise TagTemplateError(f"--add-tag {t!r}: template syntax error: {exc.message}") from None
        if unknown:
            raise TagTemplateError(f"--add-tag {t!r}: unknown name {unknown[0]!r} (known: {', '.join(KNOWN_NAMES)})")


def extra_tags(templates: list[str], ctx: TagContext, warn: Callable[[str], None]) -> list[str]:
    """The rendered, sanitized, de-duplicated extra tags (never the content tag itself)."""
    tags: list[str] = []
    for t in templates:
        try:
            rendered = _ENV.from_string(t).render(ctx.variables())
        except jinja2.UndefinedError as exc:
            warn(f"--add-tag {t!r} gives no tag for image {ctx.image}: {exc.message} for this commit")
            continue
        except jinja2.TemplateError as exc:
            raise TagTemplateError(f"--add-tag {t!r}: {exc.message or exc}") from None
        tag = sanitize_tag(rendered)
        if not tag:
            warn(f"--add-tag {t!r} rendered to {rendered!r}, not a usable tag, for image {ctx.image}")
            continue
        if tag != ctx.content_tag and tag not in tags:
            tags.append(tag)
    return tags
