"""``lipsync-tool batch``: manifests, validation, resume, failures, scheduling.

Every run uses the fake engine (a real subprocess that writes a real video),
short audio, a small target height and x264's fastest preset.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_subprocess

FAST = ["--x264-preset", "ultrafast", "--target-height", "240", "--skip-face-check"]
FAST_KW = {"x264_preset": "ultrafast", "target_height": 240, "skip_face_check": True}


# -- helpers ----------------------------------------------------------------------------------


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def batch_report(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "batch_report.jsonl").read_text().splitlines()]


def trace_intervals(path: Path) -> list[tuple[float, float]]:
    """(start, end) of every finished engine run in a FAKE_ENGINE_TRACE file."""
    starts: dict[str, float] = {}
    spans = []
    for line in path.read_text().splitlines():
        kind, t, pid = line.split()
        if kind == "start":
            starts[pid] = float(t)
        else:
            spans.append((starts.pop(pid), float(t)))
    assert not starts, f"engine runs without an end: {starts}"
    return sorted(spans)


def engine_starts(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.startswith("start")) if path.exists() else 0


@pytest.fixture
def inputs(media):
    """A portrait and three distinct speech clips (so derived outputs differ)."""
    return {
        "face": media.portrait("face.jpg"),
        "a": media.audio("a.wav", seconds=1.0),
        "b": media.audio("b.wav", seconds=1.0),
        "c": media.audio("c.wav", seconds=1.0),
    }


@pytest.fixture
def trace(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "engine-trace.txt"
    monkeypatch.setenv("FAKE_ENGINE_TRACE", str(path))
    return path


# -- manifests: parsing and types ---------------------------------------------------------------


def test_csv_and_jsonl_manifests_give_the_same_typed_jobs(media, tmp_path):
    from lipsync_tool.batch import plan_batch

    face, speech = media.portrait(), media.audio(seconds=1.0)
    csv_path = write_csv(
        tmp_path / "jobs.csv",
        ["image", "audio", "output", "engine", "wav2lip_pads", "wav2lip_nosmooth", "expression_scale", "preprocess", "resolution", "still", "preset"],
        [
            [str(face), str(speech), "w1.mp4", "wav2lip", "0 10 0 0", "true", "", "", "", "", ""],
            [str(face), str(speech), "w2.mp4", "wav2lip", "0,20,0,5", "0", "", "", "", "", ""],
            [str(face), str(speech), "s1.mp4", "sadtalker", "", "", "1.2", "full", "512", "false", "expressive"],
        ],
    )
    jsonl_path = write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            {"image": str(face), "audio": str(speech), "output": "w1.mp4", "engine": "wav2lip", "wav2lip_pads": [0, 10, 0, 0], "wav2lip_nosmooth": True},
            {"image": str(face), "audio": str(speech), "output": "w2.mp4", "engine": "wav2lip", "wav2lip_pads": "0,20,0,5", "wav2lip_nosmooth": False},
            {"image": str(face), "audio": str(speech), "output": "s1.mp4", "engine": "sadtalker", "expression_scale": 1.2, "preprocess": "full", "resolution": 512, "still": False, "preset": "expressive"},
        ],
    )

    def described(manifest: Path):
        plan = plan_batch(manifest, tmp_path / "out", {"x264_preset": "ultrafast"})
        return [(j.line, j.engine, j.output.name, j.engine_options.model_dump(), j.run_options.model_dump(exclude={"report"})) for j in plan.jobs]

    from_csv, from_jsonl = described(csv_path), described(jsonl_path)
    assert [d[0] for d in from_csv] == [2, 3, 4]
    assert [d[0] for d in from_jsonl] == [1, 2, 3]
    assert [d[1:] for d in from_csv] == [d[1:] for d in from_jsonl]
    w1, w2, s1 = (d[3] for d in from_csv)
    assert w1["wav2lip_pads"] == (0, 10, 0, 0) and w1["wav2lip_nosmooth"] is True
    assert w2["wav2lip_pads"] == (0, 20, 0, 5) and w2["wav2lip_nosmooth"] is False
    assert s1["expression_scale"] == 1.2 and s1["preprocess"] == "full" and s1["still"] is False and s1["preset"] == "expressive"
    assert from_csv[2][3]["resolution"] == 512  # an option of SadTalker's now
    # The command line's defaults reach every row.
    assert all(d[4]["x264_preset"] == "ultrafast" for d in from_csv)


def test_coerce_turns_cells_into_option_values():
    from typing import Literal, Optional

    from lipsync_tool.batch import coerce

    assert coerce(tuple[int, int, int, int], "0 10 0 0") == ["0", "10", "0", "0"]
    assert coerce(Optional[tuple[int, int, int, int]], " 0, 10,0 ,0 ") == ["0", "10", "0", "0"]
    assert coerce(Literal[256, 512], "512") == 512
    assert coerce(Optional[Literal["crop", "full"]], "FULL") == "full"
    assert coerce(Literal[256, 512], "300") == "300"  # left for the model to reject
    assert coerce(bool, "true") == "true"  # pydantic reads true/false/1/0
    assert coerce(tuple[int, ...], [1, 2]) == [1, 2]  # JSON values pass through


def test_every_bad_row_is_reported_at_once_with_its_line(cli, fake_engine, media, tmp_path, trace):
    face, speech = media.portrait(), media.audio(seconds=1.0)
    noise = tmp_path / "noise.wav"
    noise.write_text("this is not audio\n")
    manifest = write_csv(
        tmp_path / "jobs.csv",
        ["image", "audio", "output", "engine", "fake_sleep", "fake_mode", "wav2lip_pads", "colour"],
        [
            [str(face), str(speech), "one.mp4", "", "", "", "", ""],  # line 2: fine
            [str(tmp_path / "missing.jpg"), str(speech), "two.mp4", "", "", "", "", ""],  # 3
            [str(face), str(noise), "three.mp4", "", "", "", "", ""],  # 4
            [str(face), str(speech), "four.mp4", "", "-1", "", "", ""],  # 5
            [str(face), str(speech), "five.mp4", "", "", "", "0 10 0 0", ""],  # 6
            [str(face), str(speech), "one.mp4", "", "", "", "", ""],  # 7: same output as line 2
            [str(face), str(speech), "seven.mp4", "nosuchengine", "", "", "", ""],  # 8
            [str(face), str(speech), "eight.mp4", "", "", "explode", "", ""],  # 9
            [str(face), str(speech), "nine.mp4", "", "", "", "", "blue"],  # 10
            [str(face), str(speech), "ten.avi", "", "", "", "", ""],  # 11
        ],
    )
    for extra in (["--validate-only"], []):
        result = cli("batch", manifest, "--out-dir", tmp_path / "out", "--engine", "fake", *FAST, *extra)
        assert result.code == 2, result.output
        text = result.stderr
        assert "9 of 10 rows are invalid" in text
        expected = [
            "line 3, column image: ",
            "line 4, column audio: ",
            "line 5, column fake_sleep: ",
            "line 6, column wav2lip_pads: belongs to the wav2lip engine",
            "line 7, column output: ",
            "line 8, column engine: unknown engine 'nosuchengine'",
            "line 9, column fake_mode: ",
            "line 10, column colour: ",
            "line 11, column output: ",
        ]
        for fragment in expected:
            assert fragment in text, f"{fragment!r} missing from:\n{text}"
        assert "  line 2," not in text
        assert "missing.jpg: no such file" in text
        assert "is also the output of line 2" in text
    # Nothing ran and nothing was written.
    assert not trace.exists()
    assert not (tmp_path / "out" / "one.mp4").exists()


def test_malformed_jsonl_lines_are_reported_with_their_numbers(cli, fake_engine, media, tmp_path):
    face, speech = media.portrait(), media.audio(seconds=1.0)
    path = tmp_path / "jobs.jsonl"
    path.write_text(
        json.dumps({"image": str(face), "audio": str(speech)}) + "\n"
        "\n"
        "{not json\n"
        "[1, 2]\n" + json.dumps({"image": str(face)}) + "\n"
    )
    result = cli("batch", path, "--out-dir", tmp_path / "out", "--engine", "fake", "--validate-only")
    assert result.code == 2
    assert "line 3: is not valid JSON" in result.stderr
    assert "line 4: must be a JSON object, not list" in result.stderr
    assert "line 5, column audio: is missing" in result.stderr
    assert "line 1" not in result.stderr


def test_validate_only_lists_the_plan_and_runs_nothing(cli, fake_engine, inputs, tmp_path, trace):
    manifest = write_csv(tmp_path / "jobs.csv", ["image", "audio"], [[str(inputs["face"]), str(inputs["a"])], [str(inputs["face"]), str(inputs["b"])]])
    result = cli("batch", manifest, "--out-dir", tmp_path / "out", "--engine", "fake", "--validate-only")
    assert result.code == 0, result.output
    assert "Manifest OK: 2 jobs (2 to run, 0 already done)" in result.stdout
    assert "face_a.mp4" in result.stdout and "face_b.mp4" in result.stdout
    assert not trace.exists()


# -- paths ----------------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_manifest_folder(cli, fake_engine, inputs, tmp_path, monkeypatch):
    from lipsync_tool.media import probe

    project = tmp_path / "project"
    (project / "in").mkdir(parents=True)
    for name in ("face", "a", "b"):
        os.link(inputs[name], project / "in" / inputs[name].name)
    manifest = write_csv(project / "jobs.csv", ["image", "audio", "output"], [["in/face.jpg", "in/a.wav", "sub/first.mp4"], ["./in/face.jpg", "in/b.wav", ""]])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = cli("batch", "../project/jobs.csv", "--out-dir", "results", "--engine", "fake", *FAST)
    assert result.code == 0, result.output
    out = elsewhere / "results"
    first, second = out / "sub" / "first.mp4", out / "face_b.mp4"  # the output column is relative to --out-dir
    assert first.is_file() and second.is_file()
    assert probe(first).video.height == 240
    rows = batch_report(out)
    assert [r["image"] for r in rows] == [str(project / "in" / "face.jpg")] * 2
    assert [r["audio"] for r in rows] == [str(project / "in" / "a.wav"), str(project / "in" / "b.wav")]
    assert json.loads((out / "sub" / "first.report.json").read_text())["status"] == "ok"
    assert manifest.exists()


# -- resume ---------------------------------------------------------------------------------------


def _wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the batch ended (exit {proc.returncode}) before the moment to kill it: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def test_a_killed_batch_resumes_where_it_stopped(plugin_env, inputs, tmp_path):
    manifest = write_csv(tmp_path / "jobs.csv", ["image", "audio"], [[str(inputs["face"]), str(inputs[k])] for k in ("a", "b", "c")])
    out = tmp_path / "out"
    args = ["batch", manifest, "--out-dir", out, "--engine", "fake", "--fake-sleep", "1.5", *FAST]
    first_trace = tmp_path / "trace-1.txt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lipsync_tool", *map(str, args)],
        env={**plugin_env, "FAKE_ENGINE_TRACE": str(first_trace)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        # Job 2 is in the engine once the trace has its start line.
        _wait_for(lambda: engine_starts(first_trace) == 2, timeout=120, proc=proc)
        engine_pid = int(first_trace.read_text().splitlines()[-1].split()[2])
        workspace = Path(os.readlink(f"/proc/{engine_pid}/cwd")).parent  # job 2's temp dir, left behind by SIGKILL
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The engine of job 2 is tied to the batch's life: it dies with it.
    deadline = time.monotonic() + 10
    while Path(f"/proc/{engine_pid}").exists() and Path(f"/proc/{engine_pid}/stat").read_text().split()[2] != "Z" and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        assert not Path(f"/proc/{engine_pid}").exists() or Path(f"/proc/{engine_pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        pass
    assert proc.returncode == -signal.SIGKILL
    assert (out / "face_a.mp4").is_file() and not (out / "face_b.mp4").exists() and not (out / "face_c.mp4").exists()
    assert [r["status"] for r in batch_report(out)] == ["ok", "pending", "pending"]

    second_trace = tmp_path / "trace-2.txt"
    result = cli_subprocess(*args, env={**plugin_env, "FAKE_ENGINE_TRACE": str(second_trace)})
    assert result.code == 0, result.output
    rows = batch_report(out)
    assert [(r["name"], r["status"]) for r in rows] == [("face_a.mp4", "skipped"), ("face_b.mp4", "ok"), ("face_c.mp4", "ok")]
    assert engine_starts(second_trace) == 2  # job 1 did not run again
    assert all((out / n).is_file() for n in ("face_a.mp4", "face_b.mp4", "face_c.mp4"))
    assert "1 skipped" in result.stdout
    if workspace.name.startswith("lipsync-"):
        import shutil

        shutil.rmtree(workspace, ignore_errors=True)


def test_finished_jobs_are_skipped_changed_ones_rerun_and_force_reruns_all(cli, fake_engine, inputs, media, tmp_path, trace):
    out = tmp_path / "out"
    header = ["image", "audio", "crf"]
    rows = [[str(inputs["face"]), str(inputs["a"]), "20"], [str(inputs["face"]), str(inputs["b"]), "20"]]
    manifest = write_csv(tmp_path / "jobs.csv", header, rows)
    base = ["batch", manifest, "--out-dir", out, "--engine", "fake", *FAST]

    assert cli(*base).code == 0
    assert engine_starts(trace) == 2
    mtime = (out / "face_a.mp4").stat().st_mtime_ns

    again = cli(*base)
    assert again.code == 0, again.output
    assert engine_starts(trace) == 2
    assert [r["status"] for r in batch_report(out)] == ["skipped", "skipped"]
    assert (out / "face_a.mp4").stat().st_mtime_ns == mtime

    # Volatile options (keep nothing, the timeout) do not make a job stale; result options do.
    rows[1][2] = "23"
    write_csv(manifest, header, rows)
    changed = cli(*base, "--timeout", "500")
    assert changed.code == 0, changed.output
    assert engine_starts(trace) == 3
    assert [r["status"] for r in batch_report(out)] == ["skipped", "ok"]
    assert json.loads((out / "face_b.report.json").read_text())["options"]["crf"] == 23

    # A changed input reruns its job.
    inputs["b"].write_bytes(media.audio("longer.wav", seconds=1.2).read_bytes())
    assert cli(*base).code == 0
    assert [r["status"] for r in batch_report(out)] == ["skipped", "ok"]

    forced = cli(*base, "--force")
    assert forced.code == 0, forced.output
    assert engine_starts(trace) == 6
    assert [r["status"] for r in batch_report(out)] == ["ok", "ok"]


def test_an_output_the_batch_did_not_write_is_not_replaced(cli, fake_engine, inputs, tmp_path, trace):
    out = tmp_path / "out"
    out.mkdir()
    (out / "face_a.mp4").write_bytes(b"someone else's video")
    manifest = write_csv(tmp_path / "jobs.csv", ["image", "audio"], [[str(inputs["face"]), str(inputs["a"])]])
    refused = cli("batch", manifest, "--out-dir", out, "--engine", "fake", *FAST)
    assert refused.code == 2
    assert "line 2, column output:" in refused.stderr and "--overwrite" in refused.stderr
    assert (out / "face_a.mp4").read_bytes() == b"someone else's video"
    assert cli("batch", manifest, "--out-dir", out, "--engine", "fake", "--overwrite", *FAST).code == 0
    assert (out / "face_a.mp4").stat().st_size > 1000


def _expected(**over):
    base = {
        "engine": "fake",
        "image_sha256": "i" * 64,
        "audio_sha256": "a" * 64,
        "seed": None,
        "options": {"crf": 18, "fps": 25.0},
        "engine_options": {"fake_mode": "ok"},
        "commit": "c" * 40,
    }
    base.update(over)
    return base


def _report(**over):
    report = {
        "status": "ok",
        "engine": {"name": "fake", "commit": "c" * 40},
        "inputs": {"image_sha256": "i" * 64, "audio_sha256": "a" * 64},
        "options": {"crf": 18, "fps": 25.0, "seed": 1234, "timeout": 99, "keep_temp": True, "engine_options_resolved": {"fake_mode": "ok"}},
    }
    report.update(over)
    return report


@pytest.mark.parametrize(
    ("expected", "report", "exists", "force", "overwrite", "action", "reason"),
    [
        (_expected(), _report(), True, False, False, "skip", "done"),
        (_expected(), _report(), True, True, False, "run", "forced"),
        (_expected(), None, False, False, False, "run", "new"),
        (_expected(), _report(status="failed"), False, False, False, "run", "not finished"),
        (_expected(), _report(status="failed"), True, False, False, "run", "ended failed"),
        (_expected(), None, True, False, False, "blocked", "--overwrite"),
        (_expected(), None, True, False, True, "run", "replacing"),
        (_expected(options={"crf": 20, "fps": 25.0}), _report(), True, False, False, "run", "crf 18 → 20"),
        (_expected(engine_options={"fake_mode": "crash"}), _report(), True, False, False, "run", "fake_mode"),
        (_expected(audio_sha256="b" * 64), _report(), True, False, False, "run", "audio changed"),
        (_expected(commit="d" * 40), _report(), True, False, False, "run", "engine commit"),
        (_expected(seed=1234), _report(), True, False, False, "skip", "done"),
        (_expected(seed=7), _report(), True, False, False, "run", "seed 1234 → 7"),
    ],
)
def test_resume_decision(expected, report, exists, force, overwrite, action, reason):
    from lipsync_tool.batch import resume_decision

    d = resume_decision(expected, output_exists=exists, report=report, force=force, overwrite=overwrite)
    assert d.action == action
    assert reason in d.reason
    # Replacing is allowed for an existing output being rerun, and for an unfinished job's leftovers.
    assert d.overwrite == (action == "run" and (exists or report is not None))


# -- failures, summary, exit codes --------------------------------------------------------------


def _three_jobs(tmp_path, inputs, modes=("ok", "crash", "ok")) -> Path:
    return write_csv(tmp_path / "jobs.csv", ["image", "audio", "fake_mode"], [[str(inputs["face"]), str(inputs[k]), m] for k, m in zip("abc", modes)])


@pytest.fixture
def kept_temp_dirs():
    """Temp dirs a failed engine run keeps for debugging, removed after the test."""
    dirs: list[str] = []
    yield dirs
    import shutil

    for d in dirs:
        if d and Path(d).name.startswith("lipsync-"):
            shutil.rmtree(d, ignore_errors=True)


def test_the_batch_goes_on_after_a_failure_and_exits_1(cli, fake_engine, inputs, tmp_path, trace, kept_temp_dirs):
    out = tmp_path / "out"
    result = cli("batch", _three_jobs(tmp_path, inputs), "--out-dir", out, "--engine", "fake", *FAST)
    kept_temp_dirs += [(r["error"] or {}).get("temp_dir") for r in batch_report(out)]
    assert result.code == 1, result.output
    assert engine_starts(trace) == 3
    assert (out / "face_a.mp4").is_file() and (out / "face_c.mp4").is_file() and not (out / "face_b.mp4").exists()
    rows = batch_report(out)
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    failed = rows[1]
    assert failed["error"]["type"] == "EngineError" and "Fake failed (RuntimeError: the fake engine crashed on purpose)" in failed["error"]["message"]
    assert Path(failed["error"]["temp_dir"], "engine.log").is_file()  # kept for debugging, as in single runs
    assert failed["line"] == 3 and "engine" in failed["timings"] and failed["output_info"] is None
    ok = rows[0]
    assert ok["error"] is None and set(ok["timings"]) >= {"validate", "engine", "upscale", "publish"}
    assert ok["output_info"]["height"] == 240 and ok["output_info"]["audio_codec"] == "aac" and abs(ok["output_info"]["duration"] - 1.0) < 0.05
    assert ok["wall_s"] > 0
    # The summary table: one line per job, then the counts.
    lines = result.stdout.splitlines()
    assert any(line.split()[:5] == ["1", "2", "face_a.mp4", "fake", "ok"] for line in lines)
    assert any(line.split()[:5] == ["2", "3", "face_b.mp4", "fake", "failed"] and "EngineError" in line for line in lines)
    assert "3 jobs: 2 ok, 1 failed, 0 skipped" in result.stdout
    assert f"Report: {out / 'batch_report.jsonl'}" in result.stdout
    assert "Job 2 (face_b.mp4, line 3) failed" in result.stderr


def test_fail_fast_stops_at_the_first_failure(cli, fake_engine, inputs, tmp_path, trace, kept_temp_dirs):
    out = tmp_path / "out"
    result = cli("batch", _three_jobs(tmp_path, inputs), "--out-dir", out, "--engine", "fake", "--fail-fast", *FAST)
    kept_temp_dirs += [(r["error"] or {}).get("temp_dir") for r in batch_report(out)]
    assert result.code == 1, result.output
    assert engine_starts(trace) == 2
    assert [r["status"] for r in batch_report(out)] == ["ok", "failed", "not_run"]
    assert not (out / "face_c.mp4").exists()
    assert "3 jobs: 1 ok, 1 failed, 0 skipped, 1 not run" in result.stdout


def test_all_jobs_ok_exits_0_with_reports_beside_the_outputs(cli, fake_engine, inputs, tmp_path):
    import shutil

    out = tmp_path / "out"
    result = cli("batch", _three_jobs(tmp_path, inputs, ("ok", "ok", "ok")), "--out-dir", out, "--engine", "fake", "--keep-temp", *FAST)
    try:
        assert result.code == 0, result.output
        assert "3 jobs: 3 ok, 0 failed, 0 skipped" in result.stdout
        for name in ("face_a", "face_b", "face_c"):
            report = json.loads((out / f"{name}.report.json").read_text())
            assert report["status"] == "ok" and report["output"]["path"] == str(out / f"{name}.mp4")
            assert report["options"]["keep_temp"] is True and Path(report["temp_dir"], "engine.log").is_file()
    finally:
        for name in ("face_a", "face_b", "face_c"):
            p = out / f"{name}.report.json"
            if p.exists() and (temp := json.loads(p.read_text()).get("temp_dir")):
                shutil.rmtree(temp, ignore_errors=True)


# -- efficiency ---------------------------------------------------------------------------------


def test_resources_are_set_up_once_per_engine(fake_engine, inputs, tmp_path, monkeypatch):
    from lipsync_tool.batch import plan_batch, run_batch
    from lipsync_tool.resources import managers

    made = []
    real = managers.resources_for

    def counting(engine, *args, **kwargs):
        res = real(engine, *args, **kwargs)
        made.append(res)
        return res

    monkeypatch.setattr(managers, "resources_for", counting)
    manifest = _three_jobs(tmp_path, inputs, ("ok", "ok", "ok"))
    plan = plan_batch(manifest, tmp_path / "out", FAST_KW, engine="fake")
    result = run_batch(plan)
    assert [r.status for r in result.results] == ["ok", "ok", "ok"]
    assert len(made) == 1
    assert result.setup_s.get("fake", 0) > 0


def test_with_two_jobs_the_engine_never_runs_twice_at_once(fake_engine, inputs, media, tmp_path, trace):
    """Other jobs' CPU stages overlap the engine; engine runs never overlap."""
    from lipsync_tool.batch import BatchObserver, plan_batch, run_batch
    from lipsync_tool.pipeline import Observer

    events: list[tuple[float, int, str]] = []

    class Stages(Observer):
        def __init__(self, index):
            self.index = index

        def stage(self, name, detail=""):
            events.append((time.time(), self.index, name))

    class Recorder(BatchObserver):
        def job_observer(self, job):
            return Stages(job.index)

    extra = media.audio("d.wav", seconds=1.0)
    rows = [[str(inputs["face"]), str(a)] for a in (inputs["a"], inputs["b"], inputs["c"], extra)]
    manifest = write_csv(tmp_path / "jobs.csv", ["image", "audio"], rows)
    plan = plan_batch(manifest, tmp_path / "out", {**FAST_KW, "fake_sleep": 1.0}, engine="fake", jobs=2)
    result = run_batch(plan, jobs=2, observer=Recorder())
    assert [r.status for r in result.results] == ["ok"] * 4

    spans = trace_intervals(trace)
    assert len(spans) == 4
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"engine runs overlap: {spans}"
    # A job is in the engine from its "engine" stage until its "upscale" stage.
    at = {(i, s): t for t, i, s in events}
    busy = [(i, at[(i, "engine")], at[(i, "upscale")]) for i in range(1, 5)]
    cpu = [(t, i, s) for t, i, s in events if s in ("validate", "upscale", "publish")]
    overlapping = [(i, s, k) for t, i, s in cpu for k, a, b in busy if k != i and a < t < b]
    assert overlapping, f"no other job's CPU stage ran while an engine ran; --jobs 2 did nothing: {sorted(events)}"



def test_hls_folders_are_per_row_relative_to_the_out_dir_and_unique(fake_engine, inputs, tmp_path):
    from lipsync_tool.batch import ManifestError, plan_batch
    from lipsync_tool.errors import UsageError

    face, a, b = (str(inputs[k]) for k in ("face", "a", "b"))
    out = tmp_path / "out"
    good = write_csv(tmp_path / "good.csv", ["image", "audio", "hls"], [[face, a, "streams/a"], [face, b, "streams/b"]])
    plan = plan_batch(good, out, engine="fake")
    assert [j.options["hls"] for j in plan.jobs] == [out / "streams" / "a", out / "streams" / "b"]
    clash = write_csv(tmp_path / "clash.csv", ["image", "audio", "hls"], [[face, a, "streams/x"], [face, b, "streams/x"]])
    with pytest.raises(ManifestError) as info:
        plan_batch(clash, out, engine="fake")
    assert [str(p) for p in info.value.problems] == [f"line 3, column hls: {out / 'streams' / 'x'} is also the hls folder of line 2"]
    with pytest.raises(UsageError, match="same folder for every job"):
        plan_batch(good, out, {"hls": tmp_path / "shared"}, engine="fake")


def test_an_engine_that_cannot_be_set_up_fails_its_jobs_without_running_them(cli, fake_engine, inputs, tmp_path, trace, monkeypatch):
    monkeypatch.setenv("FAKE_ENGINE_CKPT_URLS", (tmp_path / "gone.ckpt").as_uri())
    out = tmp_path / "out"
    result = cli("batch", _three_jobs(tmp_path, inputs, ("ok", "ok", "ok")), "--out-dir", out, "--engine", "fake", *FAST)
    assert result.code == 1, result.output
    assert not trace.exists()
    rows = batch_report(out)
    assert [(r["status"], r["note"]) for r in rows] == [("failed", "engine setup failed")] * 3
    assert rows[0]["error"]["type"] == "DownloadError"
    fast = cli("batch", _three_jobs(tmp_path, inputs, ("ok", "ok", "ok")), "--out-dir", out, "--engine", "fake", "--fail-fast", *FAST)
    assert fast.code == 1
    assert [r["status"] for r in batch_report(out)] == ["failed"] * 3
