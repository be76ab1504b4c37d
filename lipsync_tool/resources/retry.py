"""The download failure policy, pure: classify a failed request, decide whether to retry, explain.

``retry_decision`` is the whole retry policy: retry only what a retry can fix
(timeouts, cut or reset connections, 5xx, 429, honouring ``Retry-After``),
with backoff; anything else sends the downloader to the next mirror.
``FailureLog`` collects each mirror's failure and turns them, when every
mirror failed, into the error with the hint that fits.
"""

from __future__ import annotations

import email.utils
import http.client
import socket
import time
import urllib.parse
from dataclasses import dataclass, field

from ..errors import DownloadError, NetworkUnavailableError

#: The longest wait a server's ``Retry-After`` can ask for.
RETRY_AFTER_CAP = 60.0

#: Failure kinds worth another request to the same mirror.
RETRYABLE_KINDS = frozenset({"timeout", "reset", "http-retry"})
#: Failure kinds that say the network itself is missing.
NO_NETWORK_KINDS = frozenset({"dns"})


class HTTPStatusFailure(Exception):
    """A response whose status is not 200/206 (or 416 on a resume)."""

    def __init__(self, status: int, retry_after: str | None = None):
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


class IncompleteBody(Exception):
    """The connection closed before the whole file arrived."""


def url_scheme(url: str) -> str:
    try:
        return urllib.parse.urlsplit(url).scheme
    except ValueError:  # e.g. a broken IPv6 literal
        return ""


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


@dataclass
class FailureLog:
    """The failed attempts of one download, for its result and for the error when every mirror failed."""

    #: (url, why) of each failed attempt, in order.
    attempts: list[tuple[str, str]] = field(default_factory=list)
    #: The ``failure_kind`` of each (or ``mismatch``, ``missing``).
    kinds: list[str] = field(default_factory=list)
    #: Hosts whose names could not be resolved.
    unresolved: list[str] = field(default_factory=list)
    #: Failed attempts on file:// mirrors or unusable URLs: they say nothing about the network.
    local_only: int = 0

    def record(self, url: str, why: str, kind: str, host: str | None = None) -> None:
        self.attempts.append((url, why))
        self.kinds.append(kind)
        self.local_only += url_scheme(url) == "file" or kind == "unusable"
        if host and host not in self.unresolved:
            self.unresolved.append(host)

    def error(self, name: str) -> DownloadError:
        """The error for *name* once every mirror failed.

        When every network mirror failed because no name resolves (file://
        ones count as they fail), the network itself is missing.
        """
        no_network = sum(k in NO_NETWORK_KINDS for k in self.kinds)
        if no_network and no_network + self.local_only == len(self.kinds):
            return NetworkUnavailableError(name, self.attempts, self.unresolved, hint=HINT_NO_NETWORK)
        return DownloadError(name, self.attempts, hint=failure_hint(self.kinds))
