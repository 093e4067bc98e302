"""Config effects of instructions (builder/image_config.py), and USER resolution from /etc/passwd and
/etc/group (builder/users.py)."""
import pytest

from builder import image_config as ic
from builder.errors import BuildError
from builder.users import file_owner, resolve_user
from registry.imageconfig import ImageConfig
from registry.model import Platform

LINUX = Platform("linux", "amd64")
BASE = ImageConfig("amd64", "linux", runtime={"Env": ["PATH=/bin", "A=1"], "Cmd": ["sh"], "WorkingDir": "/srv"})


def check(fn, arg, expected):
    """Table helper: `expected` is the result, or BuildError when `fn(arg)` must refuse."""
    if expected is BuildError:
        with pytest.raises(BuildError):
            fn(arg)
    else:
        assert fn(arg) == expected


def test_env_replaces_in_place_and_appends():
    cfg = ic.set_env(BASE, [("A", "2"), ("B", "x y")])
    assert cfg.env == ["PATH=/bin", "A=2", "B=x y"]
    assert BASE.env == ["PATH=/bin", "A=1"]  # inputs untouched


@pytest.mark.parametrize("env,pairs,expected", [
    (["PATH=/bin", "A=1"], [("A", "2"), ("A", "3"), ("B", "")], ["PATH=/bin", "A=3", "B="]),
    (["A=1", "A=2", "B=1"], [("C", "c")], ["A=2", "B=1", "C=c"]),       # a base's repeated name: the last wins
    (["FLAG", "A=1"], [("A", "2")], ["FLAG=", "A=2"]),                  # an item without "=": an empty value
    ([], [("A", "x=y")], ["A=x=y"]),
])
def test_env_of_odd_bases_is_normalized(env, pairs, expected):
    cfg = ic.set_env(ImageConfig("amd64", "linux", runtime={"Env": env}), pairs)
    assert cfg.env == expected
    assert cfg.env_map() == dict(item.partition("=")[::2] for item in expected)


def test_env_chains_and_branches_read_their_own_env():
    """The parsed Env travels to the newest config: configs left behind, a config derived without an ENV
    (sharing its Env list) and two branches off one config each still read their own variables."""
    chain = [BASE]
    for n in range(50):
        chain.append(ic.set_env(chain[-1], [(f"V{n % 7}", str(n)), ("A", str(n))]))
        if n % 10 == 0:
            chain.append(ic.set_labels(chain[-1], [("n", str(n))]))
    left, right = ic.set_env(chain[20], [("B", "left")]), ic.set_env(chain[20], [("B", "right")])
    for cfg in [*chain, left, right, chain[20]]:
        assert cfg.env_map() == dict(item.partition("=")[::2] for item in cfg.env)
    assert left.env_map()["B"] == "left" and right.env_map()["B"] == "right" and "B" not in chain[20].env_map()
    assert chain[-1].env_map()["A"] == "49" and chain[3].env_map()["A"] == "1"


@pytest.mark.parametrize("current,path,expected", [
    ("/srv", "app", "/srv/app"), ("/srv", "/abs", "/abs"), ("/", "a/../b/./c/", "/b/c"),
    ("", "x", "/x"), ("/a", "../../..", "/"),
    # BuildKit keeps an absolute WORKDIR as written in the config (differential corpus: heredoc-run-useradd-args)
    ("/srv", "/home/dev/", "/home/dev/"), ("/", "/a/../b/", "/b/"), ("/home/dev/", "sub/", "/home/dev/sub"),
    ("/x", "/", "/"),
])
def test_workdir(current, path, expected):
    assert ic.resolve_workdir(current, path) == expected


def test_entrypoint_resets_inherited_cmd_only():
    assert "Cmd" not in ic.set_entrypoint(BASE, ["/app"], cmd_set_in_stage=False).runtime
    cfg = ic.set_entrypoint(ic.set_cmd(BASE, ["--flag"]), ["/app"], cmd_set_in_stage=True)
    assert cfg.cmd == ["--flag"] and cfg.entrypoint == ["/app"]


def test_shell_form_uses_current_shell():
    cfg = ic.set_shell(BASE, ["/bin/bash", "-eo", "pipefail", "-c"])
    assert ic.command_argv(cfg, ("echo hi",), False) == ["/bin/bash", "-eo", "pipefail", "-c", "echo hi"]
    assert ic.command_argv(cfg, ("a", "b"), True) == ["a", "b"]


@pytest.mark.parametrize("spec,expected", [
    ("80", ["80/tcp"]), ("53/udp", ["53/udp"]), ("8000-8002/TCP", ["8000/tcp", "8001/tcp", "8002/tcp"]),
    ("x", BuildError), ("80/foo", BuildError), ("0", BuildError), ("9-8", BuildError), ("70000", BuildError),
    ("²", BuildError), ("1-²", BuildError), ("9" * 5000, BuildError),   # were ValueErrors from int()
])
def test_expose(spec, expected):
    check(ic.expand_port, spec, expected)


@pytest.mark.parametrize("text,ns", [("30s", 30_000_000_000), ("1m30s", 90_000_000_000), ("500ms", 500_000_000),
                                     ("0", 0), ("1h", 3_600_000_000_000), ("5", BuildError), ("", BuildError),
                                     ("1x", BuildError)])
def test_durations(text, ns):
    check(ic.parse_duration, text, ns)


def test_healthcheck_forms():
    hc = ic.set_healthcheck(BASE, ("CMD", "curl -f x"), False, {"interval": "5s", "retries": "3"}).get("Healthcheck")
    assert hc == {"Test": ["CMD-SHELL", "curl -f x"], "Interval": 5_000_000_000, "Retries": 3}
    hc = ic.set_healthcheck(BASE, ("CMD", "a", "b"), True, {}).get("Healthcheck")
    assert hc == {"Test": ["CMD", "a", "b"]}
    assert ic.set_healthcheck(BASE, ("NONE",), False, {}).get("Healthcheck") == {"Test": ["NONE"]}
    for bad in ("many", "²", "-1", str(2 ** 31)):   # a 32-bit int, as BuildKit parses it
        with pytest.raises(BuildError):
            ic.set_healthcheck(BASE, ("CMD", "x"), False, {"retries": bad})


def test_history_and_diff_ids():
    cfg = ic.add_history(ic.empty_config(LINUX), "RUN x", empty_layer=False, diff_id="sha256:" + "1" * 64)
    cfg = ic.add_history(cfg, "ENV a=b", empty_layer=True)
    assert cfg.diff_ids == ("sha256:" + "1" * 64,)
    assert [h.to_dict().get("empty_layer", False) for h in cfg.history] == [False, True]
    assert ImageConfig.from_bytes(cfg.to_bytes()) == cfg


PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\nstaff:x:50:app,other\nwheel:x:10:root\n"


# "db": the image has /etc/passwd and /etc/group; "none": it has neither (scratch-, busybox- or
# distroless-style), where root and numeric ids still work, as in BuildKit
@pytest.mark.parametrize("files,spec,expected", [
    ("db", "", (0, 0, (0, 10))),
    ("db", "root", (0, 0, (0, 10))),
    ("db", "app", (1000, 1000, (50, 1000))),
    ("db", "1000", (1000, 1000, (50, 1000))),
    ("db", "app:staff", (1000, 50, (50,))),
    ("db", "app:7", (1000, 7, (7,))),
    ("db", "4242", (4242, 0, (0,))),
    ("db", "4242:4242", (4242, 4242, (4242,))),
    ("db", "nobody", BuildError),
    ("db", "app:nogroup", BuildError),
    ("none", "", (0, 0, (0,))),
    ("none", "root", (0, 0, (0,))),
    ("none", "root:root", (0, 0, (0,))),
    ("none", "0", (0, 0, (0,))),
    ("none", "1000:1000", (1000, 1000, (1000,))),
    ("none", "65534", (65534, 0, (0,))),
    ("none", "app", BuildError),
    ("none", "root:staff", BuildError),
])
def test_resolve_user(tmp_path, files, spec, expected):
    if files == "db":
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc/passwd").write_text(PASSWD)
        (tmp_path / "etc/group").write_text(GROUP)
    if expected is BuildError:
        with pytest.raises(BuildError) as exc:
            resolve_user(tmp_path, spec)
        assert "/etc/" in str(exc.value)
    else:
        u = resolve_user(tmp_path, spec)
        assert (u.uid, u.gid, u.groups) == expected


# COPY --chown and WORKDIR's directories: BuildKit's file-op user (llb.WithUser) — a uid alone is also the
# gid, names the image doesn't know count as 0 (user) or change nothing (group), said, never an error
@pytest.mark.parametrize("files,spec,expected,unknown", [
    ("db", "", (0, 0), []), ("db", "root", (0, 0), []), ("db", "app", (1000, 1000), []),
    ("db", "1000", (1000, 1000), []), ("db", "4242", (4242, 4242), []), ("db", "4242:7", (4242, 7), []),
    ("db", "app:staff", (1000, 50), []), ("db", "app:", (1000, 1000), []), ("db", ":staff", (0, 50), []),
    ("db", "app:nogroup", (1000, 1000), ["group 'nogroup'"]), ("db", "nobody", (0, 0), ["user 'nobody'"]),
    ("db", "nobody:staff", (0, 50), ["user 'nobody'"]), ("db", "4242:nogroup", (4242, 4242), ["group 'nogroup'"]),
    ("none", "app", (0, 0), ["user 'app'"]), ("none", "1000:1000", (1000, 1000), []),
    ("none", "65534", (65534, 65534), []), ("none", "root:root", (0, 0), []),
])
def test_file_owner(tmp_path, files, spec, expected, unknown):
    if files == "db":
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc/passwd").write_text(PASSWD)
        (tmp_path / "etc/group").write_text(GROUP)
    said: list[str] = []
    assert file_owner(tmp_path, spec, said) == expected
    assert said == unknown


@pytest.mark.parametrize("spec, expected", [
    ("app", (1000, 0, (0,))),              # its gid field is no number: 0, as a missing one
    ("bad", BuildError),                   # its uid field is no number: the row is skipped
    ("big", BuildError),                   # past uid_t's range: skipped
    ("4294967294", (4294967294, 0, (0,))),
    ("4294967295", BuildError), ("99999999999999999999", BuildError), ("9" * 5000, BuildError),
    ("1000:4294967295", BuildError), ("²", BuildError), ("app:²", BuildError),
])
def test_resolve_user_with_rows_and_ids_that_are_no_numbers(tmp_path, spec, expected):
    """A hostile image's /etc/passwd and /etc/group, and a USER past uid_t: errors, never a ValueError."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("app:x:1000:²:::\nbad:x:1²:0:::\nbig:x:99999999999999999999:0:::\n")
    (tmp_path / "etc/group").write_text("g:x:²:app\n")
    check(lambda s: (lambda u: (u.uid, u.gid, u.groups))(resolve_user(tmp_path, s)), spec, expected)


def test_resolve_user_never_follows_symlinked_passwd(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").symlink_to("/etc/passwd")  # the host's names a "daemon" user
    with pytest.raises(BuildError):
        resolve_user(tmp_path, "daemon")


def test_scratch_config_has_buildkits_working_dir():
    assert ic.empty_config(LINUX).working_dir == "/"  # BuildKit's emptyImage (differential corpus)


# STOPSIGNAL as BuildKit takes it (moby/sys/signal.ParseSignal on Linux): kept as written
@pytest.mark.parametrize("signal, ok", [
    ("SIGTERM", True), ("sigkill", True), ("Quit", True), ("SIGRTMIN+3", True), ("rtmax-14", True), ("9", True),
    ("+15", True), ("64", True),
    ("0", False), ("SIGFOO", False), ("RTMIN+16", False), ("RTMAX-15", False), ("", False), ("9 ", False),
    ("1_5", False), ("SIG", False),
])
def test_stopsignal(signal, ok):
    cfg = ic.empty_config(LINUX)
    if ok:
        assert ic.set_stopsignal(cfg, signal).get("StopSignal") == signal
    else:
        with pytest.raises(BuildError, match="invalid STOPSIGNAL"):
            ic.set_stopsignal(cfg, signal)


@pytest.mark.parametrize("value", [
    {"a": "1", "b": 2, "c": 1.5},                       # flat: copied at once
    ["A=1", "B=2"],
    {"Healthcheck": {"Test": ["CMD", "true"]}, "n": True},   # nested (and a bool): item by item
    [["x"], {"y": ["z"]}],
])
def test_with_runtime_copies_what_it_is_given(value):
    """Changing the given value afterwards never changes the config (its containers are new, at every depth)."""
    import copy

    before = copy.deepcopy(value)
    config = ImageConfig.from_dict({"config": {}}).with_runtime(Labels=value)
    kept = config.get("Labels")
    assert kept == before and kept is not value
    if isinstance(value, dict):
        value.clear()
    else:
        for item in value:
            if isinstance(item, (list, dict)):
                item.clear()
        value.clear()
    assert config.get("Labels") == before
