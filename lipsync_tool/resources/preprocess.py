"""The content-keyed cache of face preprocessing (SadTalker's crop and 3DMM
coefficients, Wav2Lip's face boxes), filled and read by warm workers.

Layout, beside the rest of the cache (``<cache>/v1/``)::

    preprocess/<engine>/<key>/          one entry: the adapter's files
    preprocess/<engine>/<key>/manifest.json   size and sha256 of every file, and what made it
    preprocess/<engine>/.new-<key>-<pid>-<rand>/   an entry being written by a job

The key is the sha256 of the face's content plus everything that changes the
result (the engine's own options from ``Engine.preprocess_key``, the commit,
the checkpoints' sha256, the adapter's protocol version), so an edited image
never meets stale boxes.  When a face of several is chosen (``--face-index``,
``Job.face_hint``), the face part of the key names that face too
(:func:`face_key`): face 0's crop never serves face 1.  An entry is committed only after its job
succeeded, renamed into place under a lock, and re-verified against its
manifest whenever it is read: a damaged entry is removed and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import Cache, atomic_write_text, sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
#: Bumped when what the adapters store changes meaning.
FORMAT = 1


def face_key(face_sha256: str, hint: Any = None) -> str:
    """The face part of a key: the staged face's sha256, or with a face hint (a ``FaceHint``: which face of the
    image is animated) the sha256 of both, so that two faces of one image never share an entry."""
    if hint is None:
        return face_sha256
    chosen = {"face": face_sha256, "index": hint.index, "box": [round(float(v), 1) for v in hint.box], "frame": list(hint.frame)}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PreprocessSlot:
    """One job's use of the cache: read *dir* (hit) or write into it (miss)."""

    engine: str
    key: str
    dir: Path
    hit: bool

    def to_job(self) -> dict[str, Any]:
        return {"dir": str(self.dir), "hit": self.hit}


class PreprocessCache:
    def __init__(self, cache_dir: Path):
        self.cache = Cache(cache_dir)
        self.root = self.cache.base / "preprocess"

    @staticmethod
    def key(parts: dict[str, Any]) -> str:
        text = json.dumps({"format": FORMAT, **parts}, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def entry(self, engine: str, key: str) -> Path:
        return self.root / engine / key

    def _lock(self, engine: str, key: str):
        from filelock import FileLock

        return FileLock(str(self.cache.lock_path("preprocess", engine, key[:32])))

    def slot(self, engine: str, key: str) -> PreprocessSlot:
        """A verified entry to read, or a fresh folder for the job to fill."""
        entry = self.entry(engine, key)
        if entry.is_dir():
            with self._lock(engine, key):
                if self.verify(entry):
                    return PreprocessSlot(engine, key, entry, True)
                log.warning("the cached preprocessing %s is damaged; computing it again", entry)
                shutil.rmtree(entry, ignore_errors=True)
        scratch = self.root / engine / f".new-{key[:16]}-{os.getpid()}-{random.randrange(16**6):06x}"
        scratch.mkdir(parents=True)
        return PreprocessSlot(engine, key, scratch, False)

    def commit(self, slot: PreprocessSlot, meta: dict[str, Any]) -> Path | None:
        """Keep what a successful job wrote (None when it wrote nothing)."""
        if slot.hit:
            return slot.dir
        files = sorted(p for p in slot.dir.rglob("*") if p.is_file())
        if not files:
            shutil.rmtree(slot.dir, ignore_errors=True)
            return None
        manifest = {
            "format": FORMAT,
            "key": slot.key,
            "files": {str(p.relative_to(slot.dir)): {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in files},
            **meta,
        }
        atomic_write_text(slot.dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
        entry = self.entry(slot.engine, slot.key)
        with self._lock(slot.engine, slot.key):
            if entry.is_dir() and self.verify(entry):
                shutil.rmtree(slot.dir, ignore_errors=True)  # another job got there first
            else:
                shutil.rmtree(entry, ignore_errors=True)
                os.replace(slot.dir, entry)
        return entry

    def discard(self, slot: PreprocessSlot) -> None:
        """A failed job's half-written folder."""
        if not slot.hit:
            shutil.rmtree(slot.dir, ignore_errors=True)

    @staticmethod
    def verify(entry: Path) -> bool:
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
            files = manifest["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        for rel, expect in files.items():
            path = entry / rel
            try:
                if path.stat().st_size != expect["size"] or sha256_file(path) != expect["sha256"]:
                    return False
            except OSError:
                return False
        return True

    # -- cache info / clean --------------------------------------------------------------

    def entries(self) -> dict[str, list[Path]]:
        """engine → its committed entries."""
        found: dict[str, list[Path]] = {}
        if self.root.is_dir():
            for engine_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
                found[engine_dir.name] = sorted(p for p in engine_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        return found

    def clean(self, engine: str | None = None) -> tuple[int, int]:
        """Delete entries (and leftovers of interrupted jobs): (entries, bytes)."""
        count = freed = 0
        if not self.root.is_dir():
            return 0, 0
        for engine_dir in [p for p in self.root.iterdir() if p.is_dir() and (engine is None or p.name == engine)]:
            for item in list(engine_dir.iterdir()):
                if item.name.startswith(".new-"):
                    if _writer_alive(item.name):
                        continue  # a job is filling it right now
                    freed += self.cache.size_of(item)
                    shutil.rmtree(item, ignore_errors=True)
                    continue
                with self._lock(engine_dir.name, item.name):
                    freed += self.cache.size_of(item)
                    count += 1
                    shutil.rmtree(item, ignore_errors=True)
        return count, freed


def _writer_alive(name: str) -> bool:
    """Whether the process that named a ``.new-<key>-<pid>-<rand>`` folder still runs."""
    try:
        pid = int(name.split("-")[2])
        os.kill(pid, 0)
    except (IndexError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True
