"""Pure rules of project builds and converge: kade.yaml templating, tags, git status parsing,
giterminism path filters, template image references, step-key claims."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from kade.config import ConfigError, TemplateValues, parse_config, render_config
from common.git import strip_credentials
from kade.gittree import ci_branch, ci_tag, describe_status, parse_status, under
from kade.project import ImageRef, _Claims
from kade.tags import TagContext, TagTemplateError, check_templates, content_tag, extra_tags, sanitize_tag
from kade.workspace import used_paths

PROJECT = """
project: shop
repo: "{{ env.REGISTRY }}/shop"
images:
  web:
    context: "{{ 'web' }}"
    args: {BASE: "{{ env.BASE }}", REV: "{{ git.short_commit }}", PLAIN: "no template"}
deploy:
  manifests: deploy
  release: "{{ project }}-{{ env_name }}"
  namespace: "{{ project }}-{{ env_name }}"
  values: ["values/{{ env_name }}.yaml"]
"""
GIT = {"commit": "a" * 40, "short_commit": "a" * 12, "branch": "main", "tag": None}


def config():
    return parse_config(PROJECT, Path("/repo/kade.yaml"))


def test_templates_render_env_env_name_project_and_git():
    c = render_config(config(), TemplateValues(env={"REGISTRY": "r.example:5000", "BASE": "debian:12"},
                                               env_name="prod", git=GIT))
    assert c.repo == "r.example:5000/shop"
    assert c.images["web"].context == "web"
    assert c.images["web"].args == {"BASE": "debian:12", "REV": "a" * 12, "PLAIN": "no template"}
    assert (c.deploy.release, c.deploy.namespace, c.deploy.values) == ("shop-prod", "shop-prod", ("values/prod.yaml",))


def test_a_build_leaves_the_deploy_section_unrendered():
    c = render_config(config(), TemplateValues(env={"REGISTRY": "r", "BASE": "b"}, git=GIT), with_deploy=False)
    assert c.deploy.release == "{{ project }}-{{ env_name }}"


@pytest.mark.parametrize("env, env_name, message", [
    ({"BASE": "b"}, "prod", "kade.yaml: repo: template '{{ env.REGISTRY }}/shop': "),
    ({"BASE": "b"}, "prod", "the environment variable REGISTRY is not set"),
    ({"REGISTRY": "r", "BASE": "b"}, None, "kade.yaml: deploy.release: template '{{ project }}-{{ env_name }}': "
                                           "'env_name' is undefined (pass --env ENV)"),
])
def test_template_errors_name_file_key_and_what_to_do(env, env_name, message):
    with pytest.raises(ConfigError) as exc:
        render_config(config(), TemplateValues(env=env, env_name=env_name, git=GIT))
    assert message in str(exc.value)


@pytest.mark.parametrize("text, message", [
    ("project: x\nimages: {a: {args: {A: '{{ nope }}'}}}", "images.a.args.A: template '{{ nope }}': 'nope' is undefined"),
    ("project: x\nimages: {a: {args: {A: '{{ x'}}}", "images.a.args.A: template '{{ x': "),
    ("project: x\nimages: {a: {target: \"{{ ''.__class__ }}\"}}", "images.a.target: template"),  # sandboxed
])
def test_bad_templates(text, message):
    with pytest.raises(ConfigError) as exc:
        render_config(parse_config(text, Path("kade.yaml")), TemplateValues(env={}))
    assert message in str(exc.value)


def test_project_name_and_repo_are_validated():
    with pytest.raises(ConfigError, match="kade.yaml: project: expected lower-case"):
        parse_config("project: Shop App", Path("kade.yaml"))
    with pytest.raises(ConfigError, match="kade.yaml: repo: expected a string"):
        parse_config("project: x\nrepo: [a]", Path("kade.yaml"))


def test_used_paths_are_what_build_and_deploy_read():
    c = render_config(config(), TemplateValues(env={"REGISTRY": "r", "BASE": "b"}, env_name="prod", git=GIT))
    assert used_paths(c) == ["kade.yaml", "web", "web/Dockerfile", "deploy", "values/prod.yaml"]


# ---- tags ------------------------------------------------------------------------------------------

def test_content_tag_is_stable_short_hex_and_follows_the_key():
    a, b = content_tag("1" * 64), content_tag("2" * 64)
    assert a == content_tag("1" * 64) and a != b
    assert len(a) == 32 and all(ch in "0123456789abcdef" for ch in a)
    assert a != ("1" * 64)[:32]  # namespaced: not the step key itself


@pytest.mark.parametrize("text, tag", [
    ("feature/login", "feature-login"),
    ("web-main", "web-main"),
    ("  v1.2.3 ", "v1.2.3"),
    ("-.x", "x"),
    ("ümlaut branch!", "mlaut-branch-"),
    ("a" * 200, "a" * 128),
    ("///", ""),
])
def test_sanitize_tag(text, tag):
    assert sanitize_tag(text) == tag


def test_extra_tags_render_skip_missing_values_and_deduplicate():
    warnings: list[str] = []
    ctx = TagContext(image="web", project="shop", content_tag="c" * 32, git=GIT, env_name="prod")
    tags = extra_tags(["{{ image }}-{{ git.branch }}", "{{ git.tag }}", "{{ image }}-{{ git.branch }}",
                       "{{ env_name }}-{{ git.short_commit }}", "{{ content_tag }}", "{{ '/' }}"],
                      ctx, warnings.append)
    assert tags == ["web-main", "prod-" + "a" * 12]
    assert any("'{{ git.tag }}' gives no tag for image web" in w for w in warnings)
    assert any("not a usable tag" in w for w in warnings)


def test_tag_template_syntax_errors_are_found_before_building():
    with pytest.raises(TagTemplateError, match="--add-tag '{{ image': template syntax error"):
        check_templates(["ok-{{ image }}", "{{ image"])


# ---- git ---------------------------------------------------------------------------------------------

def test_parse_status_porcelain_z():
    out = " M web/app.py\0?? web/new file.txt\0R  new.txt\0old.txt\0A  kade.yaml\0 D gone\0"
    assert parse_status(out) == [(" M", "web/app.py"), ("??", "web/new file.txt"), ("R ", "new.txt"),
                                 ("A ", "kade.yaml"), (" D", "gone")]
    assert [describe_status(c) for c, _ in parse_status(out)] == [
        "modified", "untracked", "renamed", "added, not committed", "deleted"]


@pytest.mark.parametrize("path, prefixes, expected", [
    ("web/app.py", ["web"], True),
    ("web", ["web"], True),
    ("webapp/x", ["web"], False),
    ("notes.txt", ["web", "kade.yaml"], False),
    ("kade.yaml", ["kade.yaml"], True),
    ("anything", ["."], True),
    ("sub/web/x", ["web"], False),
])
def test_under(path, prefixes, expected):
    assert under(path, prefixes) is expected


@pytest.mark.parametrize("url, clean", [
    ("https://user:token@gitlab.example/g/p.git", "https://gitlab.example/g/p.git"),
    ("https://x-access-token:ghs_abc@github.com/o/r", "https://github.com/o/r"),
    ("https://github.com/o/r", "https://github.com/o/r"),
    ("git@github.com:o/r.git", "git@github.com:o/r.git"),
    ("ssh://git@host:22/r", "ssh://host:22/r"),
])
def test_source_urls_carry_no_credentials(url, clean):
    assert strip_credentials(url) == clean


@pytest.mark.parametrize("environ, branch, tag", [
    ({}, None, None),
    ({"CI_COMMIT_BRANCH": "main"}, "main", None),
    ({"CI_COMMIT_TAG": "v1"}, None, "v1"),
    ({"GITHUB_REF_TYPE": "branch", "GITHUB_REF_NAME": "dev"}, "dev", None),
    ({"GITHUB_REF_TYPE": "tag", "GITHUB_REF_NAME": "v2"}, None, "v2"),
    ({"GITHUB_HEAD_REF": "feature", "GITHUB_REF_TYPE": "branch", "GITHUB_REF_NAME": "12/merge"}, "feature", None),
])
def test_ci_variables_name_branch_and_tag_of_a_detached_head(environ, branch, tag):
    assert (ci_branch(environ), ci_tag(environ)) == (branch, tag)


# ---- images for templates, claims, annotations ---------------------------------------------------------

def test_image_ref_is_the_full_ref_with_parts():
    ref = ImageRef.parse("r.example:5000/shop/web:abc@sha256:" + "f" * 64)
    assert ref == "r.example:5000/shop/web:abc@sha256:" + "f" * 64
    assert (ref.ref, ref.repository, ref.tag, ref.digest) == (str(ref), "r.example:5000/shop/web", "abc",
                                                             "sha256:" + "f" * 64)


def test_claims_make_later_images_wait_for_the_first_builder_of_a_shared_key():
    claims = _Claims()
    a, b, c = threading.Event(), threading.Event(), threading.Event()
    assert claims.claim("tools", ["k1", "k2"], a) == []
    assert claims.claim("app", ["k2", "k3"], b) == [("tools", a)]
    assert claims.claim("web", ["k3", "k1"], c) == [("app", b), ("tools", a)]
    assert claims.claim("tools", ["k1"], a) == []  # its own keys never make it wait


def test_images_from_a_build_report(tmp_path):
    from kade.converge import images_from_report

    good = tmp_path / "r.json"
    good.write_text('{"images": {"web": {"ref": "r/web:t@sha256:' + "a" * 64 + '", "repository": "r/web", '
                    '"tag": "t", "digest": "sha256:' + "a" * 64 + '"}}}')
    web = images_from_report(good)["web"]
    assert (web.repository, web.tag, web.digest) == ("r/web", "t", "sha256:" + "a" * 64)
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [{"name": "web"}]}')
    with pytest.raises(ConfigError, match="bad.json: not a kade build report"):
        images_from_report(bad)


def test_deploy_without_manifests_or_kade_yaml_is_a_usage_error(tmp_path, capsys):
    from kade.cli import main

    assert main(["deploy", "--dir", str(tmp_path)]) == 2
    assert "-f PATH and --release NAME are required" in capsys.readouterr().err


def test_messages_name_the_project_folder_not_the_temporary_export(tmp_path):
    from deployer.errors import RenderError
    from kade.workspace import Workspace

    ws = Workspace(config=config(), root=tmp_path / "tree" / "shop", git=None, display="examples/shop", source=None)
    exc = ws.shown(RenderError(f"{tmp_path}/tree/shop/deploy/web.yaml.j2:3: 'x' is undefined"))
    assert str(exc) == "examples/shop/deploy/web.yaml.j2:3: 'x' is undefined"
