"""How downloads fail: retry only what a retry can fix, one clear error without
network, the right hint when the bytes differ from the registry (issue 10, item 4).

No timed assertions: every wait goes through the Downloader's sleep seam, which
these tests record.
"""

from __future__ import annotations

import email.utils
import os
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import urllib3.exceptions as u3

from conftest import spec_for
from lipsync_tool.engines.base import CheckpointSpec
from lipsync_tool.errors import DownloadError, NetworkUnavailableError
from lipsync_tool.resources import download
from lipsync_tool.resources.cache import Cache
from lipsync_tool.resources.download import Downloader, failure_kind, parse_retry_after, retry_decision

SIZE = 64 * 1024


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


# -- a scripted loopback server: per path, a list of answers, the last one repeats ----------------


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    wrong: bool = False  # the right length, the wrong bytes


class ScriptedServer:
    def __init__(self) -> None:
        self.scripts: dict[str, tuple[bytes, list[Answer]]] = {}
        self.requests: dict[str, int] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests[self.path] = server.requests.get(self.path, 0) + 1
                data, answers = server.scripts.get(self.path, (b"", [Answer(404)]))
                answer = answers.pop(0) if len(answers) > 1 else answers[0]
                body = b""
                if answer.status == 200:
                    body = bytes([data[0] ^ 0xFF]) + data[1:] if answer.wrong else data
                self.send_response(answer.status)
                for k, v in answer.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add(self, path: str, data: bytes, *answers: Answer) -> str:
        self.scripts[path] = (data, list(answers) or [Answer()])
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"


@pytest.fixture
def server():
    s = ScriptedServer()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def blob() -> bytes:
    return os.urandom(SIZE)


def fetch(cache: Cache, spec: CheckpointSpec, sleep: FakeSleep):
    dest = cache.checkpoint_path("eng", spec.name)
    return Downloader(sleep=sleep).ensure(spec, dest, cache.lock_path("ckpt", "eng", spec.name))


# -- no network ------------------------------------------------------------------------------------

MADE_UP = ("mirror-one.example.test", "mirror-two.example.test", "mirror-three.example.test")


@pytest.fixture
def no_dns(monkeypatch):
    """Name resolution fails for every host but loopback, like a machine without network."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host, *args, **kwargs):
        if host not in ("127.0.0.1", "::1", "localhost", None):
            asked.append(host)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_no_network_fails_once_per_mirror_without_sleeping_and_says_so(no_dns, cache, blob, tmp_path):
    urls = [f"https://{h}/model.pth" for h in MADE_UP]
    local = (tmp_path / "not-there.pth").as_uri()  # a file:// mirror that fails counts with the rest
    sleep = FakeSleep()
    with pytest.raises(NetworkUnavailableError) as info:
        fetch(cache, spec_for(blob, *urls, local), sleep)
    err = info.value
    assert isinstance(err, DownloadError)
    assert sleep.calls == []
    assert sorted(no_dns) == sorted(MADE_UP)  # one attempt per mirror
    assert [a[0] for a in err.attempts] == [*urls, local]
    assert err.hosts == list(MADE_UP)
    text = str(err)
    assert "no network" in text and all(h in text for h in MADE_UP)
    assert "--offline" in err.hint and "--registry" in err.hint and "proxy" in err.hint


def test_no_network_via_the_cli_exits_1_with_one_clear_message(no_dns, fake_engine, cli, monkeypatch):
    sleep = FakeSleep()
    monkeypatch.setattr(download, "default_sleep", sleep)
    monkeypatch.setenv("FAKE_ENGINE_CKPT_URLS", " ".join(f"https://{h}/fake.ckpt" for h in MADE_UP))
    r = cli("setup", "--engine", "fake")
    assert r.code == 1, r.output
    assert "Error: fake.ckpt: could not download: there seems to be no network" in r.stderr
    assert all(h in r.stderr for h in MADE_UP) and "--offline" in r.stderr
    assert "Traceback" not in r.stderr
    assert sleep.calls == [] and sorted(no_dns) == sorted(MADE_UP)


def test_refused_connection_is_not_retried(cache, blob):
    with socket.socket() as s:  # a loopback port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleep = FakeSleep()
    with pytest.raises(DownloadError) as info:
        fetch(cache, spec_for(blob, f"http://127.0.0.1:{port}/m.pth"), sleep)
    assert not isinstance(info.value, NetworkUnavailableError)
    assert sleep.calls == [] and info.value.attempts[0][1] == "connection refused"


# -- HTTP statuses ---------------------------------------------------------------------------------


def test_503_is_retried_honouring_retry_after_and_then_succeeds(server, cache, blob):
    url = server.add("/m.pth", blob, Answer(503), Answer(503, {"Retry-After": "3"}), Answer())
    sleep = FakeSleep()
    r = fetch(cache, spec_for(blob, url), sleep)
    assert r.action == "downloaded" and r.path.read_bytes() == blob
    assert server.requests["/m.pth"] == 3 and sleep.calls == [1.0, 3.0]


def test_404_is_not_retried(server, cache, blob):
    gone = server.add("/gone.pth", blob, Answer(404))
    also = server.add("/also.pth", blob, Answer(410))
    sleep = FakeSleep()
    with pytest.raises(DownloadError) as info:
        fetch(cache, spec_for(blob, gone, also), sleep)
    assert server.requests == {"/gone.pth": 1, "/also.pth": 1} and sleep.calls == []
    assert "network" not in info.value.hint and "--registry" in info.value.hint


def test_429_honours_retry_after_seconds(server, cache, blob):
    url = server.add("/m.pth", blob, Answer(429, {"Retry-After": "2"}), Answer())
    sleep = FakeSleep()
    r = fetch(cache, spec_for(blob, url), sleep)
    assert r.path.read_bytes() == blob
    assert sleep.calls == [2.0] and server.requests["/m.pth"] == 2


# -- bytes that differ from the registry -----------------------------------------------------------


def test_every_mirror_serving_wrong_bytes_blames_the_mirror_content_or_registry(server, cache, blob):
    urls = [server.add(f"/{i}.pth", blob, Answer(wrong=True)) for i in range(3)]
    with pytest.raises(DownloadError) as info:
        fetch(cache, spec_for(blob, *urls), FakeSleep())
    hint = info.value.hint
    assert "registry" in hint and "mirror" in hint and "content" in hint and "sha256" in hint
    assert "network" not in hint.lower() and "proxy" not in hint.lower()
    assert not cache.checkpoint_path("eng", "model.pth").exists()
    assert not Cache.partials(cache.checkpoint_path("eng", "model.pth"))


def test_wrong_bytes_from_the_last_mirror_are_fetched_once_more(server, cache, blob):
    first = server.add("/first.pth", blob, Answer(404))
    last = server.add("/last.pth", blob, Answer(wrong=True), Answer())
    r = fetch(cache, spec_for(blob, first, last), FakeSleep())
    assert r.action == "downloaded" and r.url == last and r.path.read_bytes() == blob
    assert server.requests["/last.pth"] == 2
    assert r.attempts == [(first, "HTTP 404"), (last, "size or sha256 mismatch")]


def test_a_mirror_that_keeps_serving_wrong_bytes_is_retried_only_once(server, cache, blob):
    url = server.add("/m.pth", blob, Answer(wrong=True))
    with pytest.raises(DownloadError):
        fetch(cache, spec_for(blob, url), FakeSleep())
    assert server.requests["/m.pth"] == 2


# -- the pure policy -------------------------------------------------------------------------------


def _requests_error(inner: BaseException, cls=requests.ConnectionError) -> BaseException:
    """What requests raises: its exception around urllib3's MaxRetryError around the cause."""
    return cls(u3.MaxRetryError(None, "/x", inner))


def test_failure_kind_classifies_requests_errors():
    dns = u3.NameResolutionError("h.example", None, socket.gaierror(-3, "Temporary failure in name resolution"))
    refused = u3.NewConnectionError(None, "refused")
    refused.__cause__ = ConnectionRefusedError(111, "Connection refused")
    unreachable = u3.NewConnectionError(None, "unreachable")
    unreachable.__cause__ = OSError(101, "Network is unreachable")
    assert failure_kind(_requests_error(dns)) == "dns"
    assert failure_kind(_requests_error(refused)) == "refused"
    assert failure_kind(_requests_error(unreachable)) == "connect"
    assert failure_kind(_requests_error(u3.ConnectTimeoutError(), requests.ConnectTimeout)) == "timeout"
    assert failure_kind(requests.ReadTimeout()) == "timeout"
    assert failure_kind(requests.ConnectionError(u3.ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")))) == "reset"
    assert failure_kind(requests.exceptions.ChunkedEncodingError()) == "reset"
    assert failure_kind(requests.exceptions.InvalidSchema("ftp")) == "unusable"
    assert (failure_kind(503), failure_kind(429), failure_kind(404), failure_kind(403)) == ("http-retry", "http-retry", "http", "http")


def test_retry_decision_retries_only_what_can_help():
    dns = _requests_error(u3.NameResolutionError("h", None, socket.gaierror(-2, "Name or service not known")))
    assert retry_decision(dns, 1) is None
    assert retry_decision(404, 1) is None and retry_decision(401, 1) is None
    assert [retry_decision(503, n) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 8.0, None]
    assert retry_decision(requests.ReadTimeout(), 1, backoff=0.5) == 0.5
    assert retry_decision(requests.exceptions.ChunkedEncodingError(), 3, retries=2) is None
    assert retry_decision(429, 1, retry_after="7") == 7.0
    assert retry_decision(429, 1, retry_after="3600") == download.RETRY_AFTER_CAP
    assert retry_decision(429, 1, retry_after="soon") == 1.0  # unreadable: the backoff
    assert retry_decision(404, 1, retry_after="2") is None


def test_retry_after_as_an_http_date():
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    assert retry_decision(503, 1, retry_after=email.utils.formatdate(now + 5, usegmt=True), now=now) == 5.0
    assert parse_retry_after(None) is None and parse_retry_after("not a date") is None
