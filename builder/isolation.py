"""`Isolation`: how RUN is held (builder/sandbox.py), on its own so that choosing it (`kade build
--userns`, BuildOptions) does not load the sandbox, which a build with nothing to run never needs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Isolation:
    """How RUN is held beyond the defaults every mode shares. `userns`: "auto" (a user namespace with a
    subordinate range when kade is root, the caller's own uid otherwise) or "host" (no user namespace
    of its own: kade build --userns host, and pods, whose own user namespace or chroot is the
    boundary). `network`: what a RUN without --network gets: "private" (its own namespace, NAT) or
    "shared" (the namespace kade runs in: a pod's)."""
    userns: Literal["auto", "host"] = "auto"
    network: Literal["private", "shared"] = "private"
