"""What the service's routes share: its settings, the error answer and its
status by error category (:func:`status_for`), the token check, and how a
job, its video, its HLS files and an upload are answered or taken."""

from __future__ import annotations

import hmac
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import FileResponse, Response

from ..engines import DEFAULT_ENGINE
from ..errors import LipsyncError, UsageError
from .jobs import ROLE_KINDS
from .paths import Root
from .store import StoredJob

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
#: HTTP status by error category (docs/service.md); UsageError (a bad option) is 422.
STATUS = {"input": 400, "forbidden": 403, "busy": 429, "engine": 500, "environment": 503, "interrupted": 409, "cancelled": 409}
_HLS_FILE = re.compile(r"^(index\.m3u8|segment_\d+\.ts)$")


@dataclass
class ServeConfig:
    root: Path
    db: Path
    token: str | None = None
    max_queue: int = 64
    expire_seconds: float = 24 * 3600.0
    max_upload_bytes: int = 100 * 1024 * 1024
    cors_origins: list[str] = field(default_factory=list)
    engine: str = DEFAULT_ENGINE
    runner: str | None = None
    lanes: tuple[str, ...] = ("auto", "cpu")
    debug: bool = False


class ApiError(Exception):
    """An answer other than 2xx that is not a library error (404, 409, 401, 415, …)."""

    def __init__(self, status: int, code: str, message: str, hint: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.hint, self.headers = status, code, message, hint, headers


def status_for(exc: LipsyncError) -> int:
    if isinstance(exc, UsageError):
        return 422
    return STATUS.get(exc.category, 500)


def error_body(code: str, message: str, hint: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"code": code, "message": message, "hint": hint, **extra}


def job_view(job: StoredJob, root: Root) -> dict[str, Any]:
    """A stored job as the API shows it (links, relative paths, errors as {code, message, hint})."""
    out = job.to_dict()
    base = f"/v1/jobs/{job.id}"
    links = {"self": base}
    if job.request.get("output"):
        links["video"] = base + "/video"
    if job.request.get("hls"):
        links["hls"] = base + "/hls/index.m3u8"
    out["links"] = links
    out["engine"] = job.request.get("engine")
    if job.error is not None:
        err = job.error
        code = "cancelled" if job.state == "cancelled" else err.get("category", "engine")
        message = f"{err['subject']}: {err['message']}" if err.get("subject") else err.get("message", "")
        out["error"] = error_body(code, message, err.get("hint"))
    return out


def check_token(config: ServeConfig, request: Request, *, query_ok: bool = False) -> None:
    """The token, when the server has one: ``Authorization: Bearer`` (or ``?token=`` on media GETs)."""
    if not config.token:
        return
    given = ""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        given = header[7:].strip()
    elif query_ok:
        given = request.query_params.get("token", "")
    if not given or not hmac.compare_digest(given.encode(), config.token.encode()):
        raise ApiError(401, "unauthorized", "a valid token is needed" if given else "this server needs a token", "Send Authorization: Bearer <token>.", {"WWW-Authenticate": "Bearer"})


def hls_file(root: Root, job: StoredJob, name: str) -> Path:
    if not job.request.get("hls"):
        raise ApiError(404, "not_found", f"job {job.id} writes no HLS stream")
    if not _HLS_FILE.match(name):
        raise ApiError(404, "not_found", f"{name!r} is not a file of an HLS stream (index.m3u8, segment_N.ts)")
    path = Path(job.request["hls"]) / name
    root.check_inside(path, "hls")
    if not path.is_file():
        raise ApiError(404, "not_found", f"{name} is not there yet", "Poll the playlist; segments appear as the job renders.")
    return path


def video_response(root: Root, job: StoredJob) -> Response:
    if job.state != "done":
        raise ApiError(409, "conflict", f"job {job.id} is {job.state}; its video comes when it is done")
    output = job.request.get("output")
    if not output:
        raise ApiError(404, "not_found", f"job {job.id} wrote HLS only", "Play /v1/jobs/{id}/hls/index.m3u8.")
    path = Path(output)
    root.check_inside(path, "output")
    if not path.is_file():
        raise ApiError(404, "not_found", f"job {job.id}'s video is gone (expired or removed)")
    return FileResponse(path, media_type="video/mp4", filename=path.name)


async def save_upload(upload, dest: Path, limit: int, role: str) -> Path:
    """An uploaded file saved as *dest*, its content sniffed (never its name)."""
    from ..targets import sniff

    dest.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with open(dest, "wb") as f:
        while chunk := await upload.read(1 << 20):
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "too_large", f"the {role} upload is over {limit // (1024 * 1024)} MB", "Send a smaller file, or raise --max-upload-mb.")
            f.write(chunk)
    if size == 0:
        raise ApiError(400, "input", f"the {role} upload is empty")
    kind = sniff(dest) or ""
    known = any(k in kind for k in ROLE_KINDS[role])
    if not known and not (_pillow_image(dest) if role == "image" else _has_audio(dest)):
        what = kind or "not a media file lipsync-tool knows"
        raise ApiError(415, "unsupported_media", f"the {role} upload ({upload.filename!r}) is {what}", f"Upload {'a portrait image or a video' if role == 'image' else 'an audio file'}.")
    return dest


def _pillow_image(path: Path) -> bool:
    """An image format the magic numbers do not list, that Pillow can read."""
    try:
        from PIL import Image

        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:  # noqa: BLE001 - not an image
        return False


def _has_audio(path: Path) -> bool:
    """Audio the magic numbers do not know (AAC, M4A, Opus…): ffmpeg finds an audio stream."""
    try:
        from ..media import probe

        return probe(path).audio is not None
    except Exception:  # noqa: BLE001 - not media at all
        return False


__all__ = ["STATIC", "ApiError", "ServeConfig", "check_token", "error_body", "hls_file", "job_view", "save_upload", "status_for", "video_response"]
