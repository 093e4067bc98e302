"""Two tenants on one machine and one registry (the real docker-registry): tenant B tries each attack
of issue 13 on tenant A's builds, and A's output and digests stay what they were.

A is `<registry>/team-a-*/app` (stages `team-a-*/app-stages`), B is `<registry>/team-b-*/app`; both build
with one cache directory (one CI machine). Builds are reproducible (SOURCE_DATE_EPOCH), so "unchanged"
is checked by digest against A's build before the attack."""
from __future__ import annotations

import http.server
import subprocess
import threading
import uuid

import pytest

from builder.build import Build
from builder.cache import LocalCache
from builder.errors import BuildError
from builder.tenant import Tenant
from builder.options import BuildOptions
from registry import mediatypes as mt
from registry import stagesig
from registry.client import ClientOptions, RegistryClient
from registry.model import parse_manifest
from registry.records import is_record_tag
from registry.sigkeys import generate, load_private_key, private_pem
from tests.fixtures.canary import image_files

EPOCH = "1700000000"


@pytest.fixture
def team(request):
    """Repository names of their own for this test (the registry is shared by the session)."""
    suffix = uuid.uuid4().hex[:6]
    return lambda name: f"{name}-{suffix}"


@pytest.fixture(autouse=True)
def _reproducible(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)


def _ctx(path, dockerfile: str):
    path.mkdir(parents=True)
    (path / "Dockerfile").write_text(dockerfile)
    return path


def _files(registry, ref: str) -> dict:
    repo, _, tag = ref.partition("/")[2].rpartition(":")
    return image_files(registry.url, repo, tag)


def _key(tmp_path, name: str):
    key = generate()
    path = tmp_path / f"{name}.key"
    path.write_bytes(private_pem(key, None))
    return str(path)


PIP = "FROM {base}\nRUN --mount=type=cache,target=/root/.cache/pip ls -a /root/.cache/pip > /seen.txt\n"
PLANT = ("FROM {base}\nRUN --mount=type=cache,target=/root/.cache/pip "
         "echo 'import os; os.system(\"steal\")' > /root/.cache/pip/sitecustomize.py\n")


def test_tenant_b_cannot_plant_files_in_tenant_a_cache_mounts(registry, base_image, kade_build, tmp_path, team):
    cache = str(tmp_path / "cache")
    a = _ctx(tmp_path / "a", PIP.format(base=base_image.ref))
    b = _ctx(tmp_path / "b", PLANT.format(base=base_image.ref))
    before = kade_build(str(a), "-t", f"{registry.host}/{team('team-a')}/app:before", "--cache-dir", str(tmp_path / "clean"),
                        "--output", "json").ok()
    kade_build(str(b), "-t", f"{registry.host}/{team('team-b')}/app:v1", "--cache-dir", cache, "--output", "json").ok()
    after = kade_build(str(a), "-t", f"{registry.host}/{team('team-a')}/app:v1", "--cache-dir", cache, "--no-cache",
                       "--output", "json").ok()
    seen = _files(registry, f"{registry.host}/{team('team-a')}/app:v1")["seen.txt"][1]
    assert b"sitecustomize" not in seen
    assert after["images"][0]["digest"] == before["images"][0]["digest"]
    # the same cache id under another --tenant name, or shared on purpose, is B's own again
    kade_build(str(b), "-t", f"{registry.host}/{team('team-b')}/app:v2", "--cache-dir", cache, "--no-cache",
               "--share", "mounts", "--output", "json").ok()
    shared = kade_build(str(a), "-t", f"{registry.host}/{team('team-a')}/app:shared", "--cache-dir", cache, "--no-cache",
                        "--share", "mounts", "--output", "json").ok()
    assert b"sitecustomize" in _files(registry, f"{registry.host}/{team('team-a')}/app:shared")["seen.txt"][1]
    assert shared["images"][0]["digest"] != before["images"][0]["digest"]


def test_a_write_into_tenant_b_unpacked_base_never_reaches_tenant_a(registry, base_image, kade_build, tmp_path,
                                                                   team):
    """An escape that wrote into B's unpacked base tree (what issue 13 feared of a shared tree) poisons
    B's later builds at most: A unpacks and keeps its own."""
    cache = tmp_path / "cache"
    dockerfile = "FROM {base}\nRUN ls /bin | wc -l > /count && cat /bin/sh-helper 2>&1 > /helper; true\n"
    a, b = (_ctx(tmp_path / n, dockerfile.format(base=base_image.ref)) for n in ("a", "b"))
    clean = kade_build(str(a), "-t", f"{registry.host}/{team('team-a')}/app:clean", "--cache-dir",
                       str(tmp_path / "clean"), "--output", "json").ok()
    kade_build(str(b), "-t", f"{registry.host}/{team('team-b')}/app:v1", "--cache-dir", str(cache),
               "--output", "json").ok()
    store = LocalCache(cache, Tenant(f"{registry.host}/{team('team-b')}/app-stages")).trees / "layers"
    trees = [d / "fs" for d in store.iterdir() if (d / "fs" / "bin").is_dir()]   # the base's layer dir
    assert len(trees) == 1
    (trees[0] / "bin" / "sh-helper").write_text("planted by tenant B\n")
    after = kade_build(str(a), "-t", f"{registry.host}/{team('team-a')}/app:v1", "--cache-dir", str(cache),
                       "--output", "json").ok()
    assert after["images"][0]["digest"] == clean["images"][0]["digest"]
    assert b"planted" not in _files(registry, f"{registry.host}/{team('team-a')}/app:v1")["helper"][1]


class Changing(http.server.BaseHTTPRequestHandler):
    """Serves other bytes on every request of one URL (what a compromised or flaky server does)."""

    def do_GET(self):  # noqa: N802
        self.server.count += 1  # type: ignore[attr-defined]
        body = f"release {self.server.count}\n".encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def changing_url():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Changing)
    srv.count = 0  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_port}/tool.sh"
    srv.shutdown()


@pytest.mark.parametrize("other", ["team-a/other", "team-b/app"])
def test_a_download_checked_and_keyed_is_the_one_in_the_layer(registry, base_image, changing_url, tmp_path, team, other):
    """A plans (downloads release 1, keys the step on it); another image of A, or tenant B, downloads the
    same URL (release 2) into the same cache before A's step runs; A's layer holds release 1."""
    cache = str(tmp_path / "cache")
    dockerfile = f"FROM {base_image.ref}\nADD {changing_url} /opt/tool.sh\n"
    report = lambda *a, **k: None  # noqa: E731
    other_ref = f"{registry.host}/{team(other.split('/')[0])}/{other.split('/')[1]}:v1"
    a = Build(BuildOptions(context=_ctx(tmp_path / "a", dockerfile), tags=[f"{registry.host}/{team('team-a')}/app:v1"],
                           cache_dir=cache, insecure=(registry.host,)), report)
    with a.session():
        plan = a.prepare()
        Build(BuildOptions(context=_ctx(tmp_path / "b", dockerfile), tags=[other_ref], cache_dir=cache,
                           insecure=(registry.host,)), report).run()
        a.publish(plan, a.solve(plan))
    assert _files(registry, f"{registry.host}/{team('team-a')}/app:v1")["opt/tool.sh"][1] == b"release 1\n"
    assert _files(registry, other_ref)["opt/tool.sh"][1] == b"release 2\n"


def test_a_download_changed_after_its_check_fails_the_build(registry, base_image, changing_url, tmp_path, team):
    dockerfile = f"FROM {base_image.ref}\nADD {changing_url} /opt/tool.sh\n"
    a = Build(BuildOptions(context=_ctx(tmp_path / "a", dockerfile), tags=[f"{registry.host}/{team('team-a')}/dl:v1"],
                           cache_dir=str(tmp_path / "cache"), insecure=(registry.host,)), lambda *a, **k: None)
    with a.session():
        plan = a.prepare()
        stored = next(a.env.cache.downloads.rglob("tool.sh"))
        stored.write_bytes(b"release 666\n")   # a write that reached the store (it never should)
        with pytest.raises(BuildError, match="the downloaded file changed after it was checked"):
            a.publish(plan, a.solve(plan))
    with RegistryClient(ClientOptions(insecure=(registry.host,))) as client:
        assert client.repository(f"{registry.host}/{team('team-a')}/dl").head_manifest("v1") is None


STEPS = "FROM {base}\nRUN echo genuine > /app.txt\nRUN cat /app.txt > /copy.txt\n"


def _forge(registry, stages: str, key: str, source_repo: str, source_tag: str, sign_with=None) -> None:
    """Push, under A's step key, the step image B built (optionally signed with B's own key)."""
    with RegistryClient(ClientOptions(insecure=(registry.host,))) as client:
        src = client.repository(f"{registry.host}/{source_repo}")
        body, desc = src.get_manifest(source_tag, mt.OCI_MANIFEST)
        dst = client.repository(f"{registry.host}/{stages}")
        manifest = parse_manifest(body, desc.media_type)
        for d in manifest.blobs():
            assert dst.mount_blob(d.digest, source_repo)   # one registry: B's blobs are mounted, not copied
        if sign_with is not None:
            manifest = stagesig.sign(manifest, "step", stagesig.repository_name(dst), key, sign_with)
        dst.put_manifest(key, manifest.to_bytes(), mt.OCI_MANIFEST)


def _swap(registry, stages: str, one: str, other: str) -> None:
    with RegistryClient(ClientOptions(insecure=(registry.host,))) as client:
        repo = client.repository(f"{registry.host}/{stages}")
        bodies = {t: repo.get_manifest(t, mt.OCI_MANIFEST)[0] for t in (one, other)}
        repo.put_manifest(one, bodies[other], mt.OCI_MANIFEST)
        repo.put_manifest(other, bodies[one], mt.OCI_MANIFEST)


def _step_keys(registry, stages: str) -> list[str]:
    with RegistryClient(ClientOptions(insecure=(registry.host,))) as client:
        return sorted(t for t in client.repository(f"{registry.host}/{stages}").list_tags() if len(t) == 64)


@pytest.mark.parametrize("forger", ["no key", "another key", "a's key, another step"])
def test_a_step_image_pushed_by_someone_without_the_key_is_not_reused(registry, base_image, kade_build, tmp_path, team,
                                                                     forger):
    cache = str(tmp_path / "cache")
    key = _key(tmp_path, "a")
    a = _ctx(tmp_path / "a", STEPS.format(base=base_image.ref))
    b = _ctx(tmp_path / "b", STEPS.format(base=base_image.ref).replace("genuine", "poisoned"))
    first = kade_build(str(a), "-t", f"{registry.host}/{team('team-a')}/app:v1", "--build-key", key, "--cache-dir", cache,
                       "--output", "json").ok()
    keys = _step_keys(registry, f"{team('team-a')}/app-stages")
    kade_build(str(b), "-t", f"{registry.host}/{team('team-b')}/app:v1", "--cache-dir", cache, "--output", "json").ok()
    b_keys = _step_keys(registry, f"{team('team-b')}/app-stages")
    if forger == "a's key, another step":   # A's own signed step images, each replayed under the other key
        _swap(registry, f"{team('team-a')}/app-stages", *keys)
    else:   # B's RUN steps (poisoned) pushed under A's step keys, unsigned or signed by B's own key
        signer = generate() if forger == "another key" else None
        for mine, theirs in zip(keys, b_keys):
            _forge(registry, f"{team('team-a')}/app-stages", mine, f"{team('team-b')}/app-stages", theirs, sign_with=signer)
    again = kade_build(str(a), "-t", f"{registry.host}/{team('team-a')}/app:v2", "--build-key", key, "--cache-dir", cache,
                       "--output", "json")
    out = again.ok()
    assert out["steps"]["built"] == 2 and out["steps"]["cached"] == 0
    why = {"no key": "it is not signed", "another key": "signed by another key",
           "a's key, another step": "does not match its content"}[forger]
    warnings = [ln for ln in again.stderr.splitlines() if "is not reused" in ln]
    assert len(warnings) == 2 and all(why in w and "the step runs again" in w for w in warnings), again.stderr
    assert out["images"][0]["digest"] == first["images"][0]["digest"]
    assert _files(registry, f"{registry.host}/{team('team-a')}/app:v2")["copy.txt"][1] == b"genuine\n"
    # the re-pushed steps carry the key's signature again: the next build reuses them
    third = kade_build(str(a), "-t", f"{registry.host}/{team('team-a')}/app:v3", "--build-key", key, "--cache-dir", cache,
                       "--output", "json").ok()
    assert third["steps"] == {"built": 0, "cached": 2}


def test_without_a_key_the_forged_step_would_have_been_used(registry, base_image, kade_build, tmp_path, team):
    """The attack is real: a build without a build key reuses what anyone pushed under its keys."""
    cache = str(tmp_path / "cache")
    a = _ctx(tmp_path / "a", STEPS.format(base=base_image.ref))
    b = _ctx(tmp_path / "b", STEPS.format(base=base_image.ref).replace("genuine", "poisoned"))
    kade_build(str(a), "-t", f"{registry.host}/{team('team-c')}/app:v1", "--cache-dir", cache, "--output", "json").ok()
    keys = _step_keys(registry, f"{team('team-c')}/app-stages")
    kade_build(str(b), "-t", f"{registry.host}/{team('team-d')}/app:v1", "--cache-dir", cache, "--output", "json").ok()
    for mine, theirs in zip(keys, _step_keys(registry, f"{team('team-d')}/app-stages")):
        _forge(registry, f"{team('team-c')}/app-stages", mine, f"{team('team-d')}/app-stages", theirs)
    kade_build(str(a), "-t", f"{registry.host}/{team('team-c')}/app:v2", "--cache-dir", cache, "--output", "json").ok()
    assert _files(registry, f"{registry.host}/{team('team-c')}/app:v2")["copy.txt"][1] == b"poisoned\n"


def test_build_records_carry_the_build_key_signature(registry, base_image, kade_build, tmp_path, team):
    key = _key(tmp_path, "a")
    a = _ctx(tmp_path / "a", STEPS.format(base=base_image.ref))
    kade_build(str(a), "-t", f"{registry.host}/{team('team-a')}/rec:v1", "--build-key", key, "--cache-dir",
               str(tmp_path / "c"), "--output", "json").ok()
    public = load_private_key(open(key, "rb").read(), None, key).public
    with RegistryClient(ClientOptions(insecure=(registry.host,))) as client:
        stages = client.repository(f"{registry.host}/{team('team-a')}/rec-stages")
        tag = next(t for t in stages.list_tags() if is_record_tag(t))
        body, _ = stages.get_manifest(tag)
        name = stagesig.repository_name(stages)
        assert stagesig.problem(body, "record", name, tag, public) is None
        assert stagesig.problem(body, "record", name, tag + "0", public) is not None
        assert "another key" in stagesig.problem(body, "record", name, tag, generate().public)


def test_a_project_takes_a_content_tag_from_the_registry_only_if_its_signed_steps_make_it(
        registry, base_image, kade_build, tmp_path, team):
    """kade.yaml projects reuse an image whose content tag exists without building: with a build key
    only when that image is exactly the one its signed final step makes (B overwrote the tag)."""
    root = tmp_path / "repo"
    (root / "web").mkdir(parents=True)
    (root / "kade.yaml").write_text("project: demo\nimages:\n  web: {context: web}\n")
    (root / "web" / "Dockerfile").write_text(STEPS.format(base=base_image.ref))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@x",
                                                               "commit", "-q", "-m", "x"]):
        subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)
    repo, key = f"{registry.host}/{team('team-a')}", _key(tmp_path, "a")
    build = lambda *extra: kade_build("--dir", str(root), "--repo", repo, "--cache-dir",  # noqa: E731
                                      str(tmp_path / "cache"), "--output", "json", *extra)
    first = build("--build-key", key).ok()["images"]["web"]
    other = _ctx(tmp_path / "b", STEPS.format(base=base_image.ref).replace("genuine", "poisoned"))
    forged = kade_build(str(other), "-t", f"{registry.host}/{team('team-b')}/web:x", "--cache-dir",
                        str(tmp_path / "cache"), "--output", "json").ok()["images"][0]["digest"]
    with RegistryClient(ClientOptions(insecure=(registry.host,))) as client:
        src = client.repository(f"{registry.host}/{team('team-b')}/web")
        body, desc = src.get_manifest(forged)
        dst = client.repository(f"{repo}/web")
        for d in parse_manifest(body, desc.media_type).blobs():
            assert dst.mount_blob(d.digest, f"{team('team-b')}/web")
        dst.put_manifest(first["tag"], body, desc.media_type)
    again = build("--build-key", key)
    web = again.ok()["images"]["web"]
    assert "is not the image of a step image the build key signed; building it" in again.stderr
    assert web["digest"] == first["digest"] and not web["reused"]
    assert _files(registry, f"{repo}/web:{first['tag']}")["copy.txt"][1] == b"genuine\n"
    assert build("--build-key", key).ok()["images"]["web"]["reused"]   # its own again: taken as it is
