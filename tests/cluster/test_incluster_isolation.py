"""What root in a RUN step of a builder pod can't reach, on the real test cluster: it can't chroot
back out of its rootfs to the pod's ServiceAccount token, registry credentials and cache PVC."""
from __future__ import annotations

import pytest

from tests.fixtures.incluster import kade_build, records, result, unique, write_context

pytestmark = pytest.mark.cluster

ESCAPE = r"""FROM {base}
RUN perl -e 'mkdir "/esc"; if (!chroot("/esc")) {{ print "BLOCKED: $!\n"; exit 0 }} chdir ".." for 1..64; chroot "."; print((-e "/var/run/secrets/kubernetes.io/serviceaccount/token") ? "ESCAPED\n" : "STILL-INSIDE\n")' && rmdir /esc
"""


@pytest.mark.parametrize("extra", [(), ("--user-namespaces",)], ids=["chroot-runner", "userns-sandbox"])
def test_root_in_a_run_step_cannot_chroot_out_of_the_rootfs(builder_env, tmp_path, extra):
    """The namespace sandbox of --user-namespaces pods holds RUN with a chroot too (seccomp refuses
    pivot_root there), so it drops CAP_SYS_CHROOT the same way."""
    ctx = write_context(tmp_path / "ctx", ESCAPE, builder_env.base_image)
    done = kade_build(builder_env, ctx, f"{builder_env.registry}/{unique('escape')}:v1", *extra)
    result(done)
    said = [r["message"].split("] ", 1)[-1].strip() for r in records(done) if r["kind"] == "output"]
    assert "BLOCKED: Operation not permitted" in said, done.stderr[-3000:]
    assert "ESCAPED" not in said and "STILL-INSIDE" not in said
