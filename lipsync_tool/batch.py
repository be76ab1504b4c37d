"""Batch runs: a manifest of jobs, validated up front, run through shared resources.

A manifest is CSV or JSON Lines, one job per row: ``image``, ``audio``,
optional ``output`` and ``engine``, and any run option as a column (the
Python API's field names, e.g. ``expression_scale``, ``wav2lip_pads``).
Options from the command line are the defaults of every row.

The steps, each its own function so they can be tested alone:

1. :func:`read_manifest` turns the file into rows with their line numbers;
2. :func:`plan_batch` validates every row (options through the same pydantic
   models a single run uses; inputs by staging them the way the pipeline
   does; every file the batch writes through :func:`_target_problems`: each
   row's output, report and HLS folder, and ``batch_report.jsonl``, inside
   ``--out-dir``, never an input of any row or the manifest, never another
   row's), decides which jobs are already done (:func:`resume_decision`) and
   raises one :class:`ManifestError` that lists every bad row;
3. :func:`run_batch` prepares each engine's resources once, then runs the jobs.

Scheduling: the engine step of a job (``Run.render()``) always runs on the
calling thread, one job at a time, so the GPU holds one model at a time and
Ctrl-C reaches the engine exactly as in a single run.  With ``jobs=N`` a pool
of N-1 threads stages the next jobs (``start()``) and upscales the finished
ones (``finish()``) meanwhile.

Resume: each job writes its run report next to its output
(``<output stem>.report.json``).  A job is skipped when its output exists and
that report says ``ok`` for the same input hashes, engine commit and the
options that define the result (:data:`VOLATILE_OPTIONS` do not).
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import logging
import os
import re
import tempfile
import threading
import time
import types
import typing
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from .config import OUTPUT_EXTENSIONS, RunOptions, Settings
from .errors import InputError, Interrupted, LipsyncError, OutputPathError, UsageError
from .targets import Target, check_targets, same_file, write_text_file

log = logging.getLogger(__name__)

#: Columns that are not run options.
JOB_COLUMNS = ("image", "audio", "output", "engine")
#: Run options the batch sets itself, per job.
BATCH_OWNED = {"report": "the batch writes each job's report next to its output"}
#: Run options that name a job's own output: a row may set them (relative to
#: the out dir, unique across rows), the command line may not.
PER_JOB_OUTPUTS = ("hls",)
#: Run options that do not change the result, so a changed value does not
#: make a finished job run again.  ``seed`` is compared only when set.
VOLATILE_OPTIONS = frozenset(
    {"engine", "seed", "keep_temp", "timeout", "overwrite", "report", "install_deps", "python", "cache_dir", "offline", "registry", "skip_face_check", "device"}
)
REPORT_FILE = "batch_report.jsonl"
JOB_REPORT_SUFFIX = ".report.json"

Status = Literal["ok", "failed", "skipped", "not_run", "interrupted", "pending"]


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
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        return coerce(args[0], text) if len(args) == 1 else text
    if origin is Literal:
        for choice in typing.get_args(annotation):
            if str(choice) == text or (isinstance(choice, str) and choice.lower() == text.lower()):
                return choice
        return text
    if origin is tuple:
        return [p for p in _SPLIT.split(text.strip("()[] ")) if p]
    return text


def _annotation_has_path(annotation: Any) -> bool:
    if annotation is Path:
        return True
    return any(_annotation_has_path(a) for a in typing.get_args(annotation))


def _takes_path(info: Any, value: Any) -> bool:
    """Whether an option's value is a file path (resolved against the manifest)."""
    if _annotation_has_path(info.annotation):
        return True
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    metavar = ((extra.get("cli") or {}).get("metavar")) or ""
    # e.g. wav2lip_checkpoint: a registry name, or the PATH of the user's file
    return "PATH" in metavar and isinstance(value, str) and ("/" in value or os.sep in value or bool(Path(value).suffix))


def _abs(p: str | os.PathLike) -> Path:
    """Absolute and normalised (``..`` folded), symlinks left as the user named them."""
    return Path(os.path.abspath(Path(p).expanduser()))


def _resolve(value: str | os.PathLike, base: Path) -> Path:
    p = Path(value).expanduser()
    return _abs(p if p.is_absolute() else (base / p))


# -- jobs -------------------------------------------------------------------------------------


@dataclass
class Decision:
    """What to do with a job whose inputs are valid."""

    action: Literal["run", "skip", "blocked"]
    reason: str
    overwrite: bool = False


@dataclass
class BatchJob:
    index: int  # 1-based position among the manifest's jobs
    line: int
    engine: str
    image: Path
    audio: Path
    output: Path
    #: LipSyncPipeline keywords (the row merged over the defaults; typed).
    options: dict[str, Any]
    run_options: RunOptions | None = None
    engine_options: Any = None
    image_sha256: str | None = None
    audio_sha256: str | None = None
    audio_seconds: float | None = None
    face_is_video: bool = False
    decision: Decision = field(default_factory=lambda: Decision("run", "new"))
    group: ResourceGroup | None = None

    @property
    def name(self) -> str:
        return self.output.name

    @property
    def report_path(self) -> Path:
        return job_report_path(self.output)

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {**self.options, "report": self.report_path, "overwrite": self.decision.overwrite or bool(self.options.get("overwrite"))}

    def expected(self) -> dict[str, Any]:
        """What a finished run's report must say for this job to be skipped."""
        assert self.run_options is not None and self.engine_options is not None
        return {
            "engine": self.engine,
            "image_sha256": self.image_sha256,
            "audio_sha256": self.audio_sha256,
            "seed": self.run_options.seed,
            "options": result_options(self.run_options.model_dump(mode="json")),
            "engine_options": self.engine_options.resolved().model_dump(mode="json", exclude_none=True),
            "commit": self.group.commit if self.group else None,
        }


def job_report_path(output: Path) -> Path:
    return output.with_name(output.stem + JOB_REPORT_SUFFIX)


def default_output(image: Path, audio: Path, out_dir: Path) -> Path:
    return out_dir / f"{image.stem}_{audio.stem}.mp4"


def result_options(options: dict[str, Any]) -> dict[str, Any]:
    """The run options that define the output (see :data:`VOLATILE_OPTIONS`)."""
    return {k: v for k, v in options.items() if k in RunOptions.model_fields and k not in VOLATILE_OPTIONS}


def report_mismatch(expected: dict[str, Any], report: dict[str, Any]) -> list[str]:
    """Why *report* does not describe the run *expected* would make ([] = it does)."""
    why: list[str] = []
    inputs = report.get("inputs") or {}
    options = report.get("options") or {}
    engine = report.get("engine") or {}
    if engine.get("name") != expected["engine"]:
        why.append(f"engine {engine.get('name')} → {expected['engine']}")
    for key in ("image_sha256", "audio_sha256"):
        if inputs.get(key) != expected[key]:
            why.append(f"{key.split('_')[0]} changed")
    if expected.get("commit") and engine.get("commit") != expected["commit"]:
        why.append(f"engine commit {str(engine.get('commit'))[:12]} → {expected['commit'][:12]}")
    if expected["seed"] is not None and options.get("seed") != expected["seed"]:
        why.append(f"seed {options.get('seed')} → {expected['seed']}")
    before = result_options(options)
    for key in sorted(set(before) | set(expected["options"])):
        if before.get(key) != expected["options"].get(key):
            why.append(f"{key} {before.get(key)!r} → {expected['options'].get(key)!r}")
    before_engine = options.get("engine_options_resolved") or {}
    for key in sorted(set(before_engine) | set(expected["engine_options"])):
        if before_engine.get(key) != expected["engine_options"].get(key):
            why.append(f"{key} {before_engine.get(key)!r} → {expected['engine_options'].get(key)!r}")
    return why


def load_report(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def resume_decision(expected: dict[str, Any], *, output_exists: bool, report: dict[str, Any] | None, force: bool, overwrite: bool) -> Decision:
    """Run, skip, or refuse (an output the batch did not write).  Pure."""
    if not output_exists:
        # An unfinished job's leftovers (its HLS folder, say) are the batch's own to replace.
        return Decision("run", "forced" if force else ("not finished" if report else "new"), overwrite=bool(report) or force or overwrite)
    if force:
        return Decision("run", "forced (--force)", overwrite=True)
    if report is None:
        if overwrite:
            return Decision("run", "replacing an output without a report (--overwrite)", overwrite=True)
        return Decision("blocked", "exists, and no report beside it says how it was made; pass --overwrite to replace it, or --force")
    if report.get("status") != "ok":
        return Decision("run", f"the last run ended {report.get('status') or 'unfinished'}", overwrite=True)
    why = report_mismatch(expected, report)
    if why:
        return Decision("run", "changed: " + "; ".join(why), overwrite=True)
    return Decision("skip", "done (same inputs and options)")


# -- shared resources -------------------------------------------------------------------------


@dataclass
class ResourceGroup:
    """One engine's resources in one cache, shared by every job that uses them."""

    engine: str
    settings: Settings
    resources: Any = None  # EngineResources, made by plan_batch
    commit: str | None = None
    seconds: float = 0.0  # spent preparing it

    @property
    def key(self) -> tuple:
        return (self.engine, str(self.settings.cache_dir), str(self.settings.registry), self.settings.offline)


# -- progress ---------------------------------------------------------------------------------


class BatchObserver:
    """Callbacks for a batch's progress.  Every method is optional to override."""

    def validating(self, files: int) -> None:
        """*files* distinct input files are about to be checked."""

    def file_checked(self) -> None: ...

    def setup_observer(self, engine: str):
        """The pipeline Observer for preparing *engine* (download bars, licence notice)."""
        from .pipeline import Observer

        return Observer()

    def started(self, to_run: int, skipped: int) -> None: ...

    def job_observer(self, job: BatchJob):
        """The pipeline Observer for one job's stages."""
        from .pipeline import Observer

        return Observer()

    def job_started(self, job: BatchJob) -> None: ...

    def job_finished(self, result: JobResult) -> None: ...


# -- the plan ---------------------------------------------------------------------------------


@dataclass
class BatchPlan:
    manifest: Path
    out_dir: Path
    jobs: list[BatchJob]
    groups: dict[tuple, ResourceGroup]

    @property
    def to_run(self) -> list[BatchJob]:
        return [j for j in self.jobs if j.decision.action == "run"]

    @property
    def to_skip(self) -> list[BatchJob]:
        return [j for j in self.jobs if j.decision.action == "skip"]


@dataclass
class _FileCheck:
    error: str | None = None
    is_video: bool = False
    sha256: str | None = None
    seconds: float | None = None


def _check_face(path: Path, ff) -> _FileCheck:
    from .media import stage_face
    from .resources.cache import sha256_file

    with tempfile.TemporaryDirectory(prefix="lipsync-check-") as tmp:
        try:
            _, face = stage_face(path, Path(tmp) / "face", ff, allow_video=True)
        except InputError as exc:
            return _FileCheck(error=exc.message)
    return _FileCheck(is_video=face.is_video, sha256=sha256_file(path))


def _check_audio(path: Path, ff) -> _FileCheck:
    from .media import stage_audio
    from .resources.cache import sha256_file

    with tempfile.TemporaryDirectory(prefix="lipsync-check-") as tmp:
        try:
            audio = stage_audio(path, Path(tmp) / "audio.wav", ff)
        except InputError as exc:
            return _FileCheck(error=exc.message)
    return _FileCheck(seconds=audio.duration, sha256=sha256_file(path))


def _map(fn: Callable, items: list, workers: int) -> list:
    if workers <= 1 or len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="batch-check") as pool:
        return list(pool.map(fn, items))


def _flag_to_field(subject: str | None, engine) -> str | None:
    if not subject:
        return None
    for name, info in engine.Options.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        flag = ((extra.get("cli") or {}).get("flag")) or ""
        if subject in flag.split("/"):
            return name
    return subject.lstrip("-").replace("-", "_") or None


def plan_batch(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    defaults: dict[str, Any] | None = None,
    *,
    engine: str = "sadtalker",
    jobs: int = 1,
    force: bool = False,
    observer: BatchObserver | None = None,
) -> BatchPlan:
    """Read and validate *manifest*; decide what to run.  Raises :class:`ManifestError`.

    *defaults* are pipeline keywords that apply to every row (the command
    line's options); a row's own cells override them.  Relative paths in the
    manifest resolve against its folder, relative outputs against *out_dir*.
    Engine options among the defaults apply to the rows whose engine has them.
    """
    from .engines import engine_classes, flag_of, get_engine, option_owner
    from .media import find_ffmpeg

    obs = observer or BatchObserver()
    manifest = Path(manifest)
    out_dir = _abs(out_dir)
    base = _abs(manifest).parent
    defaults = {k: (_abs(v) if isinstance(v, Path) else v) for k, v in (defaults or {}).items() if v is not None}
    rows, problems, records = read_manifest(manifest)
    classes = engine_classes()
    all_engine_fields = {f for cls in classes.values() for f in cls.Options.model_fields}
    for key in defaults:
        if key not in RunOptions.model_fields and key not in all_engine_fields:
            raise UsageError("is not a run option", subject=key)
        if key in BATCH_OWNED:
            raise UsageError(f"cannot be a default in a batch: {BATCH_OWNED[key]}", subject=key)
        if key in PER_JOB_OUTPUTS:
            raise UsageError(
                "would be the same folder for every job", subject="--" + key.replace("_", "-"), hint=f"Give each row its own folder in a {key} column instead."
            )

    jobs_: list[BatchJob] = []
    per_job_problems: dict[int, list[Problem]] = {}
    for index, row in enumerate(rows, 1):
        job, found = _build_job(row, index, base=base, out_dir=out_dir, defaults=defaults, default_engine=engine, classes=classes)
        problems += found
        if job is not None:
            jobs_.append(job)
            per_job_problems[index] = found

    # Engine options given as defaults must fit at least one row's engine.
    used_engines = {j.engine for j in jobs_}
    for key in defaults:
        if key not in RunOptions.model_fields and jobs_ and not (set(option_owner(key)) & used_engines):
            owners = " and ".join(option_owner(key))
            problems.append(Problem(0, None, f"{flag_of(key)} is an option of the {owners} engine, and no row uses {'it' if ' and ' not in owners else 'them'}"))

    # Inputs: each distinct file is staged once, the way the pipeline will.
    ff = find_ffmpeg(Settings.from_env().ffmpeg)
    checkable = [j for j in jobs_ if not per_job_problems.get(j.index)]
    files = sorted({("face", j.image) for j in checkable} | {("audio", j.audio) for j in checkable}, key=str)
    obs.validating(len(files))

    def check(item: tuple[str, Path]) -> _FileCheck:
        kind, path = item
        try:
            result = _check_face(path, ff) if kind == "face" else _check_audio(path, ff)
        except LipsyncError as exc:
            result = _FileCheck(error=str(exc))
        obs.file_checked()
        return result

    checked = dict(zip(files, _map(check, files, jobs)))
    for job in checkable:
        face, audio = checked[("face", job.image)], checked[("audio", job.audio)]
        found = []
        if face.error:
            found.append(Problem(job.line, "image", f"{job.image}: {face.error}"))
        elif face.is_video and not get_engine(job.engine).supports_video_face:
            found.append(Problem(job.line, "image", f"{job.image}: is a video; the {job.engine} engine animates a still image"))
        if audio.error:
            found.append(Problem(job.line, "audio", f"{job.audio}: {audio.error}"))
        if not found:
            try:
                get_engine(job.engine).validate(job.engine_options, face_is_video=face.is_video)
            except UsageError as exc:
                found.append(Problem(job.line, _flag_to_field(exc.subject, get_engine(job.engine)), exc.message))
        job.image_sha256, job.audio_sha256, job.audio_seconds, job.face_is_video = face.sha256, audio.sha256, audio.seconds, face.is_video
        per_job_problems[job.index] = found
        problems += found

    # What the batch writes: never an input, never another row's, never outside --out-dir.
    written = _target_problems(jobs_, manifest, out_dir, overwrite=bool(defaults.get("overwrite")) or force)
    problems += written
    for p in written:
        if p.line:
            for job in jobs_:
                if job.line == p.line:
                    per_job_problems.setdefault(job.index, []).append(p)

    # Shared resources, and the engine commit a finished job must match.
    groups: dict[tuple, ResourceGroup] = {}
    for job in jobs_:
        if per_job_problems.get(job.index) or job.run_options is None:
            continue
        ro = job.run_options
        settings = Settings.from_env(cache_dir=ro.cache_dir, offline=ro.offline, registry=ro.registry)
        group = ResourceGroup(job.engine, settings)
        if group.key not in groups:
            try:
                group.resources = _make_resources(group, obs)
                group.commit = group.resources.registry.repo.commit
            except LipsyncError as exc:
                problems.append(Problem(job.line, "registry" if ro.registry else None, str(exc)))
                continue
            groups[group.key] = group
        job.group = groups[group.key]

    # Resume: skip what is done, refuse to replace what the batch did not write.
    input_files = [p for p, _ in _input_paths(jobs_, manifest)]
    for job in jobs_:
        if per_job_problems.get(job.index) or job.group is None:
            continue
        assert job.run_options is not None
        report = load_report(job.report_path) if os.path.lexists(job.report_path) else None
        if os.path.lexists(job.report_path) and not is_run_report(report):
            # Someone else's file by that name: neither a sign the job is done, nor the batch's to replace.
            if not (force or job.run_options.overwrite):
                problems.append(
                    Problem(job.line, "output", f"{job.report_path} (the report of {job.output.name}) exists and is not a lipsync-tool run report; pass --overwrite to replace it, or name the output differently")
                )
                continue
            report = None
        job.decision = resume_decision(job.expected(), output_exists=os.path.lexists(job.output), report=report, force=force, overwrite=job.run_options.overwrite)
        if job.decision.action == "blocked":
            problems.append(Problem(job.line, "output", f"{job.output} {job.decision.reason}"))
        problems += _existing_problems(job, input_files)

    if problems:
        raise ManifestError(manifest, problems, records)
    return BatchPlan(manifest, out_dir, jobs_, groups)


def _build_job(row: Row, index: int, *, base: Path, out_dir: Path, defaults: dict[str, Any], default_engine: str, classes: dict) -> tuple[BatchJob | None, list[Problem]]:
    """One row → a job, with every problem its cells have (no file access)."""
    from pydantic import ValidationError

    from .engines import option_owner

    line, cells = row.line, row.values
    problems: list[Problem] = []
    engine_name = cells.get("engine", default_engine)
    if not isinstance(engine_name, str) or engine_name not in classes:
        problems.append(Problem(line, "engine", f"unknown engine {engine_name!r}; choose one of: {', '.join(classes)}"))
        return None, problems
    engine_cls = classes[engine_name]
    own = engine_cls.Options.model_fields

    paths: dict[str, Path] = {}
    for col in ("image", "audio"):
        value = cells.get(col)
        if value is None:
            problems.append(Problem(line, col, "is missing"))
        elif not isinstance(value, str):
            problems.append(Problem(line, col, f"must be a path, not {value!r}"))
        else:
            paths[col] = _resolve(value, base)
    if cells.get("output") is not None:
        value = cells["output"]
        if not isinstance(value, str):
            problems.append(Problem(line, "output", f"must be a path, not {value!r}"))
        else:
            paths["output"] = _resolve(value, out_dir)

    values: dict[str, Any] = {k: v for k, v in defaults.items() if k in RunOptions.model_fields or k in own}
    for col, raw in cells.items():
        if col in JOB_COLUMNS:
            continue
        if col in BATCH_OWNED:
            problems.append(Problem(line, col, f"is set by the batch: {BATCH_OWNED[col]}"))
            continue
        info = RunOptions.model_fields.get(col) or own.get(col)
        if info is None:
            owners = option_owner(col)
            problems.append(Problem(line, col, f"belongs to the {' and '.join(owners)} engine, not to {engine_name}" if owners else "is not a column or a run option"))
            continue
        value = coerce(info.annotation, raw)
        if col in PER_JOB_OUTPUTS and isinstance(value, str):
            value = _resolve(value, out_dir)
        elif _takes_path(info, value) and isinstance(value, str):
            value = _resolve(value, base)
        values[col] = value

    common = {k: v for k, v in values.items() if k in RunOptions.model_fields}
    rest = {k: v for k, v in values.items() if k not in RunOptions.model_fields}
    run_options = engine_options = None
    for model, kwargs in ((RunOptions, {**common, "engine": engine_name}), (engine_cls.Options, rest)):
        try:
            built = model(**kwargs)
        except ValidationError as exc:
            for err in exc.errors():
                loc = err.get("loc") or ()
                msg = err.get("msg", "")
                msg = msg.removeprefix("Value error, ")
                column = str(loc[0]) if loc else None
                problems.append(Problem(line, column, f"{msg} (got {cells[column]!r})" if column in cells else msg))
            continue
        if model is RunOptions:
            run_options = built
        else:
            engine_options = built

    if "image" not in paths or "audio" not in paths:
        return None, problems
    output = paths.get("output") or default_output(paths["image"], paths["audio"], out_dir)
    if output.suffix.lower() not in OUTPUT_EXTENSIONS:
        problems.append(Problem(line, "output", f"{output.name} must end in one of {', '.join(OUTPUT_EXTENSIONS)}"))
    job = BatchJob(index, line, engine_name, paths["image"], paths["audio"], output, values, run_options, engine_options)
    return job, problems


# -- what the batch writes, checked before anything runs -----------------------------------------

def _within(path: Path, folder: Path, *, strictly: bool = False) -> bool:
    """Whether *path* is inside *folder* (both absolute, compared as given)."""
    try:
        rel = path.relative_to(folder)
    except ValueError:
        return False
    return bool(rel.parts) or not strictly


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _escapes(path: Path, out_dir: Path, *, strictly: bool = False) -> str | None:
    """Why *path* is not in *out_dir* (None if it is): outside it as named, or through a link."""
    if not _within(path, out_dir, strictly=strictly):
        return f"is outside --out-dir {out_dir}; a row's outputs go into that folder"
    real, real_dir = _real(path), _real(out_dir)
    if not _within(real, real_dir, strictly=strictly):
        return f"leads outside --out-dir {out_dir} through a link (to {real}); a row's outputs go into that folder"
    return None


@dataclass(frozen=True)
class _Written:
    """One path the batch writes: a job's output, report or HLS folder, or the batch report."""

    job: BatchJob | None  # None: the batch report
    column: str | None
    what: str  # "output", "report", "hls folder", "batch report"
    target: Target

    @property
    def line(self) -> int:
        return self.job.line if self.job else 0

    @property
    def path(self) -> Path:
        return self.target.path

    def of(self, other: BatchJob | None) -> str:
        if self.job is None:
            return f"the batch's own {REPORT_FILE}"
        return f"the {self.what} of {'this row' if self.job is other else f'line {self.job.line}'}"


def _input_paths(jobs: list[BatchJob], manifest: Path) -> list[tuple[Path, str]]:
    """Every file the batch reads, with what it is: each row's image, audio,
    reference videos and own model files, and the manifest."""
    from .engines import get_engine

    found: list[tuple[Path, str]] = [(_abs(manifest), "the manifest")]
    for job in jobs:
        found += [(job.image, f"the image of line {job.line}"), (job.audio, f"the audio of line {job.line}")]
        if job.engine_options is None:
            continue
        try:
            engine = get_engine(job.engine)
            extra = {**engine.staged_refs(job.engine_options), **engine.user_files(job.engine_options)}
        except Exception:  # options the engine rejects are reported elsewhere
            log.debug("no reference files for line %d", job.line, exc_info=True)
            continue
        found += [(_abs(p), f"the {name.replace('_', ' ')} file of line {job.line}") for name, p in extra.items() if p is not None]
    return found


def _writes(job: BatchJob) -> list[_Written]:
    out = [
        _Written(job, "output", "output", Target(job.output, f"the output of line {job.line}")),
        _Written(job, "output", "report", Target(job.report_path, f"the report of line {job.line}")),
    ]
    hls = job.options.get("hls")
    if isinstance(hls, Path):
        from .hls import hls_target

        out.append(_Written(job, "hls", "hls folder", hls_target(hls, f"the hls folder of line {job.line}")))
    return out


def _collision(w: _Written, other: _Written) -> str | None:
    """How *w* and an earlier *other* would overwrite each other (None: they do not)."""
    job = w.job
    name = str(w.path) if w.what == "output" else f"{w.path} (the {w.what} of this row)"
    if same_file(w.path, other.path):
        if w.what == other.what == "output":
            return f"{w.path} is also the output of line {other.line}; give each row its own output"
        if w.what == other.what == "report" and job is not None:
            return f"{job.output} shares its report file {w.path.name} with line {other.line}; use another name"
        if w.what == other.what == "hls folder":
            return f"{w.path} is also the hls folder of line {other.line}"
        return f"{name} is also {other.of(job)}"
    if other.target.kind == "dir" and _inside_real(w.path, other.path):
        return f"{name} is inside {other.of(job)} {other.path}"
    if w.target.kind == "dir" and _inside_real(other.path, w.path):
        return f"{name} would hold {other.of(job)} ({other.path})"
    return None


def _inside_real(path: Path, folder: Path) -> bool:
    return _within(_real(path), _real(folder))


def _state_problem(t: Target, inputs: list[Path], *, overwrite: bool) -> str | None:
    """:func:`~lipsync_tool.targets.check_targets` for one target whose folder
    the batch may still have to make; the message, or None."""
    try:
        check_targets([replace(t, make_parents=True)], inputs, overwrite=overwrite)
    except OutputPathError as exc:
        return _say(exc)
    return None


def _say(exc: LipsyncError) -> str:
    text = f"{exc.subject}: {exc.message}" if exc.subject else exc.message
    return f"{text} ({exc.hint})" if exc.hint else text


def _is_batch_report(path: Path) -> bool:
    """Whether *path* holds what :meth:`_Runner.write_report` writes (or nothing)."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline(1 << 16)
    except (OSError, UnicodeDecodeError):
        return False
    if not first.strip():
        return True
    try:
        data = json.loads(first)
    except ValueError:
        return False
    return isinstance(data, dict) and {"job", "line", "status", "output"} <= data.keys()


def is_run_report(data: Any) -> bool:
    """Whether *data* (a parsed JSON file) is a run report lipsync-tool wrote."""
    return isinstance(data, dict) and isinstance(data.get("tool"), dict) and data["tool"].get("name") == "lipsync-tool"


def _target_problems(jobs: list[BatchJob], manifest: Path, out_dir: Path, *, overwrite: bool) -> list[Problem]:
    """Everything the batch would write, checked against every input of the
    manifest and against each other, before anything runs.

    What depends on whether a job is done (its output and report existing) is
    for :func:`resume_decision` and :func:`_existing_problems`.
    """
    problems: list[Problem] = []
    named_inputs = _input_paths(jobs, manifest)
    inputs = [p for p, _ in named_inputs]
    batch_report = _Written(None, None, "batch report", Target(out_dir / REPORT_FILE, REPORT_FILE))
    seen: list[_Written] = [batch_report]

    # The batch report: rewritten by every batch in this folder, never an input.
    for path, what in named_inputs:
        if same_file(batch_report.path, path):
            problems.append(Problem(0, None, f"{batch_report.path} is {what}; the batch writes its report there. Choose another --out-dir"))
            break
    else:
        why = _state_problem(batch_report.target, inputs, overwrite=True)
        if why:
            problems.append(Problem(0, None, why))
        elif batch_report.path.is_file() and not overwrite and not _is_batch_report(batch_report.path):
            problems.append(
                Problem(0, None, f"{batch_report.path} exists and is not a report of an earlier batch (pass --overwrite to replace it, or choose another --out-dir)")
            )

    for job in jobs:
        output_clash = False
        for w in _writes(job):
            if w.what == "report" and output_clash:
                continue  # it follows the output's name: one problem is enough
            why = _overlap(w, named_inputs, seen, out_dir)
            if why is None:
                seen.append(w)
                why = _state_problem(w.target, inputs, overwrite=True)
            else:
                output_clash |= w.what == "output"
            if why:
                problems.append(Problem(job.line, w.column, why))
    return problems


def _overlap(w: _Written, named_inputs: list[tuple[Path, str]], seen: list[_Written], out_dir: Path) -> str | None:
    """Why *w* may not be written: it is an input, outside --out-dir, or what an earlier row writes."""
    name = str(w.path) if w.what == "output" else f"{w.path} (the {w.what} of this row)"
    hit = next((what for path, what in named_inputs if same_file(w.path, path)), None)
    if hit is not None:
        return f"{name} is {hit}; refusing to overwrite it"
    if w.target.kind == "dir":
        for path, what in named_inputs:
            if _inside_real(path, w.path) and any(fnmatch.fnmatch(path.name, c) for c in w.target.contents):
                return f"{name} holds {what} ({path.name}), and the run writes that name there; refusing to overwrite it"
    why = _escapes(w.path, out_dir, strictly=w.target.kind == "dir")
    if why:
        return f"{name} {why}"
    return next((c for c in (_collision(w, other) for other in seen) if c), None)


def _existing_problems(job: BatchJob, inputs: list[Path]) -> list[Problem]:
    """What a job about to run would replace without being allowed to."""
    problems: list[Problem] = []
    if job.decision.action != "run":
        return problems
    for w in _writes(job):
        if w.what == "hls folder":
            why = _state_problem(w.target, inputs, overwrite=job.decision.overwrite)
            if why:
                problems.append(Problem(job.line, w.column, why))
    return problems


def _make_resources(group: ResourceGroup, obs: BatchObserver):
    from .resources.download import Downloader
    from .resources.managers import resources_for

    setup = obs.setup_observer(group.engine)
    s = group.settings
    downloader = Downloader(progress=setup.download_bar, on_wait=setup.waiting)
    return resources_for(group.engine, s.cache_dir, registry_file=s.registry, offline=s.offline, downloader=downloader, notice=setup.notice)


# -- running ----------------------------------------------------------------------------------


@dataclass
class JobResult:
    job: BatchJob
    status: Status
    error: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    output_info: dict[str, Any] | None = None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        j = self.job
        return {
            "job": j.index,
            "line": j.line,
            "name": j.name,
            "engine": j.engine,
            "image": str(j.image),
            "audio": str(j.audio),
            "output": str(j.output),
            "report": str(j.report_path),
            "status": self.status,
            "note": self.note or None,
            "error": self.error,
            "timings": self.timings,
            "wall_s": round(self.wall_s, 3),
            "output_info": self.output_info,
        }


@dataclass
class BatchResult:
    plan: BatchPlan
    results: list[JobResult]
    wall_s: float
    report_path: Path
    setup_s: dict[str, float] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def exit_code(self) -> int:
        return 0 if all(r.status in ("ok", "skipped") for r in self.results) else 1


def _media_summary(media: dict[str, Any] | None) -> dict[str, Any] | None:
    if not media:
        return None
    v = media.get("video") or {}
    a = media.get("audio") or {}
    path = media.get("path")
    size = None
    if path:
        try:
            size = os.path.getsize(path)
        except OSError:
            pass
    return {
        "path": path,
        "width": v.get("width"),
        "height": v.get("height"),
        "fps": v.get("fps"),
        "duration": v.get("duration") or media.get("duration"),
        "video_codec": v.get("codec"),
        "audio_codec": a.get("codec"),
        "size_bytes": size,
    }


def _error_info(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, LipsyncError):
        info = {"type": type(exc).__name__, "message": exc.message, "subject": exc.subject, "hint": exc.hint}
    else:
        info = {"type": type(exc).__name__, "message": str(exc)}
    temp = getattr(exc, "temp_dir", None)
    info["temp_dir"] = str(temp) if temp else None
    return info


class _Runner:
    """Runs a plan's jobs: stage and upscale on a pool, the engine on this thread."""

    def __init__(self, plan: BatchPlan, *, jobs: int, fail_fast: bool, obs: BatchObserver, report_path: Path):
        self.plan = plan
        self.workers = max(0, jobs - 1)
        self.fail_fast = fail_fast
        self.obs = obs
        self.report_path = report_path
        self.results: dict[int, JobResult] = {}
        self.stop = False
        self._lock = threading.Lock()
        self._devices: dict[tuple, Any] = {}
        self._t0: dict[int, float] = {}
        self._wall0: dict[int, float] = {}
        self.interrupted = False

    # -- bookkeeping --------------------------------------------------------------------------

    def record(self, result: JobResult, *, notify: bool = True) -> None:
        with self._lock:
            self.results[result.job.index] = result
            if result.status == "failed" and self.fail_fast:
                self.stop = True
            self.write_report()
        if notify:
            level = logging.WARNING if result.status == "failed" else logging.INFO
            log.log(level, "job %d (%s, line %d): %s%s", result.job.index, result.job.name, result.job.line, result.status, f": {result.error['message']}" if result.error else "")
            self.obs.job_finished(result)

    def write_report(self) -> None:
        lines = []
        for job in self.plan.jobs:
            r = self.results.get(job.index) or JobResult(job, "pending")
            lines.append(json.dumps(r.to_json(), default=str))
        try:
            # Atomic; the batch's own file, rewritten every time (plan_batch checked it is no input).
            write_text_file(self.report_path, "\n".join(lines) + "\n", overwrite=True)
        except OSError as exc:
            log.warning("could not write %s: %s", self.report_path, exc)

    def failed(self, job: BatchJob, exc: BaseException, run=None) -> JobResult:
        timings: dict[str, float] = {}
        report = run.report if run is not None else getattr(exc, "report", None)
        if report:
            timings = dict(report.get("timings") or {})
        return JobResult(job, "failed", _error_info(exc), timings, self.elapsed(job))

    def elapsed(self, job: BatchJob) -> float:
        return time.monotonic() - self._t0[job.index] if job.index in self._t0 else 0.0

    # -- the steps ----------------------------------------------------------------------------

    def start(self, job: BatchJob):
        """Build the job's pipeline and stage its inputs (any thread)."""
        from .pipeline import LipSyncPipeline

        self._t0[job.index] = time.monotonic()
        self._wall0[job.index] = time.time()
        self.obs.job_started(job)
        job.output.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(job.options.get("hls"), Path):  # the pipeline makes the folder, not its parents
            job.options["hls"].parent.mkdir(parents=True, exist_ok=True)
        assert job.group is not None
        kwargs = job.pipeline_kwargs()
        # Resolving the device probes torch in a subprocess: do it once per (device, interpreter).
        key = (kwargs.get("device", "auto"), str(kwargs.get("python")))
        pipeline = LipSyncPipeline(
            job.engine, resources=job.group.resources, observer=self.obs.job_observer(job), device_decision=self._devices.get(key), **kwargs
        )
        run = pipeline.start(job.image, job.audio, job.output)
        if pipeline.device_decision is not None:
            self._devices.setdefault(key, pipeline.device_decision)
        return run

    def finish(self, job: BatchJob, run) -> JobResult:
        try:
            result = run.finish()
        except Interrupted:
            raise
        except Exception as exc:  # a job's failure is recorded, the batch goes on
            log.debug("job %d failed in finish()", job.index, exc_info=True)
            return self.failed(job, exc, run)
        return JobResult(job, "ok", None, dict(result.report.get("timings") or {}), self.elapsed(job), _media_summary(result.report["output"].get("media")))

    def _start_safe(self, job: BatchJob):
        try:
            return self.start(job), None
        except Interrupted:
            raise
        except Exception as exc:  # likewise
            log.debug("job %d failed in start()", job.index, exc_info=True)
            return None, exc

    # -- the loop -----------------------------------------------------------------------------

    def prepare(self, todo: list[BatchJob]) -> None:
        """Make each engine's resources ready once, before its first job."""
        needs: dict[tuple, list[BatchJob]] = {}
        for job in todo:
            assert job.group is not None and job.run_options is not None
            needed = tuple(sorted(c.name for c in job.group.resources.needed(job.engine_options, job.run_options.resolution)))
            needed += tuple(sorted(job.group.resources.engine.user_files(job.engine_options)))
            needs.setdefault((job.group.key, needed), []).append(job)
        for (gkey, _), jobs in needs.items():
            if self.stop:
                return
            group = self.plan.groups[gkey]
            first = jobs[0]
            assert first.run_options is not None
            started = time.monotonic()
            try:
                group.resources.ensure(first.engine_options, first.run_options.resolution)
            except LipsyncError as exc:
                # Its jobs fail without being staged (record() stops a --fail-fast batch).
                log.warning("could not prepare %s: %s", group.engine, exc)
                for job in jobs:
                    self.record(JobResult(job, "failed", _error_info(exc), note="engine setup failed"))
            finally:
                group.seconds += time.monotonic() - started

    def run(self, todo: list[BatchJob]) -> None:
        pending = deque(j for j in todo if j.index not in self.results)
        staged: deque[tuple[BatchJob, Future]] = deque()
        finishing: list[Future] = []
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="batch-cpu") if self.workers else None

        def next_job() -> BatchJob | None:
            return pending.popleft() if pending else None

        def top_up() -> None:
            while pool and not self.stop and len(staged) < self.workers:
                job = next_job()
                if job is None:
                    return
                staged.append((job, pool.submit(self._start_safe, job)))

        current: tuple[BatchJob, Any] | None = None
        try:
            while not self.stop:
                top_up()
                if staged:
                    job, fut = staged.popleft()
                    run, exc = fut.result()
                else:
                    job = next_job()
                    if job is None:
                        break
                    current = (job, None)
                    run, exc = self._start_safe(job)
                top_up()
                if exc is not None:
                    current = None
                    self.record(self.failed(job, exc))
                    continue
                current = (job, run)
                try:
                    run.render()
                except (Interrupted, KeyboardInterrupt):
                    raise
                except Exception as exc:  # likewise
                    log.debug("job %d failed in render()", job.index, exc_info=True)
                    current = None
                    self.record(self.failed(job, exc, run))
                    continue
                current = None
                if pool:
                    finishing.append(pool.submit(lambda j=job, r=run: self.record(self.finish(j, r))))
                else:
                    self.record(self.finish(job, run))
            for f in finishing:
                f.result()
        except (Interrupted, KeyboardInterrupt):
            self.stop = True
            self.interrupted = True
            from .process import kill_all_live

            kill_all_live()  # staging and upscales on the pool threads, too
            if current is not None:
                job, run = current
                timings = dict(run.report.get("timings") or {}) if run is not None else {}
                self.record(JobResult(job, "interrupted", {"type": "Interrupted", "message": "interrupted"}, timings, self.elapsed(job)))
            raise
        finally:
            self.stop = True
            if pool:
                pool.shutdown(wait=True, cancel_futures=True)
            # Jobs staged but never rendered hold a temp dir each.
            for job, fut in staged:
                if fut.done() and not fut.cancelled():
                    run, exc = fut.result()
                    if run is not None:
                        run.discard()
                    elif exc is not None:
                        self.record(self.failed(job, exc))
            for job in [*(j for j, _ in staged), *pending]:
                if job.index not in self.results:
                    self.record(JobResult(job, "not_run", note="interrupted" if self.interrupted else "stopped after a failure (--fail-fast)"), notify=False)


def run_batch(plan: BatchPlan, *, jobs: int = 1, fail_fast: bool = False, observer: BatchObserver | None = None) -> BatchResult:
    """Run *plan*: skipped jobs are recorded, the others run (see the module doc).

    Writes ``<out_dir>/batch_report.jsonl`` after every job (one line per job,
    ``pending`` until it ran), so a killed batch leaves a current picture.
    Raises :class:`~lipsync_tool.errors.Interrupted` after recording a Ctrl-C.
    """
    if jobs < 1:
        raise UsageError(f"must be at least 1, not {jobs}", subject="--jobs")
    obs = observer or BatchObserver()
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    runner = _Runner(plan, jobs=jobs, fail_fast=fail_fast, obs=obs, report_path=plan.out_dir / REPORT_FILE)
    started = time.monotonic()
    for job in plan.to_skip:
        old = load_report(job.report_path) or {}
        runner.results[job.index] = JobResult(job, "skipped", note=job.decision.reason, output_info=_media_summary((old.get("output") or {}).get("media")))
    runner.write_report()
    todo = plan.to_run
    obs.started(len(todo), len(plan.to_skip))
    try:
        runner.prepare(todo)
        runner.run(todo)
    except KeyboardInterrupt:
        raise Interrupted("interrupted") from None
    finally:
        runner.write_report()
    results = [runner.results[j.index] for j in plan.jobs]
    setup = {g.engine: round(g.seconds, 3) for g in plan.groups.values() if g.seconds}
    return BatchResult(plan, results, time.monotonic() - started, runner.report_path, setup)


__all__ = [
    "BatchJob",
    "BatchObserver",
    "BatchPlan",
    "BatchResult",
    "Decision",
    "JobResult",
    "ManifestError",
    "Problem",
    "coerce",
    "plan_batch",
    "read_manifest",
    "resume_decision",
    "run_batch",
]
