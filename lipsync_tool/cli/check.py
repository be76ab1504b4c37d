"""``check``: the image advisor, on one portrait (faces, size, pose, the recommended preprocess mode and engine)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..constants import ENV_CACHE, ENV_OFFLINE, ENV_REGISTRY
from .console import ConsoleObserver, guard, out, setup_logging, table


def add_commands(app: typer.Typer) -> None:
    @app.command(
        "check",
        help="Check a portrait before lip-syncing it: the faces found (face-alignment's detector and 68 landmarks), the face's size, "
        "its yaw and pitch, and the recommended preprocess mode and engine. Warnings are advice: exit 0; exit 2 when there is no face.",
    )
    def check(
        image: Annotated[Path, typer.Argument(help="The portrait (JPEG, PNG, WebP …).", show_default=False)],
        face_index: Annotated[
            Optional[int], typer.Option("--face-index", min=0, help="The face to use when there are several (0, 1, … left to right); default: the largest.")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document (with every face's landmarks) instead of a table.")] = False,
        python: Annotated[Optional[Path], typer.Option("--python", help="An interpreter with torch and face-alignment (an engine's), if this one lacks them.")] = None,
        cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", envvar=ENV_CACHE, help="The cache folder.")] = None,
        offline: Annotated[bool, typer.Option("--offline", envvar=ENV_OFFLINE, help="Never download: use the cache or file:// mirrors.")] = False,
        registry: Annotated[Optional[Path], typer.Option("--registry", envvar=ENV_REGISTRY, metavar="FILE", help="A registry override file ([face_alignment] section).")] = None,
        log_level: Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")] = "WARNING",
    ) -> None:
        guard(do_check, dict(locals()))


def do_check(values: dict[str, Any]) -> int:
    from ..advisor import check_image
    from ..config import Settings
    from ..resources.download import Downloader

    setup_logging(values["log_level"])
    settings = Settings.from_env(cache_dir=values["cache_dir"], offline=values["offline"], registry=values["registry"])
    observer = ConsoleObserver(enabled=False if values["as_json"] else None)
    try:
        advice = check_image(
            values["image"],
            cache_dir=settings.cache_dir,
            registry_file=settings.registry,
            offline=settings.offline,
            python=values["python"],
            face_index=values["face_index"],
            downloader=Downloader(progress=observer.download_bar, on_wait=observer.waiting, offline=settings.offline),
        )
    finally:
        observer.done()
    doc = advice.to_json()
    if values["as_json"]:
        out(json.dumps(doc, indent=2))
    else:
        _print(doc)
    return 0


def _print(doc: dict[str, Any]) -> None:
    out(f"{doc['image']}: {doc['width']}x{doc['height']}, {doc['face_count']} face(s); using face {doc['face_index']} ({doc['face_choice']})")
    rows = [
        [
            ("* " if f["index"] == doc["face_index"] else "  ") + str(f["index"]),
            f"{f['width']}x{f['height']}",
            f"{f['box'][0]:.0f},{f['box'][1]:.0f}",
            f"{f['yaw']:+.0f}°",
            f"{f['pitch']:+.0f}°",
            f"{f['roll']:+.0f}°",
            "–" if f["score"] is None else f"{f['score']:.2f}",
        ]
        for f in doc["faces"]
    ]
    for line in table(["face", "size (px)", "at (x,y)", "yaw", "pitch", "roll", "score"], rows):
        out(line)
    rec = doc["recommendation"]
    out(f"Framing: {rec['framing']} ({rec['reason']})")
    if rec["flags"]:
        out("Recommended: " + " ".join(rec["flags"]))
    for w in doc["warnings"]:
        out(f"Warning: {w}")
    if not doc["warnings"]:
        out("No warnings.")
