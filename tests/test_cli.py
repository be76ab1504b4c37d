"""CLI plumbing: routing, option hand-off, errors and their exit codes."""

from __future__ import annotations

import logging

from lipsync_tool import __version__, errors
from lipsync_tool.cli import exit_code_for, report_error, setup_logging
from lipsync_tool.cli.run import _pipeline_kwargs
from lipsync_tool.errors import (
    DownloadError,
    EngineError,
    FaceNotFoundError,
    InputError,
    Interrupted,
    LipsyncError,
    OfflineError,
    RegistryFileError,
    UsageError,
)


def test_version_and_help(cli):
    r = cli("--version")
    assert r.code == 0 and __version__ in r.stdout
    r = cli("--help")
    assert r.code == 0 and "run" in r.stdout and "doctor" in r.stdout
    # Every command is there (none dropped because its module failed to import).
    for command in ("demo", "engines", "setup", "cache", "batch", "compare"):
        assert command in r.stdout, command


def test_false_engine_flags_reach_the_pipeline():
    kw = _pipeline_kwargs({"image": "a", "audio": "b", "output": "c", "engine": "sadtalker", "log_level": "INFO", "still": False, "pose_style": None, "overwrite": False})
    assert kw == {"still": False, "overwrite": False}


def test_no_still_gives_upstream_argv_without_still():
    from pathlib import Path

    from lipsync_tool.engines import get_engine, make_options
    from lipsync_tool.engines.base import Device, Job, Workspace

    st = get_engine("sadtalker")
    job = Job(Path("/t/inputs/face.png"), Path("/t/inputs/audio.wav"), False, 25, Device("cpu"), "python")
    argv = st.build_command(job, make_options(st, _pipeline_kwargs({"still": False})), Workspace(Path("/t"))).argv
    assert "--still" not in argv
    argv = st.build_command(job, make_options(st, {}), Workspace(Path("/t"))).argv
    assert "--still" in argv


def test_exit_code_table(capsys):
    cases = [
        (UsageError("x"), 2),
        (RegistryFileError("x"), 2),
        (FaceNotFoundError("x"), 2),
        (OfflineError(["a"]), 2),
        (DownloadError("f", [("u", "HTTP 404")]), 1),
        (EngineError("x"), 1),
        (Interrupted("x"), 130),
        (KeyboardInterrupt(), 130),
        (OSError(28, "No space left on device", "/full"), 1),
        (RuntimeError("boom"), 1),
    ]
    for exc, code in cases:
        assert exit_code_for(exc) == code, exc
        assert report_error(exc) == code, exc
    err = capsys.readouterr().err
    assert "Error: unexpected RuntimeError: boom" in err and "LIPSYNC_TOOL_DEBUG=1" in err
    assert "Error: /full: No space left on device" in err
    assert "Traceback" not in err
    # An interruption is 130 whatever raised it (ours, Ctrl-C, or SIGTERM turned into Ctrl-C).
    assert exit_code_for(Interrupted("x")) == exit_code_for(KeyboardInterrupt()) == 130


def test_every_error_class_carries_its_category_and_exit_code():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, LipsyncError)]
    assert len(classes) > 10
    for cls in classes:
        assert cls.category in errors.CATEGORIES, cls
        assert cls.exit_code in (1, 2, 130), cls
        assert (cls.exit_code == 130) == (cls.category in ("interrupted", "cancelled")), cls
        assert (cls.category == "interrupted") == issubclass(cls, Interrupted), cls
    # The user's files and options are exit 2, and so is --offline with a file missing.
    for cls in (UsageError, InputError, OfflineError):
        assert cls.exit_code == 2, cls
    for cls in classes:
        if issubclass(cls, (UsageError, InputError)):
            # forbidden: a path outside a service's root (HTTP 403), still the user's to fix
            assert cls.category in ("input", "forbidden") and cls.exit_code == 2, cls


def test_logging_follows_the_current_stderr(capsys):
    setup_logging("INFO")
    logging.getLogger("lipsync_tool.test").info("first")
    assert "INFO: first" in capsys.readouterr().err
    logging.getLogger("lipsync_tool.test").warning("second")
    assert "WARNING: second" in capsys.readouterr().err


def test_doctor_reports_each_part_and_exits_1_when_something_is_missing(cli):
    r = cli("doctor")
    assert r.code == 1  # nothing is set up in the test cache
    for part in ("python", "ffmpeg", "git", "torch", "cache", "sadtalker", "wav2lip"):
        assert part in r.stdout, part
    assert "[ok] ffmpeg" in r.stdout and "lipsync-tool setup --engine wav2lip" in r.stdout
