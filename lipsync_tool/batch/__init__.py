"""Batch runs: a manifest of jobs, validated up front, run through shared resources.

A manifest is CSV or JSON Lines, one job per row: ``image``, ``audio``,
optional ``output`` and ``engine``, and any run option as a column (the
Python API's field names, e.g. ``expression_scale``, ``wav2lip_pads``).
Options from the command line are the defaults of every row.

The steps, each in its own module so they can be tested alone:

1. :mod:`.manifest`: :func:`read_manifest` turns the file into rows with
   their line numbers, and :func:`coerce` turns cells into option values;
2. :mod:`.plan`: :func:`plan_batch` validates every row, checks every file
   the batch writes (:mod:`.guards`), decides which jobs are already done
   (:func:`resume_decision`) and raises one :class:`ManifestError` that
   lists every bad row;
3. :mod:`.run`: :func:`run_batch` prepares each engine's resources once,
   then runs the jobs through the :class:`~lipsync_tool.scheduler.Scheduler`.

:mod:`.job` holds the jobs themselves and :class:`BatchObserver`, the hooks
that show a batch's progress.
"""

from .job import REPORT_FILE, VOLATILE_OPTIONS, BatchJob, BatchObserver, Decision, ResourceGroup, result_options
from .manifest import ManifestError, Problem, Row, coerce, read_manifest
from .plan import BatchPlan, is_run_report, load_report, plan_batch, report_mismatch, resume_decision
from .run import BatchResult, JobResult, run_batch

__all__ = [
    "REPORT_FILE",
    "VOLATILE_OPTIONS",
    "BatchJob",
    "BatchObserver",
    "BatchPlan",
    "BatchResult",
    "Decision",
    "JobResult",
    "ManifestError",
    "Problem",
    "ResourceGroup",
    "Row",
    "coerce",
    "is_run_report",
    "load_report",
    "plan_batch",
    "read_manifest",
    "report_mismatch",
    "result_options",
    "resume_decision",
    "run_batch",
]
