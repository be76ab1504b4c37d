"""The service's security against a real server: paths confined to the root,
the token, upload limits and sniffing, bad JSON, and no traceback leaving it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from serve_harness import Server, make_server

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder beside the root that nothing may be read from or written to."""
    d = tmp_path / "outside"
    d.mkdir()
    return d


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def inputs(server: Server, media, outside):
    shutil.copy(media.portrait(), server.root / "face.jpg")
    shutil.copy(media.audio(seconds=0.5), server.root / "speech.wav")
    shutil.copy(media.portrait(), outside / "secret.jpg")
    shutil.copy(server.root / "speech.wav", outside / "secret.wav")
    os.symlink(outside, server.root / "escape")  # a link that leaves the root
    os.symlink(outside / "secret.jpg", server.root / "link.jpg")
    return snapshot(outside)


TRAVERSALS = [
    ("image", "../outside/secret.jpg"),
    ("image", "sub/../../outside/secret.jpg"),
    ("image", "./../outside/secret.jpg"),
    ("image", "escape/secret.jpg"),
    ("image", "link.jpg"),
    ("audio", "escape/secret.wav"),
    ("output", "../outside/stolen.mp4"),
    ("output", "escape/stolen.mp4"),
    ("hls", "escape/hls"),
    ("hls", "../outside/hls"),
]


@pytest.mark.parametrize(("field", "value"), TRAVERSALS)
def test_paths_that_leave_the_root_answer_403(server: Server, inputs, outside, field, value):
    body = {"image": "face.jpg", "audio": "speech.wav", field: value}
    r = httpx.post(server.url + "/v1/jobs", json=body, timeout=30)
    assert r.status_code == 403, r.text
    err = r.json()
    assert err["code"] == "forbidden" and field in err["message"] and ("root" in err["message"])
    assert snapshot(outside) == inputs


def test_absolute_paths(server: Server, inputs, outside):
    r = httpx.post(server.url + "/v1/jobs", json={"image": str(outside / "secret.jpg"), "audio": "speech.wav"}, timeout=30)
    assert r.status_code == 403 and "outside the server's root" in r.json()["message"]
    r = httpx.post(server.url + "/v1/jobs", json={"image": "/etc/passwd", "audio": "speech.wav"}, timeout=30)
    assert r.status_code == 403
    # An absolute path inside the root is fine.
    r = httpx.post(server.url + "/v1/jobs", json={"image": str(server.root / "face.jpg"), "audio": "speech.wav"}, timeout=30)
    assert r.status_code == 202, r.text
    assert server.wait_state(r.json()["id"])["state"] == "done"
    # OpenClone: a leading slash means the root, and '..' still cannot climb out.
    r = httpx.post(server.url + "/generate-deepfake", json={"imagePath": "/../outside/secret.jpg", "audioPath": "/speech.wav", "mp4Path": "/x.mp4"}, timeout=30)
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    r = httpx.post(server.url + "/generate-deepfake", json={"imagePath": "/escape/secret.jpg", "audioPath": "/speech.wav", "mp4Path": "/x.mp4"}, timeout=30)
    assert r.status_code == 403
    assert snapshot(outside) == inputs


def test_engine_options_that_name_files_are_confined_too(server: Server, inputs, outside):
    r = httpx.post(server.url + "/v1/jobs", json={"engine": "wav2lip", "image": "face.jpg", "audio": "speech.wav", "wav2lip_checkpoint": "../outside/secret.jpg"}, timeout=30)
    assert r.status_code == 403 and "wav2lip_checkpoint" in r.json()["message"]
    r = httpx.post(server.url + "/v1/jobs", json={"engine": "sadtalker", "image": "face.jpg", "audio": "speech.wav", "ref_eyeblink": "escape/secret.wav"}, timeout=30)
    assert r.status_code == 403 and "ref_eyeblink" in r.json()["message"]


def test_hls_file_names_are_checked(server: Server, inputs):
    r = httpx.post(server.url + "/v1/jobs", json={"image": "face.jpg", "audio": "speech.wav", "hls": True}, timeout=30)
    job_id = r.json()["id"]
    assert server.wait_state(job_id)["state"] == "done"
    for name in ("..%2F..%2Fface.jpg", "%2E%2E", "video.mp4", "index.m3u8.bak"):
        r = httpx.get(f"{server.url}/v1/jobs/{job_id}/hls/{name}", timeout=30)
        assert r.status_code == 404, (name, r.status_code, r.text)
    assert httpx.get(f"{server.url}/v1/jobs/{job_id}/hls/index.m3u8", timeout=30).status_code == 200


def test_bad_requests_answer_422_or_400_with_a_clear_message(server: Server, inputs):
    post = lambda **kw: httpx.post(server.url + "/v1/jobs", timeout=30, **kw)
    r = post(content=b'{"image": "face.jpg", ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["code"] == "invalid_request" and "not valid JSON" in r.json()["message"]
    r = post(json=["face.jpg"])
    assert r.status_code == 422 and "JSON object" in r.json()["message"]
    r = post(json={"image": "face.jpg", "audio": "speech.wav", "fps": "fast"})
    assert r.status_code == 422 and "fps" in r.json()["message"]
    r = post(json={"image": "face.jpg", "audio": "speech.wav", "no_such_option": 1})
    assert r.status_code == 422 and "no_such_option" in r.json()["message"]
    r = post(json={"image": "face.jpg", "audio": "speech.wav", "python": "/usr/bin/python3"})
    assert r.status_code == 422 and "belong(s) to the server" in r.json()["message"]
    r = post(json={"image": "face.jpg", "audio": "speech.wav", "engine": "nope"})
    assert r.status_code == 422 and "nope" in r.json()["message"]
    r = post(json={"image": "missing.jpg", "audio": "speech.wav"})
    assert r.status_code == 400 and r.json()["code"] == "input" and "no such file" in r.json()["message"]
    r = post(json={"image": "speech.wav", "audio": "speech.wav"})
    assert r.status_code == 400, r.text
    for r in (post(json={"image": "face.jpg"}), httpx.post(server.url + "/generate-deepfake", json={"imagePath": "/face.jpg"}, timeout=30)):
        assert r.status_code == 422 and "audio" in r.json()["message"].lower()
    assert "Traceback" not in r.text


def test_uploads_are_limited_and_sniffed(serve_env, tmp_path, media):
    srv = make_server(serve_env, tmp_path, extra=["--max-upload-mb", "1"]).start()
    try:
        audio = media.audio(seconds=0.5).read_bytes()
        big = os.urandom(2 * 1024 * 1024)
        r = httpx.post(srv.url + "/v1/jobs", files={"image": ("big.jpg", big, "image/jpeg"), "audio": ("a.wav", audio, "audio/wav")}, timeout=60)
        assert r.status_code == 413 and r.json()["code"] == "too_large" and "1 MB" in r.json()["message"]
        text = b"this is not a picture, whatever its name says\n" * 10
        r = httpx.post(srv.url + "/v1/jobs", files={"image": ("face.jpg", text, "image/jpeg"), "audio": ("a.wav", audio, "audio/wav")}, timeout=60)
        assert r.status_code == 415 and r.json()["code"] == "unsupported_media" and "image" in r.json()["message"]
        jpeg = media.portrait().read_bytes()
        r = httpx.post(srv.url + "/v1/jobs", files={"image": ("face.jpg", jpeg, "image/jpeg"), "audio": ("speech.wav", jpeg, "audio/wav")}, timeout=60)
        assert r.status_code == 415 and "audio" in r.json()["message"]
        # A refused upload leaves nothing behind.
        assert not (srv.root / "jobs").exists() or not any((srv.root / "jobs").iterdir())
    finally:
        srv.stop()


def test_the_token(serve_env, tmp_path, media):
    srv = make_server(serve_env, tmp_path, token="s3cret-token").start()
    try:
        shutil.copy(media.portrait(), srv.root / "face.jpg")
        shutil.copy(media.audio(seconds=0.5), srv.root / "speech.wav")
        body = {"image": "face.jpg", "audio": "speech.wav"}
        assert httpx.get(srv.url + "/healthz").status_code == 200  # no token needed
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}, {"Authorization": "Bearer s3cret-tokenX"}):
            r = httpx.post(srv.url + "/v1/jobs", json=body, headers=headers, timeout=30)
            assert r.status_code == 401 and r.json()["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer", headers
            assert httpx.get(srv.url + "/v1/engines", headers=headers).status_code == 401
        assert httpx.post(srv.url + "/v1/jobs?token=s3cret-token", json=body).status_code == 401  # the query is for media GETs only
        r = httpx.post(srv.url + "/v1/jobs", json=body, headers=srv.headers, timeout=30)
        assert r.status_code == 202
        job_id = r.json()["id"]
        assert srv.wait_state(job_id)["state"] == "done"
        assert httpx.get(f"{srv.url}/v1/jobs/{job_id}/video").status_code == 401
        assert httpx.get(f"{srv.url}/v1/jobs/{job_id}/video?token=s3cret-token").status_code == 200
        log = srv.log.read_text()
        assert "s3cret-token" not in log and "/video " in log  # requests are logged, the token never
    finally:
        srv.stop()


def test_binding_beyond_loopback_needs_a_token(cli, tmp_path):
    result = cli("serve", "--root", str(tmp_path), "--host", "0.0.0.0")
    assert result.code == 2 and "without a token" in result.output and "--token" in result.output


def test_cors_is_off_unless_asked(serve_env, tmp_path):
    srv = make_server(serve_env, tmp_path).start()
    try:
        r = httpx.options(srv.url + "/v1/jobs", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in r.headers
    finally:
        srv.stop()
    (tmp_path / "b").mkdir()
    srv = make_server(serve_env, tmp_path / "b", extra=["--cors-origin", "http://app.example"]).start()
    try:
        r = httpx.options(srv.url + "/v1/jobs", headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"})
        assert r.headers.get("access-control-allow-origin") == "http://app.example"
    finally:
        srv.stop()


def test_no_traceback_leaves_the_server(server: Server, inputs):
    # An id that is not a job, odd methods and paths: clean JSON answers.
    for r in (httpx.get(server.url + "/v1/jobs/..%2F..%2Fetc"), httpx.put(server.url + "/v1/jobs"), httpx.get(server.url + "/nope")):
        assert r.status_code in (404, 405) and set(r.json()) >= {"code", "message"} and "Traceback" not in r.text


@pytest.mark.parametrize("debug", [False, True])
def test_an_unexpected_error_shows_a_traceback_only_in_debug(tmp_path, debug):
    from fastapi.testclient import TestClient

    from lipsync_tool.serve.app import ServeConfig, create_app

    app = create_app(ServeConfig(root=tmp_path, db=tmp_path / "jobs.sqlite3", debug=debug))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    r = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert r.status_code == 500 and r.json()["code"] == "internal" and "RuntimeError" in r.json()["message"]
    assert ("Traceback" in r.text) == debug and ("secret internals" in r.text) == debug
