"""What the bench scripts share: the heading facts every RESULTS.md section names."""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent


def commit(tree: Path = ROOT) -> str:
    return subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def machine(loads: list[float], cpu: str | None = None) -> str:
    """The machine line: cores, kernel, Python, and the 1-min load averages seen during the run."""
    return (f"- machine: {os.cpu_count()} cores{f' ({cpu})' if cpu else ''}, Linux {platform.release()}, Python "
            f"{platform.python_version()}; shared with other agents' jobs: 1-min load average min {min(loads):.1f} "
            f"/ median {statistics.median(loads):.1f} / max {max(loads):.1f}")


KADE_PACKAGES = ("common", "kube", "registry", "builder", "deployer", "kade")


def compile_bytecode(tree: Path | None = None) -> None:
    """Compile kade's modules in `tree` (default: the working directory, where `python -m kade` finds
    them), as `pip install` does, so no timed run compiles them itself: with PYTHONDONTWRITEBYTECODE
    set (CI shells often do) every run would, and an installed kade never does."""
    tree = tree or Path.cwd()
    paths = [str(tree / p) for p in KADE_PACKAGES if (tree / p).is_dir()]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *paths], check=True, stdout=subprocess.DEVNULL)


def add_result_args(ap) -> None:
    """--results FILE and --no-append, as every bench script takes them."""
    ap.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    ap.add_argument("--no-append", action="store_true")


def publish(text: str, args) -> None:
    """Print a section, and append it to --results unless --no-append."""
    print(text)
    if not args.no_append:
        with open(args.results, "a") as f:
            f.write(text)


def settle(seconds: float = 40.0) -> None:
    """Let the file system settle after a run's trees are deleted, before anything is timed again. On
    ext4 without a journal (this VM's), creating files soon after mass deletion scans the recently freed
    inodes (`recently_deleted` in the inode allocator: a 20,000-file RUN took 1.1 s or 5.4 s on the same
    disk, perf showed the scan): deleting between scenarios taxed whichever tool came next, and
    unpacking into a directory deleted a moment before ran at a third of its speed."""
    os.sync()
    time.sleep(seconds)


class DelayProxy:
    """A TCP proxy on loopback that holds every chunk `delay_ms` before passing it on, both ways: a
    registry one round trip of 2 x delay_ms away (a cloud registry seen from CI is 5-50 ms away; the
    loopback one of the benches is 0.1 ms). Runs on a thread of its own event loop."""

    def __init__(self, target: str, delay_ms: float):
        import asyncio
        import socket
        import threading

        self.target, self.delay = target, delay_ms / 1000
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{sock.getsockname()[1]}"
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._serve, args=(sock, ready), daemon=True).start()
        ready.wait()

    def _serve(self, sock, ready) -> None:
        import asyncio

        async def main() -> None:
            await asyncio.start_server(self._handle, sock=sock)
            ready.set()
            await asyncio.Event().wait()

        self._loop.run_until_complete(main())

    async def _handle(self, reader, writer) -> None:
        import asyncio

        host, port = self.target.rsplit(":", 1)
        try:
            upstream_r, upstream_w = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, upstream_w), self._pipe(upstream_r, writer), return_exceptions=True)

    async def _pipe(self, reader, writer) -> None:
        import asyncio

        loop, held = asyncio.get_running_loop(), asyncio.Queue()

        async def release() -> None:
            while True:
                due, data = await held.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        releasing = asyncio.create_task(release())
        try:
            while data := await reader.read(1 << 16):
                held.put_nowait((loop.time() + self.delay, data))
        finally:
            held.put_nowait((loop.time() + self.delay, b""))
            await releasing


@contextlib.contextmanager
def journaled_fs(size_gb: int = 32, keep: bool = False) -> Iterator[Path]:
    """A fresh ext4 with its journal (what mkfs.ext4 and a runner's disk have) on a loop device, mounted
    for one bench run's work, then unmounted and removed (unless `keep`). This VM's root file system is
    ext4 without a journal, where the inode allocator skips every inode freed in the last 60-360 s on
    each create (`recently_deleted`, only without a journal): after a tool or the bench deletes a tree,
    creating files costs up to ~0.5 ms each (perf: 35% of a create in find_get_block_common under
    recently_deleted; 3,000 creates 21 us each on the journaled loop fs right after 20,000 deletes, 469 us
    on the root fs), so a RUN's 20,000 files took 0.3 or 3.5 s depending on what came before it."""
    fd, name = tempfile.mkstemp(prefix="kade-bench-fs-", suffix=".img", dir="/var/tmp")
    os.close(fd)   # the loop device opens it itself; an fd kept here would hold its blocks until exit
    image = Path(name)
    mountpoint = Path(tempfile.mkdtemp(prefix="kade-bench-mnt-", dir="/var/tmp"))
    mounted = False
    try:
        os.truncate(image, size_gb << 30)   # sparse; `discard` gives deleted blocks back to the host
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
        subprocess.run(["mount", "-o", "loop,discard", str(image), str(mountpoint)], check=True)
        mounted = True
        yield mountpoint
    finally:
        if not keep:
            if mounted:
                subprocess.run(["umount", "-l", str(mountpoint)], check=False)
            image.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                mountpoint.rmdir()
