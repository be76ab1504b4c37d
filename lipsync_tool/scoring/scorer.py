"""The SyncNet scorer: verified weights, a scorer process in a torch interpreter, and the report fields.

:class:`SyncNetScorer` resolves the interpreter (``python``: an engine's, or
this one with the ``score`` extra) and the device once, fetches the weights
through the verified cache (:class:`~..resources.components.ComponentResources`),
then keeps one scorer process (:mod:`.syncnetd`) for every clip it scores.  A
clip that cannot be scored (too short, no face track, no audio) gets
``"not computed: <reason>"``; a missing interpreter, package or weight file is
a typed error with a hint.  The two weightless figures come from
:mod:`.quality`.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DependencyError, InputError, ResourceError, RunError
from .fields import NOT_COMPUTED
from .quality import av_duration_gap, mouth_sharpness
from .syncnetd.options import Options as ScoreOptions

log = logging.getLogger(__name__)

CHILD = Path(__file__).parent / "syncnetd" / "main.py"
SCORE_HINT = "Install the scorer's packages with pip install 'lipsync-tool[score]', or pass --python with an engine's interpreter (it has torch and OpenCV)."


@dataclass
class ScoreResult:
    """One video's figures; a field that could not be computed says ``"not computed"`` (see ``score_note``)."""

    video: str
    mode: str  # full / face_crop
    lse_d: float | str = NOT_COMPUTED
    lse_c: float | str = NOT_COMPUTED
    av_offset: int | str = NOT_COMPUTED
    score_note: str | None = None
    tracks: list[dict[str, Any]] = field(default_factory=list)
    mouth_sharpness: float | str = NOT_COMPUTED
    sharpness_note: str | None = None
    av_duration_diff_s: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def computed(self) -> bool:
        return isinstance(self.lse_d, float)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def fields(self) -> dict[str, Any]:
        """The columns compare and batch add to their reports."""
        return {
            "lse_d": self.lse_d,
            "lse_c": self.lse_c,
            "av_offset": self.av_offset,
            "score_note": self.score_note,
            "mouth_sharpness": self.mouth_sharpness,
            "av_duration_diff_s": self.av_duration_diff_s,
        }


class _Process:
    """The scorer process and its reply queue (stderr goes to *log_path*)."""

    def __init__(self, python: str, setup: dict[str, Any], log_path: Path, timeout: float):
        from ..process import spawn

        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = spawn([python, str(CHILD)], stdin=-1, stdout=-1, stderr=self._log)
        self.replies: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name="syncnet-replies").start()
        ready = self.request(setup, timeout)
        if not ready.get("ready"):
            self.stop()
            raise DependencyError(f"the scorer could not start in {python}: {ready.get('error')}", subject="--python", hint=SCORE_HINT)
        self.info = ready

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.replies.put(line.decode("utf-8", "replace"))
        self.replies.put(None)

    def request(self, message: dict[str, Any], timeout: float) -> dict[str, Any]:
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: the reply queue says so
        try:
            line = self.replies.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise RunError(f"the scorer did not answer within {timeout:.0f} s", subject="syncnet", hint=f"See its log: {self.log_path}") from None
        if line is None:
            self.stop()
            tail = self.log_path.read_text("utf-8", "replace").strip().splitlines()[-3:]
            raise RunError(f"the scorer process ended unexpectedly: {' | '.join(tail) or 'no output'}", subject="syncnet", hint=f"See its log: {self.log_path}")
        return json.loads(line)

    def stop(self) -> None:
        from ..process import forget, kill_group

        if self.proc.stdin and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except Exception:  # noqa: BLE001 - then it is killed
            kill_group(self.proc, grace=1.0)
        forget(self.proc)
        self._log.close()


class SyncNetScorer:
    """Scores videos with SyncNet (see the module docstring); use as a context manager."""

    name = "syncnet"

    def __init__(
        self,
        *,
        cache_dir: Path,
        registry_file: Path | None = None,
        offline: bool = False,
        python: Path | str | None = None,
        device: str = "auto",
        options: ScoreOptions | None = None,
        timeout: float = 3600.0,
        keep_temp: bool = False,
        downloader=None,
    ):
        from ..runtime import engine_python

        self.cache_dir, self.registry_file, self.offline = cache_dir, registry_file, offline
        self.python = engine_python(python)
        self.requested_device = device
        self.options = options or ScoreOptions()
        self.timeout = timeout
        self.keep_temp = keep_temp
        self.downloader = downloader
        self.work = Path(tempfile.mkdtemp(prefix="lipsync-score-"))
        self.weights: dict[str, Path] = {}
        self.device = None
        self._proc: _Process | None = None
        self._ff = None
        self._probed: dict[str, Any] = {}

    # -- setup --------------------------------------------------------------------------------

    def prepare(self, *, face_crop_only: bool = False, on_file=None) -> None:
        """Resolve the device and fetch the weights the clips need (before any clip is scored)."""
        from ..resources.components import ComponentResources
        from ..runtime import resolve_device

        if self.device is None:
            try:
                self.device = resolve_device(self.requested_device, self.python).device
            except DependencyError as exc:
                raise DependencyError(exc.message, subject=exc.subject, hint=SCORE_HINT) from None
        names = ["syncnet_v2.model"] + ([] if face_crop_only or "sfd_face.pth" in self.weights else ["sfd_face.pth"])
        names = [n for n in names if n not in self.weights]
        if names:
            res = ComponentResources("syncnet", self.cache_dir, registry_file=self.registry_file, offline=self.offline, downloader=self.downloader)
            try:
                files = res.ensure(names, on_file=on_file)
            except ResourceError as exc:
                exc.hint = (exc.hint + " " if exc.hint else "") + "The scorer's weights can be fetched ahead with: lipsync-tool setup --scorer syncnet."
                raise
            self.weights.update({n: f.path for n, f in files.items()})
            if self._proc is not None:  # a scorer started without the detector: restart it with both
                self._stop()

    def _process(self) -> _Process:
        if self._proc is None:
            setup = {
                "device": str(self.device),
                "ffmpeg": self._ffmpeg().path,
                "options": asdict(self.options),
                "weights": {"syncnet": str(self.weights["syncnet_v2.model"]), "s3fd": str(self.weights.get("sfd_face.pth") or "") or None},
            }
            self._proc = _Process(self.python, setup, self.work / "scorer.log", timeout=600)
            log.info("scorer ready in %s (torch %s, %s)", self.python, self._proc.info.get("torch"), self._proc.info.get("device"))
        return self._proc

    def _ffmpeg(self):
        if self._ff is None:
            import os

            from ..media import find_ffmpeg

            self._ff = find_ffmpeg(os.environ.get("LIPSYNC_TOOL_FFMPEG"))
        return self._ff

    # -- scoring ------------------------------------------------------------------------------

    def check(self, video: Path):
        """*video*'s measured probe; an :class:`InputError` for what cannot be scored at all."""
        from ..media import probe

        video = Path(video)
        if not video.is_file():
            raise InputError("no such file" if not video.exists() else "is not a file", subject=video)
        key = str(video.resolve())
        if key not in self._probed:
            info = probe(video, ff=self._ffmpeg(), measure=True)
            if info.video is None:
                raise InputError("has no video stream, so there is nothing to score", subject=video, hint="Score the MP4 an engine wrote.")
            self._probed[key] = info
        return self._probed[key]

    def score_video(self, video: Path, *, face_crop: bool = False) -> ScoreResult:
        """Every figure for *video* (the weights are fetched first if :meth:`prepare` was not called)."""
        video = Path(video)
        info = self.check(video)
        result = ScoreResult(str(video), "face_crop" if face_crop else "full", av_duration_diff_s=av_duration_gap(info))
        sharp = mouth_sharpness(self._ffmpeg(), video, info)
        result.mouth_sharpness = sharp.value if sharp.value is not None else NOT_COMPUTED
        result.sharpness_note = sharp.note
        result.details["sharpness_frames"] = sharp.frames
        if info.audio is None:
            result.score_note = "the video has no audio track"
            return result
        self.prepare(face_crop_only=face_crop)
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix="clip-", dir=self.work))
        reply = self._process().request({"video": str(video.resolve()), "face_crop": face_crop, "work": str(work)}, self.timeout)
        if not self.keep_temp:
            shutil.rmtree(work, ignore_errors=True)
        result.details.update({"score_s": round(time.monotonic() - started, 2), "device": str(self.device), "python": self.python})
        if reply.get("ok"):
            r = reply["result"]
            result.lse_d, result.lse_c, result.av_offset = float(r["lse_d"]), float(r["lse_c"]), int(r["av_offset"])
            tracks = r.get("tracks") or [{**r, "start_frame": 0}]  # a face crop is one track
            result.tracks = [{k: t[k] for k in ("start_frame", "frames", "lse_d", "lse_c", "av_offset", "windows")} for t in tracks]
            result.details.update({k: r[k] for k in ("windows", "video_frames", "frames_with_face") if k in r})
        elif reply.get("not_computed"):
            result.score_note = reply["not_computed"]
        else:
            hint = f"See the scorer's log: {self._proc.log_path if self._proc else self.work / 'scorer.log'}"
            raise RunError(f"scoring failed: {reply.get('error')}", subject=video, hint=hint)
        return result

    # compare's Scorer protocol
    def score(self, video: Path, audio: Path | None = None) -> ScoreResult:
        return self.score_video(video)

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None

    def close(self) -> None:
        self._stop()
        if not self.keep_temp:
            shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> SyncNetScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
