"""ASGI middleware of the service: a cap on request bodies, and an access log
that never prints a query string (where a ``?token=`` may be)."""

from __future__ import annotations

import json
import logging
import time

log = logging.getLogger("lipsync_tool.serve.access")


class BodyLimit:
    """Answer 413 to a body over *max_bytes*: at once from ``Content-Length``,
    or as soon as a streamed body passes the limit."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        # Room for the multipart framing and the small fields around the files.
        limit = self.max_bytes + 64 * 1024
        if length is not None and length.isdigit() and int(length) > limit:
            return await _too_large(send, self.max_bytes)
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await _too_large(send, self.max_bytes)


class _TooLarge(Exception):
    pass


async def _too_large(send, max_bytes: int) -> None:
    body = json.dumps(
        {"code": "too_large", "message": f"the request is over the upload limit of {max_bytes // (1024 * 1024)} MB", "hint": "Send smaller files, or raise --max-upload-mb."}
    ).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class AccessLog:
    """One line per request: method, path (no query), status, milliseconds."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.monotonic()
        status = 0

        async def logged_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        finally:
            log.info("%s %s %d %.0fms", scope.get("method"), scope.get("path"), status, (time.monotonic() - t0) * 1000)
