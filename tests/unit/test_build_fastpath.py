"""Which work a build may skip: a RUN's overlay merge when nothing reads the stage's rootfs afterwards."""
import pytest

from builder.local import rootfs_read_after, rootfs_readers
from builder.context import BuildContext
from builder.dockerfile import parse_string
from builder.plan import make_plan
from tests.unit.test_build_plan import resolver


@pytest.fixture
def ctx(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("a\n")
    return tmp_path


def plan(ctx, text, target=None):
    return make_plan(parse_string(text, "Dockerfile"), BuildContext.open(ctx), resolver(), target=target)


@pytest.mark.parametrize("text, stage, read_after", [
    # the last RUN followed only by config steps: its result is in the layer, nobody reads the rootfs
    ("FROM b\nRUN one\nRUN two\nCMD [\"x\"]\nENV A=1\n", "0", [True, False, False, False]),
    # a later COPY / WORKDIR / RUN works on the rootfs
    ("FROM b\nRUN one\nCOPY src /src\n", "0", [True, False]),
    ("FROM b\nRUN one\nWORKDIR /w\nLABEL a=b\n", "0", [True, False, False]),
    ("FROM b\nRUN one\nUSER app\nRUN two\n", "0", [True, True, False]),
    # another stage copies from this one, or mounts it: its rootfs is read after its last step
    ("FROM b AS a\nRUN one\nCMD [\"x\"]\nFROM b\nCOPY --from=a /x /x\n", "a", [True, True]),
    ("FROM b AS a\nRUN one\nFROM b\nRUN --mount=from=a,target=/m cat /m/x\n", "a", [True]),
    # FROM <stage> starts from the stage's image, not its rootfs
    ("FROM b AS a\nRUN one\nFROM a\nRUN two\n", "a", [False]),
])
def test_rootfs_read_after(ctx, text, stage, read_after):
    p = plan(ctx, text)
    ps = p.stages[stage]
    assert [rootfs_read_after(p, ps, st) for st in ps.steps] == read_after


def test_readers_are_stages_named_by_copy_from_or_mount_from(ctx):
    p = plan(ctx, "FROM b AS a\nRUN one\nFROM b AS c\nRUN two\nFROM c\nCOPY --from=a /x /x\n"
                  "RUN --mount=from=C,target=/m true\n")
    assert rootfs_readers(p) == {"a", "c"}


def test_a_step_of_another_stage_counts_as_read(ctx):
    p = plan(ctx, "FROM b AS a\nRUN one\nFROM b\nRUN two\nCOPY --from=a /x /x\n")
    assert rootfs_read_after(p, p.stages["a"], p.stages["1"].steps[-1]) is True
