"""Mirrored, resumable, verified downloads.

The destination holds a verified file or nothing:

1. a per-file lock, so two processes that want one file download it once;
2. stream into ``<name>.<pid>-<rand>.incomplete`` beside the destination,
   hashing as the bytes arrive;
3. after a cut connection, resume with an HTTP ``Range`` request (also from a
   partial that an interrupted earlier run left behind);
4. retry connection errors and 5xx with backoff; move to the next mirror on
   404/403/410 or a size or hash mismatch;
5. verify size and sha256, ``os.replace`` into place, write a stamp.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..engines.base import CheckpointSpec
from ..errors import DownloadError, OfflineError, ResourceError
from .cache import Cache, Stamp, sha256_file, verified_stamp, write_stamp

log = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "lipsync-tool"
#: Start writing received bytes to disk every this many bytes, so the final
#: fsync is short and the kernel never throttles a large dirty backlog.
WRITEBACK_EVERY = 16 << 20


def _sync_file_range():
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
        return fn
    except (OSError, AttributeError):  # not Linux
        return None


_SFR = _sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range to disk, without waiting (Linux)."""
    if _SFR is not None:
        _SFR(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE


class ProgressBar(Protocol):
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


#: Makes a progress bar for (label, total bytes, bytes already there).
ProgressFactory = Callable[[str, int, int], ProgressBar]


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(label: str, total: int, initial: int) -> ProgressBar:
    return _NoBar()


class _Mismatch(Exception):
    pass


class _NextMirror(Exception):
    pass


@dataclass
class FetchResult:
    path: Path
    sha256: str
    action: str  # "cached", "verified", "downloaded"
    url: str | None = None
    bytes_transferred: int = 0
    attempts: list[tuple[str, str]] = field(default_factory=list)


def download_action(dest: Path, expected_sha256: str) -> str:
    """Decide what a file needs, without hashing: ``use``, ``verify`` or ``fetch``.

    ``use``: a stamp vouches for it; ``verify``: it exists but must be hashed;
    ``fetch``: it must be downloaded.
    """
    if verified_stamp(dest, expected_sha256) is not None:
        return "use"
    if dest.is_file():
        return "verify"
    return "fetch"


def mismatch_message(spec: CheckpointSpec, url: str, got_size: int, got_sha: str | None) -> str:
    got = f"{got_size} bytes" + (f", sha256 {got_sha}" if got_sha else "")
    return (
        f"{spec.name} from {url} does not match the registry: expected {spec.size} bytes, sha256 {spec.sha256}; "
        f"got {got}. The file was deleted and the next mirror will be tried. If every mirror gives this, "
        "the mirror content or the registry entry changed: check upstream's release page, or give the right "
        "size and sha256 in a registry override file (--registry)."
    )


class Downloader:
    """Fetch registry files into the cache.  Time and HTTP are injectable seams."""

    def __init__(
        self,
        *,
        session=None,
        progress: ProgressFactory = no_progress,
        sleep: Callable[[float], None] = time.sleep,
        retries: int = 4,
        backoff: float = 1.0,
        timeout: tuple[float, float] = (15.0, 60.0),
        lock_timeout: float = -1,
        on_wait: Callable[[str], None] | None = None,
        offline: bool = False,
    ):
        self._session = session
        self.progress = progress
        self.sleep = sleep
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self.lock_timeout = lock_timeout
        self.on_wait = on_wait
        #: No network: only file:// mirrors, and a cached file that fails
        #: verification is reported, not deleted (it cannot be fetched again).
        self.offline = offline

    @property
    def session(self):
        if self._session is None:
            import requests

            from .. import __version__

            self._session = requests.Session()
            self._session.headers["User-Agent"] = f"{USER_AGENT}/{__version__}"
        return self._session

    # -- the whole job for one file ------------------------------------------------------

    def ensure(self, spec: CheckpointSpec, dest: Path, lock_path: Path) -> FetchResult:
        """Make *dest* a verified copy of *spec*, downloading it if needed."""
        from filelock import FileLock, Timeout

        if download_action(dest, spec.sha256) == "use":
            return FetchResult(dest, spec.sha256, "cached")
        dest.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if self.on_wait:
                self.on_wait(spec.name)
            log.info("another process is fetching %s; waiting for it", spec.name)
            lock.acquire(timeout=self.lock_timeout)
        try:
            action = download_action(dest, spec.sha256)
            if action == "use":
                return FetchResult(dest, spec.sha256, "cached")
            if action == "verify":
                if dest.stat().st_size == spec.size and sha256_file(dest) == spec.sha256:
                    write_stamp(dest, spec.sha256)
                    return FetchResult(dest, spec.sha256, "verified")
                old = Stamp.load(Cache.stamp_path(dest))
                if self.offline and not _local_urls(spec):
                    raise OfflineError(
                        [f"{spec.name}: {dest} is in the cache but does not match the registry (expected sha256 {spec.sha256})"],
                        hint="Bring a good copy of the file (or the whole cache) from a machine with network, or fix the registry override.",
                    )
                if old is not None and old.sha256 != spec.sha256:
                    log.info("the registry now expects another %s (sha256 %s, the cache has %s); fetching it", spec.name, spec.sha256[:12], old.sha256[:12])
                else:
                    log.warning("%s in the cache is corrupt (size or sha256 differs); fetching it again", dest)
                dest.unlink(missing_ok=True)
                Cache.stamp_path(dest).unlink(missing_ok=True)
            return self._download(spec, dest)
        finally:
            lock.release()

    def _download(self, spec: CheckpointSpec, dest: Path) -> FetchResult:
        urls = _local_urls(spec) if self.offline else list(spec.urls)
        if not urls:
            raise OfflineError([f"{spec.name} ({spec.size:,} bytes) → {dest}"], hint="Give a file:// mirror in a registry override, or run 'lipsync-tool setup' where there is network.")
        partial = _Partial(self._adopt_partial(dest))
        resumed = partial.size > 0
        attempts: list[tuple[str, str]] = []
        transferred = 0
        queue = list(urls)
        while queue:
            url = queue.pop(0)
            try:
                transferred += self._from_mirror(spec, url, partial)
            except _NextMirror as exc:
                attempts.append((url, str(exc)))
                log.info("%s: %s: %s", spec.name, url, exc)
                continue
            except _Mismatch as exc:
                partial.reset()
                if resumed:  # the leftover partial was bad, not necessarily this mirror: once more from zero
                    resumed = False
                    log.info("%s: the resumed partial download did not verify; fetching %s from the start", spec.name, url)
                    queue.insert(0, url)
                    continue
                attempts.append((url, "size or sha256 mismatch"))
                log.warning("%s", exc)
                continue
            except OSError as exc:  # the disk, not the mirror: no point trying others
                raise ResourceError(f"cannot write {partial.path}: {exc.strerror or exc}", subject=spec.name, hint="Free disk space or choose another --cache-dir.") from None
            with open(partial.path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(partial.path, dest)
            write_stamp(dest, spec.sha256)
            return FetchResult(dest, spec.sha256, "downloaded", url=url, bytes_transferred=transferred, attempts=attempts)
        # Every mirror failed.  A partial with a good prefix stays for a later resume.
        raise DownloadError(
            spec.name,
            attempts,
            hint="Check your network or proxy (HTTPS_PROXY), try again later (an interrupted download resumes), "
            "or point --registry at a mirror you can reach.",
        )

    @staticmethod
    def _adopt_partial(dest: Path) -> Path:
        """A process-unique partial file, taking over the largest leftover one.

        Only called under the file's lock, so no leftover belongs to a live
        download; the others are removed.
        """
        mine = dest.with_name(f"{dest.name}.{os.getpid()}-{random.randrange(16**6):06x}.incomplete")
        leftovers = Cache.partials(dest)
        if leftovers:
            os.replace(leftovers[0], mine)
            for extra in leftovers[1:]:
                extra.unlink(missing_ok=True)
            log.info("resuming %s from %d bytes left by an earlier run", dest.name, mine.stat().st_size)
        return mine

    # -- one mirror ----------------------------------------------------------------------

    def _from_mirror(self, spec: CheckpointSpec, url: str, partial: _Partial) -> int:
        """Complete *partial* from *url*; returns the bytes transferred."""
        if _scheme(url) == "file":
            return self._from_file(spec, url, partial)
        import requests

        transferred = 0
        tries = 0
        while True:
            if partial.size > spec.size:
                partial.reset()
            try:
                sent, done = self._request(spec, url, partial)
                transferred += sent
                if done:
                    return transferred
                why = "the connection closed before the whole file arrived"
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                why = f"connection error ({exc.__class__.__name__})"
            except (requests.RequestException, ValueError) as exc:  # a bad URL, scheme or redirect loop: this mirror is unusable
                raise _NextMirror(f"{exc.__class__.__name__}: {exc}") from None
            except _Retryable as exc:
                why = str(exc)
            tries += 1
            if tries > self.retries:
                raise _NextMirror(f"{why}; gave up after {self.retries} retries")
            delay = self.backoff * (2 ** (tries - 1))
            log.info("%s: %s; retry %d/%d in %.1f s, resuming at byte %d", spec.name, why, tries, self.retries, delay, partial.size)
            self.sleep(delay)

    def _request(self, spec: CheckpointSpec, url: str, partial: _Partial) -> tuple[int, bool]:
        """One HTTP request.  Returns (bytes received, complete?)."""
        have = partial.size
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        received = 0
        with self.session.get(url, headers=headers, stream=True, timeout=self.timeout, allow_redirects=True) as resp:
            status = resp.status_code
            if status in (401, 403, 404, 410):
                raise _NextMirror(f"HTTP {status}")
            if status == 416 and have:
                return 0, self._verify(spec, url, partial)
            if status >= 500 or status == 429:
                raise _Retryable(f"HTTP {status}")
            if status not in (200, 206):
                raise _NextMirror(f"HTTP {status}")
            if have and (status == 200 or not resp.headers.get("Content-Range", "").startswith(f"bytes {have}-")):
                log.info("%s: %s did not honour the Range request; starting over", spec.name, url)
                partial.reset()
                have = 0
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and have + int(length) != spec.size:
                raise _Mismatch(mismatch_message(spec, url, have + int(length), None))
            bar = self.progress(spec.name, spec.size, have)

            def chunks():
                nonlocal received
                for chunk in resp.iter_content(CHUNK):
                    if chunk:
                        received += len(chunk)
                        bar.update(len(chunk))
                        yield chunk
                        if have + received > spec.size:
                            return

            try:
                partial.append(chunks())
            finally:
                bar.close()
        if partial.size > spec.size:
            raise _Mismatch(mismatch_message(spec, url, partial.size, None))
        if partial.size < spec.size:
            return received, False
        return received, self._verify(spec, url, partial)

    @staticmethod
    def _verify(spec: CheckpointSpec, url: str, partial: _Partial) -> bool:
        got = partial.hexdigest()
        if partial.size != spec.size or got != spec.sha256:
            raise _Mismatch(mismatch_message(spec, url, partial.size, got))
        return True

    def _from_file(self, spec: CheckpointSpec, url: str, partial: _Partial) -> int:
        src = _file_url_path(url)
        if not src.is_file():
            raise _NextMirror("no such file")
        partial.reset()
        bar = self.progress(spec.name, spec.size, 0)

        def chunks():
            with open(src, "rb") as f:
                while chunk := f.read(CHUNK):
                    bar.update(len(chunk))
                    yield chunk

        try:
            n = partial.append(chunks())
        finally:
            bar.close()
        self._verify(spec, url, partial)
        return n


class _Retryable(Exception):
    pass


def _scheme(url: str) -> str:
    try:
        return urllib.parse.urlsplit(url).scheme
    except ValueError:  # e.g. a broken IPv6 literal
        return ""


def _local_urls(spec: CheckpointSpec) -> list[str]:
    return [u for u in spec.urls if _scheme(u) == "file"]


def _file_url_path(url: str) -> Path:
    from urllib.request import url2pathname

    return Path(url2pathname(urllib.parse.urlsplit(url).path))


class _Partial:
    """The ``.incomplete`` file and the running sha256 of its bytes.

    Bytes are written and hashed on a second thread (hashlib and file writes
    release the GIL), so hashing overlaps with receiving instead of costing a
    second pass over the file.
    """

    def __init__(self, path: Path):
        self.path = path
        self.hasher = hashlib.sha256()
        self.size = 0
        if path.exists():
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK * 4):
                    self.hasher.update(chunk)
                    self.size += len(chunk)

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)
        self.hasher = hashlib.sha256()
        self.size = 0

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()

    def append(self, chunks) -> int:
        """Write and hash every chunk of the iterable; returns the byte count."""
        import queue
        import threading

        q: queue.Queue = queue.Queue(maxsize=16)
        failure: list[BaseException] = []

        def sink() -> None:
            try:
                with open(self.path, "ab", buffering=0) as out:
                    flushed = written = out.tell()
                    while (chunk := q.get()) is not None:
                        out.write(chunk)
                        self.hasher.update(chunk)
                        written += len(chunk)
                        if written - flushed >= WRITEBACK_EVERY:
                            start_writeback(out.fileno(), flushed, written - flushed)
                            flushed = written
            except BaseException as exc:  # surfaced in the caller
                failure.append(exc)
                while q.get() is not None:
                    pass

        worker = threading.Thread(target=sink, name="download-sink", daemon=True)
        worker.start()
        received = 0
        try:
            for chunk in chunks:
                if failure:
                    break
                q.put(chunk)
                received += len(chunk)
        finally:
            q.put(None)
            worker.join()
            self.size += received
        if failure:
            # What reached the disk is unknown; start the hash over from the file.
            self.__init__(self.path)  # type: ignore[misc]
            raise failure[0]
        return received


__all__ = ["Downloader", "FetchResult", "download_action"]
