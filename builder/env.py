"""What every part of one build shares: its options, its progress callback, the registry client,
the local cache, the image store and its SOURCE_DATE_EPOCH. Made once per build (builder/build.py)
and handed to the solver, the executor and the publisher."""
from __future__ import annotations

from dataclasses import dataclass

from builder.cache import LocalCache
from builder.options import BuildOptions, Report
from builder.store import ImageStore
from common.epoch import source_date_epoch
from registry.client import ClientOptions, RegistryClient


@dataclass
class BuildEnv:
    options: BuildOptions
    report: Report
    client: RegistryClient
    cache: LocalCache
    store: ImageStore
    epoch: int | None       # SOURCE_DATE_EPOCH of this build (None: keep the sources' times)

    @classmethod
    def make(cls, options: BuildOptions, report: Report, client: RegistryClient | None = None) -> "BuildEnv":
        client = client or RegistryClient(ClientOptions(insecure=tuple(options.insecure)))
        cache = LocalCache(options.cache_dir)
        epoch = options.epoch if options.epoch is not None else source_date_epoch()
        return cls(options, report, client, cache, ImageStore(client, cache, report), epoch)

    @property
    def stages_repo(self) -> str | None:
        return self.options.stages_repo
