import pytest

from registry.cleanup.inuse import InUse, image_keys, images_of, repo_path

DIG = "sha256:" + "ab" * 32


@pytest.mark.parametrize("image,keys", [
    ("nginx", [("tag", ("library/nginx", "latest"))]),
    ("reg:5000/team/app:v1", [("tag", ("team/app", "v1"))]),
    (f"reg:5000/team/app@{DIG}", [("digest", DIG)]),
    (f"reg:5000/team/app:v1@{DIG}", [("tag", ("team/app", "v1")), ("digest", DIG)]),
    (f"docker-pullable://reg:5000/team/app@{DIG}", [("digest", DIG)]),
    (DIG, [("digest", DIG)]),
    ("sha256:nothex", []),
    ("Not A Valid Ref!!", []),
    ("", []),
])
def test_image_keys(image, keys):
    assert image_keys(image) == keys


def _pod_spec(*images, init=()):
    return {"containers": [{"name": f"c{i}", "image": im} for i, im in enumerate(images)],
            "initContainers": [{"name": "i", "image": im} for im in init]}


@pytest.mark.parametrize("kind,obj,expected", [
    ("Pod", {"spec": _pod_spec("a:1", init=["b:2"]),
             "status": {"containerStatuses": [{"imageID": f"docker-pullable://a@{DIG}"}]}},
     ["b:2", "a:1", f"docker-pullable://a@{DIG}"]),
    ("Deployment", {"spec": {"template": {"spec": _pod_spec("d:1")}}}, ["d:1"]),
    ("ReplicaSet", {"spec": {"template": {"spec": _pod_spec("rs:1")}}}, ["rs:1"]),
    ("StatefulSet", {"spec": {"template": {"spec": _pod_spec("s:1")}}}, ["s:1"]),
    ("DaemonSet", {"spec": {"template": {"spec": _pod_spec("ds:1")}}}, ["ds:1"]),
    ("ReplicationController", {"spec": {"template": {"spec": _pod_spec("rc:1")}}}, ["rc:1"]),
    ("CronJob", {"spec": {"jobTemplate": {"spec": {"template": {"spec": _pod_spec("cj:1")}}}}}, ["cj:1"]),
    ("Job", {"spec": {"template": {"spec": _pod_spec("j:1")}}, "status": {"active": 1}}, ["j:1"]),
    ("Job", {"spec": {"template": {"spec": _pod_spec("j:1")}},
             "status": {"conditions": [{"type": "Complete", "status": "True"}]}}, []),
    ("Job", {"spec": {"template": {"spec": _pod_spec("j:1")}},
             "status": {"conditions": [{"type": "Failed", "status": "False"}]}}, ["j:1"]),
    ("Deployment", {"spec": None}, []),
    ("Pod", {"spec": {"containers": [{"name": "x"}, "junk", {"image": 5}]}, "status": None}, []),
])
def test_images_of(kind, obj, expected):
    assert images_of(kind, obj) == expected


def test_in_use_matching_ignores_host_but_not_path():
    u = InUse()
    u.add("cluster-name:5000/team/app:v1", "ctx/ns/Pod/p")
    u.add(f"elsewhere/other@{DIG}", "ctx/ns/Pod/q")
    assert u.tag_users("127.0.0.1:5000/team/app", "v1") == ["ctx/ns/Pod/p"]
    assert u.tag_users("127.0.0.1:5000/team/app", "v2") == []
    assert u.tag_users("127.0.0.1:5000/team/other", "v1") == []
    assert u.digest_users(DIG) == ["ctx/ns/Pod/q"]
    assert repo_path("127.0.0.1:5000/team/app") == "team/app"


def test_a_user_is_named_once_per_image():
    u = InUse()
    u.add(f"reg/team/app:v1@{DIG}", "ctx/ns/Pod/p")  # the spec
    u.add(f"reg/team/app@{DIG}", "ctx/ns/Pod/p")  # the status's imageID
    u.add(f"reg/team/app:v1@{DIG}", "ctx/ns/Deployment/d")
    assert u.digest_users(DIG) == ["ctx/ns/Pod/p", "ctx/ns/Deployment/d"]
    assert u.tag_users("reg/team/app", "v1") == ["ctx/ns/Pod/p", "ctx/ns/Deployment/d"]
