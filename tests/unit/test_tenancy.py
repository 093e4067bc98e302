"""Which tenant a build is (builder/tenant.py, kade/tenancy.py): flag, kade.yaml, environment, stages repo."""
from __future__ import annotations

import argparse

import pytest

from builder.tenant import Tenant, resolve
from kade.config import TenantSpec
from kade.errors import UsageError
from kade.tenancy import TenantChoice, choose, pod_key_secret
from registry.sigkeys import generate, private_pem


def args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"tenant": None, "share": None, "build_key": None, **kw})


@pytest.mark.parametrize("flag, spec, env, expected", [
    ("cli", TenantSpec(name="yaml"), "env", "cli"),
    (None, TenantSpec(name="yaml"), "env", "yaml"),
    (None, None, "env", "env"),
    (None, None, None, None),    # the builder derives it from the stages repository
])
def test_the_tenant_name_comes_from_the_flag_then_kade_yaml_then_the_environment(flag, spec, env, expected,
                                                                                 monkeypatch):
    if env:
        monkeypatch.setenv("KADE_TENANT", env)
    else:
        monkeypatch.delenv("KADE_TENANT", raising=False)
    monkeypatch.delenv("KADE_BUILD_KEY", raising=False)
    assert choose(args(tenant=flag), spec).name == expected


@pytest.mark.parametrize("explicit, stages, name", [
    ("team-a", "reg/x-stages", "team-a"), (None, "reg/x-stages", "reg/x-stages"), (None, None, "default")])
def test_resolve(explicit, stages, name):
    assert resolve(explicit, stages).name == name


def test_a_kade_yaml_key_path_is_relative_to_the_project(tmp_path, monkeypatch):
    monkeypatch.delenv("KADE_BUILD_KEY", raising=False)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "build.key").write_bytes(private_pem(generate(), None))
    chosen = choose(args(), TenantSpec(build_key="keys/build.key"), tmp_path)
    assert chosen.key_spec == str(tmp_path / "keys" / "build.key") and chosen.build_key is not None


@pytest.mark.parametrize("spec, namespace, expected", [
    ("", "ns", None),
    ("k8s://ns/kade-build-key", "ns", "kade-build-key"),
    ("k8s://other/kade-build-key", "ns", UsageError),
    ("/keys/build.key", "ns", UsageError),
])
def test_pods_read_the_build_key_from_a_secret_of_their_namespace(spec, namespace, expected):
    choice = TenantChoice(None, frozenset(), spec, None)
    if expected is UsageError:
        with pytest.raises(UsageError, match=f"k8s://{namespace}/NAME"):
            pod_key_secret(choice, namespace)
    else:
        assert pod_key_secret(choice, namespace) == expected


def test_tenant_folders_never_collide_and_stay_readable():
    a, b = Tenant("10.0.0.1:5000/team-a/app-stages"), Tenant("10.0.0.1:5000/team-a/app_stages")
    assert a.slug != b.slug and a.slug.startswith("10.0.0.1-5000-team-a-app-stages-")
    assert Tenant("x", frozenset({"trees"})).folder("trees") == "shared/trees"
    assert Tenant("x").folder("mounts") == f"tenants/{Tenant('x').slug}/mounts"
    with pytest.raises(ValueError, match="shareable parts"):
        Tenant("x", frozenset({"blobs"}))
