"""The ``batch`` and ``compare`` commands.

Parsing and drawing only, like ``cli.py`` (which calls :func:`add_commands`):
the work is in :mod:`lipsync_tool.batch` and :mod:`lipsync_tool.compare`,
errors go through the CLI's one table (``guard``), and progress is drawn
here from the library's callbacks.
"""

from __future__ import annotations

import inspect
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .cli import ConsoleObserver, _Bar, err, is_tty, out, setup_logging

BATCH = "Batch options"
COMPARE = "Compare options"
#: Common options that make no sense for these commands.
_NOT_FOR_BATCH = {"image", "audio", "output", "report", "hls"}  # hls: per row (a column), never shared
_NOT_FOR_COMPARE = {"image", "audio", "output", "report", "engine", "hls", "hls_segment_seconds"}


def add_commands(app: typer.Typer, *, common: Callable[[], list[inspect.Parameter]], engine_params: Callable[[], list[inspect.Parameter]], guard: Callable[..., None]) -> None:
    P, K = inspect.Parameter, inspect.Parameter.KEYWORD_ONLY
    shared = common()
    by_name = {p.name: p for p in shared}
    eng = engine_params()

    batch_params = [
        P(
            "manifest",
            K,
            annotation=Annotated[
                Path,
                typer.Argument(
                    help="CSV or JSON Lines, one job per row: image, audio, optional output and engine, and any run option as a column "
                    "(preprocess, expression_scale, wav2lip_pads, preset, …). Relative paths resolve against the manifest's folder.",
                    show_default=False,
                ),
            ],
        ),
        P("out_dir", K, annotation=Annotated[Path, typer.Option("--out-dir", "-o", help="Where the videos, their reports and batch_report.jsonl go (relative outputs too).", show_default=False, rich_help_panel=BATCH)]),
        P("jobs", K, default=1, annotation=Annotated[int, typer.Option("--jobs", "-j", min=1, help="Jobs in flight: one in the engine (always one at a time), the others checking, staging or upscaling.", rich_help_panel=BATCH)]),
        P("force", K, default=False, annotation=Annotated[bool, typer.Option("--force", help="Run jobs again even when their output and report say they are done.", rich_help_panel=BATCH)]),
        P("fail_fast", K, default=False, annotation=Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failed job (by default the batch goes on).", rich_help_panel=BATCH)]),
        P("validate_only", K, default=False, annotation=Annotated[bool, typer.Option("--validate-only", help="Check the whole manifest (files, options, outputs) and say what would run; run nothing.", rich_help_panel=BATCH)]),
    ]
    batch_params += [p for p in shared if p.name not in _NOT_FOR_BATCH] + eng
    batch_defaults = {p.name: p.default for p in batch_params}

    def batch(**values: Any) -> None:
        guard(do_batch, values, batch_defaults)

    batch.__signature__ = inspect.Signature(batch_params)  # type: ignore[attr-defined]
    app.command(
        "batch",
        help="Run every job of a manifest: validated first, resumable, one engine run at a time. "
        "Options given here are the defaults of every row. Exit 0 if all jobs succeeded, 1 if any failed.",
    )(batch)

    compare_params = [
        by_name["image"],
        by_name["audio"],
        P("out_dir", K, annotation=Annotated[Path, typer.Argument(help="Folder for each engine's video, the side-by-side video, comparison.json and comparison.md.", show_default=False)]),
        P("engines", K, default="sadtalker,wav2lip", annotation=Annotated[str, typer.Option("--engines", help="The engines to compare, comma-separated.", rich_help_panel=COMPARE)]),
        P("font", K, default=None, annotation=Annotated[Optional[Path], typer.Option("--font", help="A .ttf/.otf font for the labels. (default: a sans font found on this machine)", show_default=False, metavar="FILE", rich_help_panel=COMPARE)]),
    ]
    compare_params += [p for p in shared if p.name not in _NOT_FOR_COMPARE] + eng
    compare_defaults = {p.name: p.default for p in compare_params}

    def compare(**values: Any) -> None:
        guard(do_compare, values, compare_defaults)

    compare.__signature__ = inspect.Signature(compare_params)  # type: ignore[attr-defined]
    app.command(
        "compare",
        help="Run each engine on IMAGE and AUDIO and write their videos, a labelled side-by-side video and a comparison table. "
        "Engine options go to the engines that have them. Exit 0 if every engine succeeded, 1 otherwise.",
    )(compare)


def _given(values: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """What the user set: not None and not the parameter's own default.

    (``--no-still`` is False where the default is None, so it is kept.)
    """
    return {k: v for k, v in values.items() if v is not None and not (k in defaults and type(v) is type(defaults[k]) and v == defaults[k])}


# -- batch ------------------------------------------------------------------------------------


class ConsoleBatchObserver:
    """A jobs bar with an ETA, and each job's stages, on a TTY; quiet otherwise."""

    def __init__(self, jobs: int, enabled: bool | None = None):
        self.enabled = is_tty() if enabled is None else enabled
        self.parallel = jobs > 1
        self.check_bar: _Bar | None = None
        self.bar = None
        self._setup: dict[str, ConsoleObserver] = {}
        self._observers: dict[int, ConsoleObserver] = {}
        self._lock = threading.Lock()
        self.engine_job: int | None = None

    def say(self, text: str) -> None:
        if self.bar is not None:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)
        else:
            err(text)

    # BatchObserver ------------------------------------------------------------------------

    def validating(self, files: int) -> None:
        if self.enabled and files:
            self.check_bar = _Bar("Checking inputs", total=files, unit="file")

    def file_checked(self) -> None:
        if self.check_bar:
            with self._lock:
                self.check_bar.update(1)

    def setup_observer(self, engine: str):
        if engine not in self._setup:
            self._setup[engine] = ConsoleObserver(self.enabled, prefix=f"[{engine}] ")
        return self._setup[engine]

    def started(self, to_run: int, skipped: int) -> None:
        if self.check_bar:
            self.check_bar.close()
            self.check_bar = None
        if skipped:
            self.say(f"Skipping {skipped} finished job{'s' if skipped != 1 else ''} (--force runs them again).")
        if self.enabled and to_run:
            from tqdm import tqdm

            self.bar = tqdm(total=to_run, desc="Batch", unit="job", dynamic_ncols=True, file=sys.stderr, position=0)

    def job_observer(self, job):
        if self.parallel:
            return _StatusObserver(self, job)
        obs = ConsoleObserver(self.enabled, prefix=f"[{job.index}] {job.name}: ")
        self._observers[job.index] = obs
        return obs

    def job_started(self, job) -> None: ...

    def job_finished(self, result) -> None:
        if (obs := self._observers.pop(result.job.index, None)) is not None:
            obs.done()
        if self.bar is not None:
            self.bar.update(1)
        if result.status == "failed" and result.error:
            first = (result.error.get("message") or "").splitlines()[:1]
            self.say(f"Job {result.job.index} ({result.job.name}, line {result.job.line}) failed: {first[0] if first else result.error.get('type')}")

    def done(self) -> None:
        for obs in [*self._observers.values(), *self._setup.values()]:
            obs.done()
        self._observers.clear()
        if self.check_bar:
            self.check_bar.close()
            self.check_bar = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _StatusObserver:
    """With --jobs N: the running job's stage in the jobs bar, nothing else."""

    def __init__(self, parent: ConsoleBatchObserver, job):
        self.parent, self.job = parent, job

    def stage(self, name: str, detail: str = "") -> None:
        bar = self.parent.bar
        if bar is None:
            return
        if name == "engine":
            self.parent.engine_job = self.job.index
            bar.set_postfix_str(f"engine: {self.job.name}", refresh=False)
        elif name == "upscale" and self.parent.engine_job == self.job.index:
            bar.set_postfix_str("", refresh=False)

    def engine_line(self, line: str) -> None:
        if self.parent.bar is not None:
            self.parent.bar.set_postfix_str(f"engine: {self.job.name} {line.strip()[-40:]}", refresh=False)

    def progress(self, stage: str, fraction: float) -> None: ...

    def notice(self, title: str, text: str) -> None:
        self.parent.say(f"Licence notice ({title}): {text}")

    def waiting(self, what: str) -> None: ...

    def download_bar(self, label: str, total: int, initial: int):
        from .resources.download import no_progress

        return no_progress(label, total, initial)


def _fmt_s(seconds: float | None) -> str:
    return f"{seconds:.1f} s" if seconds else "–"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*headers).rstrip(), *(fmt.format(*r).rstrip() for r in rows)]


def do_batch(values: dict[str, Any], defaults: dict[str, Any]) -> int:
    from .batch import plan_batch, run_batch

    values = dict(values)
    setup_logging(values.pop("log_level"))
    manifest, out_dir = values.pop("manifest"), values.pop("out_dir")
    jobs, force, fail_fast, validate_only = values.pop("jobs"), values.pop("force"), values.pop("fail_fast"), values.pop("validate_only")
    engine = values.pop("engine")
    observer = ConsoleBatchObserver(jobs)
    try:
        plan = plan_batch(manifest, out_dir, _given(values, defaults), engine=engine, jobs=jobs, force=force, observer=observer)
        if validate_only:
            observer.done()
            _print_plan(plan)
            return 0
        result = run_batch(plan, jobs=jobs, fail_fast=fail_fast, observer=observer)
    finally:
        observer.done()
    _print_summary(result)
    return result.exit_code


def _print_plan(plan) -> None:
    run, skip = len(plan.to_run), len(plan.to_skip)
    out(f"Manifest OK: {len(plan.jobs)} job{'s' if len(plan.jobs) != 1 else ''} ({run} to run, {skip} already done).")
    rows = [[str(j.index), str(j.line), str(j.output), j.engine, j.decision.action, j.decision.reason] for j in plan.jobs]
    for line in _table(["#", "line", "output", "engine", "action", "why"], rows):
        out("  " + line)


def _print_summary(result) -> None:
    rows = []
    for r in result.results:
        note = r.note or ""
        if r.error:
            first = (r.error.get("message") or "").splitlines()[:1]
            note = f"{r.error.get('type')}: {first[0] if first else ''}"
            if r.error.get("temp_dir"):
                note += f" (temp files: {r.error['temp_dir']})"
        rows.append([str(r.job.index), str(r.job.line), r.job.name, r.job.engine, r.status, _fmt_s(r.wall_s) if r.status not in ("skipped", "not_run") else "–", note])
    out()
    for line in _table(["#", "line", "output", "engine", "status", "time", "note"], rows):
        out(line)
    counts = ", ".join(f"{result.count(s)} {s}" for s in ("ok", "failed", "skipped"))
    extra = "".join(f", {result.count(s)} {s.replace('_', ' ')}" for s in ("not_run", "interrupted") if result.count(s))
    setup = ", ".join(f"{e} {s:.1f} s" for e, s in result.setup_s.items())
    out(f"{len(result.results)} jobs: {counts}{extra} in {result.wall_s:.1f} s" + (f" (engine setup: {setup})" if setup else ""))
    out(f"Report: {result.report_path}")


# -- compare ----------------------------------------------------------------------------------


def do_compare(values: dict[str, Any], defaults: dict[str, Any]) -> int:
    from .compare import compare

    values = dict(values)
    setup_logging(values.pop("log_level"))
    image, audio, out_dir = values.pop("image"), values.pop("audio"), values.pop("out_dir")
    engines, font = values.pop("engines"), values.pop("font")
    observers: list[ConsoleObserver] = []

    def observer_for(name: str) -> ConsoleObserver:
        for previous in observers:  # the engine before has finished
            previous.done()
        obs = ConsoleObserver(prefix=f"[{name}] ")
        observers.append(obs)
        return obs

    try:
        result = compare(image, audio, out_dir, engines=engines, options=_given(values, defaults), font=font, observer_for=observer_for)
    finally:
        for obs in observers:
            obs.done()
    rows = []
    for r in result.results:
        e = r.to_json()
        note = ""
        if r.error:
            note = (r.error.get("message") or "").splitlines()[0] if r.error.get("message") else r.error.get("type", "")
        rows.append([r.engine, r.status, e["resolution"] or "–", f"{e['fps']:g}" if e["fps"] else "–", _fmt_s(e["duration"]), _fmt_s(r.wall_s), note])
    for line in _table(["engine", "status", "resolution", "fps", "duration", "time", "note"], rows):
        out(line)
    if result.side_by_side:
        v = (result.side_by_side_info or {}).get("video") or {}
        out(f"Side by side: {result.side_by_side} ({v.get('width')}x{v.get('height')})")
    elif result.side_by_side_error:
        out(f"Side by side: not written ({result.side_by_side_error.get('message')})")
    out(f"Comparison: {result.json_path} and {result.md_path}")
    return result.exit_code
