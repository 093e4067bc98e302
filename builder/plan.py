"""From a parsed Dockerfile to a DAG of stages and keyed steps (no I/O except the context files).

Planning walks each stage the target needs, in order, expanding ARG/ENV as Docker does, applying
the config effect of every instruction, selecting and hashing COPY/ADD sources, and computing each
step's key. Base images are resolved through a callback (registry lookups live in build.py), so
the whole plan, and therefore every key, is known before anything runs.
"""
from __future__ import annotations

import dataclasses
import json
import posixpath
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import image_config as ic
from builder.context import BuildContext, Source, clean_path, exclude_sources, hash_sources
from builder.dockerfile import (Dockerfile, Instruction, Stage, arg_pairs, global_scope, parse_instruction_line,
                                stage_base)
from builder.errors import BuildError, UnknownStageError
from builder.expand import ExpandError, expand_heredoc, process_word, process_words
from builder.keys import KeyInputs, step_key
from builder.modes import parse_chmod
from builder.platforms import DEFAULT_PLATFORM, automatic_args, host_platform, parse_platform
from registry.imageconfig import ImageConfig
from registry.model import Platform
from common.digits import MAX_ID, decimal



@dataclass(frozen=True)
class BaseImage:
    """A resolved image: where it lives, its platform manifest digest, and its config."""
    ref: str  # repository reference it was resolved from (no tag/digest)
    digest: str  # manifest digest for the platform
    config: ImageConfig


Resolver = Callable[[str, str], BaseImage]  # (image reference, platform) -> BaseImage


@dataclass(frozen=True)
class Mount:
    type: str  # cache | secret | ssh | bind | tmpfs
    target: str
    options: dict[str, str]
    sources: tuple[Source, ...] = ()  # bind from the context: what .dockerignore lets it see

    def spec(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted({"type": self.type, "target": self.target,
                                                         **self.options}.items()))


@dataclass
class CopySpec:
    dest: str
    sources: list[Source] = field(default_factory=list)  # context sources
    from_stage: str | None = None  # stage label for --from=stage
    from_image: BaseImage | None = None  # --from=image
    from_paths: list[str] = field(default_factory=list)  # paths inside the --from rootfs
    heredocs: list[tuple[str, str]] = field(default_factory=list)  # (file name, content)
    chown: str | None = None
    chmod: int | None = None
    add: bool = False  # ADD: extract local tar archives
    link: bool = False  # COPY --link: accepted, copied as a plain COPY (docs/builder.md)
    chmod_text: str | None = None  # --chmod as written: octal or symbolic (builder/modes.py)
    parents: bool = False  # COPY --parents (context sources carry `keep`, --from paths `from_keep`)
    unmatched: list[str] = field(default_factory=list)  # context wildcards that matched nothing (the build warns)
    from_keep: list[str] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)  # --exclude patterns
    unpack: bool | None = None  # ADD --unpack: None = local archives yes, URLs no


@dataclass
class Step:
    key: str
    parent_key: str
    stage: str
    ins: Instruction
    kind: str  # run | copy | workdir | config
    text: str  # canonical expanded instruction (key input and history)
    # The image config after this step, without history/rootfs. None for a config-only step the stage
    # does not store (PlannedStage.stores): the next step's config holds its effect, and N ENV or LABEL
    # lines in a row would otherwise keep N configs of up to N items (10,000 ENV lines: ~400 MB).
    config: ImageConfig | None
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # RUN process environment
    mounts: list[Mount] = field(default_factory=list)
    network: str = "default"
    copy: CopySpec | None = None
    heredoc_files: list[tuple[str, str, int]] = field(default_factory=list)  # RUN heredoc scripts
    # History (never a key input): the empty-layer entries BuildKit writes before this step's own, one
    # per ARG of the stage since the step before ("ARG NAME=value"), and whether the step has an entry
    # of its own (ONBUILD has none).
    history: list[str] = field(default_factory=list)
    in_history: bool = True

    @property
    def created_by(self) -> str:
        return self.text

    @property
    def image_config(self) -> ImageConfig:
        """The config of a step that has one (a stored step, or any step still being planned)."""
        assert self.config is not None, f"{self.text}: a config-only step applied in memory keeps no config"
        return self.config


@dataclass
class PlannedStage:
    stage: Stage
    base_image: BaseImage | None  # None for scratch or FROM <stage>
    base_stage: str | None  # label of the stage this one builds FROM
    base_key: str  # base manifest digest, base stage's final key, or "scratch"
    base_config: ImageConfig
    steps: list[Step]
    deps: set[str]  # labels of stages needed first (FROM, COPY --from, RUN --mount from=)
    trailing_history: list[str] = field(default_factory=list)  # the ARGs after the stage's last step
    args: dict[str, str] = field(default_factory=dict)  # its ARGs' values at its end: a stage FROM it inherits them
    platform: str = DEFAULT_PLATFORM  # what its steps run as: the target's, FROM --platform's, or its base stage's
    args_last: frozenset[str] = frozenset()   # its ARGs set after any ENV of their name (_StageState)

    @property
    def label(self) -> str:
        return self.stage.label()

    @property
    def final_key(self) -> str:
        return self.steps[-1].key if self.steps else self.base_key

    @property
    def final_config(self) -> ImageConfig:
        return self.steps[-1].image_config if self.steps else self.base_config.without_build_state()

    def stores(self, step: Step) -> bool:
        """Does `step`'s image go to the stages repo (and get looked up there)? Each step that may
        change the filesystem does, and the stage's last. A config-only step before another (ENV,
        LABEL, CMD...) is applied in memory: the next stored step's key covers it, and N of them in a
        row no longer push N images of a growing config (O(N^2) bytes, and a HEAD each to look up)."""
        return step.kind != "config" or step is self.steps[-1]

    @property
    def stored_steps(self) -> list[Step]:
        return [s for s in self.steps if self.stores(s)]


@dataclass
class Plan:
    dockerfile: Dockerfile | None  # None: a plan received as data (a builder pod's stage)
    stages: dict[str, PlannedStage]  # by label, in Dockerfile order
    target: str
    unused_args: list[str]
    platform: str
    context_root: Path | None = None  # the build context the COPY/ADD sources and bind mounts read

    def order(self) -> list[PlannedStage]:
        return list(self.stages.values())

    @property
    def final(self) -> PlannedStage:
        return self.stages[self.target]

    def all_steps(self) -> list[Step]:
        return [s for st in self.stages.values() for s in st.steps]

    def stored_steps(self) -> list[Step]:
        """The steps whose images are in the stages repo once built (PlannedStage.stores)."""
        return [s for st in self.stages.values() for s in st.stored_steps]


def parse_build_args(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not name or not name.replace("_", "a").isalnum() or name[0].isdigit():
            raise BuildError(f"invalid --build-arg {item!r}", hint="use --build-arg NAME=VALUE")
        if not eq:
            import os
            if name not in os.environ:
                continue  # `--build-arg NAME` takes the value from the environment, as docker does
            value = os.environ[name]
        out[name] = value
    return out


def needed_stages(df: Dockerfile, target: Stage, deps_of: Callable[[Stage], set[str]]) -> list[Stage]:
    """The target and every stage it depends on, in Dockerfile order."""
    needed: set[int] = set()
    todo = [target]
    while todo:
        st = todo.pop()
        if st.index in needed:
            continue
        needed.add(st.index)
        for ref in deps_of(st):
            dep = df.stage(ref)
            if dep is not None and dep.index < st.index:
                todo.append(dep)
    return [st for st in df.stages if st.index in needed]


def stage_refs(df: Dockerfile, st: Stage, gscope: dict[str, str]) -> set[str]:
    """Names this stage may take from other stages (FROM, COPY --from, RUN --mount from=)."""
    refs = set()
    base = stage_base(st, gscope, df.escape)
    refs.add(base.lower())
    for ins in st.instructions:
        if ins.cmd in ("COPY", "ADD") and ins.flag("from"):
            refs.add(str(ins.flag("from")).lower())
        if ins.cmd == "RUN":
            for k, v in ins.flags.items():
                if k.startswith("mount"):
                    opts = _csv(str(v))
                    if "from" in opts:
                        refs.add(opts["from"].lower())
    return {r for r in refs if (dep := df.stage(r)) is not None and dep.index < st.index}


def make_plan(df: Dockerfile, context: BuildContext, resolver: Resolver, *, target: str | None = None,
              build_args: dict[str, str] | None = None, platform: str = DEFAULT_PLATFORM,
              build_platform: str | None = None) -> Plan:
    """The plan for one target `platform`; `build_platform` is where steps run natively (this machine's
    by default): a stage `FROM --platform=$BUILDPLATFORM` that never reads TARGET* args keys the same
    for every target, so a multi-platform build runs it once."""
    build_args = dict(build_args or {})
    target_p = parse_platform(platform)
    platform = str(target_p)
    build_p = parse_platform(build_platform) if build_platform else host_platform()
    auto = {k: build_args.get(k, v) for k, v in automatic_args(target_p, build_p).items()}
    gscope = {**auto, **global_scope(df, build_args)}
    if target:
        tstage = df.stage(target)
        if tstage is None:
            names = ", ".join(s.label() for s in df.stages)
            raise UnknownStageError(f"target stage {target!r} not found", file=df.path,
                                    hint=f"stages are: {names}")
    else:
        tstage = df.stages[-1]
    stages = needed_stages(df, tstage, lambda st: stage_refs(df, st, gscope))
    planned: dict[str, PlannedStage] = {}
    consumed: set[str] = set(_declared(df.global_args, df))
    context.prefetch(src for st in stages for src in literal_sources(st, df.escape))
    try:
        for st in stages:
            ps = _plan_stage(df, st, context, resolver, planned, gscope, build_args, platform, consumed)
            planned[ps.label] = ps
    finally:
        context.digests.close()
    unused = sorted(k for k in build_args if k not in consumed)
    return Plan(df, planned, tstage.label(), unused, platform, context.root)


def literal_sources(st: Stage, escape: str) -> Iterator[str]:
    """The context sources the stage's COPY/ADD name without a variable (no `$`: what planning will
    expand them to is known before any base image is resolved), for `BuildContext.prefetch`. Not the
    `--from` ones, URLs or heredocs, nor those of a COPY with `--exclude` (its files are not all read)."""
    for ins in st.instructions:
        if ins.cmd not in ("COPY", "ADD") or ins.flag("from") or ins.flag_values("exclude"):
            continue
        heredocs = {h.name for h in ins.heredocs}
        for a in ins.args[:-1]:
            marker = a.lstrip("0123456789")
            if "$" in a or (marker.startswith("<<") and marker[2:].lstrip("-").strip("'\"") in heredocs):
                continue
            try:
                src = process_word(a, {}, escape)
            except ExpandError:
                continue
            if not src.startswith(("http://", "https://")):
                yield src


def _declared(instrs: tuple[Instruction, ...], df: Dockerfile) -> list[str]:
    return [name for ins in instrs for name in (p.partition("=")[0] for p in ins.args)]


_ROOT_USERS = ("", "root", "0", "0:0", "root:root", "root:0", "0:root")   # WORKDIR's directories stay root's


class _StageState:
    """What planning a stage knows at an instruction. Variables are set in the order of the lines, as
    BuildKit sets its state's env: an ARG with a value sets one, an ENV sets one (and the image's Env),
    so an ARG after an ENV (or the base image's Env) of its name wins until an ENV sets it again."""

    def __init__(self, config: ImageConfig, args: dict[str, str] | None = None, args_last: frozenset[str] = frozenset()):
        self.config = config.without_build_state()
        self.args: dict[str, str] = dict(args or {})
        self.args_last = set(args_last)   # ARGs set after any ENV of their name
        self.cmd_set = False

    def set_arg(self, name: str, value: str) -> None:
        self.args[name] = value
        self.args_last.add(name)

    def set_env(self, names: Iterable[str]) -> None:
        self.args_last.difference_update(names)

    def scope(self) -> dict[str, str]:
        """The variables expansion and a RUN's process see now."""
        return {**self.args, **self.config.env_map(), **{k: self.args[k] for k in self.args_last}}

    def args_over_env(self) -> list[str]:
        """The ARGs that hide an ENV of their name now (a key input: kade once let the ENV win)."""
        if not self.args_last:   # most stages: no Env to parse
            return []
        env = self.config.env_map()
        return sorted(k for k in self.args_last if k in env)


def _plan_stage(df: Dockerfile, st: Stage, context: BuildContext, resolver: Resolver,
                planned: dict[str, PlannedStage], gscope: dict[str, str], build_args: dict[str, str],
                platform: str, consumed: set[str]) -> PlannedStage:
    base_name = stage_base(st, gscope, df.escape)
    stage_platform = platform
    if st.platform:
        try:
            stage_platform = str(parse_platform(process_word(st.platform, gscope, df.escape), "FROM --platform"))
        except ExpandError as exc:
            raise st.instruction.error(exc.detail) from None
        except BuildError as exc:
            raise st.instruction.error(exc.detail, hint=exc.hint) from None
    base_stage = df.stage(base_name)
    if base_stage is not None and base_stage.index >= st.index:
        base_stage = None
    base_image: BaseImage | None = None
    deps: set[str] = set()
    inherited: dict[str, str] = {}
    if base_stage is not None:  # its ARGs carry over too (BuildKit: "inherited from parent stages")
        dep = planned[base_stage.label()]
        base_key, base_config, inherited = dep.final_key, dep.final_config, dep.args
        deps.add(dep.label)
        stage_platform = dep.platform  # FROM <stage> runs as that stage does (BuildKit: d.platform = base's)
    elif base_name.lower() == "scratch":
        base_key, base_config = "scratch", ic.empty_config(Platform.parse(stage_platform))
    else:
        try:
            base_image = resolver(base_name, stage_platform)
        except BuildError as exc:
            if exc.line is not None:
                raise
            raise type(exc)(f"FROM {base_name}: {exc.detail}", file=st.instruction.file, line=st.instruction.line,
                            hint=exc.hint) from None
        base_key, base_config = base_image.digest, base_image.config
    state = _StageState(base_config, inherited, planned[base_stage.label()].args_last if base_stage else frozenset())
    triggers = list(state.config.get("OnBuild", []))
    instructions: list[Instruction] = [parse_instruction_line(t, df.path, st.instruction.line) for t in triggers]
    if triggers:
        state.config = ic.clear_onbuild(state.config)
    instructions += list(st.instructions)
    steps: list[Step] = []
    parent = base_key
    from_resolver = _not_a_later_stage(resolver, df, st)
    history: list[str] = []  # ARGs since the last step, as BuildKit's history names them
    for ins in instructions:
        if ins.cmd == "ARG":
            history.append(_plan_arg(ins, state, df.escape, build_args, gscope, consumed))
            continue
        step = _plan_instruction(df, st, ins, state, context, from_resolver, planned, parent, stage_platform, deps)
        step.history, history = history, []
        if steps and steps[-1].kind == "config":
            steps[-1].config = None   # not the stage's last any more: applied in memory (see Step.config)
        steps.append(step)
        parent = step.key
    return PlannedStage(st, base_image, base_stage.label() if base_stage else None, base_key, base_config,
                        steps, deps, history, dict(state.args), stage_platform, frozenset(state.args_last))


def _plan_arg(ins: Instruction, state: _StageState, escape: str, build_args: dict[str, str],
              gscope: dict[str, str], consumed: set[str]) -> str:
    """Declare a stage's ARGs (a --build-arg, else the default, else the global ARG's value); returns
    the history text BuildKit records for it: `ARG NAME=value ...`, the name alone where it has no value."""
    texts = []
    for name, default in arg_pairs(ins, state.scope(), escape):
        consumed.add(name)
        value = build_args[name] if name in build_args else default if default is not None else gscope.get(name)
        if value is not None:
            state.set_arg(name, value)
        texts.append(name if value is None else f"{name}={value}")
    return "ARG " + " ".join(texts)


def _expand(ins: Instruction, word: str, scope: dict[str, str], escape: str, heredoc: bool = False) -> str:
    """`word` expanded (a COPY heredoc body: its own rules, builder/expand.expand_heredoc); an error names the line."""
    try:
        return expand_heredoc(word, scope) if heredoc else process_word(word, scope, escape)
    except ExpandError as exc:
        raise ins.error(exc.detail) from None


def _kv_pairs(ins: Instruction, scope: dict[str, str], escape: str) -> list[tuple[str, str]]:
    if len(ins.args) % 2:
        raise ins.error(f"{ins.cmd} needs KEY=VALUE pairs")
    if any(not ins.args[i] for i in range(0, len(ins.args), 2)):   # `ENV =x` (a quoted "" name is BuildKit's too)
        raise ins.error(f"{ins.cmd} names can not be blank")
    return [(_expand(ins, ins.args[i], scope, escape), _expand(ins, ins.args[i + 1], scope, escape))
            for i in range(0, len(ins.args), 2)]


def _csv(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(","):
        if not part:
            continue
        k, eq, v = part.partition("=")
        out[k.strip().lower()] = v.strip() if eq else "true"
    return out


def _plan_instruction(df: Dockerfile, st: Stage, ins: Instruction, state: _StageState, context: BuildContext,
                      resolver: Resolver, planned: dict[str, PlannedStage], parent: str, platform: str,
                      deps: set[str]) -> Step:
    esc = df.escape
    scope = state.scope()
    hidden = state.args_over_env()   # BuildKit's order (_StageState); keyed only where it matters
    cfg = state.config
    kind = "config"
    extra: dict[str, Any] = {}
    text_parts: list[Any] = [ins.cmd]
    sources_rows: list = []
    from_key: str | None = None
    mounts: list[Mount] = []
    c = ins.cmd
    try:
        if c == "ENV":
            pairs = _kv_pairs(ins, scope, esc)
            cfg = ic.set_env(cfg, pairs)
            state.set_env(k for k, _ in pairs)
            text_parts.append(pairs)
        elif c == "LABEL":
            pairs = _kv_pairs(ins, scope, esc)
            cfg = ic.set_labels(cfg, pairs)
            text_parts.append(pairs)
        elif c == "MAINTAINER":
            cfg = ic.set_author(cfg, _expand(ins, " ".join(ins.args), scope, esc))
            text_parts.append(cfg.author)
        elif c == "WORKDIR":
            if len(ins.args) != 1:
                raise ins.error("WORKDIR takes exactly one path")
            cfg = ic.set_workdir(cfg, _expand(ins, ins.args[0], scope, esc))
            kind = "workdir"
            text_parts.append(cfg.working_dir)
            if cfg.user not in _ROOT_USERS:   # the directories it makes are the USER's: keyed (root's keep their keys)
                text_parts.append({"owner": cfg.user})
        elif c == "USER":
            if len(ins.args) != 1:
                raise ins.error("USER takes exactly one user[:group]")
            user = _expand(ins, ins.args[0], scope, esc)
            cfg = ic.set_user(cfg, user)
            text_parts.append(user)
        elif c == "CMD":
            argv = ic.command_argv(cfg, ins.args, ins.json)
            cfg = ic.set_cmd(cfg, argv)
            state.cmd_set = True
            text_parts.append(argv)
        elif c == "ENTRYPOINT":
            argv = ic.command_argv(cfg, ins.args, ins.json)
            if ins.json and not ins.args:
                argv = []
            cfg = ic.set_entrypoint(cfg, argv, state.cmd_set)
            text_parts.append(argv)
        elif c == "EXPOSE":
            ports = [p for a in ins.args for w in process_words(a, scope, esc) for p in w.split()]
            cfg = ic.add_exposed(cfg, ports)
            text_parts.append(ports)
        elif c == "VOLUME":
            paths = list(ins.args) if ins.json else [p for a in ins.args for p in process_words(a, scope, esc)]
            cfg = ic.add_volumes(cfg, paths)
            text_parts.append(paths)
        elif c == "STOPSIGNAL":
            sig = _expand(ins, ins.args[0], scope, esc)
            cfg = ic.set_stopsignal(cfg, sig)
            text_parts.append(sig)
        elif c == "HEALTHCHECK":
            cfg = ic.set_healthcheck(cfg, ins.args, ins.json, ins.flags)
            text_parts.append(cfg.get("Healthcheck"))
        elif c == "SHELL":
            cfg = ic.set_shell(cfg, list(ins.args))
            text_parts.append(list(ins.args))
        elif c == "ONBUILD":
            cfg = ic.add_onbuild(cfg, ins.args[0])
            text_parts.append(ins.args[0])
        elif c == "RUN":
            kind = "run"
            argv, files = _run_argv(ins, cfg)
            network = str(ins.flag("network") or "default")
            if network not in ("default", "none", "host"):
                raise ins.error(f"unsupported --network={network}", hint="use default, none or host")
            security = str(ins.flag("security") or "sandbox")
            if security == "insecure":
                raise ins.error("--security=insecure would run this step privileged on the build machine; kade "
                                "never does", hint="drop the flag (sandbox is the default)")
            if security != "sandbox":
                raise ins.error(f"unknown --security={security}", hint="use sandbox")
            if ins.flag_values("device"):
                raise ins.error("--device (CDI devices such as GPUs) is not supported by kade's sandbox",
                                hint="run the step on a machine with the device outside the build")
            for k, v in sorted(ins.flags.items()):
                if k.startswith("mount"):
                    m, rows, fkey = _plan_mount(ins, str(v), scope, esc, context, planned, resolver, platform, deps,
                                                cfg.working_dir)
                    mounts.append(m)
                    if rows:
                        sources_rows.append([m.target, rows])
                    if fkey:
                        from_key = (from_key or "") + fkey
            extra = {"argv": argv, "env": state.scope(), "mounts": mounts, "network": network,
                     "heredoc_files": files}
            text_parts += [argv, network, [h for h in files]]
        elif c in ("COPY", "ADD"):
            kind = "copy"
            spec, rows, from_key = _plan_copy(ins, scope, esc, context, planned, resolver, platform, deps)
            sources_rows = rows
            extra = {"copy": spec}
            text_parts += [spec.dest, [s.rel for s in spec.sources], spec.from_paths, spec.heredocs,
                           spec.chown, spec.chmod, spec.add]
        else:
            raise ins.error(f"{c} is not supported here")
    except BuildError as exc:
        if exc.line is None:
            raise type(exc)(exc.detail, file=ins.file, line=ins.line, hint=exc.hint) from None
        raise
    if hidden:
        text_parts.append({"args over env": hidden})
    text = json.dumps(text_parts, sort_keys=True)
    key = step_key(KeyInputs(parent=parent, instruction=text, build_args=dict(state.args),
                             sources=sources_rows, from_key=from_key, mounts=[m.spec() for m in mounts],
                             platform=platform))
    state.config = cfg
    return Step(key=key, parent_key=parent, stage=st.label(), ins=ins, kind=kind, text=_history_text(ins, text_parts),
                config=cfg, in_history=c != "ONBUILD", **extra)


def _history_text(ins: Instruction, parts: list[Any]) -> str:
    if ins.cmd == "RUN":
        return "RUN " + " ".join(parts[1])
    return ins.original.split("\n", 1)[0][:512]


def _run_argv(ins: Instruction, cfg: ImageConfig) -> tuple[list[str], list[tuple[str, str, int]]]:
    """Shell/exec form, with BuildKit's heredoc rules: a lone `<<EOF` runs its body as the script."""
    files: list[tuple[str, str, int]] = []
    if ins.heredocs and not ins.json:
        first = ins.args[0].strip() if ins.args else ""
        h = ins.heredocs[0]
        if len(ins.heredocs) == 1 and first.lstrip("0123456789").startswith("<<") and \
                first.split("<<", 1)[1].lstrip("-").strip("'\"") == h.name:
            body = h.text()
            if body.startswith("#!"):
                files.append(("/run/kade-heredoc", body, 0o755))
                return ["/run/kade-heredoc"], files
            return ic.shell_of(cfg) + [body], files
        script = ins.args[0] + "\n" + "".join(hd.content + hd.name + "\n" for hd in ins.heredocs)
        return ic.shell_of(cfg) + [script], files
    return ic.command_argv(cfg, ins.args, ins.json), files


def _not_a_later_stage(resolver: Resolver, df: Dockerfile, st: Stage) -> Resolver:
    """The resolver for --from= and mount from=, which name stages before this one (`planned`) or an image:
    the name of this stage or a later one is refused, as BuildKit refuses it, not pulled as an image."""
    def resolve(ref: str, platform: str) -> BaseImage:
        named = df.stage(ref)
        if named is not None and named.index >= st.index:
            where = "this stage" if named.index == st.index else f"line {named.instruction.line}"
            raise UnknownStageError(f"--from={ref}: stage {named.label()} ({where}) is not defined before this "
                                    "instruction", hint="move that stage above the one that takes files from it")
        return resolver(ref, platform)
    return resolve


def _resolve_from(ins: Instruction, ref: str, planned: dict[str, PlannedStage], resolver: Resolver,
                  platform: str, deps: set[str]) -> tuple[str | None, BaseImage | None, str]:
    """--from=NAME: a planned stage (by name or index), else an image reference."""
    low, index = ref.lower(), decimal(ref)
    for label, ps in planned.items():
        if label == low or ps.stage.index == index:
            deps.add(label)
            return label, None, ps.final_key
    if index is not None:
        raise UnknownStageError(f"stage {ref} does not exist (or is not before this one)", file=ins.file,
                                line=ins.line)
    try:
        image = resolver(ref, platform)
    except UnknownStageError as exc:   # a stage defined later (`_not_a_later_stage`)
        raise UnknownStageError(exc.detail, file=ins.file, line=ins.line, hint=exc.hint) from None
    except BuildError as exc:
        raise UnknownStageError(f"--from={ref} is neither a stage before this one nor a pullable image "
                                f"({exc.detail})", file=ins.file, line=ins.line) from None
    return None, image, image.digest


def _names_an_owner(chown: str) -> bool:
    """Whether --chown names a user or group to look up in the rootfs rather than ids (`root` is 0
    without a lookup, as in builder/users.file_owner and BuildKit's llb.WithUser)."""
    user, _, group = chown.partition(":")
    return any(part not in ("", "root") and decimal(part) is None for part in (user, group))


def _plan_copy(ins: Instruction, scope: dict[str, str], esc: str, context: BuildContext,
               planned: dict[str, PlannedStage], resolver: Resolver, platform: str,
               deps: set[str]) -> tuple[CopySpec, list, str | None]:
    args = list(ins.args)
    dest = _expand(ins, args[-1], scope, esc)
    chown = _expand(ins, str(ins.flag("chown")), scope, esc) if ins.flag("chown") else None
    chmod_text = _expand(ins, str(ins.flag("chmod")), scope, esc) if ins.flag("chmod") else None
    chmod, mode_fn = parse_chmod(chmod_text) if chmod_text else (None, None)
    if ins.flag("keep-git-dir") is not None:
        raise ins.error("--keep-git-dir is for ADD of a git repository, which kade does not support",
                        hint="clone in a RUN step, or ADD an archive of the repository")
    if chown and ins.flag_bool("link") and _names_an_owner(chown):
        raise ins.error(f"--chown={chown}: user and group names can't be resolved with --link (a linked layer "
                        "sees no /etc/passwd), as BuildKit refuses it", hint="use a numeric uid[:gid] instead")
    spec = CopySpec(dest=dest, chown=chown, chmod=chmod, add=ins.cmd == "ADD", link=ins.flag_bool("link"),
                    chmod_text=chmod_text if chmod is None else None, parents=ins.flag_bool("parents"),
                    excludes=[_expand(ins, e, scope, esc) for e in ins.flag_values("exclude")],
                    unpack=ins.flag_bool("unpack") if ins.flag("unpack") is not None else None)
    heredoc_names = {h.name: h for h in ins.heredocs}
    srcs = []
    for a in args[:-1]:
        marker = a.lstrip("0123456789")
        name = marker[2:].lstrip("-").strip("'\"") if marker.startswith("<<") else None
        if name and name in heredoc_names:
            h = heredoc_names[name]
            body = _expand(ins, h.text(), scope, esc, heredoc=True) if h.expand else h.text()
            spec.heredocs.append((name, body))
        else:
            srcs.append(_expand(ins, a, scope, esc))
    if len(srcs) + len(spec.heredocs) > 1 and not dest.endswith("/"):
        raise ins.error("when using COPY with more than one source file, the destination must be a directory "
                        "and end with a /")
    from_key = None
    rows: list = []
    if ins.flag("from"):
        ref = _expand(ins, str(ins.flag("from")), scope, esc)
        spec.from_stage, spec.from_image, from_key = _resolve_from(ins, ref, planned, resolver, platform, deps)
        spec.from_paths = [clean_path(s) for s in srcs]
        if spec.parents:
            spec.from_keep = [_parents_kept(s, clean_path(s)) for s in srcs]
        rows = [[p] for p in spec.from_paths]
    else:
        checksum = _expand(ins, str(ins.flag("checksum")), scope, esc) if ins.flag("checksum") else None
        for s in srcs:
            if s.startswith(("http://", "https://")):
                if ins.cmd != "ADD":
                    raise ins.error(f"COPY cannot fetch {s}: use ADD for URLs")
                try:
                    spec.sources.append(context.fetch(s, checksum))
                except BuildError as exc:
                    raise type(exc)(exc.detail, file=ins.file, line=ins.line, hint=exc.hint) from None
                continue
            if checksum:
                raise ins.error("--checksum can only be used with http(s) sources")
            try:
                matched = context.select(s)
            except BuildError as exc:
                raise type(exc)(exc.detail, file=ins.file, line=ins.line, hint=exc.hint) from None
            if not matched:
                spec.unmatched.append(s)
            selected = exclude_sources(matched, spec.excludes)
            if spec.parents:
                selected = [dataclasses.replace(src, keep=_parents_kept(s, src.rel, src.is_dir)) for src in selected]
            spec.sources.extend(selected)
        uid, gid = _numeric_owner(chown)
        rows = [list(r) for r in hash_sources(spec.sources, uid, gid, mode_fn, context.digests)]
        if spec.parents:
            rows.append(["parents", [src.keep for src in spec.sources]])
    for name, value in (("exclude", spec.excludes), ("chmod", spec.chmod_text), ("unpack", spec.unpack),
                        ("chmod-made-dirs", None if spec.chmod is None else f"{spec.chmod:o}")):
        if value not in (None, []):  # only when given: the keys of COPYs without them are unchanged
            rows.append([name, json.dumps(value)])
    return spec, rows, from_key


def _parents_kept(written: str, rel: str, is_dir: bool = True) -> str:
    """COPY --parents: the parent path a source keeps under the destination. After a `/./` in the
    source as written, only what follows it (rsync's --relative rule)."""
    cut = written.replace("\\", "/").rfind("/./")
    prefix = clean_path(written[:cut]) if cut >= 0 else "."
    kept = rel if is_dir else posixpath.dirname(rel)
    if prefix != "." and (kept == prefix or kept.startswith(prefix + "/")):
        kept = kept[len(prefix):].lstrip("/")
    return "" if kept in (".", "") else kept


def _numeric_owner(chown: str | None) -> tuple[int, int]:
    if not chown:
        return 0, 0
    u, _, g = chown.partition(":")
    uid, gid = decimal(u), decimal(g)
    return (-1 if uid is None else uid, -1 if gid is None else gid)


# The options of each mount type in the Dockerfile reference (after type= and target/dst/destination).
MOUNT_OPTIONS = {
    "bind": {"source", "src", "from", "rw", "readwrite", "ro", "readonly"},
    "cache": {"id", "ro", "readonly", "sharing", "from", "source", "src", "mode", "uid", "gid"},
    "tmpfs": {"size"},
    "secret": {"id", "env", "required", "mode", "uid", "gid"},
    "ssh": {"id", "required", "mode", "uid", "gid"},
}
_BOOL_OPTIONS = {"rw", "readwrite", "ro", "readonly", "required"}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)i?b?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """tmpfs size= as BuildKit reads it (go-units RAMInBytes): 65536, 64m, 1g, 512KiB."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise BuildError(f"invalid size={text}", hint="use bytes or a unit: 64m, 1g")
    return int(float(m.group(1)) * 1024 ** "bkmgtp".index((m.group(2) or "b").lower()))


def _check_mount_options(ins: Instruction, mtype: str, opts: dict[str, str]) -> None:
    """Every option known for its type and well formed: nothing a Dockerfile asks for is ignored."""
    for key, value in opts.items():
        if key not in MOUNT_OPTIONS[mtype]:
            raise ins.error(f"--mount=type={mtype} has no option {key!r}",
                            hint=f"its options: {', '.join(sorted(MOUNT_OPTIONS[mtype]))}, target")
        if key in _BOOL_OPTIONS and value.lower() not in ("true", "false"):
            raise ins.error(f"--mount {key}={value}: expected true or false")
        if key in ("uid", "gid") and ((number := decimal(value)) is None or number > MAX_ID):
            raise ins.error(f"--mount {key}={value}: expected a number from 0 to {MAX_ID}")
        if key == "mode" and not re.fullmatch(r"0?[0-7]{1,4}", value):
            raise ins.error(f"--mount mode={value}: expected an octal mode like 0755")
        if key == "sharing" and value not in ("shared", "private", "locked"):
            raise ins.error(f"--mount sharing={value}: expected shared, private or locked")
        if key == "size":
            try:
                parse_size(value)
            except BuildError as exc:
                raise ins.error(exc.detail, hint=exc.hint) from None
    if mtype == "ssh" and opts.get("id", "default") != "default":
        raise ins.error(f"--mount=type=ssh,id={opts['id']}: kade forwards one agent, the default one",
                        hint="drop id= and pass --ssh default[=SOCKET]")


def _plan_mount(ins: Instruction, raw: str, scope: dict[str, str], esc: str, context: BuildContext,
                planned: dict[str, PlannedStage], resolver: Resolver, platform: str,
                deps: set[str], workdir: str = "/") -> tuple[Mount, list, str | None]:
    opts = _csv(_expand(ins, raw, scope, esc))
    mtype = opts.pop("type", "bind")
    if mtype not in ("cache", "secret", "ssh", "bind", "tmpfs"):
        raise ins.error(f"unsupported mount type {mtype!r}", hint="use cache, secret, ssh, bind or tmpfs")
    target = opts.pop("target", opts.pop("dst", opts.pop("destination", "")))
    _check_mount_options(ins, mtype, opts)
    if mtype == "secret" and not target and not opts.get("env"):  # env= alone: no file (BuildKit)
        target = "/run/secrets/" + opts.get("id", "")
    if mtype == "ssh" and not target:
        target = "/run/buildkit/ssh_agent." + opts.get("id", "default")
    if not target and mtype != "secret":
        raise ins.error(f"--mount=type={mtype} needs target=PATH")
    if mtype == "secret" and not (opts.get("id") or target):
        raise ins.error("--mount=type=secret needs id=ID (or a target to take it from)")
    if mtype == "cache":
        opts.setdefault("id", target)   # as written: `target=rel` shares the cache `rel` (BuildKit)
        opts.setdefault("sharing", "shared")
    if target and not target.startswith("/"):   # relative to the WORKDIR (BuildKit)
        target = posixpath.normpath(posixpath.join("/", workdir or "/", target))
        if target == "/":
            raise ins.error(f"--mount=type={mtype}: invalid mount target {target!r} (the rootfs itself)")
    if target == "/proc" or target.startswith("/proc/"):   # runc refuses it too: the RUN's own procfs is there
        raise ins.error(f"--mount=type={mtype},target={target}: /proc is the RUN's own procfs; mount elsewhere")
    rows: list = []
    fkey = None
    selected: tuple[Source, ...] = ()
    if "from" in opts:  # bind or cache: a stage or an image
        label, image, fkey = _resolve_from(ins, opts["from"], planned, resolver, platform, deps)
    elif mtype == "bind":
        src = opts.get("source", opts.get("src", "."))
        selected = tuple(context.select(src))
        if len(selected) != 1:
            raise ins.error(f"--mount=type=bind,source={src} names {len(selected)} context paths; a bind "
                            "mount takes exactly one (no wildcards)")
        rows = [list(r) for r in hash_sources(list(selected), digests=context.digests)]
    return Mount(type=mtype, target=target, options=opts, sources=selected), rows, fkey
