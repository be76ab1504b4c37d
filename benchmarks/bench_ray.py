"""``batch --executor ray`` against ``--executor local`` on one machine (issue 14).

A 16-job manifest (the tests' fake engine as a plug-in, 1 s of speech each) runs
with each executor, in turn, ``--rounds`` times.  ``local`` renders on one lane
(one engine job at a time); ``ray`` starts a local Ray with N slots of a custom
resource standing in for GPUs (``LIPSYNC_TOOL_RAY_RESOURCE``), one actor each.
On this 2-core machine there is no GPU to spread over, so the ratio is Ray's
overhead (start-up, object store, actors) against what two actors gain by
overlapping one job's CPU steps with another's render.

    python benchmarks/bench_ray.py --out benchmarks/results/ray.json
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
from pathlib import Path

from bench_serve import PORTRAIT, ffmpeg_path, plugin_env, speech

from _common import emit, machine, timed


def manifest(scratch: Path, ff: str, jobs: int, seconds: float) -> Path:
    path = scratch / "jobs.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "audio", "output"])
        for i in range(jobs):
            w.writerow([str(PORTRAIT), str(speech(ff, scratch / f"speech{i}.wav", seconds)), f"clip{i:02d}.mp4"])
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=1.0, help="speech per job")
    ap.add_argument("--slots", type=int, default=2, help="Ray actors (units of the stand-in resource)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    fast = ["--engine", "fake", "--x264-preset", "ultrafast", "--skip-face-check"]
    with tempfile.TemporaryDirectory(prefix="lipsync-bench-ray-") as tmp:
        scratch = Path(tmp)
        env = plugin_env(scratch)
        env.update(LIPSYNC_TOOL_RAY_RESOURCE="bench_slot", LIPSYNC_TOOL_RAY_SLOTS=str(args.slots), RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR="/tmp")
        ff = ffmpeg_path()
        jobs = manifest(scratch, ff, args.jobs, args.seconds)
        base = [sys.executable, "-m", "lipsync_tool", "batch", str(jobs), *fast]
        # The first run fills the cache (clone, checkpoint): not timed.
        timed([*base, "--out-dir", str(scratch / "warm")], log=scratch / "warm.log", env=env)
        times: dict[str, list[float]] = {"local": [], "ray": []}
        for r in range(args.rounds):
            for name in ("local", "ray"):
                out = scratch / f"{name}{r}"
                times[name].append(round(timed([*base, "--out-dir", str(out), "--executor", name], log=scratch / f"{name}{r}.log", env=env), 2))
    local, ray = statistics.median(times["local"]), statistics.median(times["ray"])
    emit(
        {
            "command": "python benchmarks/bench_ray.py --out benchmarks/results/ray.json",
            "machine": machine(ffmpeg=ff),
            "jobs": args.jobs,
            "speech_s": args.seconds,
            "ray_slots": args.slots,
            "wall_s": times,
            "median_s": {"local": local, "ray": ray},
            "ray_over_local": round(ray / local, 3),
            "per_job_s": {"local": round(local / args.jobs, 3), "ray": round(ray / args.jobs, 3)},
        },
        args.out,
    )


if __name__ == "__main__":
    main()
