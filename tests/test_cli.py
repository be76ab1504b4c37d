"""CLI plumbing: routing, option hand-off, the error table."""

from __future__ import annotations

import logging

from lipsync_tool import __version__
from lipsync_tool.cli import EXIT_CODES, _pipeline_kwargs, report_error, setup_logging
from lipsync_tool.errors import DownloadError, EngineError, FaceNotFoundError, Interrupted, OfflineError, RegistryFileError, UsageError


def test_version_and_help(cli):
    r = cli("--version")
    assert r.code == 0 and __version__ in r.stdout
    r = cli("--help")
    assert r.code == 0 and "run" in r.stdout and "doctor" in r.stdout


def test_false_engine_flags_reach_the_pipeline():
    kw = _pipeline_kwargs({"image": "a", "audio": "b", "output": "c", "engine": "sadtalker", "log_level": "INFO", "still": False, "pose_style": None, "overwrite": False})
    assert kw == {"still": False, "overwrite": False}


def test_no_still_gives_upstream_argv_without_still():
    from lipsync_tool.engines import get_engine, make_options
    from lipsync_tool.engines.base import Device, Job, Workspace
    from pathlib import Path

    st = get_engine("sadtalker")
    job = Job(Path("/t/inputs/face.png"), Path("/t/inputs/audio.wav"), False, 25, 256, Device("cpu"), "python")
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
        (RuntimeError("boom"), 1),
    ]
    for exc, code in cases:
        assert report_error(exc) == code, exc
    err = capsys.readouterr().err
    assert "Error: unexpected RuntimeError: boom" in err and "LIPSYNC_TOOL_DEBUG=1" in err
    assert "Traceback" not in err
    assert EXIT_CODES[0][1] == 130


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
