"""Compare engines on the same inputs.

:func:`compare` runs each engine through its own :class:`LipSyncPipeline`, one
at a time on the :class:`~.scheduler.Scheduler` (one engine failing does not
stop the others), then writes into OUT_DIR:

* ``<engine>.mp4`` and ``<engine>.report.json`` per engine;
* ``side_by_side.mp4``: every clip at the same height, labelled with the
  engine's name, with the original audio (one ffmpeg pass, built by the pure
  :func:`.media.side_by_side_graph`);
* ``comparison.json`` and ``comparison.md``: engine, commit, options, wall
  time per stage, output resolution, fps and duration, lip-sync scores.

Lip-sync scores come from a :class:`Scorer`: ``compare --score`` passes a
:class:`~lipsync_tool.scoring.SyncNetScorer` (LSE-D, LSE-C, AV offset, mouth
sharpness, A−V duration gap); without one the score fields say ``"not
computed"`` with the reason.  A score is never made up.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import __version__
from .config import RunOptions
from .errors import LipsyncError, OutputPathError, UsageError, error_dict
from .media import ENV_FONT, Clip, find_font, side_by_side_argv, side_by_side_graph
from .scheduler import Event, RunWork, Scheduler
from .scoring.fields import NOT_COMPUTED, Scorer, SyncScore, available_scorers, default_scorer, register_scorer, score_fields, unregister_scorer
from .targets import Target, check_targets, publish_file, write_text_file

log = logging.getLogger(__name__)

SIDE_BY_SIDE = "side_by_side.mp4"
COMPARISON_JSON = "comparison.json"
COMPARISON_MD = "comparison.md"


# -- the comparison -------------------------------------------------------------------------


@dataclass
class EngineResult:
    engine: str
    display_name: str
    status: str  # ok / failed
    output: Path | None = None
    report_path: Path | None = None
    commit: str | None = None
    repo: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    media: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    score: dict[str, Any] = field(default_factory=dict)
    audio_duration: float | None = None  # of the staged input audio, from the run report

    def to_json(self) -> dict[str, Any]:
        v = (self.media or {}).get("video") or {}
        return {
            "engine": self.engine,
            "display_name": self.display_name,
            "status": self.status,
            "error": self.error,
            "repo": self.repo,
            "commit": self.commit,
            "options": self.options,
            "timings": self.timings,
            "wall_s": round(self.wall_s, 3),
            "output": str(self.output) if self.output else None,
            "report": str(self.report_path) if self.report_path else None,
            "resolution": f"{v['width']}x{v['height']}" if v.get("width") else None,
            "width": v.get("width"),
            "height": v.get("height"),
            "fps": v.get("fps"),
            "duration": v.get("duration") or (self.media or {}).get("duration"),
            **self.score,
        }


@dataclass
class Comparison:
    out_dir: Path
    results: list[EngineResult]
    side_by_side: Path | None
    side_by_side_info: dict[str, Any] | None
    side_by_side_error: dict[str, Any] | None
    json_path: Path
    md_path: Path
    data: dict[str, Any]

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.results) and self.side_by_side_error is None

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


def split_engine_options(engines: Sequence[str], options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each engine's pipeline keywords: the common options plus its own.

    An engine option goes to every chosen engine that has it; one that none
    of them has is a usage error (as in a single run).
    """
    from .engines import flag_of, option_owner

    per: dict[str, dict[str, Any]] = {e: {} for e in engines}
    for key, value in options.items():
        if value is None:
            continue
        if key in RunOptions.model_fields:
            for e in engines:
                per[e][key] = value
            continue
        owners = [e for e in option_owner(key) if e in engines]
        if not owners:
            others = option_owner(key)
            raise UsageError(
                f"belongs to the {' and '.join(others)} engine, which is not compared" if others else "is not an option of any engine",
                subject=flag_of(key),
                hint="Drop it, or add the engine to --engines." if others else None,
            )
        for e in owners:
            per[e][key] = value
    return per


def parse_engines(text: str | Sequence[str]) -> list[str]:
    from .engines import available_engines

    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    if not names:
        raise UsageError("name at least one engine", subject="--engines")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"{', '.join(dupes)} named twice", subject="--engines")
    unknown = [n for n in names if n not in available_engines()]
    if unknown:
        raise UsageError(f"unknown engine {', '.join(map(repr, unknown))}", subject="--engines", hint="Choose from: " + ", ".join(available_engines()))
    return names


def _scorer(scorer: Scorer | str | None, score: bool) -> Scorer | None:
    the_scorer = default_scorer() if scorer == "auto" else scorer
    if the_scorer is not None and not isinstance(the_scorer, Scorer):
        raise UsageError(f"{the_scorer!r} is not a scorer", subject="scorer")
    if score and the_scorer is None:
        raise UsageError("needs a scorer (lipsync_tool.scoring.SyncNetScorer)", subject="--score")
    if hasattr(the_scorer, "prepare"):
        the_scorer.prepare()  # weights and interpreter before any engine runs
    return the_scorer


def compare(
    image: str | os.PathLike,
    audio: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    engines: str | Sequence[str] | None = None,
    options: dict[str, Any] | None = None,
    font: str | os.PathLike | None = None,
    scorer: Scorer | str | None = "auto",
    score: bool = False,
    observer_for: Callable[[str], Any] | None = None,
) -> Comparison:
    """Run every engine on IMAGE and AUDIO and write the comparison into OUT_DIR.

    Usage problems (unknown engines, options no chosen engine has, no font)
    and every file it would write (:func:`check_outputs`: never an input,
    never an existing file without ``overwrite``) raise before any engine
    runs; each file is put in place atomically.  An engine's failure is recorded and the
    others still run; see :attr:`Comparison.exit_code`.
    """
    from .engines import BUILTIN_ENGINES
    from .pipeline import LipSyncPipeline

    image, audio, out_dir = Path(image), Path(audio), Path(out_dir)
    names = parse_engines(engines or BUILTIN_ENGINES)
    per_engine = split_engine_options(names, dict(options or {}))
    for kw in per_engine.values():
        if "report" in kw:
            raise UsageError("is set by compare: each engine's report goes to OUT_DIR/<engine>.report.json", subject="--report")
        if kw.get("hls") is not None:
            raise UsageError("is not supported by compare (every engine would write the same folder)", subject="--hls")
    pipelines = {name: LipSyncPipeline(name, **per_engine[name], report=out_dir / f"{name}.report.json") for name in names}
    overwrite = pipelines[names[0]].options.overwrite
    font_path = find_font(font)
    inputs = [image, audio, font_path]
    for p in pipelines.values():
        inputs += _engine_inputs(p)
    check_outputs(out_dir, output_targets(out_dir, names), inputs, overwrite=overwrite)
    the_scorer = _scorer(scorer, score)
    out_dir.mkdir(parents=True, exist_ok=True)

    runs = _EngineRuns(pipelines, image, audio, out_dir, observer_for)
    try:
        Scheduler(runs, on_event=runs.on_event).run(names)  # one engine at a time; a failure does not stop the others
    finally:
        for p in pipelines.values():
            p.close()  # each engine's warm worker
    results = [runs.results[name] for name in names]
    for r in results:
        r.score = score_fields(the_scorer, r.output if r.status == "ok" else None, audio)

    common = pipelines[names[0]].options
    sbs, sbs_info, sbs_error = _side_by_side(results, audio, out_dir / SIDE_BY_SIDE, font_path, common)
    data = comparison_data(image, audio, results, sbs, sbs_info, sbs_error, common, the_scorer)
    json_path, md_path = out_dir / COMPARISON_JSON, out_dir / COMPARISON_MD
    write_text_file(json_path, json.dumps(data, indent=2, default=str) + "\n", overwrite=overwrite)
    write_text_file(md_path, comparison_markdown(data), overwrite=overwrite)
    return Comparison(out_dir, results, sbs, sbs_info, sbs_error, json_path, md_path, data)


def output_targets(out_dir: Path, engines: Sequence[str]) -> list[Target]:
    """Every file compare writes into *out_dir*."""
    targets = []
    for name in engines:
        targets += [Target(out_dir / f"{name}.mp4", f"the {name} video"), Target(out_dir / f"{name}.report.json", f"the {name} report")]
    return [
        *targets,
        Target(out_dir / SIDE_BY_SIDE, "the side-by-side video"),
        Target(out_dir / COMPARISON_JSON, COMPARISON_JSON),
        Target(out_dir / COMPARISON_MD, COMPARISON_MD),
    ]


def _engine_inputs(pipeline) -> list[Path]:
    """The reference videos and the user's own model files an engine reads."""
    try:
        files = {**pipeline.engine.staged_refs(pipeline.engine_options), **pipeline.engine.user_files(pipeline.engine_options)}
    except Exception:  # options the engine rejects fail its run, with their own message
        log.debug("no reference files for %s", pipeline.engine.name, exc_info=True)
        return []
    return [Path(p).expanduser() for p in files.values() if p is not None]


def check_outputs(out_dir: Path, targets: Sequence[Target], inputs: Sequence[Path], *, overwrite: bool) -> None:
    """What compare writes: never an input (or a link to one), never two
    things at one path, never an existing file without *overwrite*.  Raises
    :class:`OutputPathError` before any engine runs; *out_dir* may not exist yet."""
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise OutputPathError("exists and is not a folder", subject=out_dir, hint="Give a folder for OUT_DIR.")
    # compare makes OUT_DIR; "already holds" below names every existing file at once.
    check_targets([replace(t, make_parents=True) for t in targets], inputs, overwrite=True)
    if not overwrite:
        existing = [t.path for t in targets if os.path.lexists(t.path)]
        if existing:
            raise OutputPathError(
                "already holds " + ", ".join(p.name for p in existing), subject=out_dir, hint="Pass --overwrite to replace them, or choose another OUT_DIR."
            )


class _EngineRuns(RunWork):
    """Each engine's run as the scheduler's work (one job per engine), and its :class:`EngineResult`."""

    def __init__(self, pipelines: dict, image: Path, audio: Path, out_dir: Path, observer_for: Callable[[str], Any] | None):
        self.pipelines, self.image, self.audio, self.out_dir, self.observer_for = pipelines, image, audio, out_dir, observer_for
        self.results: dict[str, EngineResult] = {}
        self._t0: dict[str, float] = {}

    def start(self, name: str):
        return self.pipelines[name].start(self.image, self.audio, self.out_dir / f"{name}.mp4")

    def on_event(self, event: Event) -> None:
        name, pipeline = event.item, self.pipelines[event.item]
        if event.kind == "started":
            if self.observer_for is not None:  # asked for only now, so a display can show one engine at a time
                pipeline.observer = self.observer_for(name)
            self.results[name] = _engine_result(pipeline)
            self._t0[name] = time.monotonic()
        elif event.kind in ("finished", "failed"):
            self.results[name].wall_s = time.monotonic() - self._t0[name]
            _settle(self.results[name], event, pipeline.last_failure)


def _engine_result(pipeline) -> EngineResult:
    """An engine's result before it runs: failed until it succeeds."""
    engine = pipeline.engine
    result = EngineResult(engine.name, engine.display_name, "failed", report_path=Path(pipeline.options.report))
    result.options = pipeline.engine_options.resolved().model_dump(mode="json", exclude_none=True)
    try:
        result.repo = pipeline.resources.registry.repo.url
        result.commit = pipeline.resources.registry.repo.commit
    except LipsyncError as exc:
        log.debug("no registry for %s: %s", engine.name, exc)
    return result


def _settle(result: EngineResult, event: Event, failure) -> None:
    """An engine's run ended: its output, or its error and how its run ended
    (*failure*: a ``RunFailure``); one engine failing does not stop the others."""
    exc = event.error
    failure = failure if failure is not None and failure.error is exc else None
    report = event.result.report if event.kind == "finished" else (failure.report if failure else None)
    if report:
        result.audio_duration = ((report.get("inputs") or {}).get("audio_info") or {}).get("duration")
        result.timings = dict(report.get("timings") or {})
        result.commit = (report.get("engine") or {}).get("commit") or result.commit
    if event.kind == "finished":
        result.status, result.output = "ok", event.result.output
        result.repo = report["engine"].get("repo") or result.repo
        result.media = report["output"].get("media")
        return
    log.warning("%s failed: %s", result.display_name, exc)
    log.debug("%s failed", result.engine, exc_info=exc)
    result.error = error_dict(exc)
    result.error["temp_dir"] = str(failure.temp_dir) if failure and failure.temp_dir else None
    if not report:
        result.report_path = None


def _side_by_side(results: list[EngineResult], audio: Path, out: Path, font: Path, common: RunOptions):
    from .media import find_ffmpeg, probe, run_ffmpeg_job
    from .pipeline import temp_output_path

    ok = [r for r in results if r.status == "ok" and r.output and r.media and (r.media.get("video") or {}).get("height")]
    if not ok:
        return None, None, {"type": "NoClips", "message": "no engine produced a video"}
    heights = [r.media["video"]["height"] for r in ok]  # type: ignore[index]
    height = min(heights) // 2 * 2
    fps = next((r.media["video"].get("fps") for r in ok if r.media["video"].get("fps")), None) or common.fps  # type: ignore[index]
    duration = _audio_duration(ok) or max(float(r.media.get("duration") or 0) for r in ok)  # type: ignore[union-attr]
    clips = [Clip(r.output, r.display_name) for r in ok]  # type: ignore[arg-type]
    ff = find_ffmpeg(os.environ.get("LIPSYNC_TOOL_FFMPEG"))
    tmp = temp_output_path(out)  # a name only: ffmpeg makes the file, with the usual permissions
    argv = side_by_side_argv(ff.path, clips, audio, tmp, height=height, fps=fps, duration=duration, font=font, crf=common.crf, preset=common.x264_preset)
    try:
        run_ffmpeg_job(argv, what="the side-by-side video", total_seconds=duration)
        info = probe(tmp, ff=ff, measure=True)
        publish_file(tmp, out, overwrite=common.overwrite)
    except LipsyncError as exc:
        log.warning("the side-by-side video failed: %s", exc)
        return None, None, error_dict(exc)
    finally:
        tmp.unlink(missing_ok=True)
    info.path = str(out)
    return out, info.to_dict(), None


def _audio_duration(results: list[EngineResult]) -> float | None:
    return next((float(r.audio_duration) for r in results if r.audio_duration), None)


def comparison_data(image: Path, audio: Path, results: list[EngineResult], sbs: Path | None, sbs_info, sbs_error, common: RunOptions, scorer: Scorer | None) -> dict[str, Any]:
    from .batch import result_options

    v = (sbs_info or {}).get("video") or {}
    return {
        "tool": {"name": "lipsync-tool", "version": __version__, "python": sys.version.split()[0]},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": {"image": str(image), "audio": str(audio)},
        "options": result_options(common.model_dump(mode="json")),
        "scorer": scorer.name if scorer else None,
        "engines": [r.to_json() for r in results],
        "side_by_side": {
            "path": str(sbs) if sbs else None,
            "width": v.get("width"),
            "height": v.get("height"),
            "fps": v.get("fps"),
            "duration": v.get("duration"),
            "engines": [r.engine for r in results if r.status == "ok"],
            "error": sbs_error,
        },
    }


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _seconds(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else "–"


SCORES_EXPLAINED = (
    "LSE-D (lower is better), LSE-C (higher is better) and the AV offset (frames) are SyncNet's, computed as Wav2Lip's "
    "evaluation does (`lipsync-tool score`); mouth sharpness is the variance of the Laplacian of the lower face; "
    "A−V is the audio minus the video duration. \"not computed\" comes with its reason."
)


def _figure(value: Any, fmt: str) -> str:
    if value is None:
        return "–"
    return value if isinstance(value, str) else format(value, fmt)


def comparison_markdown(data: dict[str, Any]) -> str:
    """``comparison.md``: one table row per engine."""
    from .pipeline import STAGES

    lines = [
        "# Engine comparison",
        "",
        f"- image: `{data['inputs']['image']}`",
        f"- audio: `{data['inputs']['audio']}`",
        f"- side by side: `{data['side_by_side']['path']}`" if data["side_by_side"]["path"] else f"- side by side: not written ({data['side_by_side']['error']['message']})",
        "",
        "| Engine | Status | Commit | Options | " + " | ".join(f"{s} (s)" for s in STAGES) + " | Total (s) | Resolution | FPS | Duration (s) | LSE-C | LSE-D | AV offset | Mouth sharpness | A−V (s) |",
        "|" + "---|" * (4 + len(STAGES) + 9),
    ]
    for e in data["engines"]:
        status = "ok" if e["status"] == "ok" else f"failed: {e['error']['message'].splitlines()[0] if e.get('error') else ''}"
        opts = ", ".join(f"{k}={v}" for k, v in e["options"].items())
        t = e["timings"]
        row = [
            e["engine"],
            status,
            f"`{e['commit'][:12]}`" if e.get("commit") else "–",
            opts or "–",
            *(_seconds(t.get(s)) for s in STAGES),
            _seconds(e["wall_s"]),
            e["resolution"] or "–",
            f"{e['fps']:g}" if e.get("fps") else "–",
            _seconds(e["duration"]),
            *(_figure(e.get(c), f) for c, f in (("lse_c", ".3f"), ("lse_d", ".3f"), ("av_offset", "d"), ("mouth_sharpness", ".1f"), ("av_duration_diff_s", "+.3f"))),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    lines += ["", SCORES_EXPLAINED, ""]
    notes = [f"- {e['engine']}: {e['score_note']}" for e in data["engines"] if e.get("score_note")]
    if notes:
        lines += ["Scores not computed:", "", *notes, ""]
    return "\n".join(lines)


__all__ = [
    "ENV_FONT",
    "NOT_COMPUTED",
    "Clip",
    "Comparison",
    "EngineResult",
    "Scorer",
    "SyncScore",
    "available_scorers",
    "compare",
    "find_font",
    "register_scorer",
    "side_by_side_graph",
    "unregister_scorer",
]
