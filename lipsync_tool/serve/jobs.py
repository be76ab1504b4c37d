"""What a client asks for, checked and made concrete before it is queued.

:func:`build_spec` turns a request (root-relative paths, an engine and run
options under their Python names) into a :class:`JobSpec`: real paths inside
the root, options validated by the same models as the CLI's, every path the
job writes checked, the job's lane, and the key that makes two identical
requests one job.  Everything a client can get wrong fails here, at
submission, with a typed error (the HTTP layer answers 4xx).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .paths import Root

#: Run options that belong to the server, never to a request.
SERVER_OPTIONS = frozenset({"python", "cache_dir", "registry", "install_deps", "runner", "report", "keep_temp", "offline", "preprocess_cache"})
#: The request's own fields (the rest are run options).
REQUEST_FIELDS = ("image", "audio", "output", "hls", "engine", "sample")
#: Where the service puts a job's uploads and default outputs, under the root.
JOBS_DIR = "jobs"


@dataclass
class JobSpec:
    """A request made concrete (stored as JSON in the job store)."""

    id: str
    engine: str
    image: str
    audio: str
    output: str | None
    hls: str | None
    options: dict[str, Any]
    lane: str
    dedupe_key: str
    #: Files and folders the service made for this job (deleted when it expires).
    owned: list[str] = field(default_factory=list)

    def to_request(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("engine", "image", "audio", "output", "hls", "options", "lane", "owned")}

    @classmethod
    def from_request(cls, job_id: str, request: dict[str, Any], dedupe_key: str | None) -> JobSpec:
        return cls(job_id, dedupe_key=dedupe_key or "", **request)


@dataclass(frozen=True)
class Defaults:
    """The server's side of every request."""

    engine: str
    lanes: tuple[str, ...]


def job_dir(root: Root, job_id: str) -> Path:
    return root.path / JOBS_DIR / job_id


def build_spec(root: Root, job_id: str, body: dict[str, Any], defaults: Defaults, *, uploaded: dict[str, Path] | None = None) -> JobSpec:
    """Check *body* and make it a :class:`JobSpec` (*uploaded*: role → file
    the service saved in the job's folder)."""
    from ..engines import get_engine
    from ..pipeline import split_options
    from ..run import check_paths

    uploaded = dict(uploaded or {})
    if not isinstance(body, dict):
        raise UsageError("the request must be a JSON object", subject="body")
    engine_name = body.get("engine") or defaults.engine
    if not isinstance(engine_name, str):
        raise UsageError("must be an engine's name", subject="engine")
    engine = get_engine(engine_name)
    options = {k: v for k, v in body.items() if k not in REQUEST_FIELDS}
    refused = sorted(SERVER_OPTIONS & options.keys())
    if refused:
        raise UsageError(f"{', '.join(refused)} belong(s) to the server, not to a request", subject=refused[0], hint="Set it when starting `lipsync-tool serve`.")
    lane = _lane(options, defaults)
    own = job_dir(root, job_id)
    if body.get("sample"):
        uploaded.update(_copy_samples(own))
    image = uploaded.get("image") or root.resolve(_required(body, "image"), "image")
    audio = uploaded.get("audio") or root.resolve(_required(body, "audio"), "audio")
    output = _output(root, body.get("output"), own)
    hls = _hls(root, body.get("hls"), own)
    _confine_path_options(root, engine, options)
    run_opts, engine_opts = split_options(engine, {**options, "hls": hls, "device": lane})
    if _confine_named_files(root, engine, engine_opts, options):
        run_opts, engine_opts = split_options(engine, {**options, "hls": hls, "device": lane})
    check_role(image, "image")
    check_role(audio, "audio")
    for target in (output, hls):
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            root.check_inside(target.parent, "output")
    check_paths(engine, engine_opts, run_opts, image, audio, output)
    clean = {k: v for k, v in run_opts.model_dump(mode="json", exclude_unset=True).items() if k not in ("engine", "hls", "device")}
    clean.update(engine_opts.model_dump(mode="json", exclude_unset=True))
    clean["device"] = lane
    key = _dedupe_key(engine.name, clean, image, audio, None if body.get("output") is None else output, None if body.get("hls") in (None, True) else hls)
    return JobSpec(job_id, engine.name, str(image), str(audio), str(output) if output else None, str(hls) if hls else None, clean, lane, key, [str(own)])


def _required(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise UsageError("is required (a path inside the server's root), or upload the file", subject=name)
    if not isinstance(value, str):
        raise UsageError("must be a path (a string)", subject=name)
    return value


def _lane(options: dict[str, Any], defaults: Defaults) -> str:
    device = str(options.pop("device", None) or defaults.lanes[0]).strip().lower()
    if device == "cuda":
        device = "cuda:0" if "cuda:0" in defaults.lanes else device
    if device not in defaults.lanes:
        raise UsageError(f"this server has no lane for device {device!r}; it runs on {', '.join(defaults.lanes)}", subject="device")
    return device


def _output(root: Root, value: Any, own: Path) -> Path | None:
    if value is None:
        return own / "video.mp4"
    if value is False:
        return None
    if not isinstance(value, str):
        raise UsageError("must be a path inside the server's root, or false for HLS only", subject="output")
    return root.resolve(value, "output")


def _hls(root: Root, value: Any, own: Path) -> Path | None:
    if value is None or value is False:
        return None
    if value is True:
        return own / "hls"
    if not isinstance(value, str):
        raise UsageError("must be a folder inside the server's root, or true", subject="hls")
    return root.resolve(value, "hls")


def _confine_path_options(root: Root, engine, options: dict[str, Any]) -> None:
    """Engine options that name files (a reference video, a checkpoint) resolve inside the root too."""
    for name, info in engine.Options.model_fields.items():
        if name in options and options[name] is not None and "Path" in str(info.annotation):
            options[name] = str(root.resolve(str(options[name]), name))


def _confine_named_files(root: Root, engine, engine_opts, options: dict[str, Any]) -> bool:
    """Files an option names in another type (Wav2Lip's checkpoint: a name or a
    PATH) resolve inside the root too.  Whether an option changed."""
    changed = False
    for path in [*engine.user_files(engine_opts).values(), *engine.staged_refs(engine_opts).values()]:
        for name, value in options.items():
            if isinstance(value, str) and Path(value) == Path(path) and not Path(value).is_relative_to(root.path):
                options[name] = str(root.resolve(value, name))
                changed = True
    return changed


#: What each input role may be, by the file's first bytes (``targets.sniff``).
ROLE_KINDS = {"image": ("image", "MP4", "Matroska", "AVI", "GIF"), "audio": ("audio", "MP4", "Matroska")}


def check_role(path: Path, role: str) -> None:
    """An input that is plainly the wrong kind (a WAV given as the image) is refused now."""
    from ..errors import InputError
    from ..targets import sniff

    kind = sniff(path)
    if kind is not None and not any(k in kind for k in ROLE_KINDS[role]):
        raise InputError(f"is {kind}, not {'a portrait image or video' if role == 'image' else 'speech audio'} (given as {role})", subject=path.name, hint=f"Give {role} the right file.")


def _copy_samples(own: Path) -> dict[str, Path]:
    from importlib.resources import as_file

    from ..data import SAMPLES, sample

    own.mkdir(parents=True, exist_ok=True)
    copied = {}
    for role, name in SAMPLES.items():
        with as_file(sample(role)) as src:
            dest = own / f"sample-{name}"
            shutil.copyfile(src, dest)
            copied[role] = dest
    return copied


def _dedupe_key(engine: str, options: dict[str, Any], image: Path, audio: Path, output: Path | None, hls: Path | None) -> str:
    """Same engine, options and input contents, and the same named outputs: the same job."""
    from ..resources.cache import sha256_file

    what = {"engine": engine, "options": options, "image": sha256_file(image), "audio": sha256_file(audio), "output": str(output or ""), "hls": str(hls or "")}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


__all__ = ["JOBS_DIR", "Defaults", "JobSpec", "build_spec", "check_role", "job_dir"]
