"""The Dockerfile semantics of issue #14 end to end (local backend, real registry, image files read
with Python's tarfile): COPY keeps source mtimes (clamped to SOURCE_DATE_EPOCH), secret mounts with
env= and required, ADD --chown of an archive, .dockerignore re-includes."""
from __future__ import annotations

import gzip
import os
import subprocess

import pytest

from tests.fixtures.canary import image_files, registry_get
from tests.fixtures.layers import E, make_tar

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="ownership checks need root")

MTIME = 1_600_000_000


def _ctx(tmp_path, dockerfile: str, files: dict[str, bytes] | None = None):
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for rel, data in (files or {}).items():
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        (ctx / rel).write_bytes(data)
    return ctx


def test_copy_keeps_the_source_mtime_and_keys_ignore_it(registry, base_image, kade_build, tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    ctx = _ctx(tmp_path, f"FROM {base_image.ref}\nCOPY app/ /app/\nCOPY one.txt /one.txt\n",
               {"app/main.py": b"print(1)\n", "one.txt": b"1\n"})
    for p in (ctx / "app" / "main.py", ctx / "one.txt", ctx / "app"):
        os.utime(p, (MTIME, MTIME))
    tag = f"{registry.host}/sem/mtime:1"
    kade_build(str(ctx), "--tag", tag, "--output", "json", "--cache-dir", str(tmp_path / "c1")).ok()
    files = image_files(registry.url, "sem/mtime", "1")
    assert files["app/main.py"][0].mtime == MTIME and files["one.txt"][0].mtime == MTIME
    assert files["app"][0].mtime == MTIME  # the directory copied keeps the source's time too

    # another checkout time: the same keys (all cached), so the same image
    for p in (ctx / "app" / "main.py", ctx / "one.txt"):
        os.utime(p, (MTIME + 999, MTIME + 999))
    again = kade_build(str(ctx), "--tag", tag, "--output", "json", "--cache-dir", str(tmp_path / "c2")).ok()
    assert again["steps"]["built"] == 0


def test_copy_mtimes_are_clamped_to_source_date_epoch(registry, base_image, kade_build, tmp_path, monkeypatch):
    epoch = MTIME - 1000
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(epoch))
    ctx = _ctx(tmp_path, f"FROM {base_image.ref}\nCOPY new.txt old.txt /d/\nCOPY <<EOF /h.txt\nhi\nEOF\n",
               {"new.txt": b"n\n", "old.txt": b"o\n"})
    os.utime(ctx / "new.txt", (MTIME, MTIME))
    os.utime(ctx / "old.txt", (epoch - 50, epoch - 50))
    kade_build(str(ctx), "--tag", f"{registry.host}/sem/clamp:1", "--output", "json",
               "--cache-dir", str(tmp_path / "c")).ok()
    files = image_files(registry.url, "sem/clamp", "1")
    assert files["d/new.txt"][0].mtime == epoch        # newer than the epoch: clamped
    assert files["d/old.txt"][0].mtime == epoch - 50   # older: kept (BuildKit's rewrite-timestamp rule)
    assert files["d"][0].mtime == epoch and files["h.txt"][0].mtime == epoch


@pytest.mark.parametrize("mount,check", [
    ("id=tok,env=TOKEN", 'test "${TOKEN#tok-}" = value && test ! -e /run/secrets/tok'),
    ("id=tok,env=TOKEN,target=/run/t", 'test "${TOKEN#tok-}" = value && test "$(cat /run/t)" = "$TOKEN"'),
    ("id=tok", 'T=$(cat /run/secrets/tok) && test "${T#tok-}" = value && test -z "$TOKEN"'),
    ("id=missing,required=false", "test ! -e /run/secrets/missing"),
])
def test_secret_mount_env_and_file(registry, base_image, kade_build, tmp_path, mount, check):
    (tmp_path / "tok").write_text("tok-value")
    ctx = _ctx(tmp_path, f"FROM {base_image.ref}\nRUN --mount=type=secret,{mount} {check} && echo ok > /ok\n")
    run = kade_build(str(ctx), "--output", "json", "--secret", f"id=tok,src={tmp_path / 'tok'}",
                     "--cache-dir", str(tmp_path / "c"))
    run.ok()
    assert "tok-value" not in run.stderr + run.stdout


def test_a_secret_not_given_is_skipped_with_a_warning_as_buildkit_does(base_image, kade_build, tmp_path):
    """BuildKit's `required` defaults to false (dockerfile2llb adds SecretOptional): the RUN runs without
    the mount. kade says so, naming the secret and the flag."""
    ctx = _ctx(tmp_path, f"FROM {base_image.ref}\nRUN --mount=type=secret,id=tok test ! -e /run/secrets/tok\n")
    run = kade_build(str(ctx), "--output", "json", "--cache-dir", str(tmp_path / "c"))
    run.ok()
    assert "'tok'" in run.stderr and "--secret id=tok" in run.stderr and "required=true" in run.stderr


def test_a_required_secret_not_given_is_an_error_naming_it_and_the_flag(base_image, kade_build, tmp_path):
    ctx = _ctx(tmp_path, f"FROM {base_image.ref}\nRUN --mount=type=secret,id=tok,required=true cat /run/secrets/tok\n")
    run = kade_build(str(ctx), "--output", "json", "--cache-dir", str(tmp_path / "c"))
    assert run.code != 0
    assert "'tok'" in run.stderr and "--secret id=tok" in run.stderr
    assert "Dockerfile:2" in run.stderr and "Traceback" not in run.stderr


def test_add_chown_gives_extracted_files_the_owner(registry, base_image, kade_build, tmp_path):
    archive = gzip.compress(make_tar([E("pkg", "dir", uid=1, gid=1), E("pkg/bin", "dir", uid=1, gid=1),
                                      E("pkg/bin/tool", data=b"run", mode=0o755, uid=1, gid=1)]))
    ctx = _ctx(tmp_path, f"FROM {base_image.ref}\nADD --chown=7:7 archive.tar.gz /opt/owned/\n",
               {"archive.tar.gz": archive})
    kade_build(str(ctx), "--tag", f"{registry.host}/sem/addchown:1", "--output", "json",
               "--cache-dir", str(tmp_path / "c")).ok()
    files = image_files(registry.url, "sem/addchown", "1")
    for name in ("opt/owned/pkg", "opt/owned/pkg/bin", "opt/owned/pkg/bin/tool"):
        assert (files[name][0].uid, files[name][0].gid) == (7, 7), name
    assert files["opt/owned/pkg/bin/tool"][1] == b"run"


@pytest.mark.parametrize("how, first", [("gnu-tar-posix", b"x"), ("long-name-first", b"x"), ("gnu-long-name", b"L")])
def test_add_extracts_an_archive_that_starts_with_an_extended_header(registry, base_image, kade_build, tmp_path,
                                                                      how, first):
    """GNU tar --format=posix, Go's and Python's tar writers start an archive with a PAX extended header
    (always, or for a long name), GNU tar's own format with a long-name header: ADD extracts it as BuildKit
    does (kade copied it as a file)."""
    inside = "pkg/tool" if how == "gnu-tar-posix" else "d" * 120 + "/tool"
    if how == "long-name-first":
        archive = make_tar([E("d" * 120, "dir"), E(inside, data=b"run")])
    else:
        src = tmp_path / "src"
        (src / inside).parent.mkdir(parents=True)
        (src / inside).write_bytes(b"run")
        archive = subprocess.run(["tar", f"--format={'posix' if how == 'gnu-tar-posix' else 'gnu'}", "-C", str(src),
                                  "-cf", "-", inside.split("/")[0]], check=True, capture_output=True).stdout
    assert archive[156:157] == first   # the first block is an extended header
    ctx = _ctx(tmp_path, f"FROM {base_image.ref}\nADD archive.tar /opt/x/\n", {"archive.tar": archive})
    kade_build(str(ctx), "--tag", f"{registry.host}/sem/addpax:{how}", "--output", "json",
               "--cache-dir", str(tmp_path / "c")).ok()
    files = image_files(registry.url, "sem/addpax", how)
    assert files[f"opt/x/{inside}"][1] == b"run" and "opt/x/archive.tar" not in files


def test_dockerignore_reincludes_a_file_of_an_excluded_directory(registry, base_image, kade_build, tmp_path):
    ctx = _ctx(tmp_path, f"FROM {base_image.ref}\nCOPY . /ctx/\n",
               {"build/keep.txt": b"keep\n", "build/drop.txt": b"drop\n", "build/sub/deep.txt": b"x\n",
                "src/a.txt": b"a\n", ".dockerignore": b"build/\n!build/keep.txt\n"})
    run = kade_build(str(ctx), "--tag", f"{registry.host}/sem/reinclude:1", "--output", "json",
                     "--cache-dir", str(tmp_path / "c"))
    assert "Traceback" not in run.stderr
    run.ok()
    files = image_files(registry.url, "sem/reinclude", "1")
    assert files["ctx/build/keep.txt"][1] == b"keep\n" and files["ctx/src/a.txt"][1] == b"a\n"
    assert "ctx/build/drop.txt" not in files and "ctx/build/sub/deep.txt" not in files


def test_copy_parents_exclude_symbolic_chmod_and_add_unpack(registry, base_image, kade_build, tmp_path):
    archive = make_tar([E("inside.txt", data=b"in")])
    files = {"x/y/a.txt": b"a", "x/y/b.md": b"b", "x/z/c.txt": b"c", "src/p/q/d.txt": b"d", "tool.sh": b"#!/bin/sh\n",
             "arch.tar": archive}
    ctx = _ctx(tmp_path, f"FROM {base_image.ref} AS stage\nRUN mkdir -p /opt/s/t && echo s > /opt/s/t/f.txt "
                         "&& echo k > /opt/s/keep.md\n"
                         f"FROM {base_image.ref}\n"
                         "COPY --parents x/y/a.txt x/z/c.txt /parents/\n"
                         "COPY --parents ./src/./p/**/*.txt /cut/\n"
                         "COPY --exclude=**/*.md x /excluded/\n"
                         "COPY --from=stage --exclude=t /opt/s /from-excluded/\n"
                         "COPY --chmod=u=rwX,go=rX x /sym/\n"
                         "COPY --chmod=+x tool.sh /tool\n"
                         "ADD --unpack=false arch.tar /kept/\n"
                         "ADD arch.tar /unpacked/\n", files)
    os.chmod(ctx / "tool.sh", 0o600)
    os.chmod(ctx / "x" / "y" / "a.txt", 0o700)
    os.chmod(ctx / "x" / "z" / "c.txt", 0o600)
    kade_build(str(ctx), "--tag", f"{registry.host}/sem/flags:1", "--output", "json",
               "--cache-dir", str(tmp_path / "c")).ok()
    image = image_files(registry.url, "sem/flags", "1")
    assert image["parents/x/y/a.txt"][1] == b"a" and image["parents/x/z/c.txt"][1] == b"c"
    assert image["cut/p/q/d.txt"][1] == b"d" and "cut/src" not in image
    assert "excluded/y/a.txt" in image and "excluded/y/b.md" not in image
    assert "from-excluded/keep.md" in image and "from-excluded/t" not in image
    assert image["sym/y/a.txt"][0].mode == 0o755 and image["sym/z/c.txt"][0].mode == 0o644
    assert image["sym/y"][0].mode == 0o755
    assert image["tool"][0].mode == 0o711
    assert image["kept/arch.tar"][1] == archive and image["unpacked/inside.txt"][1] == b"in"


def test_an_octal_chmod_is_the_mode_of_the_directories_the_copy_makes(registry, base_image, kade_build, tmp_path):
    """BuildKit (fsutil's MkdirAll, since fsutil#228): the directories a COPY --chmod=<octal> creates get
    that mode, special bits dropped; existing ones keep theirs; a symbolic --chmod and an ADD'ed archive
    make them 0755."""
    files = {"a.txt": b"a", "d/x": b"x", "arch.tar": make_tar([E("in.txt", data=b"in")])}
    ctx = _ctx(tmp_path, f"FROM {base_image.ref}\nRUN mkdir -m 0711 /kept\n"
                         "COPY --chmod=640 a.txt /kept/new/\n"
                         "COPY --chmod=0750 a.txt /deep/er/a.txt\n"
                         "COPY --chmod=2750 d /tree\n"
                         "COPY --chmod=u=rwX,go=rX a.txt /sym/\n"
                         "ADD --chmod=600 arch.tar /arch/x/\n"
                         "COPY --chmod=600 <<EOF /doc/here\ntext\nEOF\n", files)
    kade_build(str(ctx), "--tag", f"{registry.host}/sem/chmod-dirs:1", "--output", "json",
               "--cache-dir", str(tmp_path / "c")).ok()
    image = image_files(registry.url, "sem/chmod-dirs", "1")
    modes = {path: image[path][0].mode for path in ("kept", "kept/new", "kept/new/a.txt", "deep", "deep/er",
                                                     "deep/er/a.txt", "tree", "tree/x", "sym", "arch", "arch/x",
                                                     "doc", "doc/here")}
    assert modes == {"kept": 0o711, "kept/new": 0o640, "kept/new/a.txt": 0o640, "deep": 0o750, "deep/er": 0o750,
                     "deep/er/a.txt": 0o750, "tree": 0o750, "tree/x": 0o2750, "sym": 0o755, "arch": 0o755,
                     "arch/x": 0o755, "doc": 0o600, "doc/here": 0o600}


def test_workdir_makes_its_directories_for_the_user(registry, base_image, kade_build, tmp_path):
    """BuildKit: the directories WORKDIR makes belong to the USER (a name from the image's /etc/passwd, the
    inherited one too); under root, or a user the image doesn't know, they are root's."""
    ctx = _ctx(tmp_path, f"FROM {base_image.ref} AS first\n"
                         "RUN echo 'svc:x:1001:1002::/home/svc:/bin/sh' >> /etc/passwd\n"
                         "USER svc\nWORKDIR /srv/app/data\n"
                         "USER 4242:7\nWORKDIR /other\n"
                         "USER ghost\nWORKDIR /ghost\n"
                         "USER svc\n"
                         "FROM first\nWORKDIR /inherited\nUSER root\nWORKDIR /rootdir\n", {})
    kade_build(str(ctx), "--tag", f"{registry.host}/sem/workdir-owner:1", "--output", "json",
               "--cache-dir", str(tmp_path / "c")).ok()
    image = image_files(registry.url, "sem/workdir-owner", "1")
    owners = {path: (image[path][0].uid, image[path][0].gid)
              for path in ("srv", "srv/app", "srv/app/data", "other", "ghost", "inherited", "rootdir")}
    assert owners == {"srv": (1001, 1002), "srv/app": (1001, 1002), "srv/app/data": (1001, 1002),
                      "other": (4242, 7), "ghost": (0, 0), "inherited": (1001, 1002), "rootdir": (0, 0)}


def test_a_chown_name_the_image_does_not_know_is_root_and_said(registry, base_image, kade_build, tmp_path):
    """BuildKit builds `COPY --chown=ghost` (its file op counts an unknown name as 0) and so does kade, with a
    warning naming the Dockerfile line; a known group still applies, and known names make no warning."""
    import json

    ctx = _ctx(tmp_path, f"FROM {base_image.ref}\nRUN echo 'staff:x:50:' >> /etc/group\n"
                         "COPY --chown=ghost a.txt /ghost\nCOPY --chown=ghost:staff a.txt /ghost-staff\n"
                         "COPY --chown=1234:nosuchgroup a.txt /ids\nCOPY --chown=root:staff a.txt /known\n",
               {"a.txt": b"a"})
    run = kade_build(str(ctx), "--tag", f"{registry.host}/sem/chown-unknown:1", "--output", "json",
                     "--cache-dir", str(tmp_path / "c"))
    run.ok()
    image = image_files(registry.url, "sem/chown-unknown", "1")
    owners = {p: (image[p][0].uid, image[p][0].gid) for p in ("ghost", "ghost-staff", "ids", "known")}
    assert owners == {"ghost": (0, 0), "ghost-staff": (0, 50), "ids": (1234, 1234), "known": (0, 50)}
    warnings = [e["message"] for e in map(json.loads, (ln for ln in run.stderr.splitlines() if ln.startswith("{")))
                if e.get("kind") == "warning"]
    assert len(warnings) == 3, warnings
    assert "Dockerfile:3: COPY --chown=ghost: no user 'ghost'" in warnings[0] and "owned by 0:0" in warnings[0]
    assert "Dockerfile:4:" in warnings[1] and "Dockerfile:5:" in warnings[2] and "group 'nosuchgroup'" in warnings[2]


def test_cache_mount_options(registry, base_image, kade_build, tmp_path):
    ctx = _ctx(tmp_path, f"FROM {base_image.ref} AS seed\nRUN mkdir -p /seed && echo seeded > /seed/s\n"
                         f"FROM {base_image.ref}\n"
                         "RUN --mount=type=cache,id=opts,target=/c,mode=0700,uid=1000,gid=1000 "
                         "stat -c '%a %u %g' /c > /cache-stat\n"
                         "RUN --mount=type=cache,id=seeded,target=/c,from=seed,source=/seed cat /c/s > /seeded\n"
                         "RUN --mount=type=cache,id=locked,target=/c,sharing=locked touch /c/ok && ls /c > /locked\n"
                         "RUN --mount=type=tmpfs,target=/t,size=1m df -k /t | tail -1 | awk '{print $2}' > /tmpfs\n")
    kade_build(str(ctx), "--tag", f"{registry.host}/sem/cache:1", "--output", "json",
               "--cache-dir", str(tmp_path / "c")).ok()
    image = image_files(registry.url, "sem/cache", "1")
    assert image["cache-stat"][1] == b"700 1000 1000\n"
    assert image["seeded"][1] == b"seeded\n" and image["locked"][1] == b"ok\n"
    assert image["tmpfs"][1] == b"1024\n"


def test_history_has_buildkits_arg_entries_and_no_onbuild_entry(registry, base_image, kade_build, tmp_path):
    """BuildKit's history: an empty-layer entry per ARG of a stage (trailing ARGs of a stage built FROM
    too), none for ONBUILD; the step keys stay what they were (tests/unit/test_golden_keys.py)."""
    ctx = _ctx(tmp_path, f"FROM {base_image.ref} AS one\nARG A=1\nRUN echo x > /x\nONBUILD RUN true\nARG B\n"
                         "FROM one\nARG C=$A-3\nENV D=4\n")
    kade_build(str(ctx), "--tag", f"{registry.host}/sem/history:1", "--output", "json",
               "--cache-dir", str(tmp_path / "c")).ok()
    manifest = registry_get(registry.url, "sem/history", "manifests", "1").json()
    config = registry_get(registry.url, "sem/history", "blobs", manifest["config"]["digest"]).json()
    got = [(h["created_by"], bool(h.get("empty_layer"))) for h in config["history"][1:]]  # after the base's
    assert got == [("ARG A=1", True), ("RUN /bin/sh -c echo x > /x", False), ("ARG B", True),
                   ("RUN /bin/sh -c true", True), ("ARG C=1-3", True), ("ENV D=4", True)]
    assert len(manifest["layers"]) == 2 and len(config["rootfs"]["diff_ids"]) == 2


def test_a_wildcard_matching_nothing_copies_nothing_with_a_warning(registry, base_image, kade_build, tmp_path):
    """BuildKit's AllowEmptyWildcard: `COPY package.json package-lock.json* ./` copies package.json alone;
    kade warns with the Dockerfile line. A plain path that does not exist is still an error."""
    ctx = _ctx(tmp_path, f"FROM {base_image.ref}\nWORKDIR /app\nCOPY [\"package.json\", \"package-lock.json*\", \"./\"]\n",
               {"package.json": b"{}\n"})
    run = kade_build(str(ctx), "--tag", f"{registry.host}/sem/emptyglob:1", "--cache-dir", str(tmp_path / "c"))
    assert run.code == 0, run.stderr
    assert "Dockerfile:3" in run.stderr and "'package-lock.json*' matches nothing" in run.stderr
    files = image_files(registry.url, "sem/emptyglob", "1")
    assert files["app/package.json"][1] == b"{}\n" and {f for f in files if f.startswith("app/")} == {"app/package.json"}
    (ctx / "Dockerfile").write_text(f"FROM {base_image.ref}\nCOPY package.json package-lock.json ./\n")
    missing = kade_build(str(ctx), "--cache-dir", str(tmp_path / "c"))
    assert missing.code != 0 and "package-lock.json" in missing.stderr and "not found" in missing.stderr


def test_copy_from_keeps_hard_links(registry, base_image, kade_build, tmp_path):
    """cargo's target/release: `app` and `deps/app-<hash>` are one file; COPY --from keeps them one, as
    BuildKit does (the layer holds a hard-link entry)."""
    ctx = _ctx(tmp_path, f"FROM {base_image.ref} AS build\n"
                         "RUN mkdir -p /out/deps && echo bin > /out/deps/app-1 && ln /out/deps/app-1 /out/app\n"
                         f"FROM {base_image.ref}\nCOPY --from=build /out /app\n")
    kade_build(str(ctx), "--tag", f"{registry.host}/sem/hardlinks:1", "--output", "json",
               "--cache-dir", str(tmp_path / "c")).ok()
    files = image_files(registry.url, "sem/hardlinks", "1")
    first, second = files["app/app"][0], files["app/deps/app-1"][0]
    assert first.isreg() and second.islnk() and second.linkname.lstrip("./") == "app/app"
