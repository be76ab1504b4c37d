"""Names shared by the CLI and the models, importable without pydantic."""

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")
OUTPUT_EXTENSIONS = (".mp4", ".mov", ".mkv")

ENV_CACHE = "LIPSYNC_TOOL_CACHE"
ENV_FFMPEG = "LIPSYNC_TOOL_FFMPEG"
ENV_OFFLINE = "LIPSYNC_TOOL_OFFLINE"
ENV_REGISTRY = "LIPSYNC_TOOL_REGISTRY"
ENV_DEBUG = "LIPSYNC_TOOL_DEBUG"
ENV_TOKEN = "LIPSYNC_TOOL_TOKEN"
ENV_TORCH = "LIPSYNC_TOOL_TORCH"


def env_flag(name: str) -> bool:
    import os

    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


#: What each common run option means: the CLI's help and the Python API's
#: ``LipSyncPipeline.options()`` read this one table.
OPTION_HELP = {
    "engine": "sadtalker or wav2lip (or an installed plug-in). (default: sadtalker)",
    "device": "auto, cpu, cuda or cuda:N. auto uses CUDA when torch sees a GPU. (default: auto)",
    "fps": "Frame rate of the output. (default: 25, or the face video's)",
    "seed": "Seed for Python, numpy and torch in the engine (recorded in the report).",
    "timeout": "Seconds before the engine is stopped. (default: from the audio length)",
    "skip_face_check": "Skip the fast face pre-check.",
    "face_index": (
        "The face to animate in a still with several: 0, 1, … left to right, as lipsync-tool check numbers them "
        "(needs the portrait advisor). (default: the largest)"
    ),
    "install_deps": "Install the engine's Python packages first (into --python).",
    "python": "Run the engine in this interpreter (e.g. a dedicated venv). (default: this one)",
    "target_height": "Height of the upscaled video (even). (default: 1080)",
    "canvas": "An exact frame size such as 1920x1080 (see --fit).",
    "fit": "How the video fills --canvas: pad (letterbox) or crop. (default: pad)",
    "crf": "x264 quality, 0 (lossless) to 51. (default: 18)",
    "x264_preset": "x264 speed/size trade-off: " + ", ".join(X264_PRESETS) + ". (default: medium)",
    "runner": "worker: keep the models loaded in a warm worker (batch and compare share it); subprocess: upstream's own CLI per job. (default: worker)",
    "preprocess_cache": "Reuse the face preprocessing (SadTalker's 3DMM crop, Wav2Lip's face boxes) cached by content. (default: on)",
    "fp16": "Half precision (autocast) for the renderer and the generator; needs a GPU and the worker.",
    "encoder": "H.264 encoder: auto (NVENC on a GPU when ffmpeg has it), libx264 or h264_nvenc. (default: auto)",
    "no_upscale": "Keep the engine's size (the original audio is still muxed).",
    "remove_audio": "Write a silent video.",
    "overwrite": "Replace files that exist where this run writes (OUTPUT, --report, --hls).",
    "report": "Also write the run report (JSON) here.",
    "keep_temp": "Keep the run's temp dir (staged inputs, engine log, commands, raw output).",
    "chunk_seconds": "Render long audio in chunks of about N s, cut at quiet points; 0 = off. (default: 45 for SadTalker, off for Wav2Lip)",
    "hls": "Also (or instead of OUTPUT) write an HLS playlist and segments into DIR, published chunk by chunk.",
    "hls_segment_seconds": "HLS segment length. (default: 5)",
    "cache_dir": "Cache for repositories and checkpoints. (default: the user cache dir)",
    "offline": "Make no network request; fail if something is missing.",
    "registry": "A TOML file overriding repository and checkpoint entries.",
    "log_level": "Logging verbosity (DEBUG also streams the engine's output).",
}
