"""Shared by the benchmark scripts: machine facts and writing the result."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path


def machine(**extra: str) -> dict:
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(), **extra}


def emit(result: dict, out: Path | None) -> None:
    """Print the result and, with --out, commit-ready JSON."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")
