"""The ``serve`` command: the HTTP service (docs/service.md), on FastAPI and uvicorn."""

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..constants import ENV_CACHE, ENV_DEBUG, ENV_TOKEN, env_flag
from ..errors import DependencyError, UsageError
from .console import guard, out

#: OpenClone's port.
DEFAULT_PORT = 5001


def add_commands(app: typer.Typer) -> None:
    @app.command(
        "serve",
        help=(
            "Run the HTTP service: OpenClone's POST /generate-deepfake, a jobs API (/v1/jobs), "
            "a web page at /, and OpenAPI at /docs. Needs the package's serve extra (README: Service)."
        ),
    )
    def serve(
        root: Annotated[Path, typer.Option("--root", help="The folder every request's paths resolve in; uploads and default outputs go to ROOT/jobs/.")],
        host: Annotated[str, typer.Option("--host", help="The address to listen on (anything but loopback needs --token).")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", min=1, max=65535, help="The port (5001 is OpenClone's).")] = DEFAULT_PORT,
        token: Annotated[Optional[str], typer.Option("--token", envvar=ENV_TOKEN, show_envvar=True, help="Require Authorization: Bearer TOKEN.")] = None,
        db: Annotated[Optional[Path], typer.Option("--db", help="The SQLite job store (default: jobs.sqlite3 in the cache dir).")] = None,
        max_queue: Annotated[int, typer.Option("--max-queue", min=1, help="Queued jobs at most; more answer 429.")] = 64,
        expire_hours: Annotated[float, typer.Option("--expire-hours", min=0.0001, help="Finished jobs and the files made for them go after this long.")] = 24.0,
        max_upload_mb: Annotated[int, typer.Option("--max-upload-mb", min=1, help="The largest upload (413 above).")] = 100,
        cors_origin: Annotated[Optional[list[str]], typer.Option("--cors-origin", help="Allow this origin (CORS is off unless given; repeatable).")] = None,
        engine: Annotated[Optional[str], typer.Option("--engine", "-e", help="The engine of requests that name none (default: the CLI's default engine).")] = None,
        runner: Annotated[Optional[str], typer.Option("--runner", help="worker (warm, the default where the engine has one) or subprocess.")] = None,
        device: Annotated[Optional[list[str]], typer.Option("--device", help="A device to run on, one lane each (repeatable; default: auto, plus a cpu lane).")] = None,
        log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
    ) -> None:
        guard(do_serve, root, host, port, token, db, max_queue, expire_hours, max_upload_mb, cors_origin or [], engine, runner, device or [], log_level)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def lanes_for(devices: list[str]) -> tuple[str, ...]:
    """One lane per device; a cpu lane too, for requests that ask for the CPU."""
    from ..config import RunOptions

    lanes: list[str] = []
    for d in devices or ["auto"]:
        value = d.strip().lower()
        RunOptions.model_validate({"engine": "x", "device": value})  # auto, cpu, cuda or cuda:N
        value = "cuda:0" if value == "cuda" else value
        if value not in lanes:
            lanes.append(value)
    if "cpu" not in lanes:
        lanes.append("cpu")
    return tuple(lanes)


def do_serve(root, host, port, token, db, max_queue, expire_hours, max_upload_mb, cors_origin, engine, runner, device, log_level) -> int:
    try:
        import uvicorn

        from ..serve.app import ServeConfig, create_app
    except ImportError as exc:
        raise DependencyError(f"the service needs {exc.name}", hint="pip install 'lipsync-tool[serve]'") from None
    from ..config import default_cache_dir
    from ..engines import get_engine
    from .console import setup_logging

    if not is_loopback(host) and not token:
        raise UsageError(f"listening on {host} without a token would let anyone on the network run jobs", subject="--host", hint="Give --token (or LIPSYNC_TOOL_TOKEN), or listen on 127.0.0.1.")
    if runner not in (None, "worker", "subprocess"):
        raise UsageError(f"must be worker or subprocess, not {runner!r}", subject="--runner")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UsageError("is not a folder", subject=root, hint="Create it, or give the folder the service may read and write in.")
    from ..engines import DEFAULT_ENGINE

    engine = engine or DEFAULT_ENGINE
    get_engine(engine)  # an unknown engine fails now, not on the first request
    cache = Path(os.environ.get(ENV_CACHE) or default_cache_dir()).expanduser()
    config = ServeConfig(
        root=root,
        db=Path(db).expanduser() if db else cache / "jobs.sqlite3",
        token=token or None,
        max_queue=max_queue,
        expire_seconds=expire_hours * 3600.0,
        max_upload_bytes=max_upload_mb * 1024 * 1024,
        cors_origins=list(cors_origin),
        engine=engine,
        runner=runner,
        lanes=lanes_for(list(device)),
        debug=env_flag(ENV_DEBUG),
    )
    setup_logging(log_level)
    out(f"lipsync-tool serve: http://{host}:{port}/ (root {config.root}, jobs {config.db}, lanes {', '.join(config.lanes)})")
    uvicorn.run(create_app(config), host=host, port=port, log_level=log_level.lower(), access_log=False, server_header=False)
    return 0
