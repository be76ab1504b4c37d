"""Shared by the benchmark scripts: machine facts and writing the result."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path


def machine(**extra: str) -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(), **extra}


def emit(result: dict, out: Path | None) -> None:
    """Print the result and, with --out, commit-ready JSON."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")


def timed(argv: list[str], *, log: Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> float:
    """Wall seconds of *argv* (its output to *log*); exits when it fails."""
    start = time.perf_counter()
    with open(log, "wb") as f:
        proc = subprocess.run(argv, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {argv}\nsee {log}")
    return took
