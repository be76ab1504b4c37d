"""``run`` (also the default command) and ``demo`` (``run`` on the bundled samples)."""

import inspect
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .console import ConsoleObserver, guard, keeping_temp_dir, out, setup_logging
from .options import EngineParams, command_with, common_parameters, run_parameters


def add_commands(app: typer.Typer, engine_params: EngineParams) -> None:
    def run(**values: Any) -> None:
        guard(do_run, **values)

    def demo(**values: Any) -> None:
        guard(do_demo, **values)

    app.command("run", help="Lip-sync IMAGE to AUDIO (or to --text) and write OUTPUT (this is also the default command).")(
        command_with(run, run_parameters() + engine_params())
    )
    app.command("demo", help="Lip-sync the bundled sample portrait and speech: a first run that needs no files of your own.")(
        command_with(demo, _demo_parameters() + engine_params())
    )


#: run's options that say what to speak (lipsync_tool.tts), not how to run the engine.
TEXT_OPTIONS = ("text", "text_file", "voice", "voice_rate", "voice_model")


def _pipeline_kwargs(values: dict[str, Any]) -> dict[str, Any]:
    """CLI values → LipSyncPipeline keywords.  Unset options (None) are
    dropped; False stays, since ``--no-still`` means something."""
    skip = {"image", "audio", "output", "engine", "log_level", *TEXT_OPTIONS}
    return {k: v for k, v in values.items() if k not in skip and v is not None}


def do_run(**values: Any) -> int:
    from ..pipeline import LipSyncPipeline

    setup_logging(values["log_level"])
    observer = ConsoleObserver()
    try:
        audio = audio_or_speech(values)
        pipeline = LipSyncPipeline(values["engine"], observer=observer, **_pipeline_kwargs(values))
        started = time.monotonic()
        with pipeline, keeping_temp_dir(pipeline):
            result = pipeline.run(values["image"], audio, values["output"])
    finally:
        observer.done()
    media = result.report["output"].get("media", {})
    v = media.get("video") or {}
    if result.output is not None:
        out(f"Wrote {result.output} ({v.get('width')}x{v.get('height')}, {v.get('duration') or 0:.2f} s) in {time.monotonic() - started:.1f} s")
    if result.hls is not None:
        out(f"Wrote the HLS playlist {result.hls}")
    if speech := result.report["inputs"].get("speech"):
        out(f"Spoke {speech['text']['characters']} characters with {speech['voice']} ({speech['duration']:.2f} s of speech)")
    if result.temp_dir:
        out(f"Temp files kept in {result.temp_dir}:")
        for line in result.kept_files:
            out(f"  {line}")
    return 0


def audio_or_speech(values: dict[str, Any]) -> Any:
    """AUDIO, or the text to speak in its place (``IMAGE OUTPUT --text "…"``: the
    second positional is then OUTPUT, moved there in *values*)."""
    from ..constants import OUTPUT_EXTENSIONS
    from ..errors import UsageError
    from ..tts import Speech

    text, text_file = values.get("text"), values.get("text_file")
    if text is None and text_file is None:
        if values.get("audio") is None:
            raise UsageError("missing AUDIO", subject="AUDIO", hint="Give IMAGE AUDIO OUTPUT, or IMAGE OUTPUT --text \"…\" to speak a text.")
        if stray := [f"--{k.replace('_', '-')}" for k in ("voice", "voice_rate", "voice_model") if values.get(k) is not None]:
            raise UsageError("chooses the voice of --text or --text-file, which is not given", subject=" and ".join(stray), hint="Leave it out with AUDIO.")
        return values["audio"]
    if text is not None and text_file is not None:
        raise UsageError("give --text or --text-file, not both", subject="--text")
    audio, output = values.get("audio"), values.get("output")
    # An existing file that is no video OUTPUT is an AUDIO given as well (IMAGE speech.wav --text … --hls DIR).
    if output is not None or (audio is not None and audio.suffix.lower() not in OUTPUT_EXTENSIONS and audio.is_file()):
        raise UsageError("AUDIO and --text together: the text takes the place of AUDIO", subject="AUDIO", hint=f"Give IMAGE OUTPUT --text \"…\" (AUDIO {audio} is one file too many).")
    values["audio"], values["output"] = None, audio  # IMAGE OUTPUT --text: the second positional is OUTPUT
    kw = {"voice": values.get("voice"), "rate": values.get("voice_rate"), "model": values.get("voice_model")}
    return Speech.from_file(text_file, **kw) if text_file is not None else Speech.from_text(text, **kw)


def demo_output(engine: str) -> Path:
    """``lipsync-tool demo``'s default OUTPUT: ``lipsync-demo-ENGINE.mp4`` in the current folder."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in engine.lower())
    return Path(f"lipsync-demo-{safe}.mp4")


def do_demo(**values: Any) -> int:
    """``run`` on the portrait and speech that ship with the package."""
    from contextlib import ExitStack
    from importlib.resources import as_file

    from ..data import sample
    from ..engines import DEFAULT_ENGINE

    values["engine"] = values.get("engine") or DEFAULT_ENGINE
    if values.get("output") is None and values.get("hls") is None:
        values["output"] = demo_output(values["engine"])
    with ExitStack() as stack:
        for role in ("image", "audio"):
            values[role] = stack.enter_context(as_file(sample(role)))
        out(f"Demo: the bundled portrait {values['image']}")
        out(f"      and the bundled speech {values['audio']}")
        out(f"      with --engine {values['engine']}, into {values['output'] if values['output'] is not None else values['hls']}")
        return do_run(**values)


def _demo_parameters() -> list[inspect.Parameter]:
    """``run``'s options without IMAGE and AUDIO; OUTPUT has a default."""
    params = [p for p in common_parameters() if p.name not in ("image", "audio")]
    help_ = "Where to write the video (.mp4, .mov or .mkv). (default: lipsync-demo-ENGINE.mp4 in the current folder)"
    output = inspect.Parameter("output", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[Path], typer.Argument(help=help_, show_default=False)])
    return [output if p.name == "output" else p for p in params]
