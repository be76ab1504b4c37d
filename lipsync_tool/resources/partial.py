"""The ``.incomplete`` file of a download in progress, hashed as it is written."""

from __future__ import annotations

import hashlib
import logging
import os
import random
from pathlib import Path

from .cache import Cache

log = logging.getLogger(__name__)

CHUNK = 1 << 20
#: Start writing received bytes to disk every this many bytes, so the final
#: fsync is short and the kernel never throttles a large dirty backlog.
WRITEBACK_EVERY = 16 << 20


def _sync_file_range():
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
        return fn
    except (OSError, AttributeError):  # not Linux
        return None


_SFR = _sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range to disk, without waiting (Linux)."""
    if _SFR is not None:
        _SFR(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE


def adopt_partial(dest: Path) -> Path:
    """A process-unique partial file, taking over the largest leftover one.

    Only called under the file's lock, so no leftover belongs to a live
    download; the others are removed.
    """
    mine = dest.with_name(f"{dest.name}.{os.getpid()}-{random.randrange(16**6):06x}.incomplete")
    leftovers = Cache.partials(dest)
    if leftovers:
        os.replace(leftovers[0], mine)
        for extra in leftovers[1:]:
            extra.unlink(missing_ok=True)
        log.info("resuming %s from %d bytes left by an earlier run", dest.name, mine.stat().st_size)
    return mine


class PartialFile:
    """The ``.incomplete`` file and the running sha256 of its bytes.

    Bytes are written and hashed on a second thread (hashlib and file writes
    release the GIL), so hashing overlaps with receiving instead of costing a
    second pass over the file.
    """

    def __init__(self, path: Path):
        self.path = path
        self.hasher = hashlib.sha256()
        self.size = 0
        if path.exists():
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK * 4):
                    self.hasher.update(chunk)
                    self.size += len(chunk)

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)
        self.hasher = hashlib.sha256()
        self.size = 0

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()

    def append(self, chunks) -> int:
        """Write and hash every chunk of the iterable; returns the byte count."""
        import queue
        import threading

        q: queue.Queue = queue.Queue(maxsize=16)
        failure: list[BaseException] = []

        def sink() -> None:
            try:
                with open(self.path, "ab", buffering=0) as out:
                    flushed = written = out.tell()
                    while (chunk := q.get()) is not None:
                        out.write(chunk)
                        self.hasher.update(chunk)
                        written += len(chunk)
                        if written - flushed >= WRITEBACK_EVERY:
                            start_writeback(out.fileno(), flushed, written - flushed)
                            flushed = written
            except BaseException as exc:  # noqa: BLE001 - surfaced in the caller
                failure.append(exc)
                while q.get() is not None:
                    pass

        worker = threading.Thread(target=sink, name="download-sink", daemon=True)
        worker.start()
        received = 0
        try:
            for chunk in chunks:
                if failure:
                    break
                q.put(chunk)
                received += len(chunk)
        finally:
            q.put(None)
            worker.join()
            self.size += received
        if failure:
            # What reached the disk is unknown; start the hash over from the file.
            self.__init__(self.path)  # type: ignore[misc]
            raise failure[0]
        return received

    def publish(self, dest: Path) -> None:
        """Make the verified bytes *dest*: to disk first, then ``os.replace``."""
        with open(self.path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.path, dest)
