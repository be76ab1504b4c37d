"""``batch`` and ``compare``: many runs from one command.

Parsing and printing only: the work is in :mod:`lipsync_tool.batch` and
:mod:`lipsync_tool.compare`, and progress is drawn by the observers in
:mod:`.console`.  Options given here are defaults that a manifest row (or
each engine, for compare) may not have set, so only what the user typed is
passed on (:func:`.options.given`).
"""

import inspect
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import UsageError
from .console import ConsoleBatchObserver, ConsoleObserver, format_seconds, guard, out, setup_logging, table
from .options import EngineParams, command_with, common_parameters, defaults_of, drop, given, pick

BATCH = "Batch options"
COMPARE = "Compare options"
#: Common options that make no sense for these commands.
_NOT_FOR_BATCH = {"image", "audio", "output", "report", "hls"}  # hls: per row (a column), never shared
_NOT_FOR_COMPARE = {"image", "audio", "output", "report", "engine", "hls", "hls_segment_seconds"}

_MANIFEST_HELP = (
    "CSV or JSON Lines, one job per row: image, audio, optional output and engine, and any run option as a column "
    "(preprocess, expression_scale, wav2lip_pads, preset, …). Relative paths resolve against the manifest's folder."
)


def add_commands(app: typer.Typer, engine_params: EngineParams) -> None:
    shared = common_parameters()
    eng = engine_params()
    batch_params = _batch_parameters() + drop(shared, _NOT_FOR_BATCH) + eng
    batch_defaults = defaults_of(batch_params)
    compare_params = pick(shared, ("image", "audio")) + _compare_parameters() + drop(shared, _NOT_FOR_COMPARE) + eng
    compare_defaults = defaults_of(compare_params)

    def batch(**values: Any) -> None:
        guard(do_batch, values, batch_defaults)

    def compare(**values: Any) -> None:
        guard(do_compare, values, compare_defaults)

    app.command(
        "batch",
        help="Run every job of a manifest: validated first, resumable, one engine run at a time. "
        "Options given here are the defaults of every row. Exit 0 if all jobs succeeded, 1 if any failed.",
    )(command_with(batch, batch_params))
    app.command(
        "compare",
        help="Run each engine on IMAGE and AUDIO and write their videos, a labelled side-by-side video and a comparison table. "
        "Engine options go to the engines that have them. Exit 0 if every engine succeeded, 1 otherwise.",
    )(command_with(compare, compare_params))


def _batch_parameters() -> list[inspect.Parameter]:
    P, K = inspect.Parameter, inspect.Parameter.KEYWORD_ONLY
    return [
        P("manifest", K, annotation=Annotated[Path, typer.Argument(help=_MANIFEST_HELP, show_default=False)]),
        P("out_dir", K, annotation=Annotated[Path, typer.Option("--out-dir", "-o", help="Where the videos, their reports and batch_report.jsonl go (relative outputs too).", show_default=False, rich_help_panel=BATCH)]),
        P("jobs", K, default=1, annotation=Annotated[int, typer.Option("--jobs", "-j", min=1, help="Jobs in flight: one in the engine (always one at a time), the others checking, staging or upscaling.", rich_help_panel=BATCH)]),
        P("force", K, default=False, annotation=Annotated[bool, typer.Option("--force", help="Run jobs again even when their output and report say they are done.", rich_help_panel=BATCH)]),
        P("fail_fast", K, default=False, annotation=Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failed job (by default the batch goes on).", rich_help_panel=BATCH)]),
        P("validate_only", K, default=False, annotation=Annotated[bool, typer.Option("--validate-only", help="Check the whole manifest (files, options, outputs) and say what would run; run nothing.", rich_help_panel=BATCH)]),
        P("executor", K, default="local", annotation=Annotated[str, typer.Option("--executor", help="local (this machine) or ray (one actor per GPU of a Ray cluster; the ray extra).", rich_help_panel=BATCH)]),
        P("ray_address", K, default=None, annotation=Annotated[Optional[str], typer.Option("--ray-address", help="With --executor ray: auto or ray://HOST:PORT joins a cluster (default: a local Ray for this command).", rich_help_panel=BATCH)]),
        _score_parameter(BATCH, "each row of batch_report.jsonl"),
    ]


def _compare_parameters() -> list[inspect.Parameter]:
    P, K = inspect.Parameter, inspect.Parameter.KEYWORD_ONLY
    return [
        P("out_dir", K, annotation=Annotated[Path, typer.Argument(help="Folder for each engine's video, the side-by-side video, comparison.json and comparison.md.", show_default=False)]),
        P("engines", K, default=None, annotation=Annotated[Optional[str], typer.Option("--engines", help="The engines to compare, comma-separated. (default: the built-in ones, sadtalker,wav2lip)", show_default=False, rich_help_panel=COMPARE)]),
        P("font", K, default=None, annotation=Annotated[Optional[Path], typer.Option("--font", help="A .ttf/.otf font for the labels. (default: a sans font found on this machine)", show_default=False, metavar="FILE", rich_help_panel=COMPARE)]),
        _score_parameter(COMPARE, "comparison.json and comparison.md"),
    ]


def _score_parameter(panel: str, where: str) -> inspect.Parameter:
    return inspect.Parameter(
        "score",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[
            bool,
            typer.Option(
                "--score",
                help=f"Score each video with SyncNet (LSE-D, LSE-C, AV offset) and add mouth sharpness and the A-V duration gap to {where} "
                "(as 'lipsync-tool score'; runs in the --python interpreter, weights fetched and verified first).",
                rich_help_panel=panel,
            ),
        ],
    )


def make_scorer(values: dict[str, Any], observer: Any):
    """The SyncNet scorer for ``--score``, with the run's interpreter, device and cache settings."""
    from ..config import Settings
    from ..resources.download import Downloader
    from ..scoring import SyncNetScorer

    settings = Settings.from_env(cache_dir=values.get("cache_dir"), offline=values.get("offline"), registry=values.get("registry"))
    return SyncNetScorer(
        cache_dir=settings.cache_dir,
        registry_file=settings.registry,
        offline=settings.offline,
        python=values.get("python"),
        device=values.get("device") or "auto",
        downloader=Downloader(progress=observer.download_bar, on_wait=observer.waiting, offline=settings.offline),
    )


# -- batch ------------------------------------------------------------------------------------


def do_batch(values: dict[str, Any], defaults: dict[str, Any]) -> int:
    from ..batch import plan_batch, run_batch

    values = dict(values)
    setup_logging(values.pop("log_level"))
    manifest, out_dir = values.pop("manifest"), values.pop("out_dir")
    jobs, force, fail_fast, validate_only = values.pop("jobs"), values.pop("force"), values.pop("fail_fast"), values.pop("validate_only")
    executor, ray_address, score = values.pop("executor"), values.pop("ray_address"), values.pop("score")
    if executor not in ("local", "ray"):
        raise UsageError(f"must be local or ray, not {executor!r}", subject="--executor")
    if ray_address and executor != "ray":
        raise UsageError("needs --executor ray", subject="--ray-address")
    engine = values.pop("engine")
    observer = ConsoleBatchObserver(jobs)
    scorer = None
    try:
        plan = plan_batch(manifest, out_dir, given(values, defaults), engine=engine, jobs=jobs, force=force, observer=observer)
        if validate_only:
            observer.done()
            _print_plan(plan)
            return 0
        if score:
            scorer = make_scorer(values, ConsoleObserver())
        result = run_batch(plan, jobs=jobs, fail_fast=fail_fast, observer=observer, executor=executor, ray_address=ray_address, scorer=scorer)
    finally:
        observer.done()
        if scorer is not None:
            scorer.close()
    _print_summary(result)
    return result.exit_code


def _print_plan(plan) -> None:
    run, skip = len(plan.to_run), len(plan.to_skip)
    out(f"Manifest OK: {len(plan.jobs)} job{'s' if len(plan.jobs) != 1 else ''} ({run} to run, {skip} already done).")
    rows = [[str(j.index), str(j.line), str(j.output), j.engine, j.decision.action, j.decision.reason] for j in plan.jobs]
    for line in table(["#", "line", "output", "engine", "action", "why"], rows):
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
        rows.append([str(r.job.index), str(r.job.line), r.job.name, r.job.engine, r.status, format_seconds(r.wall_s) if r.status not in ("skipped", "not_run") else "–", note])
    out()
    for line in table(["#", "line", "output", "engine", "status", "time", "note"], rows):
        out(line)
    counts = ", ".join(f"{result.count(s)} {s}" for s in ("ok", "failed", "skipped"))
    extra = "".join(f", {result.count(s)} {s.replace('_', ' ')}" for s in ("not_run", "interrupted") if result.count(s))
    setup = ", ".join(f"{e} {s:.1f} s" for e, s in result.setup_s.items())
    out(f"{len(result.results)} jobs: {counts}{extra} in {result.wall_s:.1f} s" + (f" (engine setup: {setup})" if setup else ""))
    out(f"Report: {result.report_path}")


# -- compare ----------------------------------------------------------------------------------


def do_compare(values: dict[str, Any], defaults: dict[str, Any]) -> int:
    from ..compare import compare

    values = dict(values)
    setup_logging(values.pop("log_level"))
    image, audio, out_dir = values.pop("image"), values.pop("audio"), values.pop("out_dir")
    engines, font, score = values.pop("engines"), values.pop("font"), values.pop("score")
    observers: list[ConsoleObserver] = []
    scorer = None

    def observer_for(name: str) -> ConsoleObserver:
        for previous in observers:  # the engine before has finished
            previous.done()
        obs = ConsoleObserver(prefix=f"[{name}] ")
        observers.append(obs)
        return obs

    try:
        if score:
            scorer = make_scorer(values, observer_for("syncnet"))
        result = compare(image, audio, out_dir, engines=engines, options=given(values, defaults), font=font, observer_for=observer_for, scorer=scorer, score=score)
    finally:
        for obs in observers:
            obs.done()
        if scorer is not None:
            scorer.close()
    _print_comparison(result)
    return result.exit_code


def _fig(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "–"


def _print_comparison(result) -> None:
    scored = any(r.score.get("scorer") for r in result.results)
    rows = []
    for r in result.results:
        e = r.to_json()
        note = ""
        if r.error:
            note = (r.error.get("message") or "").splitlines()[0] if r.error.get("message") else r.error.get("type", "")
        scores = [_fig(e.get("lse_d"), ".3f"), _fig(e.get("lse_c"), ".3f"), _fig(e.get("av_offset"), "d")] if scored else []
        rows.append([r.engine, r.status, e["resolution"] or "–", f"{e['fps']:g}" if e["fps"] else "–", format_seconds(e["duration"]), format_seconds(r.wall_s), *scores, note or (e.get("score_note") or "" if scored else "")])
    heads = ["engine", "status", "resolution", "fps", "duration", "time"] + (["LSE-D", "LSE-C", "offset"] if scored else []) + ["note"]
    for line in table(heads, rows):
        out(line)
    if result.side_by_side:
        v = (result.side_by_side_info or {}).get("video") or {}
        out(f"Side by side: {result.side_by_side} ({v.get('width')}x{v.get('height')})")
    elif result.side_by_side_error:
        out(f"Side by side: not written ({result.side_by_side_error.get('message')})")
    out(f"Comparison: {result.json_path} and {result.md_path}")
