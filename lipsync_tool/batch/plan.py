"""Planning a batch: every row validated, and what to run decided, before anything runs.

:func:`plan_batch` validates every row (options through the same pydantic
models a single run uses; inputs by staging them the way the pipeline does;
every file the batch writes through :func:`.guards.target_problems`), decides
which jobs are already done (:func:`resume_decision`) and raises one
:class:`~.manifest.ManifestError` that lists every bad row.

Resume: each job writes its run report next to its output
(``<output stem>.report.json``).  A job is skipped when its output exists and
that report says ``ok`` for the same input hashes, engine commit and the
options that define the result (:data:`~.job.VOLATILE_OPTIONS` do not).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import OUTPUT_EXTENSIONS, RunOptions, Settings
from ..errors import InputError, LipsyncError, UsageError
from .guards import existing_problems, input_paths, target_problems
from .job import BatchJob, BatchObserver, Decision, ResourceGroup, default_output, result_options
from .manifest import JOB_COLUMNS, ManifestError, Problem, Row, absolute_path, coerce, read_manifest, resolve_path, takes_path

#: Run options the batch sets itself, per job.
BATCH_OWNED = {"report": "the batch writes each job's report next to its output"}
#: Run options that name a job's own output: a row may set them (relative to
#: the out dir, unique across rows), the command line may not.
PER_JOB_OUTPUTS = ("hls",)


# -- resume ---------------------------------------------------------------------------------------


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


def is_run_report(data: Any) -> bool:
    """Whether *data* (a parsed JSON file) is a run report lipsync-tool wrote."""
    return isinstance(data, dict) and isinstance(data.get("tool"), dict) and data["tool"].get("name") == "lipsync-tool"


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
    from ..media import stage_face
    from ..resources.cache import sha256_file

    with tempfile.TemporaryDirectory(prefix="lipsync-check-") as tmp:
        try:
            _, face = stage_face(path, Path(tmp) / "face", ff, allow_video=True)
        except InputError as exc:
            return _FileCheck(error=exc.message)
    return _FileCheck(is_video=face.is_video, sha256=sha256_file(path))


def _check_audio(path: Path, ff) -> _FileCheck:
    from ..media import stage_audio
    from ..resources.cache import sha256_file

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
    for name, meta in engine.Options.cli_options().items():
        if subject in meta.flag.split("/"):
            return name
    return subject.lstrip("-").replace("-", "_") or None


def plan_batch(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    defaults: dict[str, Any] | None = None,
    *,
    engine: str | None = None,
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
    from ..engines import DEFAULT_ENGINE, engine_classes

    obs = observer or BatchObserver()
    manifest = Path(manifest)
    out_dir = absolute_path(out_dir)
    base = absolute_path(manifest).parent
    defaults = {k: (absolute_path(v) if isinstance(v, Path) else v) for k, v in (defaults or {}).items() if v is not None}
    rows, problems, records = read_manifest(manifest)
    classes = engine_classes()
    engine = engine or DEFAULT_ENGINE
    _check_defaults(defaults, classes)

    jobs_: list[BatchJob] = []
    #: Each job's problems so far: a job with any is not checked further.
    per_job: dict[int, list[Problem]] = {}
    for index, row in enumerate(rows, 1):
        job, found = _build_job(row, index, base=base, out_dir=out_dir, defaults=defaults, default_engine=engine, classes=classes)
        problems += found
        if job is not None:
            jobs_.append(job)
            per_job[index] = found

    problems += _unused_defaults(defaults, jobs_)
    problems += _check_inputs(jobs_, per_job, workers=jobs, obs=obs)
    # What the batch writes: never an input, never another row's, never outside --out-dir.
    written = target_problems(jobs_, manifest, out_dir, overwrite=bool(defaults.get("overwrite")) or force)
    problems += written
    for p in written:
        if p.line:
            for job in jobs_:
                if job.line == p.line:
                    per_job.setdefault(job.index, []).append(p)
    groups, found = _group_resources(jobs_, per_job, obs)
    problems += found
    problems += _decide(jobs_, per_job, manifest, force=force)
    if problems:
        raise ManifestError(manifest, problems, records)
    return BatchPlan(manifest, out_dir, jobs_, groups)


def _check_defaults(defaults: dict[str, Any], classes: dict) -> None:
    """The command line's options: run or engine options a batch lets every row share."""
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


def _unused_defaults(defaults: dict[str, Any], jobs: list[BatchJob]) -> list[Problem]:
    """Engine options given as defaults must fit at least one row's engine."""
    from ..engines import flag_of, option_owner

    problems = []
    used_engines = {j.engine for j in jobs}
    for key in defaults:
        if key not in RunOptions.model_fields and jobs and not (set(option_owner(key)) & used_engines):
            owners = " and ".join(option_owner(key))
            problems.append(Problem(0, None, f"{flag_of(key)} is an option of the {owners} engine, and no row uses {'it' if ' and ' not in owners else 'them'}"))
    return problems


def _check_inputs(jobs: list[BatchJob], per_job: dict[int, list[Problem]], *, workers: int, obs: BatchObserver) -> list[Problem]:
    """Stage each distinct input file once, the way the pipeline will; note
    the hashes, durations and kinds on the jobs."""
    from ..engines import get_engine
    from ..media import find_ffmpeg

    ff = find_ffmpeg(Settings.from_env().ffmpeg)
    checkable = [j for j in jobs if not per_job.get(j.index)]
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

    checked = dict(zip(files, _map(check, files, workers)))
    problems: list[Problem] = []
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
        per_job[job.index] = found
        problems += found
    return problems


def _group_resources(jobs: list[BatchJob], per_job: dict[int, list[Problem]], obs: BatchObserver) -> tuple[dict[tuple, ResourceGroup], list[Problem]]:
    """Shared resources, and the engine commit a finished job must match."""
    groups: dict[tuple, ResourceGroup] = {}
    problems: list[Problem] = []
    for job in jobs:
        if per_job.get(job.index) or job.run_options is None:
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
    return groups, problems


def _decide(jobs: list[BatchJob], per_job: dict[int, list[Problem]], manifest: Path, *, force: bool) -> list[Problem]:
    """Resume: skip what is done, refuse to replace what the batch did not write."""
    problems: list[Problem] = []
    input_files = [p for p, _ in input_paths(jobs, manifest)]
    for job in jobs:
        if per_job.get(job.index) or job.group is None:
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
        problems += existing_problems(job, input_files)
    return problems


def _make_resources(group: ResourceGroup, obs: BatchObserver):
    from ..resources.download import Downloader
    from ..resources.managers import resources_for

    setup = obs.setup_observer(group.engine)
    s = group.settings
    downloader = Downloader(progress=setup.download_bar, on_wait=setup.waiting)
    return resources_for(group.engine, s.cache_dir, registry_file=s.registry, offline=s.offline, downloader=downloader, notice=setup.notice)


# -- one row → one job ----------------------------------------------------------------------------


def _build_job(row: Row, index: int, *, base: Path, out_dir: Path, defaults: dict[str, Any], default_engine: str, classes: dict) -> tuple[BatchJob | None, list[Problem]]:
    """One row → a job, with every problem its cells have (no file access)."""
    line, cells = row.line, row.values
    problems: list[Problem] = []
    engine_name = cells.get("engine", default_engine)
    if not isinstance(engine_name, str) or engine_name not in classes:
        problems.append(Problem(line, "engine", f"unknown engine {engine_name!r}; choose one of: {', '.join(classes)}"))
        return None, problems
    engine_cls = classes[engine_name]
    paths = _row_paths(row, base=base, out_dir=out_dir, problems=problems)
    values = _row_values(row, engine_cls, engine_name, base=base, out_dir=out_dir, defaults=defaults, problems=problems)
    run_options, engine_options = _row_options(row, engine_cls, engine_name, values, problems=problems)
    if "image" not in paths or "audio" not in paths:
        return None, problems
    output = paths.get("output") or default_output(paths["image"], paths["audio"], out_dir)
    if output.suffix.lower() not in OUTPUT_EXTENSIONS:
        problems.append(Problem(line, "output", f"{output.name} must end in one of {', '.join(OUTPUT_EXTENSIONS)}"))
    job = BatchJob(index, line, engine_name, paths["image"], paths["audio"], output, values, run_options, engine_options)
    return job, problems


def _row_paths(row: Row, *, base: Path, out_dir: Path, problems: list[Problem]) -> dict[str, Path]:
    """The row's image and audio (relative to the manifest) and output (relative to *out_dir*)."""
    line, cells = row.line, row.values
    paths: dict[str, Path] = {}
    for col in ("image", "audio"):
        value = cells.get(col)
        if value is None:
            problems.append(Problem(line, col, "is missing"))
        elif not isinstance(value, str):
            problems.append(Problem(line, col, f"must be a path, not {value!r}"))
        else:
            paths[col] = resolve_path(value, base)
    if cells.get("output") is not None:
        value = cells["output"]
        if not isinstance(value, str):
            problems.append(Problem(line, "output", f"must be a path, not {value!r}"))
        else:
            paths["output"] = resolve_path(value, out_dir)
    return paths


def _row_values(row: Row, engine_cls, engine_name: str, *, base: Path, out_dir: Path, defaults: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
    """The row's option cells, typed and with their paths resolved, over the defaults its engine takes."""
    from ..engines import option_owner

    own = engine_cls.Options.model_fields
    values: dict[str, Any] = {k: v for k, v in defaults.items() if k in RunOptions.model_fields or k in own}
    for col, raw in row.values.items():
        if col in JOB_COLUMNS:
            continue
        if col in BATCH_OWNED:
            problems.append(Problem(row.line, col, f"is set by the batch: {BATCH_OWNED[col]}"))
            continue
        info = RunOptions.model_fields.get(col) or own.get(col)
        if info is None:
            owners = option_owner(col)
            problems.append(Problem(row.line, col, f"belongs to the {' and '.join(owners)} engine, not to {engine_name}" if owners else "is not a column or a run option"))
            continue
        value = coerce(info.annotation, raw)
        if col in PER_JOB_OUTPUTS and isinstance(value, str):
            value = resolve_path(value, out_dir)
        elif takes_path(info, value) and isinstance(value, str):
            value = resolve_path(value, base)
        values[col] = value
    return values


def _row_options(row: Row, engine_cls, engine_name: str, values: dict[str, Any], *, problems: list[Problem]) -> tuple[RunOptions | None, Any]:
    """The row's RunOptions and engine options, through the models a single run uses (None where invalid)."""
    from pydantic import ValidationError

    common = {k: v for k, v in values.items() if k in RunOptions.model_fields}
    rest = {k: v for k, v in values.items() if k not in RunOptions.model_fields}
    built: list[Any] = []
    for model, kwargs in ((RunOptions, {**common, "engine": engine_name}), (engine_cls.Options, rest)):
        try:
            built.append(model(**kwargs))
        except ValidationError as exc:
            built.append(None)
            for err in exc.errors():
                loc = err.get("loc") or ()
                msg = err.get("msg", "").removeprefix("Value error, ")
                column = str(loc[0]) if loc else None
                problems.append(Problem(row.line, column, f"{msg} (got {row.values[column]!r})" if column in row.values else msg))
    return built[0], built[1]


__all__ = ["BATCH_OWNED", "PER_JOB_OUTPUTS", "BatchPlan", "is_run_report", "load_report", "plan_batch", "report_mismatch", "resume_decision"]
