"""The build record and OCI annotations a build leaves, read back with the real registry and skopeo."""
import subprocess

from registry.client import RegistryClient
from registry.records import list_records
from tests.fixtures.build import skopeo_inspect


def test_record_and_annotations(registry, base_image, kade_build, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f.txt").write_text("x")
    (ctx / "Dockerfile").write_text(f"FROM {base_image.ref}\nCOPY f.txt /f.txt\nENV A=1\n")
    subprocess.run(["git", "init", "-q", str(ctx)], check=True)
    subprocess.run(["git", "-C", str(ctx), "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "c",
                    "--allow-empty"], check=True)
    commit = subprocess.run(["git", "-C", str(ctx), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    tags = [f"{registry.host}/rec/app:v1", f"{registry.host}/rec/app:latest"]
    res = kade_build(str(ctx), "--tag", tags[0], "--tag", tags[1], "--cache-dir", str(tmp_path / "c"),
                     "--output", "json")
    assert res.code == 0, res.stderr
    digests = {i["digest"] for i in res.json()["images"]}
    assert len(digests) == 1
    digest = digests.pop()

    raw = skopeo_inspect(f"docker://{tags[1]}")
    assert raw["Digest"] == digest
    import json
    manifest = json.loads(subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{tags[0]}"],
                                         capture_output=True, text=True, check=True).stdout)
    assert manifest["annotations"]["org.opencontainers.image.revision"] == commit
    assert manifest["annotations"]["org.opencontainers.image.created"].endswith("Z")

    with RegistryClient() as client:
        stages = client.repository(f"{registry.host}/rec/app-stages")
        records = list(list_records(stages))
        assert len(records) == 1
        tag, record = records[0]
        assert tag.startswith(f"build-{commit}-")
        (img,) = record.images
        assert img.repository == f"{registry.host}/rec/app" and set(img.tags) == {"v1", "latest"}
        assert img.digest == digest and len(img.steps) == 2
        for key in img.steps:  # every step image is in the stages repo under its key
            assert stages.head_manifest(key) is not None
