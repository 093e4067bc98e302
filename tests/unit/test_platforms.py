"""Multi-platform planning (pure): platform names, the automatic args, base selection from an index,
and step keys that follow the target platform only where a step depends on it."""
import pytest

from builder.context import BuildContext
from builder.dockerfile import parse_string
from builder.errors import BuildError
from builder.plan import BaseImage, make_plan
from builder.platforms import automatic_args, host_platform, parse_platform, parse_platforms
from builder.store import check_image_platform, pick_platform
from registry.imageconfig import ImageConfig
from registry.model import Descriptor, Index, Platform


@pytest.mark.parametrize("text, expected", [
    ("linux/amd64", "linux/amd64"),
    ("linux/arm64", "linux/arm64"),
    ("linux/arm64/v8", "linux/arm64"),
    ("linux/aarch64", "linux/arm64"),
    ("Linux/ARM64", "linux/arm64"),
    ("linux/x86_64", "linux/amd64"),
    ("linux/amd64/v1", "linux/amd64"),
    ("linux/amd64/v3", "linux/amd64/v3"),
    ("linux/arm", "linux/arm/v7"),
    ("linux/arm/7", "linux/arm/v7"),
    ("linux/arm/v6", "linux/arm/v6"),
    ("linux/armhf", "linux/arm/v7"),
    ("linux/armel", "linux/arm/v6"),
    ("linux/i386", "linux/386"),
    ("linux/arm64/9.0", "linux/arm64/v9"),
    (" linux/riscv64 ", "linux/riscv64"),
])
def test_platform_parsing_normalises(text, expected):
    assert str(parse_platform(text)) == expected


@pytest.mark.parametrize("text", ["linux", "amd64", "linux/", "/amd64", "linux/amd64/v8/x", "linux/am d64",
                                  "linux/$ARCH", ""])
def test_bad_platforms_are_refused_naming_the_value(text):
    with pytest.raises(BuildError) as err:
        parse_platform(text)
    assert repr(text) in str(err.value) and "os/arch" in str(err.value)


@pytest.mark.parametrize("text, expected", [
    ("linux/amd64,linux/arm64", ["linux/amd64", "linux/arm64"]),
    ("linux/arm64/v8,linux/arm64,linux/amd64", ["linux/arm64", "linux/amd64"]),
    ("linux/amd64", ["linux/amd64"]),
])
def test_platform_lists(text, expected):
    assert [str(p) for p in parse_platforms(text)] == expected


@pytest.mark.parametrize("text", ["linux/amd64,", ",linux/amd64", "linux/amd64,,linux/arm64"])
def test_platform_list_with_an_empty_entry(text):
    with pytest.raises(BuildError, match="empty entry"):
        parse_platforms(text)


@pytest.mark.parametrize("machine, expected", [
    ("x86_64", "linux/amd64"), ("aarch64", "linux/arm64"), ("armv7l", "linux/arm/v7"), ("s390x", "linux/s390x"),
])
def test_host_platform(machine, expected):
    assert str(host_platform(machine)) == expected


def test_automatic_args_as_buildkit_defines_them():
    args = automatic_args(parse_platform("linux/arm/v7"), parse_platform("linux/amd64"))
    assert args == {"BUILDPLATFORM": "linux/amd64", "BUILDOS": "linux", "BUILDARCH": "amd64", "BUILDVARIANT": "",
                    "TARGETPLATFORM": "linux/arm/v7", "TARGETOS": "linux", "TARGETARCH": "arm",
                    "TARGETVARIANT": "v7"}


def _entry(platform: dict, n: int) -> Descriptor:
    return Descriptor("application/vnd.oci.image.manifest.v1+json", "sha256:" + str(n) * 64, 100, platform=platform)


INDEX = Index([_entry({"os": "linux", "architecture": "amd64"}, 1),
               _entry({"os": "linux", "architecture": "arm64", "variant": "v8"}, 2),
               _entry({"os": "linux", "architecture": "arm", "variant": "v7"}, 3),
               _entry({"os": "unknown", "architecture": "unknown"}, 4)])


@pytest.mark.parametrize("wanted, digit", [
    ("linux/amd64", "1"), ("linux/arm64", "2"), ("linux/arm64/v8", "2"), ("linux/aarch64", "2"),
    ("linux/arm", "3"), ("linux/arm/v7", "3"),
])
def test_base_selection_from_an_index(wanted, digit):
    assert pick_platform(INDEX, wanted, "reg/base").digest == "sha256:" + digit * 64


@pytest.mark.parametrize("wanted", ["linux/s390x", "linux/arm/v6", "windows/amd64"])
def test_base_without_the_platform_names_the_image_and_what_it_has(wanted):
    with pytest.raises(BuildError) as err:
        pick_platform(INDEX, wanted, "reg/base")
    assert str(err.value).startswith(f"reg/base has no image for platform {wanted}")
    assert "linux/amd64, linux/arm64/v8, linux/arm/v7, unknown/unknown" in str(err.value)


@pytest.mark.parametrize("image, wanted, ok", [
    (Platform("linux", "amd64"), "linux/amd64", True),
    (Platform("linux", "arm64", "v8"), "linux/arm64", True),
    (Platform("linux", "amd64"), "linux/arm64", False),
    (Platform("", ""), "linux/arm64", True),  # a config naming no platform is taken as it is
])
def test_single_platform_base(image, wanted, ok):
    if ok:
        check_image_platform("reg/base:1", image, wanted)
    else:
        with pytest.raises(BuildError, match=f"reg/base:1 is a single-platform image for {image}, not {wanted}"):
            check_image_platform("reg/base:1", image, wanted)


# -- keys ------------------------------------------------------------------------------------------

def resolver(ref: str, platform: str) -> BaseImage:
    """One index per reference: a digest per (reference, platform), as a registry would answer."""
    p = Platform.parse(platform)
    cfg = ImageConfig.from_dict({"architecture": p.architecture, "os": p.os, "config": {"Env": ["PATH=/bin"]}})
    return BaseImage(ref=ref, digest="sha256:" + format(abs(hash((ref, platform))), "064x")[-64:], config=cfg)


CROSS = """\
FROM --platform=$BUILDPLATFORM golang:1 AS build
WORKDIR /src
COPY app ./
RUN go mod download
ARG TARGETOS TARGETARCH
RUN GOOS=$TARGETOS GOARCH=$TARGETARCH go build -o /out/app
FROM --platform=$BUILDPLATFORM golang:1 AS docs
RUN make docs
FROM debian:12
COPY --from=build /out/app /app
COPY --from=docs /docs /docs
ARG TARGETPLATFORM
RUN echo $TARGETPLATFORM > /platform
"""


@pytest.fixture
def ctx(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.go").write_text("package main\n")
    return BuildContext.open(tmp_path)


def _plan(ctx, platform, text=CROSS, **kw):
    return make_plan(parse_string(text, "Dockerfile"), ctx, resolver, platform=platform,
                     build_platform=kw.pop("build_platform", "linux/amd64"), **kw)


def _keys(plan, stage):
    return [s.key for s in plan.stages[stage].steps]


def test_build_platform_stage_shares_its_keys_until_it_reads_the_target(ctx):
    amd, arm = _plan(ctx, "linux/amd64"), _plan(ctx, "linux/arm64")
    assert _keys(amd, "docs") == _keys(arm, "docs")  # never reads TARGET*: one run for both
    build_amd, build_arm = _keys(amd, "build"), _keys(arm, "build")
    assert build_amd[:3] == build_arm[:3]  # WORKDIR, COPY, go mod download: before ARG TARGETARCH
    assert build_amd[3] != build_arm[3]  # the cross-compile reads TARGETARCH
    assert set(_keys(amd, "2")).isdisjoint(_keys(arm, "2"))  # the target stage: per platform
    assert amd.stages["build"].platform == arm.stages["build"].platform == "linux/amd64"
    assert arm.stages["2"].platform == "linux/arm64" and arm.platform == "linux/arm64"


def test_cross_compile_sees_the_target_and_the_final_stage_its_platform(ctx):
    arm = _plan(ctx, "linux/arm64/v8")
    assert arm.stages["build"].steps[3].env["TARGETARCH"] == "arm64"
    assert arm.stages["build"].steps[3].env["TARGETOS"] == "linux"
    assert arm.stages["2"].steps[-1].env["TARGETPLATFORM"] == "linux/arm64"
    assert arm.stages["2"].base_config.architecture == "arm64"


def test_variant_spellings_plan_the_same_keys(ctx):
    assert _keys(_plan(ctx, "linux/arm64/v8"), "2") == _keys(_plan(ctx, "linux/arm64"), "2")


def test_the_build_platform_changes_build_platform_stages_only_through_their_base(ctx):
    on_arm = _plan(ctx, "linux/arm64", build_platform="linux/arm64")
    assert on_arm.stages["build"].platform == "linux/arm64"
    assert _keys(on_arm, "docs") != _keys(_plan(ctx, "linux/arm64"), "docs")


def test_build_args_replace_automatic_args(ctx):
    text = "FROM base\nARG TARGETARCH\nRUN echo $TARGETARCH\n"
    p = _plan(ctx, "linux/arm64", text, build_args={"TARGETARCH": "custom"})
    assert p.stages["0"].steps[0].env["TARGETARCH"] == "custom"


def test_from_platform_must_be_a_platform(ctx):
    with pytest.raises(BuildError) as err:
        _plan(ctx, "linux/amd64", "FROM --platform=linux base\nRUN true\n")
    assert err.value.line == 1 and "'linux' is not a platform" in str(err.value)


def test_scratch_takes_the_target_platform_with_its_variant(ctx):
    p = _plan(ctx, "linux/arm/v7", "FROM scratch\nCOPY app /app\n")
    cfg = p.stages["0"].steps[-1].config
    assert (cfg.os, cfg.architecture, cfg.variant) == ("linux", "arm", "v7")


def test_a_stage_from_a_build_platform_stage_runs_as_it_does(ctx):
    text = "FROM --platform=$BUILDPLATFORM base AS tools\nRUN make\nFROM tools AS more\nRUN more\nFROM base\n" \
           "COPY --from=more /x /x\n"
    amd, arm = _plan(ctx, "linux/amd64", text), _plan(ctx, "linux/arm64", text)
    assert arm.stages["more"].platform == "linux/amd64"
    assert _keys(amd, "more") == _keys(arm, "more")
