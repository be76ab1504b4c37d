"""The line protocol between lipsync-tool and a warm worker (stdlib only).

Parent → child, on the child's stdin: one JSON object per line::

    {"op": "job", "id": 1, "job": {...}}     render one job
    {"op": "quit"}                            exit

Child → parent, on a private copy of the child's original stdout (the child
points fd 1 at its stderr, so whatever upstream prints lands in the log): one
JSON object per line, ``type`` first::

    {"type": "ready", "python": "...", "pid": 123}
    {"type": "progress", "stage": "render", "done": 10, "total": 75}
    {"type": "video", "width": 256, "height": 256, "fps": 25.0, "pix_fmt": "bgr24"}
    {"type": "frames", "count": 4, "bytes": 786432}   followed by exactly that many raw bytes
    {"type": "note", "key": "preprocess", "value": {...}}  a fact for the run report
    {"type": "done", "id": 1, "frames": 75, "info": {...}}
    {"type": "error", "id": 1, "error": "ValueError", "message": "...", "kind": "..."}

A job that fails answers ``error`` and the worker stays up for the next one;
the traceback goes to the log, where the engine's error translation reads it
as it reads a subprocess's output.
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO

#: Bumped when a message changes meaning; the child says it in "ready".
VERSION = 1
#: The child's log lines ``<END_MARK> <id> starts``, ``… done: …`` and ``… failed``
#: frame each job in the log.  The log and the channel are two pipes, so the
#: parent waits for a job's last line before it reads the job's log.
END_MARK = "[lipsync-tool worker] job"


def encode(message: dict[str, Any]) -> bytes:
    return (json.dumps(message, separators=(",", ":"), default=str) + "\n").encode("utf-8")


class ProtocolError(Exception):
    """The other side said something that is not the protocol (or hung up)."""


def read_message(stream: BinaryIO) -> tuple[dict[str, Any], bytes | None]:
    """The next message, and its payload for ``frames``.  Raises EOFError at
    the end of the stream, ProtocolError on garbage."""
    line = stream.readline()
    if not line:
        raise EOFError("the worker closed its channel")
    try:
        message = json.loads(line)
    except ValueError:
        raise ProtocolError(f"not a protocol message: {line[:200]!r}") from None
    if not isinstance(message, dict) or ("type" not in message and "op" not in message):
        raise ProtocolError(f"not a protocol message: {line[:200]!r}")
    payload = None
    if message.get("type") == "frames":
        size = int(message["bytes"])
        payload = _read_exact(stream, size)
    return message, payload


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    parts, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError(f"the worker closed its channel {left} bytes into a frame batch")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)
