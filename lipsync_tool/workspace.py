"""A run's private directory tree, and the link farm the engine runs in.

The engine's working dir mirrors the pinned clone: every directory is real
and every file is a symlink into the cache.  New files that upstream writes
relative to its working dir or to its module files (``temp/``, ``results/``,
``<uuid>.mp4``) land in the run's own tree, checkpoints are linked where
upstream looks for them, and the cached clone is never written.  The entry
script is copied, not linked: Python resolves the script's symlink for
``sys.path[0]``, which would send every import back into the cache.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from .engines.base import Workspace, is_safe_path

log = logging.getLogger(__name__)

SKIP = {".git", "__pycache__"}


def create_workspace(base: Path | None = None) -> Workspace:
    """A fresh temp dir whose path upstream's string handling survives."""
    candidates = [Path(base)] if base else []
    candidates += [Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp")]
    chosen = None
    for c in candidates:
        if c.is_dir() and os.access(c, os.W_OK) and is_safe_path(str(c.absolute())):
            chosen = c
            break
    root = Path(tempfile.mkdtemp(prefix="lipsync-", dir=chosen or candidates[0]))
    # mkdtemp's random part may hold characters upstream mishandles; rename if so.
    if not re.fullmatch(r"lipsync-[A-Za-z0-9_]+", root.name):
        safe = root.with_name("lipsync-" + re.sub(r"[^A-Za-z0-9_]", "_", root.name[len("lipsync-") :]))
        root.rename(safe)
        root = safe
    ws = Workspace(root)
    ws.inputs.mkdir()
    ws.work.mkdir()
    return ws


class TempWorkspace:
    """A run's :class:`Workspace` and the one decision about its files: kept
    (``--keep-temp``, or a failure worth debugging) or deleted when the run ends."""

    def __init__(self, ws: Workspace, *, keep: bool):
        self.ws = ws
        #: --keep-temp: the files stay whatever happens.
        self.keep = keep

    @classmethod
    def create(cls, *, keep: bool, base: Path | None = None) -> TempWorkspace:
        return cls(create_workspace(base), keep=keep)

    @property
    def root(self) -> Path:
        return self.ws.root

    @property
    def kept_dir(self) -> Path | None:
        """Where the files stay after a successful run (None: they are deleted)."""
        return self.root if self.keep else None

    def keep_copy(self, src: Path, name: str) -> None:
        """Copy *src* (files that live elsewhere, e.g. the chunks) in as *name*, when the files are kept."""
        if self.keep:
            shutil.copytree(src, self.root / name, dirs_exist_ok=True)

    def close(self, *, debug: bool = False) -> Path | None:
        """End of the run: delete the files unless they are kept (*debug*: the
        run failed where its files help to find out why).  Returns the kept dir."""
        if self.keep or debug:
            return self.root
        shutil.rmtree(self.root, ignore_errors=True)
        return None

    def kept_files(self) -> list[str]:
        """What the kept dir holds (empty when the files are deleted)."""
        return listing(self.root) if self.keep else []


def build_link_farm(repo: Path, work: Path, entry_script: str, links: dict[str, Path]) -> int:
    """Mirror *repo* into *work* with symlinks; returns the number of links."""
    count = 0
    repo = repo.resolve()
    for dirpath, dirnames, filenames in os.walk(repo):
        dirnames[:] = [d for d in dirnames if d not in SKIP]
        rel = Path(dirpath).relative_to(repo)
        target_dir = work / rel
        target_dir.mkdir(parents=True, exist_ok=True)
        for d in list(dirnames):
            src = Path(dirpath) / d
            if src.is_symlink():  # a symlinked dir in the repo: link it as is
                os.symlink(os.readlink(src), target_dir / d)
                dirnames.remove(d)
        for f in filenames:
            os.symlink(Path(dirpath) / f, target_dir / f)
            count += 1
    entry = work / entry_script
    entry.unlink(missing_ok=True)
    shutil.copyfile(repo / entry_script, entry)
    for dest, src in links.items():
        target = work / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        os.symlink(Path(src).resolve(), target)
        count += 1
    (work / "results").mkdir(exist_ok=True)
    (work / "temp").mkdir(exist_ok=True)
    inputs = work / "lipsync_inputs"
    if not inputs.exists():
        os.symlink(work.parent / "inputs", inputs)
    return count


def listing(root: Path, limit: int = 200) -> list[str]:
    """What a kept temp dir holds (the link farm summarised)."""
    out: list[str] = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if rel.parts and rel.parts[0] == "work" and p.is_symlink():
            continue
        if (rel.parts and rel.parts[0] == "bin") or "__pycache__" in rel.parts:
            continue
        if p.is_file():
            out.append(f"{rel} ({p.stat().st_size:,} bytes)")
        if len(out) >= limit:
            out.append("…")
            break
    return out
