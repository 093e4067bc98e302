"""Every instruction, flag and mount option of the Dockerfile reference (frontend 1.x), one row
each: either kade plans it ("supported"), or it refuses it with the Dockerfile's line and a reason.
Nothing in the reference is accepted and then ignored. (Executed behaviour is tested end to end in
tests/integration/test_build_semantics.py and test_build_run.py; this table keeps the list whole.)"""
from __future__ import annotations

import hashlib

import pytest

from builder.context import BuildContext
from builder.dockerfile import FLAGS, parse_string
from builder.errors import BuildError
from builder.plan import MOUNT_OPTIONS, BaseImage, make_plan
from registry.imageconfig import ImageConfig
from tests.fixtures.layers import E, make_tar

SUPPORTED = "supported"
LINE = 3  # every row's instruction is on line 3, after `FROM base AS stage` and `FROM base`

# (instruction line, "supported" or the words the refusal must contain)
ROWS = {
    # instructions
    "ARG": ("ARG X=1", SUPPORTED), "CMD": ("CMD [\"sh\"]", SUPPORTED), "ENTRYPOINT": ("ENTRYPOINT sh", SUPPORTED),
    "ENV": ("ENV A=1 B=2", SUPPORTED), "EXPOSE": ("EXPOSE 80/tcp 53/udp", SUPPORTED),
    "LABEL": ("LABEL a=b", SUPPORTED), "MAINTAINER": ("MAINTAINER me", SUPPORTED),
    "ONBUILD": ("ONBUILD RUN true", SUPPORTED), "SHELL": ("SHELL [\"/bin/sh\", \"-ec\"]", SUPPORTED),
    "STOPSIGNAL": ("STOPSIGNAL SIGTERM", SUPPORTED), "USER": ("USER 1000:1000", SUPPORTED),
    "VOLUME": ("VOLUME /data", SUPPORTED), "WORKDIR": ("WORKDIR /app", SUPPORTED), "RUN": ("RUN true", SUPPORTED),
    "COPY": ("COPY a.txt /a.txt", SUPPORTED), "ADD": ("ADD a.txt /a.txt", SUPPORTED),
    "HEALTHCHECK": ("HEALTHCHECK CMD true", SUPPORTED), "HEALTHCHECK NONE": ("HEALTHCHECK NONE", SUPPORTED),
    "unknown instruction": ("FETCH a b", "unknown instruction"),
    # FROM
    "FROM --platform": ("FROM --platform=linux/amd64 base AS third", SUPPORTED),
    # COPY
    "COPY --from stage": ("COPY --from=stage /etc /x", SUPPORTED),
    "COPY --from image": ("COPY --from=other:1 /etc /x", SUPPORTED),
    "COPY --chown": ("COPY --chown=1:2 a.txt /x", SUPPORTED),
    "COPY --chmod octal": ("COPY --chmod=0755 a.txt /x", SUPPORTED),
    "COPY --chmod symbolic": ("COPY --chmod=u=rwX,go=rX dir /x/", SUPPORTED),
    "COPY --chmod +x": ("COPY --chmod=+x a.txt /x", SUPPORTED),
    "COPY --chmod bad": ("COPY --chmod=rwx a.txt /x", "invalid --chmod"),
    "COPY --link": ("COPY --link a.txt /x", SUPPORTED),
    "COPY --link=false": ("COPY --link=false a.txt /x", SUPPORTED),
    "COPY --link=maybe": ("COPY --link=maybe a.txt /x", "expected true or false"),
    "COPY --link --chown numeric": ("COPY --link --chown=1000:1000 a.txt /x", SUPPORTED),
    "COPY --link --chown root": ("COPY --link --chown=root:root a.txt /x", SUPPORTED),
    "COPY --link --chown name": ("COPY --link --chown=nobody a.txt /x", "can't be resolved with --link"),
    "COPY --link --chown group name": ("COPY --link --chown=1000:staff a.txt /x", "--chown=1000:staff"),
    "ADD --link --chown name": ("ADD --link --chown=app:app a.txt /x", "use a numeric uid"),
    "COPY --chown name": ("COPY --chown=nobody a.txt /x", SUPPORTED),
    "COPY --parents": ("COPY --parents dir/./sub/*.txt /p/", SUPPORTED),
    "COPY --exclude": ("COPY --exclude=*.md --exclude=sub dir /x/", SUPPORTED),
    "COPY heredoc": ("COPY <<EOF /h.txt\nhi\nEOF", SUPPORTED),
    "COPY two heredocs": ("COPY <<A <<B /h/\na\nA\nb\nB", SUPPORTED),
    "COPY unknown flag": ("COPY --foo=1 a.txt /x", "unknown flag: --foo"),
    # ADD
    "ADD --chown": ("ADD --chown=7:7 arch.tar /opt/", SUPPORTED),
    "ADD --chmod": ("ADD --chmod=644 a.txt /x", SUPPORTED),
    "ADD --link": ("ADD --link a.txt /x", SUPPORTED),
    "ADD --unpack": ("ADD --unpack=false arch.tar /opt/", SUPPORTED),
    "ADD --exclude": ("ADD --exclude=*.md dir /x/", SUPPORTED),
    "ADD --checksum local": ("ADD --checksum=sha256:" + "0" * 64 + " a.txt /x", "--checksum can only be used"),
    "ADD --keep-git-dir": ("ADD --keep-git-dir=true a.txt /x", "git repository"),
    # RUN
    "RUN --network=default": ("RUN --network=default true", SUPPORTED),
    "RUN --network=none": ("RUN --network=none true", SUPPORTED),
    # planned; the build refuses it with file:line unless `kade build --allow-host-network` (test_isolation_run)
    "RUN --network=host": ("RUN --network=host true", SUPPORTED),
    "RUN --security=sandbox": ("RUN --security=sandbox true", SUPPORTED),
    "RUN --security=insecure": ("RUN --security=insecure true", "privileged"),
    "RUN --device": ("RUN --device=nvidia.com/gpu=all true", "not supported"),
    "RUN heredoc": ("RUN <<EOF\necho hi\nEOF", SUPPORTED),
    "RUN heredoc shebang": ("RUN <<EOF\n#!/bin/sh\necho hi\nEOF", SUPPORTED),
    "RUN heredoc stdin": ("RUN cat <<EOF > /x\nhi\nEOF", SUPPORTED),
    "RUN unknown mount type": ("RUN --mount=type=volume,target=/x true", "unsupported mount type"),
    "RUN mount unknown option": ("RUN --mount=type=cache,target=/x,colour=red true", "no option 'colour'"),
    "RUN mount bad bool": ("RUN --mount=type=bind,target=/x,rw=yes true", "expected true or false"),
    "RUN mount bad sharing": ("RUN --mount=type=cache,target=/x,sharing=all true", "sharing=all"),
    "RUN mount bad mode": ("RUN --mount=type=cache,target=/x,mode=rw true", "octal"),
    "RUN mount bad size": ("RUN --mount=type=tmpfs,target=/x,size=big true", "invalid size"),
    "RUN ssh other id": ("RUN --mount=type=ssh,id=github true", "default one"),
    "RUN bind without target": ("RUN --mount=type=bind,source=dir true", "needs target"),
}

# one row per mount option of the reference (type -> option=value), all supported
MOUNT_ROWS = {
    "bind": ["target=/m", "dst=/m", "destination=/m", "source=dir", "src=dir", "from=stage", "rw", "readwrite=true",
             "ro", "readonly=true"],
    "cache": ["target=/m", "id=c", "ro", "readonly=false", "sharing=shared", "sharing=private", "sharing=locked",
              "from=stage", "source=/etc", "src=/etc", "mode=0700", "uid=1", "gid=2"],
    "tmpfs": ["target=/m", "size=64m", "size=1048576"],
    "secret": ["id=s", "target=/run/s", "dst=/run/s", "destination=/run/s", "env=S", "required=true", "required",
               "mode=0440", "uid=1", "gid=2"],
    "ssh": ["id=default", "target=/run/a.sock", "required=false", "mode=0600", "uid=1", "gid=2"],
}
for _type, _options in MOUNT_ROWS.items():
    for _opt in _options:
        _extra = "" if _opt.split("=")[0] in ("target", "dst", "destination") or _type in ("secret", "ssh") \
            else ",target=/m"
        _extra += ",id=s" if _type == "secret" and not _opt.startswith("id=") else ""
        ROWS[f"RUN --mount=type={_type},{_opt}"] = (f"RUN --mount=type={_type},{_opt}{_extra} true", SUPPORTED)
for _flag in FLAGS["HEALTHCHECK"]:
    ROWS[f"HEALTHCHECK --{_flag}"] = (f"HEALTHCHECK --{_flag}={'3' if _flag == 'retries' else '5s'} CMD true",
                                      SUPPORTED)


@pytest.mark.parametrize("directive,expect", [
    ("# syntax=docker/dockerfile:1", SUPPORTED), ("# syntax=docker/dockerfile:1.7-labs", SUPPORTED),
    ("# syntax=docker.io/docker/dockerfile-upstream:1.10", SUPPORTED),
    ("# escape=`", SUPPORTED), ("# check=skip=JSONArgsRecommended", SUPPORTED),  # kade runs no build checks
    ("# syntax=example.com/custom/frontend:2", "cannot run another frontend"),
    ("# escape=x", "invalid escape directive"),
])
def test_parser_directives(directive, expect, context):
    text = f"{directive}\nFROM base\nRUN true\n"
    try:
        make_plan(parse_string(text, "Dockerfile"), BuildContext.open(context), _resolve)
    except BuildError as exc:
        assert expect != SUPPORTED and expect in str(exc) and exc.line == 1, str(exc)
        return
    assert expect == SUPPORTED


def test_every_flag_and_mount_option_of_the_reference_has_a_row():
    """The table covers every flag the parser accepts and every mount option the planner knows."""
    rows = " ".join(text.split("\n")[0] for text, _ in ROWS.values())
    for cmd, flags in FLAGS.items():
        for flag in flags:
            assert f"{cmd} --{flag}" in rows or f"--{flag}" in rows, f"{cmd} --{flag} has no row"
    for mtype, options in MOUNT_OPTIONS.items():
        for opt in options:
            assert f"type={mtype},{opt}" in rows, f"--mount=type={mtype},{opt} has no row"


def _resolve(ref: str, platform: str) -> BaseImage:
    digest = "sha256:" + hashlib.sha256(ref.encode()).hexdigest()
    return BaseImage(ref=ref, digest=digest, config=ImageConfig("amd64", "linux", runtime={"Env": ["PATH=/bin"]}))


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctx")
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("a\n")
    (root / "dir" / "b.md").write_text("b\n")
    (root / "dir" / "sub" / "c.txt").write_text("c\n")
    (root / "arch.tar").write_bytes(make_tar([E("f")]))
    return root


@pytest.mark.parametrize("name", sorted(ROWS))
def test_reference_row(name, context):
    line, expect = ROWS[name]
    text = f"FROM base AS stage\nFROM base\n{line}\n"
    if line.startswith("FROM"):
        text = f"FROM base AS stage\nFROM base\n{line}\nRUN true\n"
    try:
        make_plan(parse_string(text, "Dockerfile"), BuildContext.open(context), _resolve)
    except BuildError as exc:
        assert expect != SUPPORTED, f"{name}: refused: {exc}"
        assert expect in str(exc), f"{name}: {exc}"
        assert exc.line == LINE and exc.file == "Dockerfile", f"{name}: no file:line in {exc!r}"
        return
    assert expect == SUPPORTED, f"{name}: accepted, but the table says kade refuses it ({expect})"
