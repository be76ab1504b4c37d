"""``lipsync-tool serve`` as a real uvicorn process on a loopback port, driven
with httpx: the jobs API, OpenClone's call, load, restart, cancel, expiry.
(Security is in test_serve_security.py, the web page in test_serve_browser.py.)"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serve_harness import Server, make_server

from lipsync_tool.media import probe

pytestmark = pytest.mark.timeout(600)


def put_inputs(root: Path, media, *, seconds: float = 1.0, name: str = "speech.wav") -> None:
    shutil.copy(media.portrait(), root / "face.jpg")
    shutil.copy(media.audio(name, seconds=seconds), root / name)


def descendants(pid: int) -> set[int]:
    """Every live process below *pid* (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def wait_for(predicate, timeout: float = 60, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# -- the jobs API ------------------------------------------------------------------------------


def test_json_job_end_to_end(server: Server, media):
    put_inputs(server.root, media)
    with server.client() as c:
        r = c.post("/v1/jobs", json={"image": "face.jpg", "audio": "speech.wav", "output": "out/a.mp4", "hls": "out/a-hls", "hls_segment_seconds": 1})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert r.headers["location"] == f"/v1/jobs/{job_id}" and r.json()["deduplicated"] is False
        job = server.wait_state(job_id)
        assert job["state"] == "done", job
        assert job["progress"] == 1.0 and job["result"]["output"] == "out/a.mp4" and job["result"]["hls"] == "out/a-hls/index.m3u8"
        assert job["result"]["report"]["engine"]["runner"] == "worker"
        video = c.get(f"/v1/jobs/{job_id}/video")
        assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
        assert video.content == (server.root / "out" / "a.mp4").read_bytes()
        part = c.get(f"/v1/jobs/{job_id}/video", headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and len(part.content) == 100
        playlist = c.get(f"/v1/jobs/{job_id}/hls/index.m3u8")
        assert playlist.status_code == 200 and "#EXT-X-ENDLIST" in playlist.text and playlist.headers["cache-control"] == "no-cache"
        segment = next(line for line in playlist.text.splitlines() if line.endswith(".ts"))
        ts = c.get(f"/v1/jobs/{job_id}/hls/{segment}")
        assert ts.status_code == 200 and ts.headers["content-type"] == "video/mp2t" and len(ts.content) > 1000
        listed = c.get("/v1/jobs").json()["jobs"]
        assert [j["id"] for j in listed] == [job_id]
        health = c.get("/healthz").json()
        assert health["status"] == "ok" and health["jobs"]["done"] == 1
        engines = c.get("/v1/engines").json()
        assert engines["default"] == "fake" and {"fake", "wav2lip", "sadtalker"} <= {e["name"] for e in engines["engines"]}
        sad = next(e for e in engines["engines"] if e["name"] == "sadtalker")
        assert "expressive" in sad["presets"] and any(o["name"] == "still" for o in sad["options"])
        assert c.get("/docs").status_code == 200
        assert {"/generate-deepfake", "/v1/jobs", "/v1/jobs/{job_id}"} <= set(c.get("/openapi.json").json()["paths"])
    info = probe(server.root / "out" / "a.mp4")
    assert info.video.height == 1080 and info.audio is not None


def test_multipart_upload_and_sample(server: Server, media):
    audio = media.audio(seconds=0.8)
    with server.client() as c:
        with open(media.portrait(), "rb") as img, open(audio, "rb") as aud:
            r = c.post("/v1/jobs", files={"image": ("me.jpg", img, "image/jpeg"), "audio": ("me.wav", aud, "audio/wav")}, data={"hls": "true"})
        assert r.status_code == 202, r.text
        job = server.wait_state(r.json()["id"])
        assert job["state"] == "done", job
        own = server.root / "jobs" / job["id"]
        assert (own / "upload-image.jpg").read_bytes() == media.portrait().read_bytes()
        assert (own / "video.mp4").is_file() and (own / "hls" / "index.m3u8").is_file()
        assert c.get(job["links"]["video"]).status_code == 200
        r = c.post("/v1/jobs", files={"sample": (None, "true")})
        assert r.status_code == 202, r.text
        assert server.wait_state(r.json()["id"])["state"] == "done"


def test_failed_run_answers_its_error(server: Server, media):
    put_inputs(server.root, media)
    with server.client() as c:
        r = c.post("/v1/jobs", json={"image": "face.jpg", "audio": "speech.wav", "fake_mode": "crash"})
        job = server.wait_state(r.json()["id"])
        assert job["state"] == "failed" and job["error"]["code"] == "engine" and "crashed on purpose" in job["error"]["message"]
        assert c.get(f"/v1/jobs/{job['id']}/video").status_code == 409
        r = c.post("/generate-deepfake", json={"imagePath": "/face.jpg", "audioPath": "/speech.wav", "mp4Path": "/out/crash.mp4", "fake_mode": "crash"})
        assert r.status_code == 500 and r.json()["code"] == "engine" and r.json()["jobId"]
        assert set(r.json()) >= {"code", "message", "hint"}
        r = c.post("/generate-deepfake", json={"imagePath": "/missing.jpg", "audioPath": "/speech.wav", "mp4Path": "/out/x.mp4"})
        assert r.status_code == 400 and "no such file" in r.json()["message"] and "missing.jpg" in r.json()["message"]
        assert not (server.root / "out" / "crash.mp4").exists()


# -- OpenClone's call --------------------------------------------------------------------------


def test_generate_deepfake_returns_when_the_mp4_is_published(server: Server, media):
    put_inputs(server.root, media)
    (server.root / "out").mkdir()
    body = {"imagePath": "/face.jpg", "audioPath": "/speech.wav", "mp4Path": "/out/oc.mp4", "removeAudioFromMp4": True, "cpu": True, "engine": "fake"}
    with server.client() as c:
        r = c.post("/generate-deepfake", json=body)
    assert r.status_code == 200, r.text
    out = server.root / "out" / "oc.mp4"
    assert out.is_file() and probe(out).audio is None  # removeAudioFromMp4
    data = r.json()
    assert data["jobId"] and data["mp4Path"] == "/out/oc.mp4" and data["report"]["device"]["device"] == "cpu"


def test_generate_deepfake_hls_only_returns_at_the_first_segment(server: Server, media):
    put_inputs(server.root, media, seconds=4.0)
    body = {"imagePath": "/face.jpg", "audioPath": "/speech.wav", "m3u8Path": "/live/a/index.m3u8", "tsSegmentLength": 1, "fake_frame_delay": 0.4}
    with server.client() as c:
        r = c.post("/generate-deepfake", json=body)
        assert r.status_code == 200, r.text
        playlist = (server.root / "live" / "a" / "index.m3u8").read_text()
        assert ".ts" in playlist and "#EXT-X-ENDLIST" not in playlist  # it plays while the job goes on
        assert r.json()["state"] == "running"
        job = server.wait_state(r.json()["jobId"])
    assert job["state"] == "done" and "#EXT-X-ENDLIST" in (server.root / "live" / "a" / "index.m3u8").read_text()


# -- load, dedupe, a full queue -------------------------------------------------------------------


def test_load_50_pollers_and_10_submissions(server: Server, media):
    put_inputs(server.root, media, seconds=0.4)
    stop = threading.Event()
    ids: list[str] = []
    errors: list[str] = []
    polls = [0]

    def poll() -> None:
        with server.client() as c:
            while not stop.is_set():
                for job_id in list(ids) or [None]:
                    r = c.get(f"/v1/jobs/{job_id}") if job_id else c.get("/healthz")
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text}")
                    polls[0] += 1

    def submit(i: int) -> str:
        with server.client() as c:
            r = c.post("/v1/jobs", json={"image": "face.jpg", "audio": "speech.wav", "output": f"load/{i}.mp4", "no_upscale": True})
            assert r.status_code == 202, r.text
            return r.json()["id"]

    pollers = [threading.Thread(target=poll, daemon=True) for _ in range(50)]
    for t in pollers:
        t.start()
    try:
        with ThreadPoolExecutor(10) as pool:
            ids.extend(pool.map(submit, range(10)))
        ends = [server.wait_state(job_id, timeout=300) for job_id in ids]
    finally:
        stop.set()
        for t in pollers:
            t.join(timeout=30)
    assert not errors, errors[:5]
    assert len(set(ids)) == 10 and [e["state"] for e in ends] == ["done"] * 10
    assert sorted(p.name for p in (server.root / "load").iterdir()) == sorted(f"{i}.mp4" for i in range(10))
    with server.client() as c:
        counts = c.get("/healthz").json()["jobs"]
    assert counts["done"] == 10 and counts["queued"] == counts["running"] == 0
    assert polls[0] > 50


def test_identical_requests_render_once(server: Server, media):
    put_inputs(server.root, media, seconds=2.0)
    body = {"image": "face.jpg", "audio": "speech.wav", "output": "same.mp4", "fake_frame_delay": 0.2}
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: httpx.post(server.url + "/v1/jobs", json=body, timeout=60).json(), range(4)))
    assert len({a["id"] for a in answers}) == 1 and sum(not a["deduplicated"] for a in answers) == 1
    assert server.wait_state(answers[0]["id"])["state"] == "done"
    with server.client() as c:
        assert len(c.get("/v1/jobs").json()["jobs"]) == 1


def test_a_full_queue_answers_429_with_retry_after(serve_env, tmp_path, media):
    srv = make_server(serve_env, tmp_path, extra=["--max-queue", "1"]).start()
    try:
        put_inputs(srv.root, media, seconds=3.0)
        with srv.client() as c:
            first = c.post("/v1/jobs", json={"image": "face.jpg", "audio": "speech.wav", "output": "1.mp4", "fake_frame_delay": 0.3}).json()
            srv.wait_state(first["id"], states=("running",))
            assert c.post("/v1/jobs", json={"image": "face.jpg", "audio": "speech.wav", "output": "2.mp4"}).status_code == 202
            r = c.post("/v1/jobs", json={"image": "face.jpg", "audio": "speech.wav", "output": "3.mp4"})
            assert r.status_code == 429 and int(r.headers["retry-after"]) > 0 and r.json()["code"] == "busy"
            assert not (srv.root / "jobs").exists() or not any((srv.root / "jobs").iterdir())
    finally:
        srv.stop()


# -- restart and cancel ---------------------------------------------------------------------------


def test_sigkill_mid_job_then_restart_finishes_it_under_its_id(serve_env, tmp_path, media):
    srv = make_server(serve_env, tmp_path).start()
    try:
        put_inputs(srv.root, media, seconds=4.0)
        with srv.client() as c:
            job_id = c.post("/v1/jobs", json={"image": "face.jpg", "audio": "speech.wav", "output": "r.mp4", "hls": "r-hls", "hls_segment_seconds": 1, "fake_frame_delay": 0.3}).json()["id"]
            queued_id = c.post("/v1/jobs", json={"image": "face.jpg", "audio": "speech.wav", "output": "q.mp4"}).json()["id"]
        srv.wait_state(job_id, states=("running",))
        wait_for(lambda: ".ts" in ((srv.root / "r-hls" / "index.m3u8").read_text() if (srv.root / "r-hls" / "index.m3u8").exists() else ""), 120, "a segment")
        children = descendants(srv.proc.pid)
        srv.kill(signal.SIGKILL)
        wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in children), 30, "the killed server's children to go")
        srv.start()
        job = srv.wait_state(job_id)
        assert job["state"] == "done" and job["id"] == job_id and job["recoveries"] == 1
        assert srv.wait_state(queued_id)["state"] == "done"
        assert (srv.root / "r.mp4").is_file() and (srv.root / "q.mp4").is_file()
        assert "#EXT-X-ENDLIST" in (srv.root / "r-hls" / "index.m3u8").read_text()
        assert not list(srv.root.glob(".*.partial*"))  # the killed attempt's half-written MP4 went at the restart
    finally:
        srv.stop()


def test_cancel_a_running_job_stops_its_engine_and_removes_its_files(server: Server, media):
    put_inputs(server.root, media, seconds=6.0)
    with server.client() as c:
        job_id = c.post("/v1/jobs", json={"image": "face.jpg", "audio": "speech.wav", "hls": True, "hls_segment_seconds": 1, "fake_frame_delay": 0.3}).json()["id"]
        hls = server.root / "jobs" / job_id / "hls"
        wait_for(lambda: (hls / "index.m3u8").is_file() and ".ts" in (hls / "index.m3u8").read_text(), 120, "the first HLS segment")
        engine = descendants(server.proc.pid)
        assert engine, "the job's engine worker runs under the server"
        r = c.delete(f"/v1/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
        wait_for(lambda: not descendants(server.proc.pid), 30, "no process left under the server")
        assert not (server.root / "jobs" / job_id).exists()
        assert c.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
        assert c.delete(f"/v1/jobs/{job_id}").status_code == 409
        # The lane goes on: the next job starts a new worker.
        put_inputs(server.root, media, seconds=0.5, name="short.wav")
        nxt = c.post("/v1/jobs", json={"image": "face.jpg", "audio": "short.wav"}).json()["id"]
        assert server.wait_state(nxt)["state"] == "done"


def test_cancel_waiting_jobs_without_waiting_for_the_lane(server: Server, media, tmp_path):
    """B is staged ahead on the CPU thread while A renders, C is still queued:
    both cancel at once, while A goes on."""
    put_inputs(server.root, media, seconds=4.0)
    with server.client() as c:
        a = c.post("/v1/jobs", json={"image": "face.jpg", "audio": "speech.wav", "output": "a.mp4", "fake_frame_delay": 0.4}).json()["id"]
        server.wait_state(a, states=("running",))
        b = c.post("/v1/jobs", json={"image": "face.jpg", "audio": "speech.wav", "output": "b.mp4", "hls": True}).json()["id"]
        wait_for(lambda: c.get(f"/v1/jobs/{b}").json()["state"] == "running", 60, "B to be staged")
        cq = c.post("/v1/jobs", json={"image": "face.jpg", "audio": "speech.wav", "output": "c.mp4"}).json()["id"]
        assert c.get(f"/v1/jobs/{cq}").json()["state"] == "queued"
        for job_id in (cq, b):
            assert c.delete(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
        assert c.get(f"/v1/jobs/{a}").json()["state"] == "running"  # the DELETEs did not wait for A
        assert not (server.root / "jobs" / b).exists()
        assert server.wait_state(a)["state"] == "done"
        time.sleep(1)
        for job_id in (b, cq):
            assert c.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
        assert not (server.root / "b.mp4").exists() and not (server.root / "c.mp4").exists() and not (server.root / "jobs" / b).exists()
        # No run's temp dir is left (the server's TMPDIR is tmp_path); the warm worker's home stays.
        assert [p.name for p in tmp_path.glob("lipsync-*") if not p.name.startswith("lipsync-tool-workers-")] == []
        assert c.delete("/v1/jobs/nosuchjob").status_code == 404


def test_finished_jobs_expire_with_their_files(serve_env, tmp_path, media):
    srv = make_server(serve_env, tmp_path, extra=["--expire-hours", "0.0005"]).start()  # 1.8 s
    try:
        put_inputs(srv.root, media, seconds=0.5)
        with srv.client() as c:
            job_id = c.post("/v1/jobs", json={"image": "face.jpg", "audio": "speech.wav"}).json()["id"]
            assert srv.wait_state(job_id)["state"] == "done"
            assert (srv.root / "jobs" / job_id / "video.mp4").is_file()
            wait_for(lambda: c.get(f"/v1/jobs/{job_id}").status_code == 404, 30, "the job to expire")
        assert not (srv.root / "jobs" / job_id).exists() and (srv.root / "face.jpg").is_file()
    finally:
        srv.stop()


def test_a_job_queued_for_a_lane_the_restarted_server_lacks_fails_with_why(serve_env, tmp_path):
    from lipsync_tool.serve.store import JobStore

    srv = make_server(serve_env, tmp_path)
    store = JobStore(srv.db)
    job, _ = store.submit({"engine": "fake"}, max_queue=5, lane="cuda:3")
    store.close()
    srv.start()
    try:
        with srv.client() as c:
            got = c.get(f"/v1/jobs/{job.id}").json()
        assert got["state"] == "failed" and "cuda:3" in got["error"]["message"] and got["error"]["code"] == "input"
    finally:
        srv.stop()


def test_cancel_with_the_subprocess_runner_stops_upstreams_cli(serve_env, tmp_path, media):
    srv = make_server(serve_env, tmp_path, extra=["--runner", "subprocess"]).start()
    try:
        put_inputs(srv.root, media)
        with srv.client() as c:
            job_id = c.post("/v1/jobs", json={"image": "face.jpg", "audio": "speech.wav", "fake_sleep": 60}).json()["id"]
            wait_for(lambda: c.get(f"/v1/jobs/{job_id}").json().get("stage") == "engine", 60, "the engine stage")
            wait_for(lambda: bool(descendants(srv.proc.pid)), 30, "upstream's CLI")
            assert c.delete(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
            wait_for(lambda: not descendants(srv.proc.pid), 30, "no process left under the server")
            assert not (srv.root / "jobs" / job_id).exists()
    finally:
        srv.stop()
