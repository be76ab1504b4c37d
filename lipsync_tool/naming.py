"""How messages name options and arguments: CLI flags or Python keywords.

The same checks serve the command line (``--fps``, ``OUTPUT``) and the Python
API (``fps``, ``output``).  The CLI switches the spelling once at start-up
with :func:`use_cli_names`; library callers get their keyword names.
"""

from __future__ import annotations

_cli = False

#: Positional arguments: their CLI spelling.
_ARGUMENTS = {"image": "IMAGE", "audio": "AUDIO", "output": "OUTPUT", "manifest": "MANIFEST", "out_dir": "OUT_DIR"}


def use_cli_names(on: bool = True) -> None:
    global _cli
    _cli = on


def cli_names() -> bool:
    return _cli


def option(field: str, flag: str | None = None) -> str:
    """``fps`` → ``--fps`` on the CLI, ``fps`` from Python (*flag* overrides the CLI spelling)."""
    if not _cli:
        return field
    if field in _ARGUMENTS:
        return _ARGUMENTS[field]
    return flag or "--" + field.replace("_", "-")


def setting(field: str, value: str = "", flag: str | None = None) -> str:
    """How to set an option in a hint: ``--overwrite`` / ``overwrite=True``, ``--fps 30`` / ``fps=30``."""
    if _cli:
        return option(field, flag) + (f" {value}" if value else "")
    if not value:
        return f"{field}=True"
    try:
        float(value)
        return f"{field}={value}"
    except ValueError:
        return f"{field}={value!r}"
