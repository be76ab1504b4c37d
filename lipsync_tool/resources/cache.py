"""The on-disk cache shared by every run and process.

Layout (``v1``; a future layout lives beside it, never inside)::

    <cache>/                              --cache-dir, LIPSYNC_TOOL_CACHE, or the user cache dir
    └── v1/
        ├── repos/<engine>/
        │   ├── <commit>/                 a clone checked out at the pinned commit; runs never write here
        │   ├── <commit>.ready            JSON stamp, written after the checkout was verified
        │   └── .staging-<pid>-<rand>/    a clone in progress, renamed into place atomically
        ├── checkpoints/<engine>/
        │   ├── <name>                    a verified file (size and sha256 match the registry)
        │   ├── <name>.stamp              JSON: size, mtime_ns, sha256 of <name> when it was verified
        │   └── <name>.<pid>-<rand>.incomplete   a download in progress; resumed by the next run
        ├── stamps/user-<key>.json        hashes of the user's own files (--checkpoint-dir …)
        ├── notices/<engine>              present once the engine's licence notice was shown
        └── locks/                        one filelock per repo and per checkpoint

A file is trusted only while its stamp matches its size and mtime, so a warm
run does not re-hash gigabytes; ``cache verify`` re-hashes everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

LAYOUT_VERSION = "v1"
HASH_CHUNK = 4 << 20


def atomic_write_text(path: Path, text: str) -> None:
    """Write *text* to *path* through a temp file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_file(path: Path, progress=None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


@dataclass(frozen=True)
class Stamp:
    size: int
    mtime_ns: int
    sha256: str

    @classmethod
    def of(cls, path: Path, sha256: str) -> Stamp:
        st = path.stat()
        return cls(size=st.st_size, mtime_ns=st.st_mtime_ns, sha256=sha256)

    def matches(self, path: Path) -> bool:
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        return st.st_size == self.size and st.st_mtime_ns == self.mtime_ns

    def dumps(self) -> str:
        return json.dumps({"size": self.size, "mtime_ns": self.mtime_ns, "sha256": self.sha256})

    @classmethod
    def load(cls, path: Path) -> Stamp | None:
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls(size=int(d["size"]), mtime_ns=int(d["mtime_ns"]), sha256=str(d["sha256"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


class Cache:
    """Paths and small helpers for one cache root."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser()
        self.base = self.root / LAYOUT_VERSION

    # repos
    def repo_root(self, engine: str) -> Path:
        return self.base / "repos" / engine

    def repo_dir(self, engine: str, commit: str) -> Path:
        return self.repo_root(engine) / commit

    def repo_ready(self, engine: str, commit: str) -> Path:
        return self.repo_root(engine) / f"{commit}.ready"

    # checkpoints
    def checkpoint_dir(self, engine: str) -> Path:
        return self.base / "checkpoints" / engine

    def checkpoint_path(self, engine: str, name: str) -> Path:
        return self.checkpoint_dir(engine) / safe_name(name)

    @staticmethod
    def stamp_path(file: Path) -> Path:
        return file.with_name(file.name + ".stamp")

    @staticmethod
    def partials(file: Path) -> list[Path]:
        """Leftover ``.incomplete`` files of *file*, largest first."""
        if not file.parent.is_dir():
            return []
        import glob

        found = [p for p in file.parent.glob(glob.escape(file.name) + ".*.incomplete") if p.is_file()]
        return sorted(found, key=lambda p: p.stat().st_size, reverse=True)

    # misc
    def lock_path(self, kind: str, engine: str, name: str = "") -> Path:
        d = self.base / "locks"
        d.mkdir(parents=True, exist_ok=True)
        return d / safe_name(f"{kind}-{engine}-{name}".rstrip("-") + ".lock")

    def user_stamp(self, path: Path) -> Path:
        key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:20]
        return self.base / "stamps" / f"user-{key}.json"

    def notice_marker(self, engine: str) -> Path:
        return self.base / "notices" / engine

    def chunks_dir(self) -> Path:
        return self.base / "chunks"

    def clean(self, engines: list[str], *, partial_only: bool, chunks: bool = True) -> tuple[int, list[str]]:
        """Delete cache entries; returns (bytes freed, entries skipped as in use).

        Each entry is deleted under its own lock, so a download, clone or
        chunked render in another process is never pulled from under it.
        ``partial_only`` deletes only interrupted downloads and clones, and
        the chunks of unfinished chunked runs.
        """
        from filelock import FileLock, Timeout

        freed, busy = 0, []

        def under_lock(lock: Path, what: str, delete) -> None:
            nonlocal freed
            try:
                with FileLock(str(lock), timeout=0):
                    freed += delete()
            except Timeout:
                busy.append(what)

        def remove(path: Path) -> int:
            size = self.size_of(path)
            rmtree_force(path)
            return size

        for engine in engines:
            ckdir = self.checkpoint_dir(engine)
            names = sorted({_entry_name(p.name) for p in ckdir.iterdir()}) if ckdir.is_dir() else []
            for name in names:
                files = [p for p in ckdir.iterdir() if _entry_name(p.name) == name]
                if partial_only:
                    files = [p for p in files if p.name.endswith(".incomplete")]
                if files:
                    under_lock(self.lock_path("ckpt", engine, name), f"{engine}/{name}", lambda fs=files: sum(remove(f) for f in fs))
            root = self.repo_root(engine)
            if root.is_dir():
                targets = list(root.glob(".staging-*")) if partial_only else [root]
                if targets:
                    under_lock(self.lock_path("repo", engine), f"{engine} repository", lambda ts=targets: sum(remove(t) for t in ts))
            if not partial_only and ckdir.is_dir() and not busy:
                rmtree_force(ckdir)
        if chunks and self.chunks_dir().is_dir():
            for run in self.chunks_dir().iterdir():
                under_lock(self.lock_path("chunks", run.name), f"chunks {run.name}", lambda r=run: remove(r))
        return freed, busy

    def engines_present(self) -> list[str]:
        names = set()
        for sub in ("repos", "checkpoints"):
            d = self.base / sub
            if d.is_dir():
                names.update(p.name for p in d.iterdir() if p.is_dir())
        return sorted(names)

    def size_of(self, path: Path) -> int:
        if not path.exists():
            return 0
        if path.is_file():
            return path.stat().st_size
        total = 0
        for dirpath, _dirs, files in os.walk(path):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_size
                except OSError:
                    pass
        return total


def _entry_name(filename: str) -> str:
    """The checkpoint a cache file belongs to (``x.pth.stamp``, ``x.pth.1-ab.incomplete`` → ``x.pth``)."""
    if filename.endswith(".stamp"):
        return filename[: -len(".stamp")]
    if filename.endswith(".incomplete"):
        return filename[: -len(".incomplete")].rsplit(".", 1)[0]
    return filename


def verified_stamp(file: Path, expected_sha256: str | None = None) -> Stamp | None:
    """The stamp of *file* if it still describes it (and names *expected_sha256*)."""
    stamp = Stamp.load(Cache.stamp_path(file))
    if stamp is None or not stamp.matches(file):
        return None
    if expected_sha256 is not None and stamp.sha256 != expected_sha256:
        return None
    return stamp


def verified_twin(dest: Path, sha256: str, size: int) -> Path | None:
    """A verified file with the same content as *dest* should have (*sha256*, *size*) in another folder of the
    cache's checkpoints (``<checkpoints>/<owner>/<file>``, any name): the same GFPGAN for two engines, the same
    S3FD under two names.  Found through the stamps, which a file still matches (size and mtime)."""
    root = dest.parent.parent
    if not root.is_dir():
        return None
    for stamp_file in sorted(root.glob("*/*.stamp")):
        file = stamp_file.with_name(stamp_file.name[: -len(".stamp")])
        if file == dest:
            continue
        stamp = Stamp.load(stamp_file)
        if stamp is not None and stamp.sha256 == sha256 and stamp.size == size and stamp.matches(file):
            return file
    return None


def write_stamp(file: Path, sha256: str) -> Stamp:
    stamp = Stamp.of(file, sha256)
    atomic_write_text(Cache.stamp_path(file), stamp.dumps())
    return stamp


def rmtree_force(path: Path) -> None:
    """Remove a tree even where git made files read-only."""

    def onerror(func, p, _exc):
        try:
            os.chmod(p, stat.S_IWRITE | stat.S_IREAD | stat.S_IEXEC)
            func(p)
        except OSError:
            pass

    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, onerror=onerror)
