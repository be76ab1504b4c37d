"""The engine-runner seam and the failure record (issue 11, items 4 and 6)."""

from __future__ import annotations

import pytest


class RecordingRunner:
    """A runner that delegates to the subprocess one and records each call."""

    def __init__(self):
        from lipsync_tool.engines.runner import SubprocessRunner

        self.inner = SubprocessRunner()
        self.calls: list[list[str]] = []

    def run(self, engine, command, job, ws, **kw):
        self.calls.append(list(command.argv))
        return self.inner.run(engine, command, job, ws, **kw)


def test_the_pipeline_runs_the_engine_through_the_runner_it_is_given(fake_engine, media, tmp_path):
    from lipsync_tool import LipSyncPipeline
    from lipsync_tool.engines.base import EngineRunner

    runner = RecordingRunner()
    EngineRunner.register(RecordingRunner)
    out = tmp_path / "out.mp4"
    result = LipSyncPipeline(engine="fake", no_upscale=True, runner=runner).run(media.portrait(), media.audio(seconds=0.8), out)
    assert result.output == out and out.is_file()
    assert len(runner.calls) == 1 and runner.calls[0] == result.report["commands"]["engine"]


def test_a_failure_is_recorded_and_the_raised_error_is_left_as_it_was(fake_engine, media, tmp_path):
    from lipsync_tool import LipSyncPipeline
    from lipsync_tool.errors import EngineError

    pipeline = LipSyncPipeline(engine="fake", no_upscale=True, fake_mode="crash")
    with pytest.raises(EngineError) as caught:
        pipeline.run(media.portrait(), media.audio(seconds=0.8), tmp_path / "out.mp4")
    failure = pipeline.last_failure
    assert failure is not None and failure.error is caught.value
    assert failure.report["status"] == "failed" and failure.report["error"]["type"] == "EngineError"
    assert failure.temp_dir is not None and (failure.temp_dir / "engine.log").is_file()  # kept: the engine had run
    assert not hasattr(caught.value, "temp_dir") and not hasattr(caught.value, "report")
    assert not (tmp_path / "out.mp4").exists()


def test_the_subprocess_runner_writes_the_command_files_first(tmp_path):
    import sys

    from lipsync_tool.engines.base import Command, Workspace
    from lipsync_tool.engines.runner import SubprocessRunner

    class Stub:
        display_name = "Stub"

        def translate_error(self, text, returncode, ws):
            return None

        def find_output(self, ws, text):
            return ws.root / "out.txt"

    ws = Workspace(tmp_path)
    code = "import pathlib; pathlib.Path('out.txt').write_text(open('cfg/job.yaml').read().upper())"
    command = Command([sys.executable, "-c", code], cwd=tmp_path, files={"cfg/job.yaml": "size: 256\n"})
    out = SubprocessRunner().run(Stub(), command, None, ws, env={}, timeout=60, log_path=tmp_path / "engine.log")
    assert out.read_text() == "SIZE: 256\n"
