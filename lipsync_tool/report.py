"""The run report: what one run did, typed while the run fills it in, and
turned into the JSON of ``report.json`` / ``--report`` in one place
(:meth:`RunReport.to_dict`).

A section or key the run never reached is left out of the JSON (a failed run's
report stops where the run stopped); batch resume and ``compare`` read these
files, so their keys and nesting are a format: change them only on purpose.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import OutputPathError

log = logging.getLogger(__name__)


def _present(**items: Any) -> dict[str, Any]:
    """*items* without those that are None (not reached)."""
    return {k: v for k, v in items.items() if v is not None}


@dataclass
class ToolInfo:
    version: str
    python: str = field(default_factory=lambda: sys.version.split()[0])
    #: path, version and source of the ffmpeg the run uses.
    ffmpeg: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": "lipsync-tool", "version": self.version, "python": self.python, **_present(ffmpeg=self.ffmpeg)}


@dataclass
class EngineInfo:
    name: str
    python: str | None = None
    repo: str | None = None
    commit: str | None = None
    checkpoints: list[dict[str, Any]] | None = None
    timeout_s: float | None = None
    raw_output: str | None = None
    #: Package versions in the engine's interpreter (or {"error": ...}).
    packages: dict[str, Any] | None = None
    #: "worker" or "subprocess": how the engine ran.
    runner: str | None = None
    #: Per engine job in a warm worker: the worker (pid, log, job number,
    #: whether it started for this job), the models' load, the batch size, fp16.
    worker_jobs: list[dict[str, Any]] | None = None
    #: Per engine job: the face preprocessing cache's key, and whether it hit.
    preprocess: list[dict[str, Any]] | None = None
    #: The published file's H.264 encoder, and why.
    encoder: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        keys = ("python", "repo", "commit", "checkpoints", "timeout_s", "raw_output", "packages", "runner", "worker_jobs", "preprocess", "encoder")
        return {"name": self.name, **_present(**{k: getattr(self, k) for k in keys}, frames_without_face=self.frames_without_face())}

    def frames_without_face(self) -> dict[str, Any] | None:
        """Frames of a face video that had no face and passed through unchanged, over
        every engine job: their count and the first few indices (in the output's
        frames: a chunk's are offset by the frames of the chunks before it)."""
        count, first, offset = 0, [], 0
        for job in self.worker_jobs or []:
            faceless = job.get("frames_without_face") or {}
            count += int(faceless.get("count", 0))
            first += [offset + int(i) for i in faceless.get("first", [])]
            offset += int(job.get("frames", 0))
        return {"count": count, "first": first[:10]} if count else None


@dataclass
class FaceInfo:
    """The staged face, and what the face pre-check found in it."""

    staged: str
    is_video: bool
    width: int
    height: int
    downscaled_from: tuple[int, int] | None
    frames: int | None
    warnings: list[str] = field(default_factory=list)
    faces_found: int | None = None
    #: In pixels of the user's image.
    face_boxes: list[dict[str, Any]] | None = None
    #: The portrait advisor's findings (``lipsync-tool check``), or why it gave none.
    advice: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        always = {k: getattr(self, k) for k in ("staged", "is_video", "width", "height", "downscaled_from", "frames", "warnings")}
        return {**always, **_present(faces_found=self.faces_found, face_boxes=self.face_boxes, advice=self.advice)}


@dataclass
class InputsInfo:
    image: str
    audio: str
    face: FaceInfo | None = None
    image_sha256: str | None = None
    audio_sha256: str | None = None
    #: The probe of the audio, plus "duration" (what decodes) and "declared_duration" (the header's).
    audio_info: dict[str, Any] | None = None
    #: Text spoken in place of an audio file (tts.speak): the text's source, sha256, length and
    #: beginning, the voice, the settings it used, the WAV (then also "audio") and its duration.
    speech: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        face = self.face.to_dict() if self.face is not None else None
        present = _present(face=face, image_sha256=self.image_sha256, audio_sha256=self.audio_sha256, audio_info=self.audio_info, speech=self.speech)
        return {"image": self.image, "audio": self.audio, **present}


@dataclass
class OutputInfo:
    path: str | None
    #: The probe of the published file.
    media: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, **_present(media=self.media)}


@dataclass
class DeviceInfo:
    device: str
    reason: str
    gpus: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "reason": self.reason, "gpus": list(self.gpus)}


@dataclass
class HlsInfo:
    playlist: str
    commands: list[list[str]] | None = None
    #: Why the playlist stops early (a failed run).
    failed: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"playlist": self.playlist, **_present(commands=self.commands, failed=self.failed)}


@dataclass
class CommandsInfo:
    #: Every engine command, in order (one per chunk in a chunked run).
    engine_runs: list[list[str]] = field(default_factory=list)
    engine_cwd: str | None = None
    #: The upscale of the file output.
    ffmpeg: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.engine_runs:
            out.update(engine_runs=self.engine_runs, engine=self.engine_runs[-1], engine_cwd=self.engine_cwd)
        return {**out, **_present(ffmpeg=self.ffmpeg)}


@dataclass
class RunReport:
    tool: ToolInfo
    engine: EngineInfo
    inputs: InputsInfo
    output: OutputInfo
    #: The run's options as validated (RunOptions, as JSON).
    options: dict[str, Any]
    #: The seed used (given, drawn, or a resumed chunked run's).
    seed: int
    engine_options: dict[str, Any]
    engine_options_resolved: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    installed: list[str] | None = None
    device: DeviceInfo | None = None
    chunks: list[dict[str, Any]] | None = None
    hls: HlsInfo | None = None
    commands: CommandsInfo = field(default_factory=CommandsInfo)
    chunks_reused: list[int] | None = None
    #: ok, failed or interrupted; None while the run goes on.
    status: str | None = None
    error: dict[str, Any] | None = None
    #: The kept temp dir of a successful run (None: deleted).
    temp_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON data: the one place that decides its keys."""
        commands = self.commands.to_dict()
        out: dict[str, Any] = {
            "tool": self.tool.to_dict(),
            "engine": self.engine.to_dict(),
            "inputs": self.inputs.to_dict(),
            "output": self.output.to_dict(),
            "options": {**self.options, "seed": self.seed, "engine_options": self.engine_options, "engine_options_resolved": self.engine_options_resolved},
            "timings": dict(self.timings),
        }
        out.update(
            _present(
                installed=self.installed,
                device=self.device.to_dict() if self.device is not None else None,
                chunks=self.chunks,
                hls=self.hls.to_dict() if self.hls is not None else None,
                commands=commands or None,
                chunks_reused=self.chunks_reused,
                status=self.status,
                error=self.error,
            )
        )
        if self.status == "ok":
            out["temp_dir"] = self.temp_dir
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)


class Timer:
    """``with timer("engine"):`` adds the block's seconds to *timings* (a report's)."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 3)


class ReportFiles:
    """Where a run's report is written: ``report.json`` in its temp dir, and
    the ``--report`` file once the run has checked that path."""

    def __init__(self, path: Path | None, *, overwrite: bool):
        self.path = path
        self.overwrite = overwrite
        #: Set once check_targets passed (nothing user-chosen is written before).
        self.checked = False
        self._written = False

    def write(self, report: RunReport, temp_root: Path | None) -> None:
        text = report.to_json()
        if temp_root is not None and temp_root.exists():
            (temp_root / "report.json").write_text(text)
        if self.path is not None and self.checked:
            from .targets import write_text_file

            try:
                # Checked before the run; written once without --overwrite, then replaced by this run alone.
                write_text_file(self.path, text, overwrite=self.overwrite or self._written)
                self._written = True
            except (OSError, OutputPathError) as exc:
                log.warning("could not write the report to %s: %s", self.path, exc)
