"""`kade build --ssh default=SOCK --backend kubernetes` on the real test cluster: a RUN in a builder
pod talks to the ssh-agent on the CLI's machine (port-forward through the API server), and nothing of
the agent stays in the image."""
from __future__ import annotations

import pytest

from tests.fixtures.incluster import kade_build, records, result, unique, write_context
from tests.fixtures.ssh import KEY_COMMENT

pytestmark = pytest.mark.cluster

# Lists the agent's identities with the agent protocol (REQUEST_IDENTITIES): the base has perl, no ssh.
LIST_KEYS = r"""FROM {base}
RUN --mount=type=ssh perl -MIO::Socket::UNIX -e 'for my $try (1, 2) {{ my $s = IO::Socket::UNIX->new(Peer => $ENV{{SSH_AUTH_SOCK}}) or die "connect: $!\n"; print $s pack("NC", 1, 11); read($s, my $len, 4) == 4 or die "no answer\n"; read($s, my $body, unpack("N", $len)); my ($type, $n) = unpack("CN", $body); my $off = 5; for (1 .. $n) {{ $off += 4 + unpack("N", substr($body, $off, 4)); my $cl = unpack("N", substr($body, $off, 4)); print "agent-key: ", substr($body, $off + 4, $cl), "\n"; $off += 4 + $cl }} }}' && echo done > /ssh-ok
"""


@pytest.mark.parametrize("extra", [(), ("--user-namespaces",)], ids=["chroot-runner", "userns-sandbox"])
def test_a_run_in_a_pod_uses_the_clis_ssh_agent(builder_env, ssh_agent, tmp_path, extra):
    ctx = write_context(tmp_path / "ctx", LIST_KEYS, builder_env.base_image)
    done = kade_build(builder_env, ctx, f"{builder_env.registry}/{unique('ssh')}:v1", "--ssh", f"default={ssh_agent}",
                      *extra)
    out = result(done)
    assert out["steps"]["built"] == 1
    said = [r["message"].split("] ", 1)[-1].strip() for r in records(done) if r["kind"] == "output"]
    assert said.count(f"agent-key: {KEY_COMMENT}") == 2, done.stderr[-3000:]  # two connections, two tunnels
    assert not [r for r in records(done) if r["kind"] == "warning"], done.stderr[-3000:]
