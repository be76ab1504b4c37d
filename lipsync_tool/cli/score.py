"""``score``: SyncNet's LSE-D, LSE-C and AV offset (and two weightless figures) for videos."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..constants import ENV_CACHE, ENV_OFFLINE, ENV_REGISTRY
from ..errors import InputError
from .console import ConsoleObserver, guard, out, setup_logging, table

PANEL = "SyncNet options"


def add_commands(app: typer.Typer) -> None:
    @app.command(
        "score",
        help="Score the lip sync of videos with SyncNet (LSE-D: lower is better; LSE-C: higher is better; AV offset in frames), "
        "as Wav2Lip's evaluation does, plus mouth sharpness and the audio/video duration gap. "
        "Exit 0 if every video was scored, 1 if any could not be.",
    )
    def score(
        videos: Annotated[list[Path], typer.Argument(help="The videos to score (MP4 or anything ffmpeg reads).", show_default=False)],
        face_crop: Annotated[bool, typer.Option("--face-crop", help="The videos are already 224x224, 25 fps face tracks: skip detection and cropping.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of a table.")] = False,
        python: Annotated[Optional[Path], typer.Option("--python", help="An interpreter with torch and OpenCV (an engine's), if this one lacks them.")] = None,
        device: Annotated[str, typer.Option("--device", help="auto (a GPU when torch sees one, said out loud), cpu, cuda or cuda:N.")] = "auto",
        vshift: Annotated[int, typer.Option("--vshift", min=1, help="Offsets tried each way, in frames.", rich_help_panel=PANEL)] = 15,
        min_track: Annotated[int, typer.Option("--min-track", min=1, help="A face track needs more detections than this.", rich_help_panel=PANEL)] = 100,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Windows per SyncNet batch.", rich_help_panel=PANEL)] = 20,
        keep_temp: Annotated[bool, typer.Option("--keep-temp", help="Keep the frames, crops and the scorer's log.")] = False,
        cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", envvar=ENV_CACHE, help="The cache folder.")] = None,
        offline: Annotated[bool, typer.Option("--offline", envvar=ENV_OFFLINE, help="Never download: use the cache or file:// mirrors.")] = False,
        registry: Annotated[Optional[Path], typer.Option("--registry", envvar=ENV_REGISTRY, metavar="FILE", help="A registry override file ([syncnet] section).")] = None,
        log_level: Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")] = "WARNING",
    ) -> None:
        guard(do_score, dict(locals()))


def do_score(values: dict[str, Any]) -> int:
    from ..config import Settings
    from ..scoring import ScoreOptions, SyncNetScorer

    setup_logging(values["log_level"])
    videos: list[Path] = values["videos"]
    for v in videos:  # every input is checked before any work
        if not v.exists():
            raise InputError("no such file", subject=v)
        if not v.is_file():
            raise InputError("is not a file", subject=v)
    settings = Settings.from_env(cache_dir=values["cache_dir"], offline=values["offline"], registry=values["registry"])
    options = ScoreOptions(vshift=values["vshift"], min_track=values["min_track"], batch_size=values["batch_size"])
    observer = ConsoleObserver(enabled=False if values["as_json"] else None)
    results = []
    scorer = SyncNetScorer(
        cache_dir=settings.cache_dir,
        registry_file=settings.registry,
        offline=settings.offline,
        python=values["python"],
        device=values["device"],
        options=options,
        keep_temp=values["keep_temp"],
        downloader=_downloader(observer, settings.offline),
    )
    try:
        for video in videos:
            scorer.check(video)
        observer.stage("weights")
        scorer.prepare(face_crop_only=values["face_crop"])
        for i, video in enumerate(videos, 1):
            observer.stage("scoring", f"{video} ({i}/{len(videos)})")
            results.append(scorer.score_video(video, face_crop=values["face_crop"]))
    finally:
        observer.done()
        scorer.close()
    doc = {
        "scorer": "syncnet",
        "device": str(scorer.device),
        "device_reason": scorer.device.reason if scorer.device else None,
        "python": scorer.python,
        "weights": {name: str(path) for name, path in scorer.weights.items()},
        "options": asdict(options),
        "results": [r.to_json() for r in results],
        "temp_dir": str(scorer.work) if values["keep_temp"] else None,
    }
    if values["as_json"]:
        out(json.dumps(doc, indent=2))
    else:
        _print(doc, results, scorer.work if values["keep_temp"] else None)
    return 0 if all(r.computed for r in results) else 1


def _downloader(observer: ConsoleObserver, offline: bool):
    from ..resources.download import Downloader

    return Downloader(progress=observer.download_bar, on_wait=observer.waiting, offline=offline)


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def _print(doc: dict[str, Any], results, kept: Path | None) -> None:
    out(f"SyncNet on {doc['device']}" + (f" ({doc['device_reason']})" if doc.get("device_reason") else "") + f", interpreter {doc['python']}")
    rows = [
        [r.video, _num(r.lse_d, ".3f"), _num(r.lse_c, ".3f"), _num(r.av_offset, "d"), _num(r.mouth_sharpness, ".1f"), _num(r.av_duration_diff_s, "+.3f")]
        for r in results
    ]
    for line in table(["video", "LSE-D", "LSE-C", "offset", "mouth sharpness", "A-V (s)"], rows):
        out(line)
    for r in results:
        if r.score_note:
            out(f"{r.video}: scores not computed: {r.score_note}")
        if r.sharpness_note:
            out(f"{r.video}: mouth sharpness not computed: {r.sharpness_note}")
        if len(r.tracks) > 1:
            out(f"{r.video}: {len(r.tracks)} face tracks; the figures are the longest one's (all are in --json)")
    if kept:
        out(f"Temp files kept: {kept}")
