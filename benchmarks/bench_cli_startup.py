"""CLI cold start: wall time of ``lipsync-tool --help`` (target < 0.5 s here).

Also times ``lipsync-tool run --help`` (which builds every engine's option
panel) and ``python -c 'import lipsync_tool.cli'`` for reference, and checks
that no heavy module (torch, cv2, librosa, git, numpy, PIL) was imported.

    python benchmarks/bench_cli_startup.py [--repeat 10] [--out benchmarks/results/cli_startup.json]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, machine

HEAVY = ("torch", "cv2", "librosa", "git", "numpy", "PIL", "requests", "dlib")


def timed(argv: list[str], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    exe = shutil.which("lipsync-tool") or str(Path(sys.executable).with_name("lipsync-tool"))
    probe = f"import sys, lipsync_tool.cli as c; c.build_app(False); print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    results = {
        "lipsync-tool --help": timed([exe, "--help"], args.repeat),
        "lipsync-tool run --help": timed([exe, "run", "--help"], args.repeat),
        "python -c 'import lipsync_tool.cli'": timed([sys.executable, "-c", "import lipsync_tool.cli"], args.repeat),
        "python -c 'pass' (interpreter alone)": timed([sys.executable, "-c", "pass"], args.repeat),
    }
    summary = {k: {"median_s": round(statistics.median(v), 3), "max_s": round(max(v), 3)} for k, v in results.items()}
    result = {
        "benchmark": "CLI cold start",
        "command": f"python benchmarks/bench_cli_startup.py --repeat {args.repeat}",
        "machine": machine(),
        "results": summary,
        "heavy_modules_imported_by_cli": loaded.split(",") if loaded else [],
        "target": "lipsync-tool --help median < 0.5 s; no heavy module imported",
    }
    result["pass"] = summary["lipsync-tool --help"]["median_s"] < 0.5 and not loaded
    emit(result, args.out)


if __name__ == "__main__":
    main()
