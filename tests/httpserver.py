"""A loopback HTTP server for download tests.

Serves registered byte strings with Range support, and misbehaves on demand:
404, 500 (a given number of times), cutting the connection after N bytes,
or serving wrong bytes.  It counts requests and bytes sent per path.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    data: bytes
    status: int | None = None  # force this status (404, 403, 500…)
    fail_times: int = 0  # answer 500 this many times first
    cut_after: int | None = None  # close the connection after this many body bytes (once)
    cut_times: int = 1
    wrong: bool = False  # serve corrupted bytes of the right length
    honour_range: bool = True
    delay: float = 0.0
    requests: list[dict] = field(default_factory=list)
    bytes_sent: int = 0


class LoopbackServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                route = server.routes.get(self.path)
                rng = self.headers.get("Range")
                if route is None:
                    self._plain(404)
                    return
                route.requests.append({"range": rng})
                if route.status:
                    self._plain(route.status)
                    return
                if route.fail_times > 0:
                    route.fail_times -= 1
                    self._plain(500)
                    return
                data = route.data
                if route.wrong:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start = 0
                if rng and route.honour_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if route.delay:
                    import time

                    time.sleep(route.delay)
                if route.cut_after is not None and route.cut_times > 0:
                    route.cut_times -= 1
                    part = body[: route.cut_after]
                    self.wfile.write(part)
                    route.bytes_sent += len(part)
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                view = memoryview(body)
                for i in range(0, len(view), 1 << 20):
                    self.wfile.write(view[i : i + (1 << 20)])
                route.bytes_sent += len(body)

            def _plain(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, path: str, data: bytes, **kw) -> Route:
        self.routes[path] = Route(data=data, **kw)
        return self.routes[path]

    def url(self, path: str) -> str:
        return self.base + path

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
