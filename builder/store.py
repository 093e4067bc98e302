"""Images and blobs of one build: where each lives, read once, written blobs-first.

`ImageStore` is the builder's one way to registries and the local blob cache: it loads images
(manifest and config, a platform chosen from an index), remembers which repositories hold which
blob (so a push mounts across repositories instead of uploading), pushes images (every blob, then
the manifest), fetches layer blobs into the local cache (downloads run in a pool while their
readers unpack them), and writes OCI layouts. Safe to use from the stages running at once.
It also finds the step images a build may reuse: with a build key, only those it signed
(registry/stagesig.py).
"""
from __future__ import annotations

import io
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from builder.cache import LocalCache
from builder.errors import BuildError
from builder.plan import DEFAULT_PLATFORM, BaseImage
from registry import cancel
from registry import mediatypes as mt
from registry.client import RegistryClient, Repository
from registry.errors import NotFound, RegistryError
from registry.image import Image, ImageIndex
from registry.imageconfig import MAX_CONFIG_BYTES, ImageConfig
from registry.model import Descriptor, Index, Platform, parse_manifest
from registry.reference import Reference

if TYPE_CHECKING:
    from builder.fetch import GrowingBlob
    from registry.sigkeys import SigningKey

Report = Callable[..., None]
BLOB_WORKERS = 4   # an image's blobs pushed at once (mostly mounts and HEADs: round trips, not bytes)


@dataclass(frozen=True)
class Pushed:
    digest: str      # of the manifest as the registry has it
    uploaded: int    # bytes sent (blobs mounted or already there cost nothing)


class ImageStore:
    def __init__(self, client: RegistryClient, cache: LocalCache, report: Report):
        self.client, self.cache, self.report = client, cache, report
        self.images: dict[str, Image] = {}          # by manifest digest (bases and step images)
        self.blob_homes: dict[str, set[str]] = {}   # blob digest -> repositories known to hold it
        self.lock = threading.Lock()
        self.fetch_pool: cancel.Pool | None = None  # layer downloads, unpacked while they run
        self.bodies: dict[str, tuple[bytes, str]] = {}  # digest -> (manifest, media type) of checked step images
        self.distrusted: set[str] = set()  # step keys whose image the build key did not sign (said once)

    def repo(self, name: str) -> Repository:
        return self.client.repository(name)

    def close(self) -> None:
        if self.fetch_pool is not None:
            self.fetch_pool.stop(cancel_pending=True)

    # -- reading ----------------------------------------------------------------------------------
    def note_blobs(self, repo: str, descs: list[Descriptor]) -> None:
        with self.lock:
            for d in descs:
                self.blob_homes.setdefault(d.digest, set()).add(repo)

    def remember(self, image: Image) -> Image:
        with self.lock:
            self.images[image.digest] = image
        return image

    def get(self, digest: str) -> Image:
        """An image this store loaded or made before."""
        return self.images[digest]

    def load(self, repo: str, digest: str, body: bytes | None = None, media_type: str | None = None,
             platform: str = DEFAULT_PLATFORM) -> Image:
        """The image `repo@digest` (for an index: its `platform` entry), read once per build."""
        if digest in self.images:
            return self.images[digest]
        if body is None:
            body, media_type = self.bodies.get(digest, (None, None))
        if body is None:
            body, desc = self.repo(repo).get_manifest(digest)
            media_type = desc.media_type
        parsed = parse_manifest(body, media_type)
        if isinstance(parsed, Index):
            chosen = pick_platform(parsed, platform, repo)
            return self.load(repo, chosen.digest, platform=platform)
        config = ImageConfig.from_bytes(self._config_blob(repo, parsed.config))
        self.note_blobs(repo, parsed.blobs())
        return self.remember(Image(parsed, config, digest, source=repo))

    def find_step(self, repo_name: str, key: str, build_key: "SigningKey | None") -> Descriptor | None:
        """The step image of `key` in the stages repo `repo_name`, if there is one this build may reuse:
        any, without a build key (one HEAD); with one, only one it signed (one GET and a signature
        check; `load` then reads the checked manifest, not another one pushed since)."""
        repo = self.repo(repo_name)
        if build_key is None:
            return repo.head_manifest(key, mt.OCI_MANIFEST)
        from registry import stagesig

        try:
            body, desc = repo.get_manifest(key, mt.OCI_MANIFEST)
        except NotFound:
            return None
        why = stagesig.problem(body, "step", stagesig.repository_name(repo), key, build_key.public)
        if why is not None:
            with self.lock:
                first = key not in self.distrusted
                self.distrusted.add(key)
            if first:
                self.report("warning", f"step image {repo_name}:{key} is not reused: {why}; the step runs again",
                            key=key, untrusted=True)
            return None
        with self.lock:
            self.bodies[desc.digest] = (body, desc.media_type)
        return desc

    def _config_blob(self, repo: str, desc: Descriptor) -> bytes:
        if self.cache.blobs.has(desc.digest):
            return self.cache.blobs.read(desc.digest)
        data = self.repo(repo).read_small_blob(desc, MAX_CONFIG_BYTES, "image config")
        self.cache.blobs.put_bytes(data, desc.digest)
        return data

    def resolve(self, name: str, platform: str) -> BaseImage:
        """A base image reference -> its platform manifest digest and config (planning's resolver)."""
        try:
            ref = Reference.parse(name)
        except RegistryError as exc:
            raise BuildError(f"invalid base image {name!r}: {exc}") from None
        repo = ref.name
        self.report("resolve", f"{name} ({platform})")
        try:
            body, desc = self.repo(repo).get_manifest(ref.identifier)
            img = self.load(repo, desc.digest, body, desc.media_type, platform)
        except RegistryError as exc:
            raise BuildError(str(exc)) from None
        check_image_platform(name, img.config.platform, platform)
        return BaseImage(ref=repo, digest=img.digest, config=img.config)

    # -- layer blobs in the local cache ------------------------------------------------------------
    def fetch(self, image: Image, desc: Descriptor) -> "GrowingBlob":
        """Start downloading a layer blob into the local cache (unless it is there); read it as it grows."""
        from builder.fetch import start_fetch

        with self.lock:
            if self.fetch_pool is None:
                self.fetch_pool = cancel.Pool(max_workers=4, thread_name_prefix="kade-fetch")
        path = self.cache.blobs.path(desc.digest)
        return start_fetch(self.fetch_pool, path, lambda: self.cache.lock(desc.digest),
                           lambda: self.repo(image.source).open_blob(desc.digest, desc.size),
                           lambda: self.report("pull", f"{desc.digest[:19]} ({desc.size} bytes) from {image.source}"))

    def blob_path(self, image: Image, desc: Descriptor) -> Path:
        """A blob of `image` in the local cache, downloaded from where the image lives when missing."""
        path = self.cache.blobs.path(desc.digest)
        if path.is_file():
            return path
        with self.cache.lock(desc.digest):
            if not path.is_file():
                self.report("pull", f"{desc.digest[:19]} ({desc.size} bytes) from {image.source}")
                self.repo(image.source).download_blob(desc.digest, path, desc.size)
        return path

    def local_blob(self, desc: Descriptor) -> Path:
        """A blob in the local cache, downloaded from any repository known to hold it when missing."""
        path = self.cache.blobs.path(desc.digest)
        if not path.is_file():
            src = next(iter(sorted(self.blob_homes.get(desc.digest, ()))), None)
            if src is None:
                raise BuildError(f"blob {desc.digest} is neither in the local cache nor in a known repository")
            self.repo(src).download_blob(desc.digest, path, desc.size)
        return path

    # -- writing ----------------------------------------------------------------------------------
    def keep_local(self, image: Image) -> None:
        """Keep a made image's config and manifest in the local cache (its layers are there already)."""
        self.cache.blobs.put_bytes(image.config_bytes, image.manifest.config.digest)
        self.cache.blobs.put_bytes(image.manifest_bytes, image.digest)
        self.remember(image)

    def push(self, image: Image, repo_name: str, tag: str) -> Pushed:
        """Blobs first (mounted from where they are known to live, uploaded from the local cache
        otherwise), then the manifest."""
        repo = self.repo(repo_name)
        config_bytes = image.config_bytes

        def config() -> int:   # a new image's config is new: no HEAD first (re-sending a few kB costs less)
            repo.upload_blob(io.BytesIO(config_bytes), image.manifest.config.digest, len(config_bytes),
                             skip_existing=False)
            return len(config_bytes)

        # each blob is a round trip or two (a mount, a HEAD): at once, not one after another
        with cancel.Pool(max_workers=BLOB_WORKERS, thread_name_prefix="kade-push") as pool:
            jobs = [pool.submit(self._ensure_blob, repo, d) for d in image.manifest.layers] + [pool.submit(config)]
            uploaded = sum(job.result() for job in jobs)
        digest = repo.put_manifest(tag, image.manifest_bytes, image.manifest.media_type)
        self.note_blobs(repo_name, image.manifest.blobs())
        return Pushed(digest, uploaded + len(image.manifest_bytes))

    def push_index(self, index: ImageIndex, repo_name: str, tag: str) -> Pushed:
        """Each platform's image by digest, then the index under `tag`: the tag never names an index
        whose manifests are not all there."""
        children = [self.push(img, repo_name, img.digest) for img in index.images]
        digest = self.repo(repo_name).put_manifest(tag, index.index_bytes, index.index.media_type)
        return Pushed(digest, sum(c.uploaded for c in children) + len(index.index_bytes))

    def _ensure_blob(self, repo: Repository, d: Descriptor) -> int:
        """The blob in `repo`; the bytes that took uploading (0: it was there, or mounted)."""
        name = f"{repo.ref.registry}/{repo.name}"
        with self.lock:
            homes = set(self.blob_homes.get(d.digest, ()))
        if name in homes:
            return 0
        for home in sorted(homes):
            href = Reference.parse(home, default_tag=None)
            if href.registry == repo.ref.registry and repo.mount_blob(d.digest, href.repository):
                self.note_blobs(name, [d])
                return 0
        if repo.head_blob(d.digest) is not None:
            self.note_blobs(name, [d])
            return 0
        repo.upload_blob(self.local_blob(d), d.digest, d.size, skip_existing=False)   # (the HEAD just above)
        self.note_blobs(name, [d])
        return d.size

    def write_layout(self, image: Image | ImageIndex, tag: str) -> str:
        """`image` (or an index and its images) into the local cache's OCI layout under `tag`; the
        layout's path."""
        from registry.layout import OCILayout

        layout = OCILayout(self.cache.layout_dir, create=True)
        for img in image.images if isinstance(image, ImageIndex) else (image,):
            for d in img.manifest.layers:
                path = self.local_blob(d)
                dst = layout.blobs.path(d.digest)
                if not dst.exists():
                    shutil.copyfile(path, dst)
            layout.write_blob(img.config_bytes, img.manifest.config.digest)
            desc = layout.write_manifest(img.manifest_bytes, img.manifest.media_type)
        if isinstance(image, ImageIndex):
            desc = layout.write_manifest(image.index_bytes, image.index.media_type)
        layout.tag(desc, tag)
        return str(layout.path)


def pick_platform(index: Index, platform: str, repo: str) -> Descriptor:
    """The index entry for `platform` (normalised names: `linux/arm64/v8` serves `linux/arm64`)."""
    chosen = index.for_platform(Platform.parse(platform))
    if chosen is not None:
        return chosen
    found = ", ".join(d.platform_string or "?" for d in index.manifests) or "no platforms"
    raise BuildError(f"{repo} has no image for platform {platform} (it has: {found})",
                     hint="pick another base image or --platform")


def check_image_platform(name: str, image: Platform, wanted: str) -> None:
    """A single-platform base (a plain manifest) serves only its own platform, as containerd's matcher
    has it; a config that names no architecture is taken as it is."""
    if image.architecture and not Platform.parse(wanted).matches(image):
        raise BuildError(f"{name} is a single-platform image for {image}, not {wanted}",
                         hint="use a base image with an index listing that platform, or build for "
                              f"{image}")
