"""Run the reference SyncNet scorer (joonson/syncnet_python with Wav2Lip's
``evaluation/scores_LSE`` scripts) on one video, on the CPU, and read its figures.

No upstream code lives here: at run time the checkout
(``LIPSYNC_TOOL_UPSTREAM_SYNCNET``) is copied into a work folder (``.git``
left out), Wav2Lip's ``evaluation/scores_LSE/*.py`` (from
``LIPSYNC_TOOL_UPSTREAM_WAV2LIP``) are copied beside it, and the weights are
linked where the reference loads them (``data/syncnet_v2.model``,
``detectors/s3fd/weights/sfd_face.pth``).  Then, as
``calculate_scores_real_videos.sh`` does, in that folder::

    python run_pipeline.py --videofile V --reference wav2lip --data_dir tmp_dir
    python calculate_scores_real_videos.py --videofile V --reference wav2lip --data_dir tmp_dir   # "dist conf" per track

and syncnet_python's own ``run_syncnet.py`` (same arguments) for the AV offset
("AV offset / Min dist / Confidence" per track).  With ``face_crop`` the first
step is skipped and the video (already a 224x224, 25 fps face track) is the
only track, ``pycrop/wav2lip/00000.avi``.

The interpreter is ``/work/venv-syncnet/bin/python`` unless
``LIPSYNC_TOOL_UPSTREAM_SYNCNET_PYTHON`` names another; its ``PYTHONPATH`` is
``syncnet_cpu/`` (a CPU shim, see its docstring), and its ``PATH`` starts with
the given ffmpeg (the reference calls ``ffmpeg`` by name, through a shell).

Command line (prints the result as JSON)::

    python tests/upstream/syncnet_reference.py VIDEO --weights DIR --work DIR [--face-crop] [--ffmpeg PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIM_DIR = HERE / "syncnet_cpu"
DEFAULT_PYTHON = "/work/venv-syncnet/bin/python"
REFERENCE = "wav2lip"  # the --reference name calculate_scores_real_videos.sh uses
STEP_TIMEOUT = 600.0

_SCORE_LINE = re.compile(r"^\s*(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s+(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*$")
_OFFSET = re.compile(r"AV offset:\s*(-?\d+)\s*\nMin dist:\s*(\S+)\s*\nConfidence:\s*(\S+)")


def reference_python() -> str:
    return os.environ.get("LIPSYNC_TOOL_UPSTREAM_SYNCNET_PYTHON") or DEFAULT_PYTHON


def _required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"set {name} (or pass the checkout explicitly)")
    return value


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def prepare(work: Path, weights_dir: Path, *, syncnet_repo: Path, wav2lip_repo: Path, ffmpeg: str) -> Path:
    """The runnable reference folder under *work*, and ``work/bin/ffmpeg``."""
    root = work / "syncnet_python"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(syncnet_repo, root, ignore=shutil.ignore_patterns(".git", "__pycache__", "tmp_dir"), copy_function=_link_or_copy)
    scripts = sorted((wav2lip_repo / "evaluation" / "scores_LSE").glob("*.py"))
    if not scripts:
        raise FileNotFoundError(f"no evaluation/scores_LSE/*.py in {wav2lip_repo}")
    for script in scripts:
        shutil.copy2(script, root / script.name)
    for name, dest in (("syncnet_v2.model", root / "data"), ("sfd_face.pth", root / "detectors" / "s3fd" / "weights")):
        dest.mkdir(parents=True, exist_ok=True)
        os.symlink((weights_dir / name).resolve(strict=True), dest / name)
    bin_dir = work / "bin"
    bin_dir.mkdir(exist_ok=True)
    link = bin_dir / "ffmpeg"
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(Path(shutil.which(ffmpeg) or ffmpeg).resolve(strict=True), link)
    return root


def _env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update({"PYTHONPATH": str(SHIM_DIR), "PATH": f"{work / 'bin'}{os.pathsep}{env.get('PATH', '')}", "CUDA_VISIBLE_DEVICES": ""})
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def run_step(argv: list[str], *, cwd: Path, env: dict[str, str], log: Path, timeout: float = STEP_TIMEOUT) -> str:
    """Run one reference script; its output goes to *log*; a failure raises with the log's tail."""
    proc = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False)
    log.write_text(f"$ {' '.join(argv)}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode} (cwd {cwd}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


def parse_scores(stdout: str) -> list[tuple[float, float]]:
    """calculate_scores_real_videos.py's "dist conf" lines, one a track."""
    return [(float(m.group(1)), float(m.group(2))) for m in map(_SCORE_LINE.match, stdout.splitlines()) if m]


def parse_offsets(stdout: str) -> list[tuple[int, float, float]]:
    """run_syncnet.py's "AV offset / Min dist / Confidence" blocks, one a track."""
    return [(int(m.group(1)), float(m.group(2)), float(m.group(3))) for m in _OFFSET.finditer(stdout)]


def _place_face_crop(root: Path, video: Path) -> None:
    data = root / "tmp_dir"
    crop = data / "pycrop" / REFERENCE
    crop.mkdir(parents=True)
    (data / "pywork" / REFERENCE).mkdir(parents=True)  # run_syncnet.py pickles its distances there
    shutil.copyfile(video, crop / "00000.avi")


def run_reference(
    video: Path,
    weights_dir: Path,
    work: Path,
    *,
    face_crop: bool = False,
    ffmpeg: str = "ffmpeg",
    python: str | None = None,
    syncnet_repo: Path | None = None,
    wav2lip_repo: Path | None = None,
) -> dict:
    """The reference's figures for *video*: ``{"lse_d", "lse_c", "av_offset", "tracks", …}``.

    ``lse_d``/``lse_c`` are the mean over tracks of calculate_scores_real_videos.py's
    "dist conf" (with one track, its figures), ``av_offset`` is run_syncnet.py's
    offset of the first track; ``per_track`` has every track's figures and
    ``commands`` the exact command lines (run in ``work/syncnet_python``).
    """
    syncnet_repo = Path(syncnet_repo or _required_env("LIPSYNC_TOOL_UPSTREAM_SYNCNET"))
    wav2lip_repo = Path(wav2lip_repo or _required_env("LIPSYNC_TOOL_UPSTREAM_WAV2LIP"))
    video, work = Path(video).resolve(strict=True), Path(work).resolve()
    if any(c.isspace() for c in str(video) + str(work)):
        raise ValueError("the reference builds shell commands from these paths: no whitespace allowed")
    work.mkdir(parents=True, exist_ok=True)
    root = prepare(work, Path(weights_dir), syncnet_repo=syncnet_repo, wav2lip_repo=wav2lip_repo, ffmpeg=ffmpeg)
    env, py = _env(work), python or reference_python()
    args = ["--videofile", str(video), "--reference", REFERENCE, "--data_dir", "tmp_dir"]
    commands = []
    if face_crop:
        _place_face_crop(root, video)
    else:
        commands.append([py, "run_pipeline.py", *args])
        run_step(commands[-1], cwd=root, env=env, log=work / "run_pipeline.log")
    tracks = sorted((root / "tmp_dir" / "pycrop" / REFERENCE).glob("0*.avi"))
    commands.append([py, "calculate_scores_real_videos.py", *args])
    scores = parse_scores(run_step(commands[-1], cwd=root, env=env, log=work / "calculate_scores.log"))
    commands.append([py, "run_syncnet.py", *args])
    offsets = parse_offsets(run_step(commands[-1], cwd=root, env=env, log=work / "run_syncnet.log"))
    if len(scores) != len(tracks) or len(offsets) != len(tracks):
        raise RuntimeError(f"{len(tracks)} tracks but {len(scores)} score lines and {len(offsets)} offsets; see the logs in {work}")
    if not tracks:
        return {"lse_d": None, "lse_c": None, "av_offset": None, "tracks": 0, "per_track": [], "commands": commands}
    per_track = [
        {"crop": str(t), "lse_d": d, "lse_c": c, "av_offset": off, "min_dist": md, "confidence": conf}
        for t, (d, c), (off, md, conf) in zip(tracks, scores, offsets, strict=True)
    ]
    return {
        "lse_d": sum(d for d, _ in scores) / len(scores),
        "lse_c": sum(c for _, c in scores) / len(scores),
        "av_offset": offsets[0][0],
        "tracks": len(tracks),
        "per_track": per_track,
        "commands": commands,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("video", type=Path)
    p.add_argument("--weights", type=Path, required=True, help="folder with syncnet_v2.model and sfd_face.pth")
    p.add_argument("--work", type=Path, required=True, help="scratch folder (the reference copy and its tmp_dir)")
    p.add_argument("--face-crop", action="store_true", help="the video is already a 224x224, 25 fps face track")
    p.add_argument("--ffmpeg", default="ffmpeg", help="the ffmpeg the reference finds on PATH")
    p.add_argument("--syncnet-repo", type=Path, help="syncnet_python checkout (default: $LIPSYNC_TOOL_UPSTREAM_SYNCNET)")
    p.add_argument("--wav2lip-repo", type=Path, help="Wav2Lip checkout (default: $LIPSYNC_TOOL_UPSTREAM_WAV2LIP)")
    args = p.parse_args(argv)
    result = run_reference(
        args.video, args.weights, args.work, face_crop=args.face_crop, ffmpeg=args.ffmpeg, syncnet_repo=args.syncnet_repo, wav2lip_repo=args.wav2lip_repo
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
