"""Upscale speed: 10 s of 512x512 at 25 fps to 1080p, lipsync-tool vs raw ffmpeg.

lipsync-tool's upscale is one ffmpeg pass built with ffmpeg-python and run
with progress parsing (``media.run_ffmpeg_job``).  The baseline runs the very
same argv straight from ``subprocess.run``, in the same process and run, so
the ratio isolates lipsync-tool's own overhead.  Targets: >= 0.95x raw
ffmpeg, and >= 2x real time (50 frames/s at 25 fps) on 2 cores.

    python benchmarks/bench_upscale.py [--repeat 3] [--out benchmarks/results/upscale.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import emit, machine  # noqa: E402
from lipsync_tool.config import UpscaleOptions  # noqa: E402
from lipsync_tool.media import AudioSource, find_ffmpeg, run_ffmpeg_job, upscale_argv  # noqa: E402

SECONDS = 10.0
FPS = 25


#: Two kinds of engine output.  "mouth": a still portrait whose mouth region
#: changes every frame (what Wav2Lip and SadTalker --still produce);
#: "full_motion": the whole frame moves every frame (a slow zoom: the worst
#: case for the encoder, like SadTalker with head motion).
CONTENT = {
    "mouth": ["-f", "lavfi", "-i", f"testsrc2=size=128x64:rate={FPS}", "-filter_complex", "[0]scale=512:512[b];[b][1]overlay=192:300:shortest=1"],
    "full_motion": ["-vf", f"scale=512:512,zoompan=z='1+0.0008*on':d=1:s=512x512:fps={FPS}"],
}


def make_inputs(ff, d: Path, content: str) -> tuple[Path, Path]:
    """10 s of 512x512 engine-like video, and 10 s of audio."""
    raw = d / f"raw_{content}.mp4"
    audio = d / "speech.wav"
    portrait = ROOT / "tests" / "data" / "portrait.jpg"
    subprocess.run(
        [ff.path, "-hide_banner", "-loglevel", "error", "-y", "-loop", "1", "-framerate", str(FPS), "-i", str(portrait),
         *CONTENT[content], "-t", str(SECONDS), "-c:v", "libx264", "-preset", "veryfast", "-crf", "16", "-pix_fmt", "yuv420p", str(raw)],
        check=True,
    )  # fmt: skip
    subprocess.run(
        [ff.path, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=220:sample_rate=44100", "-t", str(SECONDS), str(audio)],
        check=True,
    )
    return raw, audio


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--preset", action="append", help="x264 presets to measure (default: medium, the tool's default, and veryfast)")
    args = ap.parse_args()
    presets = args.preset or ["medium", "veryfast"]
    ff = find_ffmpeg(os.environ.get("LIPSYNC_TOOL_FFMPEG"))
    frames = SECONDS * FPS
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for content in CONTENT:
            raw, audio = make_inputs(ff, d, content)
            for preset in presets:
                argv = upscale_argv(ff.path, raw, AudioSource(audio), d / "tool.mp4", UpscaleOptions(x264_preset=preset), SECONDS, fmt="mp4")
                raw_argv = [a if a != str(d / "tool.mp4") else str(d / "raw_cli.mp4") for a in argv]
                tool_times, raw_times = [], []
                for _ in range(args.repeat):  # interleaved, so drift hits both alike
                    t = time.perf_counter()
                    run_ffmpeg_job(argv, what="upscale", total_seconds=SECONDS, on_progress=lambda f: None)
                    tool_times.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    subprocess.run(raw_argv, check=True, capture_output=True)
                    raw_times.append(time.perf_counter() - t)
                tool, rawt = statistics.median(tool_times), statistics.median(raw_times)
                runs.append(
                    {
                        "content": content,
                        "x264_preset": preset,
                        "lipsync_tool_seconds": [round(x, 3) for x in tool_times],
                        "raw_ffmpeg_seconds": [round(x, 3) for x in raw_times],
                        "lipsync_tool_fps": round(frames / tool, 1),
                        "raw_ffmpeg_fps": round(frames / rawt, 1),
                        "speed_vs_raw_ffmpeg": round(rawt / tool, 3),
                        "realtime_factor": round(SECONDS / tool, 2),
                    }
                )
    for r in runs:
        r["pass"] = r["speed_vs_raw_ffmpeg"] >= 0.95 and r["realtime_factor"] >= 2.0
    result = {
        "benchmark": "upscale 10 s of 512x512 @25 fps to 1080p (bicubic, libx264 crf 18, AAC), lipsync-tool vs the same argv run directly",
        "command": f"python benchmarks/bench_upscale.py --repeat {args.repeat:d}",
        "machine": machine(ffmpeg=ff.version),
        "targets": {"speed_vs_raw_ffmpeg": ">= 0.95", "realtime_factor": ">= 2.0 (50 frames/s)"},
        "runs": runs,
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
