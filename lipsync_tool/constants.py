"""Names shared by the CLI and the models, importable without pydantic."""

X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")
OUTPUT_EXTENSIONS = (".mp4", ".mov", ".mkv")

ENV_CACHE = "LIPSYNC_TOOL_CACHE"
ENV_FFMPEG = "LIPSYNC_TOOL_FFMPEG"
ENV_OFFLINE = "LIPSYNC_TOOL_OFFLINE"
ENV_REGISTRY = "LIPSYNC_TOOL_REGISTRY"
ENV_DEBUG = "LIPSYNC_TOOL_DEBUG"


def env_flag(name: str) -> bool:
    import os

    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
