"""What a batch writes, checked before anything runs.

Every file a batch writes (each row's output, its report and HLS folder, and
``batch_report.jsonl``) must be inside ``--out-dir``, never an input of any
row or the manifest, and never another row's.  :func:`target_problems`
checks all of that for every row at once; :func:`existing_problems` checks
what a job about to run would replace.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import LipsyncError, OutputPathError
from ..targets import Target, check_targets, same_file
from .job import REPORT_FILE, BatchJob
from .manifest import Problem, absolute_path

log = logging.getLogger(__name__)


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


def input_paths(jobs: list[BatchJob], manifest: Path) -> list[tuple[Path, str]]:
    """Every file the batch reads, with what it is: each row's image, audio,
    reference videos and own model files, and the manifest."""
    from ..engines import get_engine

    found: list[tuple[Path, str]] = [(absolute_path(manifest), "the manifest")]
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
        found += [(absolute_path(p), f"the {name.replace('_', ' ')} file of line {job.line}") for name, p in extra.items() if p is not None]
    return found


def _writes(job: BatchJob) -> list[_Written]:
    out = [
        _Written(job, "output", "output", Target(job.output, f"the output of line {job.line}")),
        _Written(job, "output", "report", Target(job.report_path, f"the report of line {job.line}")),
    ]
    hls = job.options.get("hls")
    if isinstance(hls, Path):
        from ..hls import hls_target

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
    """Whether *path* holds what :meth:`~lipsync_tool.batch.run.BatchWork.write_report` writes (or nothing)."""
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


def target_problems(jobs: list[BatchJob], manifest: Path, out_dir: Path, *, overwrite: bool) -> list[Problem]:
    """Everything the batch would write, checked against every input of the
    manifest and against each other, before anything runs.

    What depends on whether a job is done (its output and report existing) is
    for :func:`resume_decision` and :func:`existing_problems`.
    """
    problems: list[Problem] = []
    named_inputs = input_paths(jobs, manifest)
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


def existing_problems(job: BatchJob, inputs: list[Path]) -> list[Problem]:
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


