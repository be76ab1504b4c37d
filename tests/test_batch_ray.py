"""``batch --executor ray``: a local Ray with 2 slots of a custom resource
standing in for GPUs, the fake engine as a plug-in, the CLI as a subprocess."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from test_batch import FAST, batch_report, trace_intervals, write_csv

from conftest import cli_subprocess
from lipsync_tool.media import probe

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def ray_env(plugin_env, tmp_path) -> dict[str, str]:
    env = dict(plugin_env)
    env.update({"LIPSYNC_TOOL_RAY_RESOURCE": "lipsync_slot", "LIPSYNC_TOOL_RAY_SLOTS": "2", "RAY_USAGE_STATS_ENABLED": "0", "TMPDIR": str(tmp_path)})
    env["RAY_TMPDIR"] = "/tmp"  # Ray's socket paths must stay short
    return env


@pytest.fixture
def manifest(media, tmp_path) -> Path:
    face = media.portrait()
    rows = [[str(face), str(media.audio(f"a{i}.wav", seconds=0.6 + 0.2 * i)), f"clip{i}.mp4"] for i in range(4)]
    return write_csv(tmp_path / "jobs.csv", ["image", "audio", "output"], rows)


def comparable(report: dict) -> dict:
    """A job report without what differs from one run to another (times, temp paths, pids, seeds)."""
    keep = {"engine": {k: report["engine"].get(k) for k in ("name", "commit", "checkpoints", "runner")}, "status": report["status"]}
    keep["inputs"] = {k: report["inputs"].get(k) for k in ("image", "audio", "image_sha256", "audio_sha256")}
    keep["output"] = {k: v for k, v in report["output"].items() if k != "media"} | {"media": {k: report["output"]["media"].get(k) for k in ("path", "duration")}}
    return keep


def test_ray_executor_matches_the_local_one(ray_env, manifest, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    r1 = cli_subprocess("batch", manifest, "--out-dir", local, "--engine", "fake", *FAST, env=ray_env)
    assert r1.code == 0, r1.output
    r2 = cli_subprocess("batch", manifest, "--out-dir", remote, "--engine", "fake", *FAST, "--executor", "ray", env=ray_env)
    assert r2.code == 0, r2.output
    rows1, rows2 = batch_report(local), batch_report(remote)
    assert [r["status"] for r in rows2] == ["ok"] * 4 == [r["status"] for r in rows1]
    for a, b in zip(rows1, rows2):
        assert Path(b["output"]).parent == remote and Path(a["output"]).name == Path(b["output"]).name
        assert {k: v for k, v in a["output_info"].items() if k not in ("path", "size_bytes")} == {k: v for k, v in b["output_info"].items() if k not in ("path", "size_bytes")}
        ra, rb = json.loads(Path(a["report"]).read_text()), json.loads(Path(b["report"]).read_text())
        ca, cb = comparable(ra), comparable(rb)
        ca["output"]["path"] = ca["output"]["media"]["path"] = Path(ca["output"]["path"]).name
        cb["output"]["path"] = cb["output"]["media"]["path"] = Path(cb["output"]["path"]).name
        assert ca == cb
        assert rb["executor"] == {"name": "ray"}
        assert probe(Path(b["output"])).video.height == 240
    # Resume: a second run skips every job.
    r3 = cli_subprocess("batch", manifest, "--out-dir", remote, "--engine", "fake", *FAST, "--executor", "ray", env=ray_env)
    assert r3.code == 0 and [r["status"] for r in batch_report(remote)] == ["skipped"] * 4, r3.output


def ray_actor_pids() -> list[int]:
    """The engine actors' processes (Ray titles them ``ray::EngineActor…``)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::EngineActor"):
                pids.append(int(entry))
    return pids


def test_a_killed_actor_does_not_lose_its_job(ray_env, manifest, tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    argv = [sys.executable, "-m", "lipsync_tool", "batch", str(manifest), "--out-dir", str(out), "--engine", "fake", *FAST, "--executor", "ray", "--fake-sleep", "3"]
    proc = subprocess.Popen(argv, env=ray_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = []

    def kill_one() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            busy = [p for p in ray_actor_pids() if b"run" in Path(f"/proc/{p}/cmdline").read_bytes()]
            if busy:
                os.kill(busy[0], signal.SIGKILL)
                killed.append(busy[0])
                return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one)
    killer.start()
    text, _ = proc.communicate(timeout=500)
    killer.join()
    assert killed, "no busy actor was found to kill"
    assert proc.returncode == 0, text
    assert [r["status"] for r in batch_report(out)] == ["ok"] * 4
    assert "its Ray actor died" in text


def test_a_bad_row_fails_alone_with_its_line(ray_env, media, tmp_path):
    face = media.portrait()
    rows = [[str(face), str(media.audio(f"b{i}.wav", seconds=0.6)), f"b{i}.mp4", "noface" if i == 1 else "ok"] for i in range(3)]
    manifest = write_csv(tmp_path / "jobs.csv", ["image", "audio", "output", "fake_mode"], rows)
    out = tmp_path / "out"
    result = cli_subprocess("batch", manifest, "--out-dir", out, "--engine", "fake", *FAST, "--executor", "ray", env=ray_env)
    assert result.code == 1, result.output
    rows = batch_report(out)
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert rows[1]["line"] == 3 and rows[1]["error"]["type"] == "FaceNotFoundError" and "no face" in rows[1]["error"]["message"]
    assert not (out / "b1.mp4").exists() and (out / "b0.mp4").is_file() and (out / "b2.mp4").is_file()
    assert "its Ray actor died" not in result.output  # recorded once, never retried


def test_ctrl_c_publishes_nothing_partial_and_resume_runs_only_the_rest(ray_env, manifest, tmp_path):
    import signal
    import subprocess
    import sys

    out = tmp_path / "out"
    argv = [sys.executable, "-m", "lipsync_tool", "batch", str(manifest), "--out-dir", str(out), "--engine", "fake", *FAST, "--executor", "ray", "--fake-sleep", "2"]
    proc = subprocess.Popen(argv, env=ray_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        report = out / "batch_report.jsonl"
        if report.exists() and any(r["status"] == "ok" for r in batch_report(out)):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, text
    done = [r for r in batch_report(out) if r["status"] == "ok"]
    assert 1 <= len(done) < 4
    assert sorted(p.name for p in out.glob("*.mp4")) == sorted(Path(r["output"]).name for r in done)
    assert not list(out.glob(".*partial*"))
    assert not ray_actor_pids()
    again = cli_subprocess(*argv[3:], env=ray_env)  # the same command
    assert again.code == 0, again.output
    statuses = [r["status"] for r in batch_report(out)]
    assert statuses.count("skipped") == len(done) and statuses.count("ok") == 4 - len(done)


@pytest.mark.parametrize("runner", ["worker", "subprocess"])
def test_an_actor_renders_one_job_at_a_time(ray_env, manifest, tmp_path, runner):
    """An actor holds two jobs (one stages or upscales while the other renders), but its GPU renders one at a time."""
    trace = tmp_path / "trace.txt"
    env = {**ray_env, "LIPSYNC_TOOL_RAY_SLOTS": "1", "FAKE_ENGINE_TRACE": str(trace)}
    out = tmp_path / "out"
    result = cli_subprocess("batch", manifest, "--out-dir", out, "--engine", "fake", *FAST, "--executor", "ray", "--runner", runner, "--fake-sleep", "0.5", env=env)
    assert result.code == 0, result.output
    spans = trace_intervals(trace)
    assert len(spans) == 4
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), spans  # one GPU: renders take turns
    assert [r["status"] for r in batch_report(out)] == ["ok"] * 4
