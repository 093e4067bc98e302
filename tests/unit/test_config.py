from pathlib import Path

import pytest

from kade.config import ConfigError, dependency_waves, parse_config

GOOD = """
project: shop
images:
  assets:
    context: assets
  web:
    context: web
    target: final
    args: {PORT: 8080, DEBUG: false}
    secrets: [{id: npm, env: NPM_TOKEN}]
    ssh: [default]
    dependencies:
      - image: assets
        args: {ASSETS_IMAGE: ref, ASSETS_DIGEST: digest}
deploy:
  manifests: deploy
  values: [deploy/values.yaml]
cleanup:
  keepPolicies: []
"""


def test_good_config_parses():
    config = parse_config(GOOD, Path("/repo/kade.yaml"))
    web = config.images["web"]
    assert config.project == "shop"
    assert web.args == {"PORT": "8080", "DEBUG": "false"}
    assert web.secrets[0].env == "NPM_TOKEN"
    assert web.dependencies[0].args["ASSETS_DIGEST"] == "digest"
    assert config.build_order() == [["assets"], ["web"]]
    assert config.deploy.values == ("deploy/values.yaml",)
    assert config.root == Path("/repo")


@pytest.mark.parametrize(
    "text, message",
    [
        ("images: {}", "kade.yaml: project: is required"),
        ("project: x\nimages: []", "kade.yaml: images: expected a mapping, got a list"),
        ("project: x\nimagez: {}", "kade.yaml: imagez: unknown key"),
        ("project: x\nimages: {Web: {}}", "kade.yaml: images.Web: image names are lower-case"),
        ("project: x\nimages: {web: {args: {A: [1]}}}", "kade.yaml: images.web.args.A: expected a string, number or boolean, got a list"),
        ("project: x\nimages: {web: {secrets: [{id: s}]}}", "kade.yaml: images.web.secrets[0]: give exactly one of src"),
        ("project: x\nimages: {web: {dependencies: [{image: db}]}}", "kade.yaml: images.web.dependencies: names image 'db'"),
        ("project: x\nimages: {web: {dependencies: [{image: api, args: {A: sha}}]}, api: {}}", "images.web.dependencies[0].args.A: expected one of ref"),
        ("project: x\nimages: {a: {dependencies: [{image: b}]}, b: {dependencies: [{image: a}]}}", "kade.yaml: images: dependency cycle among a, b"),
        ("project: x\ndeploy: {manifests: [a]}", "kade.yaml: deploy.manifests: expected a string, got a list"),
        ("project: x\nimages: [a\ndeploy: {}\n", "kade.yaml:3: not valid YAML"),
        ("project: " + "[" * 5000 + "]" * 5000, "not valid YAML"),
        ("project: x\ntenant: {share: [everything]}", "kade.yaml: tenant.share[0]: expected one of mounts, trees, downloads"),
        ("project: x\ntenant: {name: a, owner: b}", "kade.yaml: tenant.owner: unknown key"),
        ("project: x\ntenant: [a]", "kade.yaml: tenant: expected a mapping, got a list"),
    ],
)
def test_bad_config_names_key_path(text, message):
    with pytest.raises(ConfigError) as exc:
        parse_config(text, Path("kade.yaml"))
    assert message in str(exc.value)


@pytest.mark.parametrize(
    "graph, waves",
    [
        ({}, []),
        ({"a": []}, [["a"]]),
        ({"a": [], "b": [], "c": ["a", "b"]}, [["a", "b"], ["c"]]),
        ({"a": ["b"], "b": ["c"], "c": []}, [["c"], ["b"], ["a"]]),
    ],
)
def test_dependency_waves(graph, waves):
    assert dependency_waves(graph) == waves


def test_missing_file_says_what_to_do(tmp_path):
    from kade.config import load_config

    with pytest.raises(ConfigError, match="not found; create a kade.yaml"):
        load_config(tmp_path)


@pytest.mark.parametrize("text, name, share, key", [
    ("tenant: team-a", "team-a", (), None),
    ("tenant: {share: [trees, mounts], buildKey: keys/build.key}", None, ("trees", "mounts"), "keys/build.key"),
    ("tenant: {name: team-a, buildKey: k8s://team-a-builds/kade-build-key}", "team-a", (),
     "k8s://team-a-builds/kade-build-key"),
])
def test_tenant(text, name, share, key):
    tenant = parse_config(f"project: x\n{text}", Path("kade.yaml")).tenant
    assert (tenant.name, tenant.share, tenant.build_key) == (name, share, key)
