"""Paths the tool writes at the user's choice, and how they are guarded.

Every file or folder that a command writes where the user said (OUTPUT,
``--report``, ``--hls DIR`` and its files, batch outputs and reports,
compare's outputs) goes through :func:`check_targets` before any heavy work:

* never an input, never a link to one (compared after resolving links, and by
  inode for hard links);
* never another target of the same command (``--report out.mp4`` with OUTPUT
  ``out.mp4``);
* never an existing file without ``--overwrite``; never a folder where a file
  goes, or a file where a folder goes;
* a name the file system and ffmpeg can take (valid UTF-8), in a folder that
  exists and is writable.

Then :func:`publish_file` puts a finished temp file in place atomically; without
``overwrite`` it refuses to replace a file that appeared meanwhile.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from . import naming
from .errors import InputError, OutputPathError

__all__ = ["Target", "check_path_name", "check_targets", "publish_file", "same_file", "temp_path_beside", "write_text_file"]


@dataclass(frozen=True)
class Target:
    """One path a command will write.  ``label`` names it in messages (``--report``, ``OUTPUT``)."""

    path: Path
    label: str
    kind: Literal["file", "dir"] = "file"
    #: For a folder: the names inside it that the command writes (globs), so an
    #: input stored there under such a name is caught, and existing ones need --overwrite.
    contents: tuple[str, ...] = ()
    #: Whether the command makes missing parent folders (batch and compare do).
    make_parents: bool = False


def check_path_name(path: Path, label: str, *, error: type[InputError] = InputError) -> None:
    """Refuse a path whose name is not valid UTF-8 (a report, a command file or
    ffmpeg's arguments could not carry it), before any work is done."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise error(
            "the name has bytes that are not valid UTF-8, which ffmpeg and the run report cannot carry",
            subject=shown,
            hint=f"Rename it (or link to it) with a UTF-8 name, then pass that ({label}).",
        ) from None


def _real(path: Path) -> str:
    return os.path.normcase(os.path.realpath(os.path.abspath(path)))


def same_file(a: Path, b: Path) -> bool:
    """Whether *a* and *b* are one file: the same path after links, or one inode."""
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _collides(path: Path, inputs: Sequence[Path]) -> Path | None:
    return next((i for i in inputs if same_file(path, i)), None)


def check_targets(targets: Iterable[Target], inputs: Iterable[Path], *, overwrite: bool) -> None:
    """Raise :class:`OutputPathError` for the first target that may not be written."""
    targets = list(targets)
    inputs = [Path(i) for i in inputs if i is not None]
    for t in targets:
        check_path_name(t.path, t.label, error=OutputPathError)
    for n, t in enumerate(targets):
        hit = _collides(t.path, inputs)
        if hit is not None:
            raise OutputPathError(f"is one of the inputs ({hit}){_where(t)}; refusing to overwrite it", subject=t.path, hint="Write the result somewhere else.")
        for other in targets[:n]:
            if same_file(t.path, other.path) or _writes_into(other, t.path) or _writes_into(t, other.path):
                raise OutputPathError(f"is also where {other.label} goes{_where(t)}; one path cannot hold both", subject=t.path, hint=f"Give {t.label} a path of its own.")
    for t in targets:
        if t.kind == "file":
            _check_file_target(t, overwrite=overwrite, where=_where(t))
        else:
            _check_dir_target(t, inputs, overwrite=overwrite, where=_where(t))


def _where(t: Target) -> str:
    return f" (given as {t.label})" if t.label.lower() != "output" else ""


def _writes_into(folder: Target, path: Path) -> bool:
    """Whether the folder target *folder* writes a file at *path*."""
    if folder.kind != "dir":
        return False
    real = Path(_real(path))
    return real.parent == Path(_real(folder.path)) and any(fnmatch.fnmatch(real.name, pattern) for pattern in folder.contents)


def _check_parent(path: Path, where: str, *, make: bool = False) -> None:
    parent = path.absolute().parent
    if make and not os.path.lexists(parent):
        nearest = parent
        while not os.path.lexists(nearest) and nearest != nearest.parent:
            nearest = nearest.parent
        if not nearest.is_dir() or not os.access(nearest, os.W_OK | os.X_OK):
            why = "not a folder" if not nearest.is_dir() else "not writable"
            raise OutputPathError(f"its folder {parent} cannot be made: {nearest} is {why}{where}", subject=path, hint="Choose a folder you can write to.")
        return
    if not parent.is_dir():
        raise OutputPathError(f"its folder {parent} does not exist{where}", subject=path, hint=f"Create it first: mkdir -p {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"its folder {parent} is not writable{where}", subject=path, hint="Choose a folder you can write to.")


def _check_file_target(t: Target, *, overwrite: bool, where: str) -> None:
    path = t.path
    if path.is_dir():
        raise OutputPathError(f"is a folder{where}; a file name is needed here", subject=path, hint=f"Name a file inside it, e.g. {path / 'out.mp4'}" if t.label == "OUTPUT" else None)
    _check_parent(path, where, make=t.make_parents)
    if os.path.lexists(path) and not overwrite:
        raise OutputPathError(f"already exists{where}", subject=path, hint=f"Pass {naming.setting('overwrite')} to replace it, or choose another name.")


def _check_dir_target(t: Target, inputs: Sequence[Path], *, overwrite: bool, where: str) -> None:
    path = t.path
    if os.path.lexists(path) and not path.is_dir():
        raise OutputPathError(f"exists and is not a folder{where}", subject=path, hint="Choose a folder name.")
    _check_parent(path, where, make=t.make_parents)
    if not path.is_dir():
        return
    existing = sorted({p for pattern in t.contents for p in path.glob(pattern)})
    for p in existing:
        hit = _collides(p, inputs)
        if hit is not None:
            raise OutputPathError(f"holds {p.name}, which is the input {hit}, and the run would write that name{where}", subject=path, hint="Choose another folder.")
    if existing and not overwrite:
        names = ", ".join(p.name for p in existing[:3]) + (", …" if len(existing) > 3 else "")
        raise OutputPathError(f"already holds {names}{where}", subject=path, hint=f"Pass {naming.setting('overwrite')} to replace them, or choose another folder.")


def temp_path_beside(path: Path, suffix: str = "") -> Path:
    """A process-unique name in *path*'s folder, so a final ``os.replace`` is atomic."""
    fd, tmp = tempfile.mkstemp(dir=path.absolute().parent, prefix=f".{path.stem}.", suffix=f".partial{suffix or path.suffix.lower()}")
    os.close(fd)
    # mkstemp makes it 0600; a published file gets the usual mode (0666 less the umask).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def _appeared(dest: Path) -> OutputPathError:
    return OutputPathError("appeared while the run was going; not overwriting it", subject=dest, hint=f"Pass {naming.setting('overwrite')} to replace it.")


def publish_file(tmp: Path, dest: Path, *, overwrite: bool) -> None:
    """Move the finished *tmp* to *dest* atomically.  Without *overwrite*, a
    file that appeared at *dest* meanwhile is kept and this raises."""
    if overwrite:
        os.replace(tmp, dest)
        return
    try:
        os.link(tmp, dest)  # fails if dest exists: no window in which it is replaced
    except FileExistsError:
        raise _appeared(dest) from None
    except OSError:
        # A file system without hard links: the check and the rename are two steps.
        if os.path.lexists(dest):
            raise _appeared(dest) from None
        os.replace(tmp, dest)
        return
    os.unlink(tmp)


def write_text_file(path: Path, text: str, *, overwrite: bool) -> None:
    """Write *text* to *path* through a temp file beside it (see :func:`publish_file`)."""
    tmp = temp_path_beside(path, ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        publish_file(tmp, path, overwrite=overwrite)
    finally:
        tmp.unlink(missing_ok=True)


#: A URL, also after ``Path`` folded its ``//`` into ``/`` (``https:/host/x.wav``).
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")

#: Leading bytes of the file kinds a user may give by mistake: (offset, magic, kind).
_MAGIC = (
    (0, b"\xff\xd8\xff", "a JPEG image"),
    (0, b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (0, b"BM", "a BMP image"),
    (0, b"II*\x00", "a TIFF image"),
    (0, b"MM\x00*", "a TIFF image"),
    (8, b"WEBP", "a WebP image"),
    (8, b"WAVE", "WAV audio"),
    (0, b"ID3", "MP3 audio"),
    (0, b"fLaC", "FLAC audio"),
    (0, b"OggS", "Ogg audio"),
    (4, b"ftypavif", "an AVIF image"),
    (4, b"ftypheic", "a HEIC image"),
    (4, b"ftyp", "an MP4/MOV file"),
    (0, b"\x1aE\xdf\xa3", "a Matroska/WebM file"),
    (8, b"AVI ", "an AVI video"),
    (0, b"GIF8", "a GIF file"),
)
#: What each expected kind must not be.
_WRONG_KIND = {
    "video": ("image", "audio"),
    "checkpoint": ("image", "audio", "video", "file"),
}


def sniff(path: Path) -> str | None:
    """What a file looks like from its first bytes (None: not a kind we know)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    return next((kind for offset, magic, kind in _MAGIC if head[offset : offset + len(magic)] == magic), None)


def check_input_file(path: Path, label: str, *, what: str = "file", hint: str | None = None, expect: str | None = None) -> None:
    """An input the user named: a readable, non-empty file with a UTF-8 name.
    Each problem says what is wrong in the user's terms and how to fix it."""
    text = os.fspath(path)
    if text == "-":
        raise InputError(f"'-' (standard input) cannot be read as the {what}", subject=label, hint=f"Save the {what} to a file and give its path.")
    if _URL.match(text):
        url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]+:)/(?!/)", r"\1//", text)
        raise InputError(f"is a URL; lipsync-tool reads the {what} from a local file", subject=url, hint=f"Download it first (e.g. curl -LO {url}), then give the file's path as {label}.")
    check_path_name(path, label)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise InputError(f"is a broken link (given as {label}); what it points to does not exist", subject=path, hint="Fix the link or give the real file.") from None
        raise InputError(f"no such file (given as {label})", subject=path, hint=hint or f"Check the {what} path; relative paths start from {Path.cwd()}.") from None
    except OSError as exc:
        import errno

        if exc.errno == errno.ELOOP:
            raise InputError(f"is a symbolic link loop (given as {label})", subject=path, hint="Fix the link so that it points to a real file.") from None
        raise InputError(f"cannot be read: {exc.strerror} (given as {label})", subject=path, hint="Check the path and its permissions.") from None
    import stat

    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"is a folder, not a file (given as {label})", subject=path, hint=f"Give the {what} file inside it.")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"is not a regular file (given as {label})", subject=path, hint=f"Save the {what} to a file and give its path.")
    if not os.access(path, os.R_OK):
        raise InputError(f"is not readable: permission denied (given as {label})", subject=path, hint=f"Check its permissions (chmod u+r {path}).")
    if st.st_size == 0:
        raise InputError(f"is empty: 0 bytes (given as {label})", subject=path, hint=f"Give a {what} that has content.")
    kind = sniff(path) if expect else None
    if kind and kind.rsplit(" ", 1)[-1] in _WRONG_KIND.get(expect or "", ()):
        raise InputError(f"is {kind}, not a {what} (given as {label})", subject=path, hint=f"Give {label} a {what}.")
