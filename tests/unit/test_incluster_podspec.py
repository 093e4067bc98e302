"""Pure parts of in-cluster builds: the builder pod manifest, Lease decisions, pod log records."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from builder.backends.kubernetes import failure_error, parse_pod_line
from builder.errors import StepFailedError
from builder.backends.lease import LeaseView, lease_state, step_lease_name
from builder.backends.podspec import (CAPABILITIES, SANDBOX_ENV, USERNS_CAPABILITIES, KubeSettings, dns_label,
                                      pod_name, stage_pod)

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def pod(**kw):
    settings = KubeSettings(image="reg:5000/kade/builder@sha256:" + "a" * 64, **kw.pop("settings", {}))
    args = dict(build_id="b1", owner={"name": "kade-build-b1", "uid": "u-1"}, image_name="web", stage="builder",
                plan_digest="sha256:" + "b" * 64, stages_repo="reg:5000/app-stages")
    args.update(kw)
    return stage_pod(settings, **args)


def test_pod_security_posture():
    p = pod()
    spec = p["spec"]
    c = spec["containers"][0]
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"], "add": sorted(CAPABILITIES)}
    assert "SYS_ADMIN" not in CAPABILITIES and "NET_ADMIN" not in CAPABILITIES
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert all("hostPath" not in v for v in spec["volumes"])
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] == 3600
    assert "hostUsers" not in spec
    assert all(reason for reason in CAPABILITIES.values())


def test_user_namespace_pods_get_the_namespace_sandbox():
    spec = pod(settings={"user_namespaces": True})["spec"]
    c = spec["containers"][0]
    assert spec["hostUsers"] is False
    assert c["securityContext"]["capabilities"]["add"] == sorted({*CAPABILITIES, *USERNS_CAPABILITIES})
    assert {"name": SANDBOX_ENV, "value": "namespaces"} in c["env"]
    assert c["securityContext"]["privileged"] is False and c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    plain = pod()["spec"]["containers"][0]
    assert not any(e["name"] == SANDBOX_ENV for e in plain["env"])
    assert "SYS_ADMIN" in USERNS_CAPABILITIES and all(USERNS_CAPABILITIES.values())


@pytest.mark.parametrize("settings, check", [
    ({}, lambda s: {"name": "cache", "persistentVolumeClaim": {"claimName": "kade-build-cache"}} in s["volumes"]),
    ({"cache_pvc": None}, lambda s: {"name": "cache", "emptyDir": {}} in s["volumes"]),
    ({"user_namespaces": True}, lambda s: s["hostUsers"] is False),
    ({"deadline_s": 600}, lambda s: s["activeDeadlineSeconds"] == 600),
    ({"service_account": None}, lambda s: "serviceAccountName" not in s),
    ({"service_account": "sa1"}, lambda s: s["serviceAccountName"] == "sa1"),
    ({"registry_secret": "creds"}, lambda s: s["volumes"][-1]["secret"] == {
        "secretName": "creds", "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}
     and {"name": "DOCKER_CONFIG", "value": "/kade/docker"} in s["containers"][0]["env"]),
    ({"cpu": "500m"}, lambda s: s["containers"][0]["resources"] == {"requests": {"cpu": "500m"}}),
    ({"node_selector": {"pool": "build"}}, lambda s: s["nodeSelector"] == {"pool": "build"}),
])
def test_pod_settings(settings, check):
    assert check(pod(settings=settings)["spec"])


def test_pod_identity_args_and_owner():
    p = pod(insecure=("reg:5000",), epoch=1700000000, attempt=2)
    meta = p["metadata"]
    assert meta["name"] == "kade-b1-builder-2"
    assert meta["labels"]["kade.io/build"] == "b1" and meta["labels"]["app.kubernetes.io/managed-by"] == "kade"
    assert meta["ownerReferences"] == [{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                        "name": "kade-build-b1", "uid": "u-1"}]
    args = p["spec"]["containers"][0]["args"]
    assert args[:2] == ["build-stage", "--plan"] and args[-2:] == ["--insecure-registry", "reg:5000"]
    assert {"name": "SOURCE_DATE_EPOCH", "value": "1700000000"} in p["spec"]["containers"][0]["env"]
    assert "ownerReferences" not in pod(owner=None)["metadata"]


@pytest.mark.parametrize("text, expected", [
    ("builder", "builder"),
    ("0", "0"),
    ("Build_Stage.1", None),
    ("x" * 80, None),
    ("---", None),
])
def test_dns_label(text, expected):
    out = dns_label(text)
    assert len(out) <= 63 and out == out.lower() and not out.startswith("-") and not out.endswith("-")
    if expected is not None:
        assert out == expected
    else:
        assert out != text and dns_label(text) == out  # stable, hashed suffix
    assert len(pod_name("0123456789", text, 3)) <= 63


@pytest.mark.parametrize("view, state", [
    (None, "absent"),
    (LeaseView(None, None, None), "free"),
    (LeaseView("me", NOW, 30), "mine"),
    (LeaseView("other", NOW - timedelta(seconds=10), 30), "held"),
    (LeaseView("other", NOW - timedelta(seconds=30), 30), "free"),  # expired exactly now
    (LeaseView("other", NOW - timedelta(seconds=300), 30), "free"),
    (LeaseView("other", None, 30), "free"),
    (LeaseView("other", NOW + timedelta(seconds=5), 30), "held"),  # a clock a bit ahead
])
def test_lease_state(view, state):
    assert lease_state(view, "me", NOW) == state


def test_step_lease_name_is_a_valid_name():
    name = step_lease_name("a" * 64)
    assert len(name) <= 253 and name.startswith("kade-step-")


@pytest.mark.parametrize("line, kind", [
    ('{"kind": "step", "message": "x"}', "step"),
    ('{"kind": 3}', None),
    ("{not json", None),
    ("plain output", None),
    ('["kind"]', None),
])
def test_parse_pod_line(line, kind):
    rec = parse_pod_line(line)
    assert (rec["kind"] if rec else None) == kind


def test_pods_never_get_an_api_token_and_never_hold_a_secret_value_in_their_spec():
    spec = pod(secrets_relay=True, settings={"build_key_secret": "kade-build-key", "tenant": "team-a",
                                             "share": ("trees",)})["spec"]
    assert spec["automountServiceAccountToken"] is False
    c = spec["containers"][0]
    assert {"name": "build-key", "secret": {"secretName": "kade-build-key", "defaultMode": 0o400}} in spec["volumes"]
    assert {"name": "build-key", "mountPath": "/kade/build-key", "readOnly": True} in c["volumeMounts"]
    args = " ".join(c["args"])
    assert "--secrets-relay" in args and "--tenant team-a" in args and "--share trees" in args
    assert not [e for e in c["env"] if "valueFrom" in e]   # nothing read from the API: no pod name either
    plain = pod()["spec"]
    assert "build-key" not in str(plain) and "--secrets-relay" not in plain["containers"][0]["args"]


def test_step_leases_are_named_per_tenant():
    a, b = step_lease_name("c" * 64, "1" * 64), step_lease_name("c" * 64, "2" * 64)
    assert a != b and a.startswith("kade-step-111111111111-") and len(a) <= 253


def test_secret_values_cross_the_relay_intact():
    from builder.backends import secret_relay

    values = {"npm.token": b"s3cret\n", "key": bytes(range(256))}
    wire = secret_relay.encode(values)
    assert secret_relay.decode(wire[4:]) == values and int.from_bytes(wire[:4], "big") == len(wire) - 4


@pytest.mark.parametrize("failure, tail, expected, exit_code", [
    # a non-RUN failure: the Dockerfile position once, in front; the hint once, at the end
    ({"message": "ADD evil.tar /dst/: layer ADD evil.tar: entry '/x' has an absolute name", "file": "/c/Dockerfile",
      "line": 2, "hint": None},
     [], "/c/Dockerfile:2: pod ns/p: stage 0 failed: ADD evil.tar /dst/: layer ADD evil.tar: entry '/x' has an "
         "absolute name", None),
    ({"message": "image r/x@sha256:1 has 2 layers but 1 diff_ids in its config", "hint": "re-push that image"},
     [], "pod ns/p: stage 0 failed: image r/x@sha256:1 has 2 layers but 1 diff_ids in its config "
         "(re-push that image)", None),
    ({"message": "registry down"}, [], "pod ns/p: stage 0 failed: registry down", None),  # an older builder image
    # a failing RUN: step, exit code and the last lines (the record's, else the streamed tail)
    ({"message": "x", "step": "RUN false", "exit_code": 7, "output_tail": ["boom"], "file": "D", "line": 3},
     ["streamed"], "D:3: pod ns/p: step RUN false failed with exit code 7\nlast output lines:\n  boom", 7),
    ({"message": "x", "step": "RUN false", "exit_code": 1}, ["streamed"],
     "pod ns/p: step RUN false failed with exit code 1\nlast output lines:\n  streamed", 1),
])
def test_pod_failure_records_become_one_clear_error(failure, tail, expected, exit_code):
    err = failure_error("pod ns/p", "0", failure, tail)
    assert str(err) == expected
    assert str(err).count("Dockerfile:2") <= 1
    assert isinstance(err, StepFailedError) == (exit_code is not None)
    if exit_code is not None:
        assert err.exit_code == exit_code


def test_pod_gets_the_extra_environment_sorted():
    env = pod(extra_env={"KADE_LAYER_MAX_ENTRIES": "1000", "KADE_LAYER_MAX_BYTES": "8388608"})[
        "spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert names[-2:] == ["KADE_LAYER_MAX_BYTES", "KADE_LAYER_MAX_ENTRIES"]
    assert {"name": "KADE_LAYER_MAX_BYTES", "value": "8388608"} in env
    assert not [e for e in pod()["spec"]["containers"][0]["env"] if e["name"].startswith("KADE_LAYER")]


def _node(name, handlers, labels=None, unschedulable=False):
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": {"unschedulable": unschedulable},
            "status": {"runtimeHandlers": handlers}}


USERNS = [{"name": "", "features": {"userNamespaces": True}}, {"name": "runc", "features": {"userNamespaces": True}}]
NO_USERNS = [{"name": "", "features": {"recursiveReadOnlyMounts": True}}]


@pytest.mark.parametrize("nodes,selector,supported,why", [
    ([_node("a", USERNS)], {}, True, ""),
    ([_node("a", USERNS), _node("b", NO_USERNS)], {}, False, "node(s) b report no user namespace support"),
    ([_node("a", USERNS), _node("b", NO_USERNS, {"pool": "old"})], {"pool": "new"}, False, "no schedulable node"),
    ([_node("a", USERNS, {"pool": "new"}), _node("b", NO_USERNS, {"pool": "old"})], {"pool": "new"}, True, ""),
    ([_node("a", USERNS), _node("b", NO_USERNS, unschedulable=True)], {}, True, ""),
    ([_node("a", [])], {}, False, "node(s) a"),                                     # an old kubelet says nothing
    ([_node("a", [{"name": "runc", "features": {"userNamespaces": True}}])], {}, False, "node(s) a"),
    ([], {}, False, "no schedulable node"),
])
def test_user_namespace_support_is_read_from_the_nodes(nodes, selector, supported, why):
    from builder.backends.podspec import user_namespace_support

    ok, reason = user_namespace_support(nodes, selector)
    assert ok is supported and reason.startswith(why)


def test_the_pod_takes_secret_values_only_from_whoever_knows_the_id():
    """receive() and send() over real loopback sockets (the port-forward is the CLI's only change)."""
    import socket
    import threading

    from builder.backends import secret_relay

    records: list[dict] = []
    got: dict = {}
    asked = threading.Event()

    def report(kind, message, **fields):
        records.append({"kind": kind, **fields})
        asked.set()

    t = threading.Thread(target=lambda: got.update(secret_relay.receive(report, wait_s=10)))
    t.start()
    assert asked.wait(5) and records[0]["kind"] == secret_relay.REQUEST_KIND
    port = records[0]["port"]
    with socket.create_connection(("127.0.0.1", port)) as intruder:   # a wrong id: ignored, not an answer
        intruder.sendall(b"\0" * 16 + secret_relay.encode({"tok": b"forged"}))
    secret_relay.send(lambda p: socket.create_connection(("127.0.0.1", p)), records[0], {"tok": b"real"})
    t.join(10)
    assert got == {"tok": b"real"}


def test_no_answer_is_a_clear_error():
    from builder.backends import secret_relay
    from builder.errors import BuildError

    with pytest.raises(BuildError, match="did not arrive from the CLI within 0s") as err:
        secret_relay.receive(lambda *a, **k: None, wait_s=0.2)
    assert "pods/portforward" in err.value.hint


@pytest.mark.parametrize("timeline,expected", [
    ({"process started": 100.0, "imports done": 100.25, "plan fetched": 100.4, "context ready": 101.5,
      "rootfs ready": 100.9, "first step": 101.6},
     "first step 1.60s after the pod started (imports done +0.25s, plan fetched +0.40s, rootfs ready +0.90s, "
     "context ready +1.50s)"),
    ({"imports done": 5.0, "first step": 6.0}, "first step started"),   # a pod that did not say when it started
])
def test_a_pods_startup_timeline_in_one_line(timeline, expected):
    from builder.backends.kubernetes import startup_line

    assert startup_line(timeline) == expected


def _arch_node(name, arch, labels=None, unschedulable=False):
    return _node(name, USERNS, {"kubernetes.io/arch": arch, **(labels or {})}, unschedulable)


MIXED = [_arch_node("a", "amd64"), _arch_node("b", "arm64", {"pool": "arm"})]
AMD_ONLY = [_arch_node("a", "amd64"), _arch_node("c", "arm64", unschedulable=True)]


@pytest.mark.parametrize("platform, nodes, selector, allow, expected", [
    ("linux/amd64", MIXED, {}, False, ("amd64", False)),
    ("linux/arm64/v8", MIXED, {}, False, ("arm64", False)),
    ("linux/arm64", AMD_ONLY, {}, True, ("amd64", True)),                       # emulated on amd64
    ("linux/arm64", [_arch_node("x", "s390x")], {}, True, ("s390x", True)),     # no amd64: what there is
    ("linux/arm64", [], {}, False, ("arm64", False)),                           # nodes unreadable: the scheduler's call
])
def test_a_stage_pod_goes_to_nodes_of_its_architecture(platform, nodes, selector, allow, expected):
    from builder.backends.podspec import place_stage

    placed = place_stage("build", platform, nodes, selector, allow)
    assert (placed.arch, placed.emulated) == expected


@pytest.mark.parametrize("nodes, selector, fragment", [
    (AMD_ONLY, {}, "no node is kubernetes.io/arch=arm64 (the nodes are: amd64)"),
    ([_arch_node("a", "amd64", {"pool": "x"}), _arch_node("b", "arm64")], {"pool": "x"},
     "no node matching the node selector pool=x is kubernetes.io/arch=arm64 (the nodes are: amd64)"),
])
def test_no_node_of_the_architecture_is_an_error_unless_emulation_is_allowed(nodes, selector, fragment):
    from builder.backends.podspec import place_stage
    from builder.errors import BuildError

    with pytest.raises(BuildError) as err:
        place_stage("build", "linux/arm64", nodes, selector, False)
    assert "stage build is for linux/arm64" in str(err.value) and fragment in str(err.value)
    assert "--allow-emulation" in str(err.value)


def test_the_pod_spec_carries_the_arch_selector_and_the_emulation_flag():
    from builder.backends.podspec import EMULATION_ENV, Placement

    native = pod(placement=Placement("arm64"), settings={"node_selector": {"pool": "build"}})
    assert native["spec"]["nodeSelector"] == {"pool": "build", "kubernetes.io/arch": "arm64"}
    assert EMULATION_ENV not in [e["name"] for e in native["spec"]["containers"][0]["env"]]
    emulated = pod(placement=Placement("amd64", emulated=True))
    assert emulated["spec"]["nodeSelector"] == {"kubernetes.io/arch": "amd64"}
    assert {"name": EMULATION_ENV, "value": "1"} in emulated["spec"]["containers"][0]["env"]
