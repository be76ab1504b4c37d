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
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import logging
import os
import random
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..engines.base import CheckpointSpec
from ..errors import DownloadError, NetworkUnavailableError, OfflineError, ResourceError
from .cache import Cache, Stamp, sha256_file, verified_stamp, write_stamp

log = logging.getLogger(__name__)

CHUNK = 1 << 20
USER_AGENT = "lipsync-tool"
#: Start writing received bytes to disk every this many bytes, so the final
#: fsync is short and the kernel never throttles a large dirty backlog.
WRITEBACK_EVERY = 16 << 20
#: The longest wait a server's ``Retry-After`` can ask for.
RETRY_AFTER_CAP = 60.0


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
    """This mirror failed for good; *kind* is a ``failure_kind``, or ``missing`` (a file:// mirror without the file)."""

    def __init__(self, why: str, kind: str = "unusable", host: str | None = None):
        super().__init__(why)
        self.kind = kind
        self.host = host  # the host that could not be resolved, for kind "dns"


class HTTPStatusFailure(Exception):
    """A response whose status is not 200/206 (or 416 on a resume)."""

    def __init__(self, status: int, retry_after: str | None = None):
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


class IncompleteBody(Exception):
    """The connection closed before the whole file arrived."""


# -- the retry policy (pure) ---------------------------------------------------------------

#: Failure kinds worth another request to the same mirror.
RETRYABLE_KINDS = frozenset({"timeout", "reset", "http-retry"})
#: Failure kinds that say the network itself is missing.
NO_NETWORK_KINDS = frozenset({"dns"})


def _chain(exc: BaseException):
    """*exc* and everything it wraps (causes, contexts, requests' and urllib3's wrapped errors)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        wrapped = [*getattr(e, "args", ()), getattr(e, "reason", None), e.__cause__, e.__context__]
        todo += [w for w in wrapped if isinstance(w, BaseException)]


def failure_kind(failure: BaseException | int) -> str:
    """Classify a failed request: an exception, or an HTTP status.

    ``dns`` (the host name could not be resolved), ``refused``, ``connect``
    (another failure to connect: unreachable network or host), ``tls``,
    ``timeout``, ``reset`` (a connection cut, reset or aborted, an incomplete
    body), ``http-retry`` (5xx, 429), ``http`` (any other status), ``unusable``
    (a bad URL, scheme or redirect loop).
    """
    if isinstance(failure, int):
        return "http-retry" if failure == 429 or 500 <= failure <= 599 else "http"
    import requests
    import urllib3.exceptions as u3

    chain = list(_chain(failure))
    if any(isinstance(e, (socket.gaierror, u3.NameResolutionError)) for e in chain):
        return "dns"
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "refused"
    if any(isinstance(e, (requests.exceptions.SSLError, u3.SSLError)) for e in chain):
        return "tls"
    # urllib3's NewConnectionError is a ConnectTimeoutError: a failed connect, not a timeout.
    timeouts = (requests.Timeout, u3.TimeoutError, TimeoutError)
    if any(isinstance(e, timeouts) and not isinstance(e, u3.NewConnectionError) for e in chain):
        return "timeout"
    resets = (
        ConnectionResetError, ConnectionAbortedError, BrokenPipeError, http.client.IncompleteRead,
        http.client.RemoteDisconnected, u3.ProtocolError, requests.exceptions.ChunkedEncodingError, IncompleteBody,
    )  # fmt: skip
    if any(isinstance(e, resets) for e in chain):
        return "reset"
    if any(isinstance(e, u3.NewConnectionError) for e in chain):
        return "connect"
    if isinstance(failure, requests.ConnectionError):
        return "reset"  # the connection failed after it was made
    return "unusable"


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date); None if unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_decision(
    failure: BaseException | int,
    attempt: int,
    *,
    retries: int = 4,
    backoff: float = 1.0,
    retry_after: str | None = None,
    now: float | None = None,
) -> float | None:
    """The seconds to wait before asking the same mirror again, or None: go to the next mirror.

    *failure* is what the *attempt*-th request (1-based) to a mirror ended
    with: an exception or an HTTP status.  Retried, up to *retries* times, with
    exponential backoff: timeouts, cut or reset connections, 5xx and 429, where
    a ``Retry-After`` (seconds or HTTP date, at most ``RETRY_AFTER_CAP``)
    replaces the backoff.  Never retried: an unresolvable host, a refused or
    impossible connection, a TLS error, another 4xx, a bad URL.
    """
    if failure_kind(failure) not in RETRYABLE_KINDS or attempt > retries:
        return None
    asked = parse_retry_after(retry_after, now)
    if asked is not None:
        return min(asked, RETRY_AFTER_CAP)
    return backoff * (2 ** (attempt - 1))


def describe_failure(failure: BaseException | int, url: str) -> str:
    """A short reason for the attempts list."""
    if isinstance(failure, int):
        return f"HTTP {failure}"
    kind = failure_kind(failure)
    if kind == "dns":
        return f"could not resolve host {failure_host(failure, url)}"
    if kind == "refused":
        return "connection refused"
    if kind == "timeout":
        return f"timed out ({failure.__class__.__name__})"
    if isinstance(failure, IncompleteBody):
        return str(failure)
    if kind == "reset":
        return f"connection error ({failure.__class__.__name__})"
    if kind in ("connect", "tls"):
        inner = next((e for e in _chain(failure) if isinstance(e, OSError) and e.strerror), None)
        detail = inner.strerror if inner is not None else failure.__class__.__name__
        return f"could not connect ({detail})" if kind == "connect" else f"TLS error ({detail})"
    return f"{failure.__class__.__name__}: {failure}"


def failure_host(failure: BaseException, url: str) -> str:
    """The host whose name could not be resolved (the proxy's, when a proxy is used)."""
    for e in _chain(failure):
        host = getattr(e, "_host", None)
        if isinstance(host, str) and host:
            return host
    try:
        return urllib.parse.urlsplit(url).hostname or url
    except ValueError:
        return url


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
        f"got {got}. The file was deleted. If every mirror gives this, "
        "the mirror content or the registry entry changed: check upstream's release page, or give the right "
        "size and sha256 in a registry override file (--registry)."
    )


HINT_MISMATCH = (
    "The files on the mirrors differ from what the registry expects: a mirror's content or the registry entry "
    "(size/sha256) changed. Check for a newer lipsync-tool, or give the right sha256/size or another mirror "
    "with --registry."
)
HINT_NETWORK = (
    "Check your network or proxy (HTTPS_PROXY), try again later (an interrupted download resumes), "
    "or point --registry at a mirror you can reach."
)
HINT_GONE = "The mirrors refused the file or no longer have it: point --registry at another mirror, or check for a newer lipsync-tool."
HINT_NO_NETWORK = (
    "Check your connection or proxy (HTTPS_PROXY); or run with --offline and a cache filled on a machine with "
    "network (copy it, or set LIPSYNC_TOOL_CACHE); or give local file:// mirrors with --registry."
)


def failure_hint(kinds: list[str]) -> str:
    """The hint for a download where every mirror failed, from the kinds of their failures."""
    network = [k for k in kinds if k in ("dns", "refused", "connect", "tls", "timeout", "reset", "http-retry")]
    if "mismatch" in kinds and not network:
        return HINT_MISMATCH
    if network:
        extra = " Some mirrors also served other bytes than the registry expects: if that persists, a mirror's content or the registry entry (size/sha256) changed." if "mismatch" in kinds else ""
        return HINT_NETWORK + extra
    if "http" in kinds or "missing" in kinds:
        return HINT_GONE
    return HINT_NETWORK


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
        kinds: list[str] = []  # failure_kind of each attempt, for the final error
        unresolved: list[str] = []  # hosts whose names could not be resolved
        local_only = 0  # failed attempts on file:// mirrors or unusable URLs
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
                attempts.append((url, str(exc)))
                kinds.append(exc.kind)
                local_only += _scheme(url) == "file" or exc.kind == "unusable"
                if exc.host and exc.host not in unresolved:
                    unresolved.append(exc.host)
                log.info("%s: %s: %s", spec.name, url, exc)
                continue
            except _Mismatch as exc:
                partial.reset()
                if resumed:  # the leftover partial was bad, not necessarily this mirror: once more from zero
                    resumed = False
                    log.info("%s: the resumed partial download did not verify; fetching %s from the start", spec.name, url)
                    queue.insert(0, url)
                    continue
                again = url in mismatched
                attempts.append((url, "size or sha256 mismatch" + (" again" if again else "")))
                kinds.append("mismatch")
                local_only += _scheme(url) == "file"
                mismatched.append(url)
                if queue:
                    then = "The next mirror will be tried."
                elif not mismatch_retried:
                    then = "Trying this mirror once more, from the start."
                else:
                    then = "No mirror is left."
                log.warning("%s %s", exc, then)
                continue
            except OSError as exc:  # the disk, not the mirror: no point trying others
                raise ResourceError(f"cannot write {partial.path}: {exc.strerror or exc}", subject=spec.name, hint="Free disk space or choose another --cache-dir.") from None
            with open(partial.path, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(partial.path, dest)
            write_stamp(dest, spec.sha256)
            return FetchResult(dest, spec.sha256, "downloaded", url=url, bytes_transferred=transferred, attempts=attempts)
        # Every mirror failed.  A partial with a good prefix stays for a later resume.
        # Every network mirror failed because no name resolves (file:// ones count as they fail): no network.
        no_network = sum(k in NO_NETWORK_KINDS for k in kinds)
        if no_network and no_network + local_only == len(kinds):
            raise NetworkUnavailableError(spec.name, attempts, unresolved, hint=HINT_NO_NETWORK)
        raise DownloadError(spec.name, attempts, hint=failure_hint(kinds))

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

    def _request(self, spec: CheckpointSpec, url: str, partial: _Partial) -> tuple[int, bool]:
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
    def _verify(spec: CheckpointSpec, url: str, partial: _Partial) -> bool:
        got = partial.hexdigest()
        if partial.size != spec.size or got != spec.sha256:
            raise _Mismatch(mismatch_message(spec, url, partial.size, got))
        return True

    def _from_file(self, spec: CheckpointSpec, url: str, partial: _Partial) -> int:
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


__all__ = ["Downloader", "FetchResult", "download_action", "failure_kind", "parse_retry_after", "retry_decision"]
