"""lipsync-tool's overhead on a real Wav2Lip job, against calling upstream directly.

The job: tests/data/portrait.jpg, 3 s of speech-like audio, Wav2Lip on the CPU
with random weights (tests/upstream/make_weights.py) and a fixed face box.
Four commands are timed, interleaved, ``--reps`` times each (wall clock):

``tool``           ``lipsync-tool run … --no-upscale``
``direct``         upstream ``inference.py`` in a plain copy of the checkout
``tool+upscale``   ``lipsync-tool run …`` (the 1080p upscale included)
``direct+ffmpeg``  the direct call, then one ffmpeg upscale to 1080p with the
                   same encoder settings (libx264 medium, CRF 18, AAC 192k)

The direct call gets what a user would give it: the original image and WAV,
ffmpeg on PATH, CUDA hidden, and lipsync-tool's compat shims on PYTHONPATH,
without which upstream fails on librosa >= 0.10 (and, for these weights, on
torch >= 2.6's weights_only default).

The tool's own report gives the profile of each run (validate, resources,
stage, engine, upscale, publish).  ``results/engine_overhead_with_pycache_prefix.json``
is an earlier run, from before the pipeline stopped setting PYTHONPYCACHEPREFIX
for the engine (that run also timed the tool with the variable patched out).

Reproduce (about 7 minutes on 2 cores)::

    python tests/upstream/make_weights.py wav2lip --repo /work/upstream/Wav2Lip --out /work/upstream-weights/wav2lip   # engine venv
    python benchmarks/engine_overhead.py --wav2lip-repo /work/upstream/Wav2Lip --python /work/venv-upstream/bin/python \\
        --weights /work/upstream-weights/wav2lip --reps 5 --out benchmarks/results/engine_overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import timed

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "tests" / "data" / "portrait.jpg"
SITE_DIR = ROOT / "lipsync_tool" / "engines" / "compat" / "site"
BOX = ("100", "100", "400", "420")  # X1 Y1 X2 Y2
UPSTREAM_BOX = ("100", "420", "100", "400")  # top bottom left right
SECONDS = 3.0

def ffmpeg_path() -> str:
    from lipsync_tool.media import find_ffmpeg

    return find_ffmpeg().path


def summarize(runs: dict[str, list[float]]) -> dict[str, float]:
    """Ratios of the medians, and the median of the per-repetition ratios
    (each pair ran back to back, so it shares the machine's load of the moment)."""
    med = {k: statistics.median(v) for k, v in runs.items()}
    out = {
        "no_upscale_ratio": round(med["tool"] / med["direct"], 3),
        "with_upscale_ratio": round(med["tool+upscale"] / med["direct+ffmpeg"], 3),
        "no_upscale_ratio_per_rep_median": round(statistics.median(t / d for t, d in zip(runs["tool"], runs["direct"])), 3),
        "with_upscale_ratio_per_rep_median": round(statistics.median(t / d for t, d in zip(runs["tool+upscale"], runs["direct+ffmpeg"])), 3),
    }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wav2lip-repo", type=Path, required=True)
    p.add_argument("--python", required=True, help="the engine's interpreter")
    p.add_argument("--weights", type=Path, required=True, help="make_weights.py's output dir (registry.toml, wav2lip_gan.pth)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "engine_overhead.json")
    p.add_argument("--keep", action="store_true", help="keep the scratch dir")
    args = p.parse_args()

    ff = ffmpeg_path()
    scratch = Path(tempfile.mkdtemp(prefix="lipsync-bench-"))
    audio = scratch / "speech.wav"
    subprocess.run(
        [ff, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=220:sample_rate=44100,volume='0.6+0.4*sin(2*PI*3*t)':eval=frame", "-t", str(SECONDS), str(audio)],
        check=True,
    )
    face = scratch / "portrait.jpg"
    shutil.copyfile(PORTRAIT, face)
    registry = args.weights / "registry.toml"
    ckpt = args.weights / "wav2lip_gan.pth"

    # the tool: its own cache, warmed by one untimed run (clone + verified copy of the weights)
    tool_env = {**os.environ, "LIPSYNC_TOOL_CACHE": str(scratch / "cache")}
    tool_env.pop("LIPSYNC_TOOL_SHIM_DEBUG", None)
    common = [str(face), str(audio), "--engine", "wav2lip", "--python", args.python, "--registry", str(registry), "--wav2lip-box", *BOX, "--device", "cpu", "--seed", "1", "--overwrite"]

    def tool(name: str, *extra: str) -> tuple[list[str], Path]:
        report = scratch / f"{name}.json"
        return [sys.executable, "-m", "lipsync_tool", "run", *common[:2], str(scratch / f"{name}.mp4"), *common[2:], "--report", str(report), *extra], report

    # the direct call: a plain copy of the checkout with the checkpoint and ffmpeg where upstream wants them
    direct_dir = scratch / "Wav2Lip"
    shutil.copytree(args.wav2lip_repo, direct_dir, ignore=shutil.ignore_patterns(".git"))
    (direct_dir / "checkpoints").mkdir(exist_ok=True)
    shutil.copyfile(ckpt, direct_dir / "checkpoints" / "wav2lip_gan.pth")
    bindir = scratch / "bin"
    bindir.mkdir()
    os.symlink(ff, bindir / "ffmpeg")
    direct_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_TOOL_")},
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "CUDA_VISIBLE_DEVICES": "",
        "PYTHONPATH": str(SITE_DIR),
        "LIPSYNC_TOOL_TRUSTED_WEIGHTS": json.dumps([str((direct_dir / "checkpoints" / "wav2lip_gan.pth").resolve())]),
    }
    direct_argv = [
        args.python, "inference.py", "--checkpoint_path", "checkpoints/wav2lip_gan.pth", "--face", str(face), "--audio", str(audio),
        "--outfile", "results/direct.mp4", "--box", *UPSTREAM_BOX,
    ]  # fmt: skip
    upscale_argv = [
        ff, "-hide_banner", "-loglevel", "error", "-y", "-i", str(direct_dir / "results" / "direct.mp4"), "-i", str(audio),
        "-map", "0:v:0", "-map", "1:a:0", "-vf", "scale=-2:1080:flags=bicubic,setsar=1", "-c:v", "libx264", "-preset", "medium", "-crf", "18",
        "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "192k", "-movflags", "+faststart", "-t", str(SECONDS), str(scratch / "direct_1080.mp4"),
    ]  # fmt: skip

    warm, _ = tool("warmup", "--no-upscale")
    timed(warm, env=tool_env, log=scratch / "warmup.log")
    timed(direct_argv, cwd=direct_dir, env=direct_env, log=scratch / "direct_warmup.log")

    runs: dict[str, list[float]] = {"tool": [], "direct": [], "tool+upscale": [], "direct+ffmpeg": []}
    profiles: dict[str, list[dict]] = {k: [] for k in runs}
    for rep in range(args.reps):
        argv, report = tool("tool", "--no-upscale")
        runs["tool"].append(timed(argv, env=tool_env, log=scratch / "tool.log"))
        profiles["tool"].append(json.loads(report.read_text())["timings"])
        runs["direct"].append(timed(direct_argv, cwd=direct_dir, env=direct_env, log=scratch / "direct.log"))
        argv, report = tool("tool_up")
        runs["tool+upscale"].append(timed(argv, env=tool_env, log=scratch / "tool_up.log"))
        profiles["tool+upscale"].append(json.loads(report.read_text())["timings"])
        t = timed(direct_argv, cwd=direct_dir, env=direct_env, log=scratch / "direct2.log")
        runs["direct+ffmpeg"].append(t + timed(upscale_argv, log=scratch / "upscale.log"))
        print(f"rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in runs.items()), flush=True)

    med = {k: round(statistics.median(v), 2) for k, v in runs.items()}
    summary = summarize(runs)
    profile = {
        k: {stage: round(statistics.median(p[stage] for p in v), 3) for stage in v[0]} if v else {}
        for k, v in profiles.items()
    }
    result = {
        "command": " ".join(sys.argv),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(), "loadavg_at_end": os.getloadavg()},
        "job": {"engine": "wav2lip", "audio_seconds": SECONDS, "face": "tests/data/portrait.jpg (512x512)", "device": "cpu", "weights": "random (make_weights.py)"},
        "reps": args.reps,
        "wall_s": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "median_s": med,
        "summary": summary,
        "tool_profile_median_s": profile,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"median_s": med, "summary": summary, "profile": profile}, indent=2))
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    else:
        print(f"scratch kept in {scratch}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
