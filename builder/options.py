"""What a build is asked to do (`BuildOptions`), and where its step images live."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from builder.plan import DEFAULT_PLATFORM
from registry.reference import Reference

if TYPE_CHECKING:
    from builder.attest import SupplyOptions
    from builder.isolation import Isolation
    from registry.sigkeys import SigningKey

Report = Callable[..., None]  # report(kind, message, **fields): packages never print


@dataclass
class BuildOptions:
    context: Path
    dockerfile: Path | None = None
    target: str | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    repo: str | None = None
    secrets: dict[str, bytes] = field(default_factory=dict)
    ssh: str | None = None
    compression: str = "gzip"
    no_cache: bool = False
    parallel: int = 4
    cache_dir: str | None = None
    keep_failed: bool = False
    insecure: tuple[str, ...] = ()
    platform: str = DEFAULT_PLATFORM  # the target platform of a single-platform build
    platforms: tuple[str, ...] = ()  # the targets of a multi-platform build (an index); () = (platform,)
    build_platform: str | None = None  # where steps run natively (BUILDPLATFORM); None: this machine
    node_emulation: bool = False  # a pod placed for emulation: the node's kernel runs foreign RUNs (unchecked)
    image_name: str = "default"
    revision: tuple[str | None, str | None] | None = None  # (commit, branch); None: asked of git at context
    annotations: dict[str, str] = field(default_factory=dict)  # extra manifest annotations of the final image
    labels: dict[str, str] = field(default_factory=dict)  # extra config labels of the final image (not in keys)
    sandbox: Callable[..., int] | None = None  # runs RUN commands; None: builder.sandbox.run_in_rootfs
    epoch: int | None = None  # SOURCE_DATE_EPOCH for this build; None: the environment's (common/epoch.py)
    supply: SupplyOptions | None = None  # SBOM, provenance, signing of pushed images; None: none
    isolation: Isolation | None = None  # for run_in_rootfs (None: its defaults)
    allow_host_network: bool = False  # RUN --network=host is refused without it (kade build --allow-host-network)
    tenant: str | None = None  # whose caches this build uses (builder/tenant.py); None: the stages repo's
    share: frozenset[str] = frozenset()  # cache parts shared with other tenants (builder/tenant.PARTS)
    build_key: SigningKey | None = None  # the tenant's: signs step images and records; with it, only step
    #                                      images it signed are reused (registry/stagesig.py)

    @property
    def target_platforms(self) -> list[str]:
        """Each target platform, normalised, once (builder/platforms.py)."""
        from builder.platforms import parse_platforms

        return [str(p) for p in parse_platforms(",".join(self.platforms or (self.platform,)))]

    @property
    def stages_repo(self) -> str | None:
        """Where step images and build records go: --repo, else `<first tag's repository>-stages`."""
        if self.repo or not self.tags:
            return self.repo
        return stages_repo_for(self.tags[0])


def stages_repo_for(tag: str) -> str:
    ref = Reference.parse(tag)
    return f"{ref.registry}/{ref.repository}-stages"
