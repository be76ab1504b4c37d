"""Typed settings: the options of a run, of the upscale, and the environment.

The same models serve the CLI, the Python API and batch manifests, so an
option is validated the same way wherever it comes from.  Engine-specific
options live in each engine's own ``Options`` model (``engines/``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from . import naming
from .constants import ENV_CACHE, ENV_DEBUG, ENV_FFMPEG, ENV_OFFLINE, ENV_REGISTRY, OUTPUT_EXTENSIONS, X264_PRESETS, env_flag

__all__ = ["ENV_FFMPEG", "OUTPUT_EXTENSIONS", "X264_PRESETS", "EncodeOptions", "RunOptions", "Settings", "UpscaleOptions", "parse_canvas"]

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_CANVAS_RE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")

def parse_canvas(value: Any) -> tuple[int, int] | None:
    """``"1920x1080"`` (or a pair) → ``(1920, 1080)``."""
    if value is None or value == "":
        return None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        w, h = int(value[0]), int(value[1])
    else:
        m = _CANVAS_RE.match(str(value))
        if not m:
            raise ValueError(f"canvas must look like WIDTHxHEIGHT, e.g. 1920x1080, not {value!r}")
        w, h = int(m.group(1)), int(m.group(2))
    if w < 16 or h < 16 or w > 8192 or h > 8192:
        raise ValueError(f"canvas {w}x{h} is out of range (16..8192 on each side)")
    if w % 2 or h % 2:
        raise ValueError(f"canvas {w}x{h} must have even sides (H.264 in yuv420p needs them)")
    return (w, h)


class EncodeOptions(BaseModel):
    """How the published file is encoded: declared once, shared by the run's
    options (flat keywords, as the CLI, the API and reports spell them) and by
    :class:`UpscaleOptions` (what the ffmpeg pass receives)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    target_height: int = Field(1080, ge=64, le=4320)
    canvas: tuple[int, int] | None = None
    fit: Literal["pad", "crop"] = "pad"
    fps: float = Field(25.0, gt=0, le=120)
    crf: int = Field(18, ge=0, le=51)
    x264_preset: Literal[X264_PRESETS] = "medium"  # type: ignore[valid-type]
    remove_audio: bool = False
    #: The H.264 encoder of the published file; auto: NVENC when ffmpeg has it
    #: and the run is on a GPU, else libx264 (the report says which).
    encoder: Literal["auto", "libx264", "h264_nvenc"] = "auto"

    @field_validator("target_height")
    @classmethod
    def _even_height(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"target height {v} must be even (H.264 in yuv420p needs even sides)")
        return v

    @field_validator("canvas", mode="before")
    @classmethod
    def _canvas(cls, v: Any) -> tuple[int, int] | None:
        return parse_canvas(v)

    def encode_options(self) -> dict[str, Any]:
        """The shared fields' values."""
        return {name: getattr(self, name) for name in EncodeOptions.model_fields}


class UpscaleOptions(EncodeOptions):
    """How the engine's clip becomes the published file (one ffmpeg pass)."""

    enabled: bool = True
    audio_bitrate: str = "192k"


class RunOptions(EncodeOptions):
    """Options every engine shares.  Field names are the CLI's, with ``_``."""

    engine: str
    no_upscale: bool = False
    keep_temp: bool = False
    timeout: float | None = Field(None, gt=0)
    overwrite: bool = False
    report: Path | None = None
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    skip_face_check: bool = False
    #: The face of a still with several to animate (0, 1, … left to right, as the advisor numbers them).
    face_index: int | None = Field(None, ge=0)
    device: str = "auto"
    install_deps: bool = False
    python: Path | None = None
    cache_dir: Path | None = None
    offline: bool = False
    registry: Path | None = None
    chunk_seconds: float | None = Field(None, ge=0)
    hls: Path | None = None
    hls_segment_seconds: float = Field(5.0, gt=0, le=60)
    #: How the engine runs: a warm worker (None: when the engine has one) or
    #: upstream's own CLI per job.
    runner: Literal["worker", "subprocess"] | None = None
    #: Whether warm workers reuse (and keep) the face preprocessing.
    preprocess_cache: bool = True
    #: Half precision (autocast) for the renderer and generator (GPU, worker).
    fp16: bool = False

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        v = v.strip().lower()
        if not _DEVICE_RE.match(v):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RunOptions:
        if self.canvas is not None and self.no_upscale:
            raise ValueError("--canvas needs the upscale stage; it cannot be combined with --no-upscale")
        return self

    def upscale(self) -> UpscaleOptions:
        return UpscaleOptions(enabled=not self.no_upscale, **self.encode_options())


class Settings(BaseModel):
    """What the environment says (env vars), resolved once per run."""

    model_config = ConfigDict(frozen=True)

    cache_dir: Path
    ffmpeg: str | None = None
    offline: bool = False
    registry: Path | None = None
    debug: bool = False

    @classmethod
    def from_env(cls, *, cache_dir: Path | None = None, offline: bool | None = None, registry: Path | None = None) -> Settings:
        env = os.environ.get(ENV_CACHE)
        if cache_dir:
            # The CLI's --cache-dir also reads the variable.
            source = f"{naming.option('cache_dir')} or {ENV_CACHE}" if env and Path(env) == Path(cache_dir) else naming.option("cache_dir")
        else:
            source = ENV_CACHE if env else "the default cache dir"
        cache = Path(cache_dir or os.environ.get(ENV_CACHE) or default_cache_dir()).expanduser()
        check_cache_dir(cache, source)
        return cls(
            cache_dir=cache,
            ffmpeg=os.environ.get(ENV_FFMPEG) or None,
            offline=bool(offline) or env_flag(ENV_OFFLINE),
            registry=registry or (Path(os.environ[ENV_REGISTRY]) if os.environ.get(ENV_REGISTRY) else None),
            debug=env_flag(ENV_DEBUG),
        )


def check_cache_dir(cache: Path, source: str) -> None:
    """The cache must be a folder (or not exist yet, below one that can be made)."""
    from .errors import InputError

    for p in (cache, *cache.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                what = "is a file" if p.is_file() else ("is a broken link" if p.is_symlink() else "is not a folder")
                where = "" if p == cache else f", so the cache {cache} cannot be made"
                raise InputError(
                    f"{what}, not a folder (the cache dir, from {source}){where}",
                    subject=p,
                    hint=f"Point {source} at a folder (it is created if missing), or move that file away.",
                )
            return


def default_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("lipsync-tool", appauthor=False))
