"""Reading a batch manifest: CSV or JSON Lines, one job per row.

:func:`read_manifest` turns the file into :class:`Row` objects with the line
where each starts (as an editor numbers them), plus every :class:`Problem`
found; :func:`coerce` turns a cell into a value an option's model accepts.
Nothing here touches the files a row names.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..annotations import mentions_path, shape
from ..engines.base import option_meta
from ..errors import InputError, UsageError

#: Columns that are not run options.
JOB_COLUMNS = ("image", "audio", "output", "engine")


# -- problems ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one row (``line`` 0: the whole manifest)."""

    line: int
    column: str | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "manifest"
        return f"{where}, column {self.column}: {self.message}" if self.column else f"{where}: {self.message}"


class ManifestError(UsageError):
    """Rows of a batch manifest that cannot run; all of them, at once.

    *rows* is the start line of every row of the manifest as the user sees it
    (malformed rows included, the header and blank or comment lines not), or
    just their number.
    """

    def __init__(self, manifest: Path, problems: list[Problem], rows: int | Sequence[int]):
        problems = sorted(problems, key=lambda p: (p.line, p.column or ""))
        if isinstance(rows, int):
            count, lines = rows, None
        else:
            lines = set(rows)
            count = len(lines)
        bad = len({p.line for p in problems if p.line and (lines is None or p.line in lines)})
        head = f"{bad} of {count} row{'s' if count != 1 else ''} {'is' if bad == 1 else 'are'} invalid" if bad else "the manifest is invalid"
        super().__init__(
            head + ":\n" + "\n".join(f"  {p}" for p in problems),
            subject=manifest,
            hint="Fix these and run again; --validate-only checks a manifest without running anything.",
        )
        self.problems = problems


# -- reading a manifest ----------------------------------------------------------------------


@dataclass
class Row:
    line: int
    #: Normalised column name → the cell (a string from CSV, any JSON value from JSONL).
    values: dict[str, Any]


def normalise_column(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def manifest_format(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    first = text.lstrip()[:1]
    return "jsonl" if first == "{" else "csv"


def read_manifest(path: Path) -> tuple[list[Row], list[Problem], list[int]]:
    """The rows of a CSV or JSON Lines manifest, what is malformed in it, and
    the line where every row starts (malformed ones too), as an editor numbers
    them.

    Blank lines and lines starting with ``#`` are skipped; empty cells (and
    JSON ``null``) mean "not set", so the command line's default applies.
    """
    if not path.is_file():
        raise InputError("no such file" if not path.exists() else "is not a file", subject=path, hint="Give the path of a CSV or JSON Lines manifest.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"is not UTF-8 text ({exc.reason} at byte {exc.start})", subject=path, hint="Save the manifest as UTF-8.") from None
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror})", subject=path) from None
    rows, problems, records = (_read_jsonl if manifest_format(path, text) == "jsonl" else _read_csv)(text)
    if not records and not problems:
        problems.append(Problem(0, None, "has no jobs"))
    return rows, problems, records


def _read_csv(text: str) -> tuple[list[Row], list[Problem], list[int]]:
    problems: list[Problem] = []
    # newline="": quoted cells keep their line breaks, and line_num counts the
    # lines of the file (a row with a quoted line break spans two).
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    header_line = 0
    rows: list[Row] = []
    records: list[int] = []
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            why = "a quote opened in this row is never closed" if "unexpected end of data" in str(exc) else str(exc)
            problems.append(Problem(start, None, f"is not valid CSV ({why})"))
            if header is not None:
                records.append(start)
            continue
        if not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
            continue
        if header is None:
            header = [normalise_column(c) for c in cells]
            header_line = start
            seen: set[str] = set()
            for name in header:
                if not name:
                    problems.append(Problem(start, None, "the header has an empty column name"))
                elif name in seen:
                    problems.append(Problem(start, name, "appears twice in the header"))
                seen.add(name)
            continue
        records.append(start)
        if len(cells) > len(header):
            problems.append(Problem(start, None, f"has {len(cells)} values but the header (line {header_line}) names {len(header)} columns"))
            continue
        values = {name: cell for name, cell in zip(header, cells) if name and cell.strip() != ""}
        rows.append(Row(start, values))
    if header is not None and not records and not problems:
        problems.append(Problem(0, None, f"has no jobs: only the header (line {header_line})"))
    return rows, problems, records


def _read_jsonl(text: str) -> tuple[list[Row], list[Problem], list[int]]:
    rows: list[Row] = []
    problems: list[Problem] = []
    records: list[int] = []
    # Lines end at "\n" only (JSON Lines; "\r\n" too): not at the other breaks
    # str.splitlines() knows (U+2028, form feed, …), which a JSON string may hold.
    for number, line in enumerate(text.split("\n"), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        records.append(number)
        try:
            obj = json.loads(stripped)
        except json.JSONDecodeError as exc:
            problems.append(Problem(number, None, f"is not valid JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(obj, dict):
            problems.append(Problem(number, None, f"must be a JSON object, not {type(obj).__name__}"))
            continue
        values: dict[str, Any] = {}
        for key, value in obj.items():
            name = normalise_column(str(key))
            if name in values:
                problems.append(Problem(number, name, "appears twice"))
            if value is not None and value != "":
                values[name] = value
        rows.append(Row(number, values))
    return rows, problems, records


# -- cells → option values --------------------------------------------------------------------

_SPLIT = re.compile(r"[\s,;]+")


def coerce(annotation: Any, value: Any) -> Any:
    """A manifest cell → a value the option's model accepts.

    pydantic already turns ``"1.5"`` into a float and ``"true"``/``"0"`` into a
    bool; what it cannot do from a string is a tuple (``"0 10 0 0"`` or
    ``"0,10,0,0"``) or an int ``Literal`` (``resolution`` ``"512"``).  Values
    that are not strings (JSON Lines) pass through.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    s = shape(annotation)
    if s.union:
        return text
    if s.choices is not None:
        for choice in s.choices:
            if str(choice) == text or (isinstance(choice, str) and choice.lower() == text.lower()):
                return choice
        return text
    if s.is_tuple:
        return [p for p in _SPLIT.split(text.strip("()[] ")) if p]
    return text


def takes_path(info: Any, value: Any) -> bool:
    """Whether an option's value is a file path (resolved against the manifest)."""
    if mentions_path(info.annotation):
        return True
    meta = option_meta(info)
    metavar = (meta.metavar if meta else None) or ""
    # e.g. wav2lip_checkpoint: a registry name, or the PATH of the user's file
    return "PATH" in metavar and isinstance(value, str) and ("/" in value or os.sep in value or bool(Path(value).suffix))


def absolute_path(p: str | os.PathLike) -> Path:
    """Absolute and normalised (``..`` folded), symlinks left as the user named them."""
    return Path(os.path.abspath(Path(p).expanduser()))


def resolve_path(value: str | os.PathLike, base: Path) -> Path:
    p = Path(value).expanduser()
    return absolute_path(p if p.is_absolute() else (base / p))

