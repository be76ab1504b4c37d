"""Warm workers against upstream's CLI per job (issue 12), on the CPU with random weights.

Each pair is measured side by side in one run, interleaved (A, B, A, B, …),
so both sides share the machine's load of the moment.  The cases:

``wav2lip-batch``   6 jobs of 3 s audio on the same portrait: ``batch --runner worker``
                    against ``batch --runner subprocess``.  Target: worker ≥ 1.5× faster.
``wav2lip-single``  one 3 s job with the 1080p upscale: ``run`` (worker) against what a
                    user does by hand: upstream's ``inference.py`` as its README says (its
                    own final mux included), then ``ffmpeg -vf scale=-2:1080:flags=bicubic
                    -c:v libx264 -crf 18 -preset medium -c:a aac``.  Best of N each.
                    Target: at most 0.75× the time.
``sadtalker``       3 jobs of 0.6 s on the same portrait (``batch``, preprocessing done
                    once by the worker).  Target: worker ≥ 1.2× faster.
``hls``             20 s of Wav2Lip audio with ``--hls``: seconds from the start of the
                    command to the first published segment, worker against subprocess.

Random weights come from tests/upstream/make_weights.py; Wav2Lip runs use a fixed face box
(random s3fd weights find no face).  Reproduce::

    python benchmarks/bench_worker.py wav2lip-batch wav2lip-single hls --python /work/venv-upstream/bin/python \\
        --wav2lip-repo /work/upstream/Wav2Lip --weights /work/upstream-weights --out benchmarks/results/worker.json
    python benchmarks/bench_worker.py sadtalker --python /work/venv-upstream/bin/python \\
        --sadtalker-repo /work/upstream/SadTalker --weights /work/upstream-weights --out benchmarks/results/worker_sadtalker.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import emit, machine, timed

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "tests" / "data" / "portrait.jpg"
SITE_DIR = ROOT / "lipsync_tool" / "engines" / "compat" / "site"
BOX = ("100", "100", "400", "420")  # X1 Y1 X2 Y2
UPSTREAM_BOX = ("100", "420", "100", "400")  # top bottom left right
TONE = "sine=frequency=220:sample_rate=44100,volume='0.6+0.4*sin(2*PI*3*t)':eval=frame"


def ffmpeg_path() -> str:
    from lipsync_tool.media import find_ffmpeg

    return find_ffmpeg().path


def speech(ff: str, path: Path, seconds: float, freq: int = 220) -> Path:
    src = TONE.replace("220", str(freq))
    subprocess.run([ff, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", src, "-t", str(seconds), str(path)], check=True)
    return path


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.ff = ffmpeg_path()
        self.scratch = Path(tempfile.mkdtemp(prefix="lipsync-bench-worker-"))
        self.env = {**os.environ, "LIPSYNC_TOOL_CACHE": str(self.scratch / "cache")}
        self.env.pop("LIPSYNC_TOOL_SHIM_DEBUG", None)

    def tool(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "lipsync_tool", *args, "--python", self.args.python, "--device", "cpu", "--seed", "1", "--overwrite"]

    def registry(self, engine: str) -> str:
        return str(self.args.weights / engine / "registry.toml")

    def pair(self, name: str, a: tuple[str, Callable[[], list[str]]], b: tuple[str, Callable[[], list[str]]], reps: int) -> dict:
        """Time *a* and *b* (argv factories, called just before each run), interleaved."""
        runs: dict[str, list[float]] = {a[0]: [], b[0]: []}
        for rep in range(reps):
            for label, make in (a, b) if rep % 2 == 0 else (b, a):
                argv = make()
                runs[label].append(round(timed(argv, env=self.env, log=self.scratch / f"{name}-{label}-{rep}.log"), 2))
            print(f"{name} rep {rep + 1}: {runs}", flush=True)
        return runs

    # -- the cases ---------------------------------------------------------------------------------

    def manifest(self, name: str, engine: str, count: int, seconds: float) -> Path:
        rows = ["image,audio"]
        for i in range(count):
            rows.append(f"{PORTRAIT},{speech(self.ff, self.scratch / f'{name}-{i}.wav', seconds, 200 + 20 * i)}")
        path = self.scratch / f"{name}.csv"
        path.write_text("\n".join(rows) + "\n")
        return path

    def batch_case(self, name: str, engine: str, count: int, seconds: float, extra: list[str], target: float) -> dict:
        manifest = self.manifest(name, engine, count, seconds)

        def argv(runner: str) -> list[str]:
            out = self.scratch / f"{name}-{runner}"
            shutil.rmtree(out, ignore_errors=True)
            return self.tool("batch", str(manifest), "--out-dir", str(out), "--engine", engine, "--registry", self.registry(engine), "--runner", runner, *extra)

        setup = [sys.executable, "-m", "lipsync_tool", "setup", "--engine", engine, "--registry", self.registry(engine), "--python", self.args.python]
        timed(setup, env=self.env, log=self.scratch / f"{name}-setup.log")
        runs = self.pair(name, ("worker", lambda: argv("worker")), ("subprocess", lambda: argv("subprocess")), self.args.reps)
        best = {k: min(v) for k, v in runs.items()}
        speedup = round(best["subprocess"] / best["worker"], 2)
        reports = [json.loads(p.read_text()) for p in sorted((self.scratch / f"{name}-worker").glob("*.report.json"))]
        if len(reports) != count or any(r["status"] != "ok" or r["engine"]["runner"] != "worker" for r in reports):
            raise SystemExit(f"{name}: the worker batch did not render {count} jobs in a worker")
        return {"jobs": count, "audio_s": seconds, "wall_s": runs, "best_s": best, "speedup": speedup, "target": f">= {target}x", "met": speedup >= target}

    def wav2lip_batch(self) -> dict:
        return self.batch_case("wav2lip-batch", "wav2lip", 6, 3.0, ["--wav2lip-box", *BOX], 1.5)

    def sadtalker(self) -> dict:
        return self.batch_case("sadtalker", "sadtalker", 3, 0.6, [], 1.2)

    def wav2lip_single(self) -> dict:
        audio = speech(self.ff, self.scratch / "single.wav", 3.0)
        face = self.scratch / "portrait.jpg"
        shutil.copyfile(PORTRAIT, face)
        tool = self.tool("run", str(face), str(audio), str(self.scratch / "single.mp4"), "--engine", "wav2lip", "--registry", self.registry("wav2lip"), "--wav2lip-box", *BOX)
        timed(tool, env=self.env, log=self.scratch / "single-warm.log")
        # By hand: a plain copy of the checkout, upstream's command, then one ffmpeg upscale.
        direct = self.scratch / "Wav2Lip"
        shutil.copytree(self.args.wav2lip_repo, direct, ignore=shutil.ignore_patterns(".git"))
        (direct / "checkpoints").mkdir(exist_ok=True)
        shutil.copyfile(self.args.weights / "wav2lip" / "wav2lip_gan.pth", direct / "checkpoints" / "wav2lip_gan.pth")
        bindir = self.scratch / "bin"
        bindir.mkdir(exist_ok=True)
        if not (bindir / "ffmpeg").exists():
            os.symlink(self.ff, bindir / "ffmpeg")
        hand_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_TOOL_")},
            "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "CUDA_VISIBLE_DEVICES": "",
            # Without the shims upstream fails on librosa >= 0.10 (and on torch >= 2.6 for these weights).
            "PYTHONPATH": str(SITE_DIR),
            "LIPSYNC_TOOL_TRUSTED_WEIGHTS": json.dumps([str((direct / "checkpoints" / "wav2lip_gan.pth").resolve())]),
        }
        hand_infer = [self.args.python, "inference.py", "--checkpoint_path", "checkpoints/wav2lip_gan.pth", "--face", str(face), "--audio", str(audio), "--outfile", "results/hand.mp4", "--box", *UPSTREAM_BOX]
        hand_up = [self.ff, "-hide_banner", "-loglevel", "error", "-y", "-i", str(direct / "results" / "hand.mp4"), "-vf", "scale=-2:1080:flags=bicubic",
                   "-c:v", "libx264", "-crf", "18", "-preset", "medium", "-c:a", "aac", str(self.scratch / "hand_1080.mp4")]  # fmt: skip
        runs: dict[str, list[float]] = {"tool": [], "by_hand": []}
        for rep in range(self.args.reps):
            runs["tool"].append(round(timed(tool, env=self.env, log=self.scratch / f"single-{rep}.log"), 2))
            t = timed(hand_infer, env=hand_env, cwd=direct, log=self.scratch / f"hand-{rep}.log")
            runs["by_hand"].append(round(t + timed(hand_up, env=hand_env, log=self.scratch / f"hand-up-{rep}.log"), 2))
            print(f"wav2lip-single rep {rep + 1}: {runs}", flush=True)
        best = {k: min(v) for k, v in runs.items()}
        ratio = round(best["tool"] / best["by_hand"], 2)
        return {"audio_s": 3.0, "wall_s": runs, "best_s": best, "ratio": ratio, "target": "<= 0.75x", "met": ratio <= 0.75}

    def hls(self) -> dict:
        audio = speech(self.ff, self.scratch / "hls.wav", 20.0)
        out: dict[str, dict] = {}
        for runner in ("worker", "subprocess"):
            hls_dir = self.scratch / f"hls-{runner}"
            shutil.rmtree(hls_dir, ignore_errors=True)
            argv = self.tool("run", str(PORTRAIT), str(audio), "--hls", str(hls_dir), "--engine", "wav2lip", "--registry", self.registry("wav2lip"), "--wav2lip-box", *BOX, "--runner", runner)
            start = time.perf_counter()
            with open(self.scratch / f"hls-{runner}.log", "wb") as log:
                proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                first = None
                while proc.poll() is None:
                    playlist = hls_dir / "index.m3u8"
                    if first is None and playlist.exists() and "segment_00000.ts" in playlist.read_text():
                        first = time.perf_counter() - start
                    time.sleep(0.05)
                total = time.perf_counter() - start
            if proc.returncode != 0:
                raise SystemExit(f"hls {runner} failed; see {self.scratch / f'hls-{runner}.log'}")
            out[runner] = {"first_segment_s": round(first if first is not None else total, 2), "total_s": round(total, 2)}
            print(f"hls {runner}: {out[runner]}", flush=True)
        out["segment_s"] = 5.0
        return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cases", nargs="+", choices=["wav2lip-batch", "wav2lip-single", "sadtalker", "hls"])
    p.add_argument("--python", required=True, help="the engines' interpreter")
    p.add_argument("--wav2lip-repo", type=Path)
    p.add_argument("--sadtalker-repo", type=Path)
    p.add_argument("--weights", type=Path, required=True, help="make_weights.py's output root (wav2lip/, sadtalker/)")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    bench = Bench(args)
    results = {"command": " ".join(["python", *sys.argv]), "machine": machine(), "reps": args.reps}
    try:
        for case in args.cases:
            results[case] = getattr(bench, case.replace("-", "_"))()
    finally:
        results["machine"]["loadavg_at_end"] = list(os.getloadavg())
    emit(results, args.out)
    shutil.rmtree(bench.scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
