"""What every part of one build shares: its options, its progress callback, the registry client,
the local cache (its tenant's folders), the image store, its SOURCE_DATE_EPOCH and its tenant. Made
once per build (builder/build.py) and handed to the solver, the executor and the publisher."""
from __future__ import annotations

from dataclasses import dataclass

from builder import tenant as tenancy
from builder.cache import LocalCache
from builder.options import BuildOptions, Report
from builder.store import ImageStore
from builder.tenant import Tenant
from common.epoch import source_date_epoch
from registry.client import ClientOptions, RegistryClient
from registry.model import Descriptor


@dataclass
class BuildEnv:
    options: BuildOptions
    report: Report
    client: RegistryClient
    cache: LocalCache
    store: ImageStore
    epoch: int | None       # SOURCE_DATE_EPOCH of this build (None: keep the sources' times)
    tenant: Tenant          # whose caches, step Leases and build key (builder/tenant.py)

    @classmethod
    def make(cls, options: BuildOptions, report: Report, client: RegistryClient | None = None) -> "BuildEnv":
        client = client or RegistryClient(ClientOptions(insecure=tuple(options.insecure)))
        tenant = tenancy.resolve(options.tenant, options.stages_repo, options.share)
        cache = LocalCache(options.cache_dir, tenant)
        epoch = options.epoch if options.epoch is not None else source_date_epoch()
        return cls(options, report, client, cache, ImageStore(client, cache, report), epoch, tenant)

    @property
    def stages_repo(self) -> str | None:
        return self.options.stages_repo

    def find_step(self, key: str) -> Descriptor | None:
        """The step image of `key` in the stages repo that this build may reuse (with a build key: only
        one it signed; ImageStore.find_step)."""
        if not self.stages_repo:
            return None
        return self.store.find_step(self.stages_repo, key, self.options.build_key)
