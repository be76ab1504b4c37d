"""The options the commands share, as ``inspect.Parameter`` lists.

Commands are plain ``**values`` functions whose ``__signature__`` is built
here, so ``run``, ``demo``, ``setup``, ``batch`` and ``compare`` pick the
options they need from one list.  Engine options are generated from each
engine's ``Options`` model; building them imports pydantic and the engine
registry, so light invocations skip them (see ``app.LIGHT_INVOCATIONS``).
"""

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer

from ..constants import ENV_CACHE, ENV_OFFLINE, ENV_REGISTRY, OPTION_HELP, X264_PRESETS

#: A function that returns the engine options (or none, for light invocations).
EngineParams = Callable[[], list[inspect.Parameter]]

COMMON = "Common options"
OUTPUT = "Output options"
RES = "Resources"
TEXT = "Text input"


def _cli_type(annotation: Any, aliases: list[str]) -> Any:
    """The CLI type for a model field's annotation (optional, so None = not given)."""
    from ..annotations import shape

    s = shape(annotation)
    if s.choices is not None:
        # Whole-number choices stay numbers, so the model names the choices when one is wrong.
        if s.choice_type is int:
            return Optional[int]
        return Optional[Literal[tuple(list(s.choices) + aliases)]]  # type: ignore[misc]
    if s.variadic:
        return Optional[str]
    if s.items is not None:
        return Optional[tuple[s.items]]  # type: ignore[misc]
    if s.annotation in (bool, int, float, str, Path):
        return Optional[s.annotation]
    return Optional[str]


def engine_parameters() -> list[inspect.Parameter]:
    """One option per engine option that has CLI metadata, in a panel per engine."""
    from ..engines import engine_classes
    from ..engines.base import option_meta

    params: list[inspect.Parameter] = []
    seen: set[str] = set()
    for cls in engine_classes().values():
        panel = f"{cls.display_name} options (--engine {cls.name})"
        for fname, info in cls.Options.model_fields.items():
            meta = option_meta(info)
            if meta is None or fname in seen:
                continue
            seen.add(fname)
            ann = _cli_type(info.annotation, list(meta.aliases))
            opt_kwargs: dict[str, Any] = {"help": meta.help or None, "rich_help_panel": panel, "show_default": False}
            if meta.metavar:
                opt_kwargs["metavar"] = meta.metavar
            params.append(inspect.Parameter(fname, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[ann, typer.Option(meta.flag, **opt_kwargs)]))
    return params


def no_engine_parameters() -> list[inspect.Parameter]:
    return []


def _option(name: str, ann: Any, *flags: str, default: Any = None, **kw: Any) -> inspect.Parameter:
    kw.setdefault("rich_help_panel", COMMON)
    if "help" not in kw:
        kw["help"] = OPTION_HELP[name]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[ann, typer.Option(*flags, **kw)])


def _argument(name: str, ann: Any, help_: str, **kw: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[ann, typer.Argument(help=help_, show_default=False)], **kw)


def common_parameters() -> list[inspect.Parameter]:
    """``run``'s arguments and options, in the order help shows them."""
    opt = _option
    return [
        _argument("image", Path, "The portrait (any common image format; a face video for Wav2Lip)."),
        _argument("audio", Path, "The speech (wav, mp3, m4a, flac, ogg/opus, or a video's audio track)."),
        _argument("output", Optional[Path], "Where to write the video (.mp4, .mov or .mkv). May be left out with --hls.", default=None),
        opt("engine", Optional[str], "--engine", "-e", show_default=False),
        opt("device", Optional[str], "--device", show_default=False),
        opt("fps", Optional[float], "--fps", show_default=False),
        opt("seed", Optional[int], "--seed", show_default=False),
        opt("timeout", Optional[float], "--timeout", show_default=False, metavar="SECONDS"),
        opt("skip_face_check", bool, "--skip-face-check", default=False),
        opt("face_index", Optional[int], "--face-index", min=0, metavar="N", show_default=False),
        opt("install_deps", bool, "--install-deps", default=False),
        opt("python", Optional[Path], "--python", show_default=False),
        opt("runner", Optional[Literal["worker", "subprocess"]], "--runner", show_default=False),
        opt("preprocess_cache", Optional[bool], "--preprocess-cache/--no-preprocess-cache", show_default=False),
        opt("fp16", bool, "--fp16", default=False),
        opt("target_height", Optional[int], "--target-height", show_default=False, rich_help_panel=OUTPUT),
        opt("canvas", Optional[str], "--canvas", metavar="WxH", show_default=False, rich_help_panel=OUTPUT),
        opt("fit", Optional[Literal["pad", "crop"]], "--fit", show_default=False, rich_help_panel=OUTPUT),
        opt("crf", Optional[int], "--crf", show_default=False, rich_help_panel=OUTPUT),
        opt("x264_preset", Optional[Literal[X264_PRESETS]], "--x264-preset", metavar="PRESET", show_default=False, rich_help_panel=OUTPUT),  # type: ignore[valid-type]
        opt("encoder", Optional[Literal["auto", "libx264", "h264_nvenc"]], "--encoder", show_default=False, rich_help_panel=OUTPUT),
        opt("no_upscale", bool, "--no-upscale", default=False, rich_help_panel=OUTPUT),
        opt("remove_audio", bool, "--remove-audio", default=False, rich_help_panel=OUTPUT),
        opt("overwrite", bool, "--overwrite", default=False, rich_help_panel=OUTPUT),
        opt("report", Optional[Path], "--report", metavar="PATH", show_default=False, rich_help_panel=OUTPUT),
        opt("keep_temp", bool, "--keep-temp", default=False, rich_help_panel=OUTPUT),
        opt("chunk_seconds", Optional[float], "--chunk-seconds", metavar="N", show_default=False, rich_help_panel=OUTPUT),
        opt("hls", Optional[Path], "--hls", metavar="DIR", show_default=False, rich_help_panel=OUTPUT),
        opt("hls_segment_seconds", Optional[float], "--hls-segment-seconds", show_default=False, rich_help_panel=OUTPUT),
        opt("cache_dir", Optional[Path], "--cache-dir", envvar=ENV_CACHE, show_default=False, rich_help_panel=RES),
        opt("offline", bool, "--offline", default=False, envvar=ENV_OFFLINE, rich_help_panel=RES),
        opt("registry", Optional[Path], "--registry", envvar=ENV_REGISTRY, metavar="FILE", show_default=False, rich_help_panel=RES),
        opt("log_level", Literal["DEBUG", "INFO", "WARNING", "ERROR"], "--log-level", default="WARNING"),
    ]


def run_parameters() -> list[inspect.Parameter]:
    """``run``'s: the common ones with AUDIO optional, since ``--text`` or
    ``--text-file`` may take its place (``IMAGE OUTPUT --text "…"``), and the
    text options after OUTPUT."""
    audio_help = "The speech (wav, mp3, m4a, flac, ogg/opus, or a video's audio track). Left out with --text or --text-file: then IMAGE OUTPUT."
    params: list[inspect.Parameter] = []
    for p in common_parameters():
        params.append(_argument("audio", Optional[Path], audio_help, default=None) if p.name == "audio" else p)
        if p.name == "output":
            params += text_parameters()
    return params


def text_parameters() -> list[inspect.Parameter]:
    """Text in place of AUDIO, and the voice that speaks it (lipsync_tool.tts)."""

    def opt(name: str, ann: Any, flag: str, help_: str, **kw: Any) -> inspect.Parameter:
        option = typer.Option(flag, help=help_, show_default=False, rich_help_panel=TEXT, **kw)
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[ann, option])

    return [
        opt("text", Optional[str], "--text", "Speak this text in place of AUDIO (then give IMAGE OUTPUT).", metavar="TEXT"),
        opt("text_file", Optional[Path], "--text-file", "Speak the UTF-8 text of FILE in place of AUDIO.", metavar="FILE"),
        opt(
            "voice",
            Optional[str],
            "--voice",
            "The voice that speaks it: piper, espeak-ng (a variant with espeak-ng:en-gb) or a plug-in's. "
            "(default: piper where piper-tts and its verified voice model are there, else espeak-ng)",
            metavar="NAME[:VARIANT]",
        ),
        opt("voice_rate", Optional[int], "--voice-rate", "Words per minute, 80..450 (espeak-ng: default 175; piper: scales the voice's own pace, approximately).", metavar="WPM", min=80, max=450),
        opt("voice_model", Optional[Path], "--voice-model", "A piper voice model of your own (FILE.onnx, with FILE.onnx.json beside it).", metavar="FILE"),
    ]


def pick(params: list[inspect.Parameter], names: set[str] | tuple[str, ...]) -> list[inspect.Parameter]:
    """*params* named in *names*, in their own order."""
    return [p for p in params if p.name in names]


def drop(params: list[inspect.Parameter], names: set[str] | tuple[str, ...]) -> list[inspect.Parameter]:
    """*params* not named in *names*, in their own order."""
    return [p for p in params if p.name not in names]


def defaults_of(params: list[inspect.Parameter]) -> dict[str, Any]:
    return {p.name: p.default for p in params}


def given(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """What the user set: not None and not the parameter's own default.

    (``--no-still`` is False where the default is None, so it is kept.)
    """
    return {k: v for k, v in values.items() if v is not None and not (k in defaults and type(v) is type(defaults[k]) and v == defaults[k])}


def command_with(fn: Callable[..., None], params: list[inspect.Parameter]) -> Callable[..., None]:
    """*fn* (a ``**values`` function) with the signature Typer reads its options from."""
    fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return fn
