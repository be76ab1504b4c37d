"""Mirrored, resumable, verified downloads.

The destination holds a verified file or nothing:

1. a per-file lock, so two processes that want one file download it once;
2. stream into ``<name>.<pid>-<rand>.incomplete`` beside the destination,
   hashing as the bytes arrive;
3. after a cut connection, resume with an HTTP ``Range`` request (also from a
   partial that an interrupted earlier run left behind);
4. retry only what a retry can fix (timeouts, cut or reset connections, 5xx,
   429, honouring ``Retry-After``), with backoff; move to the next mirror at
   once when the host cannot be resolved or refuses the connection, on any
   other 4xx, or on a size or hash mismatch (the last mismatching mirror gets
   one more full attempt); ``retry_decision`` is the whole policy, pure;
5. verify size and sha256, ``os.replace`` into place, write a stamp.

The failure policy (classify, decide, explain) is in ``retry``, the
``.incomplete`` file in ``partial``; their public names are re-exported here.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..engines.base import CheckpointSpec
from ..errors import OfflineError, ResourceError
from .cache import Cache, Stamp, sha256_file, verified_stamp, verified_twin, write_stamp
from .partial import CHUNK, PartialFile, adopt_partial
from .retry import (
    RETRY_AFTER_CAP,
    RETRYABLE_KINDS,
    FailureLog,
    HTTPStatusFailure,
    IncompleteBody,
    describe_failure,
    failure_hint,
    failure_host,
    failure_kind,
    parse_retry_after,
    retry_decision,
    url_scheme,
)

log = logging.getLogger(__name__)

USER_AGENT = "lipsync-tool"


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
    """This mirror failed for good; *kind* is a ``failure_kind``, or ``missing`` (a file:// mirror without the file)."""

    def __init__(self, why: str, kind: str = "unusable", host: str | None = None):
        super().__init__(why)
        self.kind = kind
        self.host = host  # the host that could not be resolved, for kind "dns"


@dataclass
class FetchResult:
    path: Path
    sha256: str
    action: str  # "cached", "verified", "downloaded", "shared" (another cache entry's verified file, linked)
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
        f"got {got}. The file was deleted. If every mirror gives this, "
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
        sleep: Callable[[float], None] | None = None,
        retries: int = 4,
        backoff: float = 1.0,
        timeout: tuple[float, float] = (15.0, 60.0),
        lock_timeout: float = -1,
        on_wait: Callable[[str], None] | None = None,
        offline: bool = False,
    ):
        self._session = session
        self.progress = progress
        #: Every wait goes through here (tests record it); resolved now, so a
        #: test can also replace ``download.default_sleep``.
        self.sleep = sleep if sleep is not None else default_sleep
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
            twin = verified_twin(dest, spec.sha256, spec.size)
            if twin is not None:
                return share(twin, dest, spec)
            return self._download(spec, dest)
        finally:
            lock.release()

    def _download(self, spec: CheckpointSpec, dest: Path) -> FetchResult:
        urls = _local_urls(spec) if self.offline else list(spec.urls)
        if not urls:
            raise OfflineError([f"{spec.name} ({spec.size:,} bytes) → {dest}"], hint="Give a file:// mirror in a registry override, or run 'lipsync-tool setup' where there is network.")
        partial = PartialFile(adopt_partial(dest))
        resumed = partial.size > 0
        failures = FailureLog()
        mismatched: list[str] = []
        mismatch_retried = False
        transferred = 0
        queue = list(urls)
        while True:
            if not queue:
                # Bad bytes from the last mirror that served any: perhaps a
                # transfer went wrong, so it gets one more full attempt.
                if not mismatched or mismatch_retried:
                    break
                mismatch_retried = True
                queue.append(mismatched[-1])
            url = queue.pop(0)
            try:
                transferred += self._from_mirror(spec, url, partial)
            except _NextMirror as exc:
                failures.record(url, str(exc), exc.kind, exc.host)
                log.info("%s: %s: %s", spec.name, url, exc)
                continue
            except _Mismatch as exc:
                partial.reset()
                if resumed:  # the leftover partial was bad, not necessarily this mirror: once more from zero
                    resumed = False
                    log.info("%s: the resumed partial download did not verify; fetching %s from the start", spec.name, url)
                    queue.insert(0, url)
                    continue
                failures.record(url, "size or sha256 mismatch" + (" again" if url in mismatched else ""), "mismatch")
                mismatched.append(url)
                log.warning("%s %s", exc, _after_mismatch(bool(queue), mismatch_retried))
                continue
            except OSError as exc:  # the disk, not the mirror: no point trying others
                raise ResourceError(f"cannot write {partial.path}: {exc.strerror or exc}", subject=spec.name, hint="Free disk space or choose another --cache-dir.") from None
            partial.publish(dest)
            write_stamp(dest, spec.sha256)
            return FetchResult(dest, spec.sha256, "downloaded", url=url, bytes_transferred=transferred, attempts=failures.attempts)
        # Every mirror failed.  A partial with a good prefix stays for a later resume.
        raise failures.error(spec.name)

    # -- one mirror ----------------------------------------------------------------------

    def _from_mirror(self, spec: CheckpointSpec, url: str, partial: PartialFile) -> int:
        """Complete *partial* from *url*; returns the bytes transferred."""
        if url_scheme(url) == "file":
            return self._from_file(spec, url, partial)
        import requests

        transferred = 0
        attempt = 0
        while True:
            if partial.size > spec.size:
                partial.reset()
            retry_after = None
            failure: BaseException | int
            try:
                sent, done = self._request(spec, url, partial)
                transferred += sent
                if done:
                    return transferred
                failure = IncompleteBody("the connection closed before the whole file arrived")
            except HTTPStatusFailure as exc:
                failure, retry_after = exc.status, exc.retry_after
            except (requests.RequestException, ValueError) as exc:  # incl. a bad URL, scheme or redirect loop
                failure = exc
            attempt += 1
            kind = failure_kind(failure)
            why = describe_failure(failure, url)
            delay = retry_decision(failure, attempt, retries=self.retries, backoff=self.backoff, retry_after=retry_after)
            if delay is None:
                if kind in RETRYABLE_KINDS:
                    why += f"; gave up after {self.retries} retries"
                raise _NextMirror(why, kind, failure_host(failure, url) if kind == "dns" else None)
            log.info("%s: %s; retry %d/%d in %.1f s, resuming at byte %d", spec.name, why, attempt, self.retries, delay, partial.size)
            self.sleep(delay)

    def _request(self, spec: CheckpointSpec, url: str, partial: PartialFile) -> tuple[int, bool]:
        """One HTTP request.  Returns (bytes received, complete?)."""
        have = partial.size
        headers = {"Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        received = 0
        with self.session.get(url, headers=headers, stream=True, timeout=self.timeout, allow_redirects=True) as resp:
            status = resp.status_code
            if status == 416 and have:
                return 0, self._verify(spec, url, partial)
            if status not in (200, 206):
                raise HTTPStatusFailure(status, resp.headers.get("Retry-After"))
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
    def _verify(spec: CheckpointSpec, url: str, partial: PartialFile) -> bool:
        got = partial.hexdigest()
        if partial.size != spec.size or got != spec.sha256:
            raise _Mismatch(mismatch_message(spec, url, partial.size, got))
        return True

    def _from_file(self, spec: CheckpointSpec, url: str, partial: PartialFile) -> int:
        src = _file_url_path(url)
        if not src.is_file():
            raise _NextMirror("no such file", "missing")
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


def default_sleep(seconds: float) -> None:
    time.sleep(seconds)


def _after_mismatch(more_mirrors: bool, retried: bool) -> str:
    """What the downloader does next after a mismatch, for the log."""
    if more_mirrors:
        return "The next mirror will be tried."
    if not retried:
        return "Trying this mirror once more, from the start."
    return "No mirror is left."


def _local_urls(spec: CheckpointSpec) -> list[str]:
    return [u for u in spec.urls if url_scheme(u) == "file"]


def _file_url_path(url: str) -> Path:
    from urllib.request import url2pathname

    return Path(url2pathname(urllib.parse.urlsplit(url).path))


__all__ = [
    "RETRY_AFTER_CAP",
    "Downloader",
    "FetchResult",
    "HTTPStatusFailure",
    "IncompleteBody",
    "ProgressBar",
    "ProgressFactory",
    "default_sleep",
    "download_action",
    "failure_hint",
    "failure_kind",
    "no_progress",
    "parse_retry_after",
    "retry_decision",
]


def share(twin: Path, dest: Path, spec: CheckpointSpec) -> FetchResult:
    """*dest* as a hard link to *twin*, a verified cache file with *spec*'s content (a copy where links fail),
    put in place atomically and stamped: no second download of the same bytes."""
    tmp = dest.with_name(dest.name + ".share")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(twin, tmp)
        except OSError:
            shutil.copyfile(twin, tmp)
        if tmp.stat().st_size != spec.size:
            raise ResourceError(f"{twin} changed while it was being linked", subject=spec.name, hint="Run the command again.")
        os.replace(tmp, dest)
    except BaseException:  # Ctrl-C included: no half-copied file is left beside the entry
        tmp.unlink(missing_ok=True)
        raise
    write_stamp(dest, spec.sha256)
    log.info("%s: the verified %s in the cache has the same content; linked, not downloaded", spec.name, twin)
    return FetchResult(dest, spec.sha256, "shared", url=twin.as_uri())
