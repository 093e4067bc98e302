"""Planning: stages the target needs, ARG scope, ONBUILD, key changes that follow content."""
import pytest

from builder.context import BuildContext
from builder.dockerfile import parse_string
from builder.errors import BuildError, DockerfileSyntaxError, MissingSourceError, UnknownStageError
from builder.plan import BaseImage, make_plan, parse_build_args
from registry.imageconfig import ImageConfig

DIGEST = "sha256:" + "0" * 64


def resolver(configs=None):
    configs = configs or {}

    def resolve(ref, platform):
        cfg = ImageConfig.from_dict(configs.get(ref, {"architecture": "amd64", "os": "linux",
                                                      "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]}}))
        return BaseImage(ref=ref, digest="sha256:" + format(abs(hash((ref, platform))), "064x")[-64:], config=cfg)
    return resolve


@pytest.fixture
def ctx(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print(1)\n")
    (tmp_path / "app" / "util.py").write_text("u\n")
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "big.bin").write_bytes(b"\0" * 1000)
    return tmp_path


def plan(ctx, text, **kw):
    return make_plan(parse_string(text, "Dockerfile"), BuildContext.open(ctx), kw.pop("res", resolver()), **kw)


MULTI = """\
ARG BASE=base
FROM ${BASE}:1 AS deps
COPY assets /assets
RUN build-deps
FROM ${BASE}:1 AS unused
RUN never
FROM deps AS app
ARG MODE=dev
ENV MODE=${MODE}
COPY app /app
RUN compile
FROM scratch
COPY --from=app /app /app
COPY --from=deps /assets /assets
"""


def test_only_needed_stages_and_dependencies(ctx):
    p = plan(ctx, MULTI)
    assert list(p.stages) == ["deps", "app", "3"]
    assert p.stages["3"].deps == {"app", "deps"}
    assert p.stages["app"].base_stage == "deps"
    assert p.stages["app"].base_key == p.stages["deps"].final_key
    p2 = plan(ctx, MULTI, target="deps")
    assert list(p2.stages) == ["deps"]


def test_changed_file_changes_only_affected_keys(ctx):
    before = {s.text: s.key for s in plan(ctx, MULTI).all_steps()}
    (ctx / "app" / "main.py").write_text("print(2)\n")
    after = {s.text: s.key for s in plan(ctx, MULTI).all_steps()}
    same = {t for t in before if before[t] == after[t]}
    # the final stage's second COPY follows its (changed) parent step, so it changes too
    assert same == {"COPY assets /assets", "RUN /bin/sh -c build-deps", "ENV MODE=${MODE}"}


def test_keys_are_stable_across_runs_and_follow_build_args(ctx):
    a = [s.key for s in plan(ctx, MULTI).all_steps()]
    assert a == [s.key for s in plan(ctx, MULTI).all_steps()]
    b = plan(ctx, MULTI, build_args={"MODE": "prod"})
    assert [s.key for s in b.all_steps()][:2] == a[:2]
    assert [s.key for s in b.all_steps()][2:] != a[2:]
    assert b.stages["app"].steps[1].config.env[-1] == "MODE=prod"   # the COPY after the ENV
    assert b.unused_args == []
    assert plan(ctx, MULTI, build_args={"NOPE": "1"}).unused_args == ["NOPE"]


def test_global_arg_needs_redeclaring_in_stage(ctx):
    text = "ARG V=1\nFROM base\nENV A=${V}\nARG V\nENV B=${V}\n"
    steps = plan(ctx, text).all_steps()
    assert steps[1].config.env[-2:] == ["A=", "B=1"]
    assert steps[0].config is None   # a config-only step before another keeps no config of its own


def test_a_stage_built_from_another_inherits_its_args(ctx):
    """BuildKit (and the Dockerfile reference's example): a stage FROM another sees that stage's ARGs."""
    text = "FROM base AS one\nARG A=1\nRUN x\nFROM one AS two\nRUN echo $A\nFROM base\nRUN echo $A\n"
    p = plan(ctx, text, target="two")
    assert p.stages["two"].steps[0].env["A"] == "1"
    assert "A" not in plan(ctx, text).stages["2"].steps[0].env  # a stage FROM an image: no


def test_env_overrides_arg_and_run_env(ctx):
    text = "FROM base\nARG X=fromarg\nENV X=fromenv\nRUN echo $X\n"
    run = plan(ctx, text).all_steps()[-1]
    assert run.env["X"] == "fromenv"
    assert run.argv == ["/bin/sh", "-c", "echo $X"]


def test_onbuild_triggers_run_first_and_are_cleared(ctx):
    res = resolver({"parent": {"config": {"OnBuild": ["COPY app /app", "RUN make"]}}})
    p = plan(ctx, "FROM parent\nRUN after\n", res=res)
    steps = p.all_steps()
    assert [s.ins.cmd for s in steps] == ["COPY", "RUN", "RUN"]
    assert "OnBuild" not in steps[-1].config.runtime


def test_history_follows_buildkit_args_and_onbuild_without_touching_keys(ctx):
    """BuildKit records each ARG of a stage as an empty-layer history entry (with the value it takes)
    and nothing for ONBUILD; history is never a key input."""
    text = ("ARG G=global\nFROM base AS one\nARG A=1 B\nARG G\nRUN x\nONBUILD RUN y\nARG C=$A-c\n"
            "ARG D\nFROM one\nRUN z\n")
    p = plan(ctx, text, build_args={"B": "given"})
    one, two = p.stages["one"], p.stages["1"]
    assert [s.history for s in one.steps] == [["ARG A=1 B=given", "ARG G=global"], []]
    assert [s.in_history for s in one.steps] == [True, False]
    assert one.trailing_history == ["ARG C=1-c", "ARG D"]
    assert [s.history for s in two.steps] == [[], []] and two.trailing_history == []  # the trigger, RUN z
    without_args = plan(ctx, "ARG G=global\nFROM base AS one\nARG A=1 B\nARG G\nRUN x\nONBUILD RUN y\n",
                        build_args={"B": "given"})
    assert [s.key for s in without_args.stages["one"].steps] == [s.key for s in one.steps]


def test_entrypoint_resets_base_cmd(ctx):
    cfg = plan(ctx, "FROM base\nENTRYPOINT [\"/app\"]\n").final.final_config.runtime
    assert "Cmd" not in cfg and cfg["Entrypoint"] == ["/app"]
    cfg = plan(ctx, "FROM base\nCMD [\"x\"]\nENTRYPOINT [\"/app\"]\n").final.final_config.runtime
    assert cfg["Cmd"] == ["x"]


def test_empty_json_cmd_and_entrypoint_reset_the_bases(ctx):
    """`ENTRYPOINT []` / `CMD []` (BuildKit builds them): what the base set is gone; a shell form needs words."""
    cfg = plan(ctx, "FROM base\nENTRYPOINT [\"/app\"]\nCMD [\"x\"]\nFROM 0\nENTRYPOINT []\nCMD []\n").final.final_config.runtime
    assert not cfg.get("Entrypoint") and not cfg.get("Cmd")
    cfg = plan(ctx, "FROM base\nENTRYPOINT [\"/app\"]\nCMD [\"x\"]\nFROM 0\nENTRYPOINT []\n").final.final_config.runtime
    assert not cfg.get("Entrypoint") and not cfg.get("Cmd")   # ENTRYPOINT resets the inherited CMD too
    with pytest.raises(DockerfileSyntaxError, match="Dockerfile:2: ENTRYPOINT requires at least one argument"):
        plan(ctx, "FROM base\nENTRYPOINT\n")


# Variables are set in the order of the lines, as BuildKit sets its state's env (BuildKit 0.34.2, differential
# probe): an ARG with a value after an ENV (or the base image's Env) of its name wins for RUN and for expansion;
# the image's Env keeps the ENV; a valueless ARG changes nothing; a stage FROM a stage inherits the order.
@pytest.mark.parametrize("lines, run_x, env_x", [
    ("ENV X=env\nARG X=arg\n", "arg", "env"),
    ("ARG X=arg\nENV X=env\n", "env", "env"),
    ("ENV X=env\nARG X=arg\nENV X=again\n", "again", "again"),
    ("ENV X=env\nARG X\n", "env", "env"),
    ("ARG X=arg\n", "arg", None),
    ("ARG PATH=/opt/bin\n", None, None),                 # the base image's PATH=/bin, hidden by the ARG
    ("ENV X=env\nARG X=arg\nFROM 0\n", "arg", "env"),      # inherited by a stage FROM the stage
])
def test_args_and_envs_are_set_in_line_order(ctx, lines, run_x, env_x):
    p = plan(ctx, "FROM base\n" + lines + "RUN echo $X $PATH\nLABEL x=$X\n")
    (run,) = [s for s in p.final.steps if s.kind == "run"]
    if "PATH" in lines:
        assert run.env["PATH"] == "/opt/bin" and p.final.final_config.env_map()["PATH"] == "/bin"
        return
    assert run.env.get("X") == run_x
    assert p.final.final_config.labels["x"] == (run_x or "")
    assert p.final.final_config.env_map().get("X") == env_x


def test_an_arg_hiding_an_env_is_keyed_and_others_are_not(ctx, monkeypatch):
    """Keys change only where an ARG hides an ENV (kade once let the ENV win: such cached steps are stale)."""
    from builder import plan as plan_module

    hiding = "FROM base\nENV X=env\nARG X=arg\nRUN true\nENV X=again\nRUN true\n"
    plain = "FROM base\nENV X=env\nARG Y=arg\nRUN true\n"
    keys = {text: [s.key for s in plan(ctx, text).all_steps()] for text in (hiding, plain)}
    monkeypatch.setattr(plan_module._StageState, "args_over_env", lambda self: [])
    unkeyed = {text: [s.key for s in plan(ctx, text).all_steps()] for text in (hiding, plain)}
    assert keys[plain] == unkeyed[plain]
    changed = [a != b for a, b in zip(keys[hiding], unkeyed[hiding])]
    assert changed == [False, True, True, True]   # ENV before the ARG: same key; the RUN after it and what follows


@pytest.mark.parametrize("user, keyed", [("root", False), ("0:0", False), ("app", True), ("1000:50", True)])
def test_a_workdir_is_keyed_by_its_user_only_when_it_is_not_root(ctx, monkeypatch, user, keyed):
    """Its directories are the USER's: a WORKDIR under a non-root USER has the user in its key; under root
    the key stays what it was before WORKDIR took its USER (no rebuild of every `USER root` Dockerfile)."""
    from builder import plan as plan_module

    def workdir_key() -> str:
        return [s for s in plan(ctx, f"FROM base\nUSER {user}\nWORKDIR /w\n").all_steps() if s.kind == "workdir"][0].key

    as_planned = workdir_key()
    monkeypatch.setattr(plan_module, "_ROOT_USERS", () if not keyed else (user,))   # the other way round
    assert as_planned != workdir_key()


@pytest.mark.parametrize("workdir, mount, target, cache_id", [
    ("/work", "type=cache,target=rel", "/work/rel", "rel"),      # BuildKit: joined to the WORKDIR, id as written
    ("/a/b", "type=cache,target=../x/", "/a/x", "../x/"),
    ("/work", "type=tmpfs,target=t", "/work/t", None),
    ("/work", "type=cache,target=/abs", "/abs", "/abs"),
    ("/", "type=bind,source=app,target=src", "/src", None),
])
def test_a_relative_mount_target_is_under_the_workdir(ctx, workdir, mount, target, cache_id):
    step = plan(ctx, f"FROM base\nWORKDIR {workdir}\nRUN --mount={mount} true\n").all_steps()[-1]
    assert [m.target for m in step.mounts] == [target]
    assert step.mounts[0].options.get("id") == cache_id


def test_a_mount_on_the_rootfs_itself_or_on_proc_is_refused(ctx):
    with pytest.raises(BuildError, match="Dockerfile:3: RUN: --mount=type=cache: invalid mount target '/'"):
        plan(ctx, "FROM base\nWORKDIR /w\nRUN --mount=type=cache,target=.. true\n")
    for target in ("/proc", "/proc/sys", "../proc"):
        with pytest.raises(BuildError, match="/proc is the RUN's own procfs"):
            plan(ctx, f"FROM base\nWORKDIR /w\nRUN --mount=type=bind,source=app,target={target} true\n")
    assert plan(ctx, "FROM base\nRUN --mount=type=tmpfs,target=/process true\n").all_steps()[-1].mounts[0].target == "/process"


def test_heredoc_run_forms(ctx):
    steps = plan(ctx, "FROM base\nRUN <<EOT\nset -e\necho a\nEOT\nRUN cat <<EOT > /f\nhello\nEOT\n").all_steps()
    assert steps[0].argv == ["/bin/sh", "-c", "set -e\necho a\n"]
    assert steps[1].argv == ["/bin/sh", "-c", "cat <<EOT > /f\nhello\nEOT\n"]


def test_copy_heredoc_expands_unless_quoted(ctx):
    steps = plan(ctx, "FROM base\nARG N=7\nCOPY <<EOF /a\nn=$N\nEOF\nCOPY <<'EOF' /b\nn=$N\nEOF\n").all_steps()
    assert steps[0].copy.heredocs == [("EOF", "n=7\n")]
    assert steps[1].copy.heredocs == [("EOF", "n=$N\n")]


def test_mounts_in_key_but_not_secret_contents(ctx):
    a = plan(ctx, "FROM base\nRUN --mount=type=secret,id=tok cat /run/secrets/tok\n").all_steps()[0]
    assert a.mounts[0].target == "/run/secrets/tok"
    b = plan(ctx, "FROM base\nRUN --mount=type=cache,target=/c make\n").all_steps()[0]
    assert b.mounts[0].options == {"id": "/c", "sharing": "shared"}
    c = plan(ctx, "FROM base\nRUN make\n").all_steps()[0]
    assert len({a.key, b.key, c.key}) == 3


@pytest.mark.parametrize("text,kw,error,fragment,line", [
    ("FROM base\nCOPY nope /x\n", {}, MissingSourceError, "'nope' not found", 2),
    ("FROM base\nCOPY --from=3 /a /b\n", {}, UnknownStageError, "stage 3", 2),
    ("FROM base AS a\n", {"target": "b"}, UnknownStageError, "target stage 'b' not found", None),
    ("FROM base\nCOPY app assets /x\n", {}, BuildError, "must be a directory", 2),
    ('FROM base\nENV A="${B:?B is required}"\n', {}, BuildError, "B is required", 2),
    ("FROM base\nRUN --mount=type=weird,target=/x true\n", {}, BuildError, "unsupported mount type", 2),
    ("FROM base\nCOPY --chmod=999 app /x\n", {}, BuildError, "--chmod", 2),
    ("ARG B\nFROM ${B}\n", {}, BuildError, "empty string", 2),
    ("FROM base\nRUN --mount=type=cache,target=/c,uid=4294967295 true\n", {}, BuildError, "from 0 to 4294967294", 2),
    ("FROM base\nRUN --mount=type=cache,target=/c,gid=² true\n", {}, BuildError, "expected a number", 2),
    ("FROM base\nCOPY --from=00000000000000000000000000000000000000003 /a /b\n", {}, UnknownStageError, "stage 0", 2),
    # a stage defined later (or this one) is refused as BuildKit refuses it, never pulled as an image
    ("FROM base AS a\nCOPY --from=b /x /y\nFROM base AS b\n", {"target": "a"}, UnknownStageError,
     "--from=b: stage b (line 3) is not defined before this instruction", 2),
    ("FROM base AS a\nRUN --mount=from=B,target=/m true\nFROM base AS b\n", {"target": "a"}, UnknownStageError,
     "stage b (line 3)", 2),
    ("FROM base AS a\nCOPY --from=a /x /y\n", {}, UnknownStageError, "stage a (this stage)", 2),
])
def test_plan_errors(ctx, text, kw, error, fragment, line):
    with pytest.raises(error) as exc:
        plan(ctx, text, **kw)
    assert fragment in str(exc.value)
    assert exc.value.line == line
    assert "Dockerfile" in str(exc.value)


@pytest.mark.parametrize("items,expected", [
    (["A=1", "B=x=y", "C="], {"A": "1", "B": "x=y", "C": ""}),
    (["NOT_IN_ENV_XYZ"], {}),
])
def test_parse_build_args(items, expected):
    assert parse_build_args(items) == expected


@pytest.mark.parametrize("bad", ["=1", "1A=2", "A-B=1"])
def test_bad_build_args(bad):
    with pytest.raises(BuildError):
        parse_build_args([bad])


def test_missing_and_needed_stages_follow_hits(ctx):
    from builder.solver import missing_steps, needed_stages

    p = plan(ctx, MULTI)
    keys = {label: [s.key for s in st.steps] for label, st in p.stages.items()}
    everything = {k for ks in keys.values() for k in ks}
    # nothing cached: every stage the target uses is needed
    assert needed_stages(p, set()) == {"deps", "app", "3"}
    # target fully cached: nothing else is touched (no pull of other stages)
    assert needed_stages(p, {keys["3"][-1]}) == {"3"}
    assert missing_steps(p.stages["3"], {keys["3"][-1]}) == []
    # lookup goes on after a miss: a later hit counts even when an earlier step is gone
    assert missing_steps(p.stages["app"], {keys["app"][1]}) == p.stages["app"].steps[2:]
    # app's base (deps) is needed only when none of app's own steps is cached
    assert needed_stages(p, {keys["app"][0]}) == {"app", "3", "deps"}  # COPY --from=deps in 3 still missing
    # only the last COPY --from=deps is missing: its parent step is cached, so app is not needed
    assert needed_stages(p, everything - {keys["3"][-1]}) == {"3", "deps"}


@pytest.mark.parametrize("body, stored", [
    ("RUN a", ["RUN"]),
    ("ENV A=1\nLABEL b=2\nRUN a\nCMD x", ["RUN", "CMD"]),                     # config-only steps before another
    ("ENV A=1\nEXPOSE 80\nUSER app", ["USER"]),                                 # only the last of a config-only stage
    ("WORKDIR /w\nENV A=1\nCOPY app /app\nSTOPSIGNAL 9", ["WORKDIR", "COPY", "STOPSIGNAL"]),   # WORKDIR may mkdir
    ("ONBUILD RUN x\nHEALTHCHECK NONE\nRUN a", ["RUN"]),
])
def test_only_steps_that_may_change_files_and_the_last_are_stored(ctx, body, stored):
    """PlannedStage.stores: what goes to (and is looked up in) the stages repo."""
    p = plan(ctx, f"FROM base\n{body}\n")
    stage = p.final
    assert [s.ins.cmd for s in stage.stored_steps] == stored
    assert [s.key for s in p.stored_steps()] == [s.key for s in stage.stored_steps]


def test_a_stage_result_carries_the_history_of_its_trailing_args(ctx):
    """solver.with_trailing_history: the ARGs after a stage's last step become empty-layer history
    entries of its result (layers and diffIDs unchanged); a stage without them keeps its image."""
    from builder.solver import with_trailing_history
    from registry import mediatypes as mt
    from registry.image import Image
    from registry.model import Descriptor

    p = plan(ctx, "FROM base AS one\nRUN x\nARG C=c\nARG D\nFROM base AS two\nRUN y\n", target="one")
    layer = Descriptor(mt.OCI_LAYER_GZIP, "sha256:" + "1" * 64, 10)
    image = Image.assemble(ImageConfig.from_dict({"architecture": "amd64", "os": "linux",
                                                  "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "2" * 64]},
                                                  "history": [{"created_by": "RUN x"}]}), [layer])
    result = with_trailing_history(p.stages["one"], image)
    assert [(h.created_by, h.empty_layer) for h in result.config.history] == [
        ("RUN x", None), ("ARG C=c", True), ("ARG D", True)]
    assert result.manifest.layers == image.manifest.layers and result.config.diff_ids == image.config.diff_ids
    assert result.digest != image.digest and result.manifest.config.digest != image.manifest.config.digest
    assert with_trailing_history(p.stages["one"], None) is None
    two = plan(ctx, "FROM base AS one\nRUN x\nARG C=c\nFROM base AS two\nRUN y\n").stages["two"]
    assert with_trailing_history(two, image) is image


@pytest.mark.parametrize("line", ["ENV =value", "LABEL =x", "ENV A=1 =2"])
def test_a_blank_env_or_label_name_is_refused(ctx, line):
    with pytest.raises(BuildError, match=f"Dockerfile:2: {line.split()[0]}: {line.split()[0]} names can not be blank"):
        plan(ctx, f"FROM base\n{line}\n")
