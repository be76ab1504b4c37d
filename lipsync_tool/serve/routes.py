"""The service's endpoints (docs/service.md): the jobs API, OpenClone's
``POST /generate-deepfake``, engines, health, and the web page."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..errors import UsageError
from .executor import Executor
from .http import STATIC, ApiError, ServeConfig, check_token, hls_file, job_view, save_upload, video_response
from .jobs import job_dir
from .paths import Root
from .store import new_id

#: How long ``POST /generate-deepfake`` waits for its MP4 (or first segment).
GENERATE_TIMEOUT = 6 * 3600.0


class JobRequest(BaseModel):
    """``POST /v1/jobs`` as JSON (any run option may be added under its Python name)."""

    model_config = ConfigDict(extra="allow")
    image: str | None = Field(None, description="The portrait (or a video of a face), relative to the root.")
    audio: str | None = Field(None, description="The speech, relative to the root.")
    output: str | None = Field(None, description="The MP4 to write (default: jobs/<id>/video.mp4).")
    hls: str | bool | None = Field(None, description="A folder for an HLS stream, or true for jobs/<id>/hls.")
    engine: str | None = Field(None, description="sadtalker, wav2lip, … (default: the server's --engine).")
    sample: bool = Field(False, description="Use the bundled portrait and speech.")


class GenerateRequest(BaseModel):
    """OpenClone's ``POST /generate-deepfake`` (a leading ``/`` means the root)."""

    model_config = ConfigDict(extra="allow")
    imagePath: str
    audioPath: str
    mp4Path: str | None = None
    m3u8Path: str | None = None
    removeAudioFromMp4: bool = False
    cpu: bool = False
    tsSegmentLength: float | None = None
    engine: str | None = None


def add_routes(app: FastAPI, config: ServeConfig, root: Root, executor: Callable[[], Executor]) -> None:
    _add_job_routes(app, config, root, executor)
    _add_openclone(app, config, root, executor)
    _add_info_routes(app, config)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(422, "invalid_request", f"the body is not valid JSON ({exc})", "Send a JSON object, with Content-Type: application/json.") from None
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object", "See /docs for the fields.")
    return body


async def _multipart(request: Request, config: ServeConfig, root: Root) -> tuple[str, dict[str, Any], dict[str, Path]]:
    """A multipart submission: (job id, body, uploaded files by role)."""
    form = await request.form(max_files=2, max_fields=20)
    job_id = new_id()
    body: dict[str, Any] = {}
    uploaded: dict[str, Path] = {}
    try:
        if form.get("options"):
            try:
                body.update(json.loads(str(form["options"])))
            except ValueError as exc:
                raise ApiError(422, "invalid_request", f"the options field is not valid JSON ({exc})") from None
        for name in ("engine", "preset"):
            if form.get(name):
                body[name] = str(form[name])
        for name in ("hls", "sample"):
            if str(form.get(name, "")).lower() in ("1", "true", "on", "yes"):
                body[name] = True
        for role in ("image", "audio"):
            upload = form.get(role)
            if upload is not None and hasattr(upload, "read") and upload.filename:
                suffix = Path(upload.filename).suffix.lower()[:8] if Path(upload.filename).suffix.isascii() else ""
                uploaded[role] = await save_upload(upload, job_dir(root, job_id) / f"upload-{role}{suffix}", config.max_upload_bytes, role)
        if not body.get("sample") and len(uploaded) < 2:
            missing = [r for r in ("image", "audio") if r not in uploaded]
            raise ApiError(422, "invalid_request", f"upload {' and '.join(missing)} (or set sample=true)")
    except BaseException:
        import shutil

        shutil.rmtree(job_dir(root, job_id), ignore_errors=True)
        raise
    finally:
        await form.close()
    return job_id, body, uploaded


def _add_job_routes(app: FastAPI, config: ServeConfig, root: Root, executor: Callable[[], Executor]) -> None:
    @app.post("/v1/jobs", status_code=202, openapi_extra={"requestBody": {"content": {"application/json": {"schema": JobRequest.model_json_schema()}}}})
    async def submit(request: Request) -> JSONResponse:
        """Queue a job: JSON with root-relative paths, or a multipart upload of an image and an audio file."""
        check_token(config, request)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            job_id, body, uploaded = await _multipart(request, config, root)
        else:
            job_id, body, uploaded = new_id(), await _json_body(request), {}
        job, new = await run_in_threadpool(executor().submit, body, job_id=job_id, uploaded=uploaded)
        return JSONResponse({"id": job.id, "state": job.state, "deduplicated": not new}, status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})

    @app.get("/v1/jobs")
    def list_jobs(request: Request, state: str | None = None) -> dict[str, Any]:
        """The jobs, newest first."""
        check_token(config, request)
        jobs = executor().store.jobs(*([state] if state else []))
        return {"jobs": [job_view(j, root) for j in reversed(jobs)]}

    @app.get("/v1/jobs/{job_id}")
    def get_job(job_id: str, request: Request) -> dict[str, Any]:
        """A job's state, progress, result or error."""
        check_token(config, request)
        return job_view(_job(executor(), job_id), root)

    @app.get("/v1/jobs/{job_id}/video")
    def get_video(job_id: str, request: Request) -> Response:
        """The job's MP4, once it is done (byte ranges supported)."""
        check_token(config, request, query_ok=True)
        return video_response(root, _job(executor(), job_id))

    @app.get("/v1/jobs/{job_id}/hls/{name}")
    def get_hls(job_id: str, name: str, request: Request) -> Response:
        """The job's HLS playlist and segments, while they grow."""
        check_token(config, request, query_ok=True)
        path = hls_file(root, _job(executor(), job_id), name)
        if name.endswith(".m3u8"):
            return Response(path.read_bytes(), media_type="application/vnd.apple.mpegurl", headers={"Cache-Control": "no-cache"})
        return FileResponse(path, media_type="video/mp2t")

    @app.delete("/v1/jobs/{job_id}")
    def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
        """Cancel a queued or running job: its engine stops and its partial files go."""
        check_token(config, request)
        ex = executor()
        job = _job(ex, job_id)
        after = ex.cancel(job_id)
        if after is None:
            raise ApiError(409, "conflict", f"job {job_id} has already ended ({ex.store.get(job_id).state if ex.store.get(job_id) else job.state})")
        return job_view(after, root)


def _job(ex: Executor, job_id: str):
    job = ex.store.get(job_id)
    if job is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}", "It may have expired; GET /v1/jobs lists the jobs.")
    return job


def _openclone_body(req: GenerateRequest) -> dict[str, Any]:
    body: dict[str, Any] = dict(req.model_extra or {})
    body.update(image=req.imagePath, audio=req.audioPath, output=req.mp4Path or False, remove_audio=req.removeAudioFromMp4)
    if req.engine:
        body["engine"] = req.engine
    if req.cpu:
        body["device"] = "cpu"
    if req.tsSegmentLength is not None:
        body["hls_segment_seconds"] = req.tsSegmentLength
    if req.m3u8Path:
        playlist = Path(req.m3u8Path)
        if playlist.name != "index.m3u8":
            raise UsageError(
                f"the playlist must be named index.m3u8, not {playlist.name!r}", subject="m3u8Path", hint="Name the playlist <folder>/index.m3u8; the segments go beside it."
            )
        body["hls"] = str(playlist.parent)
    if not req.mp4Path and not req.m3u8Path:
        raise UsageError("give mp4Path, m3u8Path or both", subject="mp4Path")
    return body


def _openclone_paths(body: dict[str, Any], root: Root) -> dict[str, Any]:
    """OpenClone's leading ``/`` means the root: make every path root-relative."""
    for key in ("image", "audio", "output", "hls"):
        value = body.get(key)
        if isinstance(value, str):
            root.resolve(value, key, leading_slash_is_root=True)  # refuses '..' and links out
            body[key] = value.lstrip("/") if not value.startswith(str(root.path) + "/") else value
    return body


def _add_openclone(app: FastAPI, config: ServeConfig, root: Root, executor: Callable[[], Executor]) -> None:
    @app.post("/generate-deepfake")
    async def generate(req: GenerateRequest, request: Request) -> JSONResponse:
        """OpenClone's call: returns when the MP4 is published (or, HLS only, when the first segment plays)."""
        check_token(config, request)
        body = _openclone_paths(_openclone_body(req), root)
        ex = executor()
        job, _ = await run_in_threadpool(ex.submit, body)
        hls_only = not req.mp4Path
        deadline = time.monotonic() + GENERATE_TIMEOUT
        while time.monotonic() < deadline:
            job = await run_in_threadpool(ex.store.get, job.id)
            if job is None or job.state in ("done", "failed", "cancelled"):
                break
            if hls_only and _first_segment(Path(job.request["hls"])):
                break
            await asyncio.sleep(0.2)
        if job is None:
            raise ApiError(404, "not_found", "the job expired while it was awaited")
        view = job_view(job, root)
        if job.state in ("failed", "cancelled"):
            err = view["error"]
            status = 500 if err["code"] == "engine" else 409 if job.state == "cancelled" else 503 if err["code"] == "environment" else 400
            return JSONResponse({**err, "jobId": job.id}, status_code=status)
        return JSONResponse({"jobId": job.id, "state": job.state, "mp4Path": req.mp4Path, "m3u8Path": req.m3u8Path, "report": (job.result or {}).get("report")})


def _first_segment(hls: Path) -> bool:
    playlist = hls / "index.m3u8"
    try:
        return any(line.strip() and not line.startswith("#") for line in playlist.read_text().splitlines())
    except OSError:
        return False


def _add_info_routes(app: FastAPI, config: ServeConfig) -> None:
    @app.get("/healthz")
    def healthz(request: Request) -> dict[str, Any]:
        """Liveness and the queue's counts (no token needed)."""
        return {"status": "ok", "version": __version__, "jobs": request.app.state.executor().store.counts()}

    @app.get("/v1/engines")
    def engines(request: Request) -> dict[str, Any]:
        """The engines, their options and presets."""
        check_token(config, request)
        from ..engines import engine_classes
        from ..pipeline import list_options

        out = []
        for name, cls in engine_classes().items():
            presets = _presets(cls)
            options = [{"name": o.name, "type": o.type, "default": _jsonable(o.default), "help": o.help} for o in list_options(name) if o.engine == name]
            out.append({"name": name, "display_name": cls.display_name, "presets": presets, "options": options})
        return {"default": config.engine, "engines": out}

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        page = STATIC / "index.html"
        if not page.is_file():
            raise ApiError(404, "not_found", "the web page is not installed")
        return FileResponse(page, media_type="text/html")

    @app.get("/static/{name:path}", include_in_schema=False)
    def static(name: str) -> Response:
        path = (STATIC / name).resolve()
        if not path.is_relative_to(STATIC.resolve()) or not path.is_file():
            raise ApiError(404, "not_found", f"no static file {name!r}")
        return FileResponse(path)


def _presets(cls) -> list[str]:
    info = cls.Options.model_fields.get("preset")
    if info is None:
        return []
    import typing

    args = [a for a in typing.get_args(info.annotation) if a is not type(None)]
    values: list[str] = []
    for a in args:
        values.extend(str(v) for v in typing.get_args(a))
    return values


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)
