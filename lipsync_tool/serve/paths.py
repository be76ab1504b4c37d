"""Paths a client names, confined to the service's ``--root``.

A client names files relative to the root.  For OpenClone's call a leading
``/`` means the root; for the jobs API an absolute path must lie inside it.
Refused with :class:`~lipsync_tool.errors.ForbiddenPathError` (HTTP 403):

* any ``..`` component, whatever it would resolve to;
* an absolute path outside the root (jobs API);
* a path whose real location (symlinks followed, for the part that exists)
  is outside the root.

Names with a NUL byte, or that are not valid text, are refused as bad input.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from ..errors import ForbiddenPathError, InputError


class Root:
    """The folder a service may read and write in."""

    def __init__(self, path: Path):
        self.path = Path(path).resolve()

    def resolve(self, value: str, label: str, *, leading_slash_is_root: bool = False) -> Path:
        """*value* as a path inside the root (it need not exist)."""
        if not isinstance(value, str) or not value.strip():
            raise InputError("is empty; give a path inside the server's root", subject=label)
        if "\x00" in value:
            raise InputError("contains a NUL byte", subject=label)
        pure = PurePosixPath(value)
        if ".." in pure.parts:
            raise ForbiddenPathError(f"{value!r} climbs out with '..'; paths must stay inside the server's root", subject=label)
        if pure.is_absolute():
            inside = _under(Path(os.path.normpath(value)), self.path)
            if inside is not None:
                rel = inside
            elif leading_slash_is_root:
                rel = PurePosixPath(*pure.parts[1:])
            else:
                raise ForbiddenPathError(
                    f"{value!r} is outside the server's root", subject=label, hint="Give a path relative to the root (the server's --root)."
                )
        else:
            rel = pure
        path = self.path / rel
        self.check_inside(path, label, value)
        return path

    def check_inside(self, path: Path, label: str, value: str | None = None) -> None:
        """*path*'s real location (links followed) must be inside the root."""
        real = Path(os.path.realpath(path))
        if _under(real, self.path) is None:
            shown = value if value is not None else str(path)
            raise ForbiddenPathError(f"{shown!r} leads out of the server's root through a symbolic link", subject=label)

    def relative(self, path: Path) -> str:
        """*path* as the client names it (relative to the root)."""
        try:
            return Path(path).relative_to(self.path).as_posix()
        except ValueError:
            return str(path)


def _under(path: Path, root: Path) -> PurePosixPath | None:
    """*path* relative to *root*, or None when it is not under it."""
    try:
        return PurePosixPath(path.relative_to(root).as_posix())
    except ValueError:
        return None


__all__ = ["Root"]
