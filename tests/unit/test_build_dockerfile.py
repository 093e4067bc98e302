"""Dockerfile structure: stages, ARG scope, heredocs, flags and syntax errors with file:line."""
import pytest

from builder.dockerfile import global_scope, parse_string, stage_base
from builder.errors import DockerfileSyntaxError


def test_stages_names_platform_and_global_args():
    df = parse_string("ARG BASE=alpine\nARG TAG\nFROM --platform=linux/amd64 ${BASE}:${TAG:-1} AS Build\n"
                      "RUN x\nFROM build\nCOPY --from=build /a /b\n", "ctx/Dockerfile")
    assert [s.name for s in df.stages] == ["build", None]
    assert df.stages[0].platform == "linux/amd64"
    assert df.stage("BUILD") is df.stages[0] and df.stage("1") is df.stages[1] and df.stage("nope") is None
    assert stage_base(df.stages[0], global_scope(df, {})) == "alpine:1"
    assert stage_base(df.stages[0], global_scope(df, {"BASE": "debian", "TAG": "12"})) == "debian:12"
    assert df.stages[1].instructions[0].flag("from") == "build"


def test_lowercase_instructions_and_continuations_keep_lines():
    df = parse_string("from x\n\nrun echo a \\\n  b\n# c\nenv A=1\n")
    ins = df.stages[0].instructions
    assert [(i.cmd, i.line, i.end_line) for i in ins] == [("RUN", 3, 4), ("ENV", 6, 6)]


def test_heredoc_markers():
    df = parse_string('FROM x\nRUN <<-"EOT"\n\techo $A\nEOT\nCOPY <<one <<two /dst/\n1\none\n2\ntwo\n')
    run, copy = df.stages[0].instructions
    (h,) = run.heredocs
    assert h.chomp and not h.expand and h.text() == "echo $A\n"
    assert [(x.name, x.content, x.expand) for x in copy.heredocs] == [("one", "1\n", True), ("two", "2\n", True)]


def test_escape_directive():
    df = parse_string("# escape=`\nFROM x\nRUN a `\n b\n")
    assert df.escape == "`"
    assert df.stages[0].instructions[0].args == ("a  b",)


def test_multiple_mount_flags_kept():
    df = parse_string("FROM x\nRUN --mount=type=cache,target=/a --mount=type=tmpfs,target=/t --network=none true\n")
    ins = df.stages[0].instructions[0]
    assert [v for k, v in ins.flags.items() if k.startswith("mount")] == ["type=cache,target=/a", "type=tmpfs,target=/t"]
    assert ins.flag("network") == "none"


@pytest.mark.parametrize("text,line,fragment", [
    ("FROM x\nRUN ok\nFOO bar\n", 3, "unknown instruction: FOO"),
    ("FROM x\nRUN ok\nENV\n", 3, "ENV"),
    ("FROM x\nLABEL a\n", 2, "LABEL must have two arguments"),
    ("FROM x\nRUN a\nRUN <<EOT\nabc\n", 3, "unterminated heredoc"),
    ("RUN x\nFROM y\n", 1, "only ARG may come before the first FROM"),
    ("ARG A\n", 1, "no FROM"),
    ("FROM x AS a\nFROM y AS A\n", 2, "duplicate stage name"),
    ("FROM x y\n", 1, "FROM requires either one or three"),
    ("FROM x\nCOPY --frm=a b c\n", 2, "unknown flag: --frm"),
    ("FROM x\nCOPY onlyone\n", 2, "at least two arguments"),
    ("FROM x\nSHELL /bin/sh -c\n", 2, "JSON form"),
    ("FROM x\nCMD ['a']\n", 2, "JSON array"),
    ("FROM x\nONBUILD ONBUILD RUN a\n", 2, "ONBUILD"),
    ("FROM x AS 1bad\n", 1, "invalid stage name"),
    ("FROM x\nRUN a\nRUN b\nEXPOSE\n", 4, "EXPOSE"),
    ("", 1, "no instructions"),
])
def test_syntax_errors_name_file_and_line(text, line, fragment):
    with pytest.raises(DockerfileSyntaxError) as exc:
        parse_string(text, "app/Dockerfile")
    assert exc.value.line == line
    assert str(exc.value).startswith(f"app/Dockerfile:{line}: ")
    assert fragment in str(exc.value)


def test_hostile_input_does_not_crash():
    text = "FROM x\n" + "RUN " + "a" * 100_000 + "\n" + "ENV " + "\\" * 1001 + "\n"
    try:
        parse_string(text)
    except DockerfileSyntaxError as exc:
        assert exc.line is not None
    with pytest.raises(DockerfileSyntaxError):
        parse_string("\x00\x01FROM\n")


def test_flags_keep_what_the_line_says():
    """BuildKit's parser (the `dockerfile` wheel) hands flags over as UTF-8 read as Latin-1: `é` came as
    `Ã©` (values were right)."""
    df = parse_string("FROM --platform=linux/amd64 scratch\nCOPY --chown=é:ü a /b\n"
                      "RUN --mount=type=secret,id=Ã© cat\n", "Dockerfile")
    copy, run = df.stages[0].instructions
    assert copy.flags == {"chown": "é:ü"} and run.flags == {"mount0": "type=secret,id=Ã©"}


def test_a_dockerfile_that_is_not_utf8_names_its_line(tmp_path):
    from builder.dockerfile import parse_file

    (tmp_path / "Dockerfile").write_bytes(b"FROM scratch\nLABEL a=caf\xe9\nCOPY f /f\n")   # Latin-1
    with pytest.raises(DockerfileSyntaxError) as info:
        parse_file(tmp_path / "Dockerfile")
    assert info.value.line == 2 and "not UTF-8" in str(info.value) and "0xe9" in str(info.value)


def test_a_dockerfile_symlinked_out_of_its_folder_is_never_read(tmp_path):
    """BuildKit reads the Dockerfile inside its folder: a repository's `Dockerfile -> /etc/shadow`
    must not print the host file's first line in a parse error."""
    from builder.dockerfile import parse_file

    secret = tmp_path / "host-secret"
    secret.write_text("s3cr3t-line\n")
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").symlink_to(secret)
    with pytest.raises(DockerfileSyntaxError, match="symlink out of its folder") as info:
        parse_file(tmp_path / "ctx" / "Dockerfile")
    assert "s3cr3t" not in str(info.value)
    (tmp_path / "ctx" / "real").write_text("FROM scratch\n")
    (tmp_path / "ctx" / "Dockerfile").unlink()
    (tmp_path / "ctx" / "Dockerfile").symlink_to("real")   # inside its folder: read
    assert parse_file(tmp_path / "ctx" / "Dockerfile").stages


def test_a_dockerfile_of_more_instructions_than_kade_plans_is_refused_at_the_first_one_too_many():
    from builder.dockerfile import MAX_INSTRUCTIONS

    lines = ["FROM scratch"] + [f"LABEL l{i}=v" for i in range(MAX_INSTRUCTIONS)]
    assert len(parse_string("\n".join(lines[:-1]) + "\n").stages[0].instructions) == MAX_INSTRUCTIONS - 1
    with pytest.raises(DockerfileSyntaxError, match=f"more than {MAX_INSTRUCTIONS} instructions") as info:
        parse_string("\n".join(lines) + "\n")
    assert info.value.line == MAX_INSTRUCTIONS + 1
