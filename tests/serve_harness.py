"""A real ``lipsync-tool serve`` process on a loopback port, for the service tests.

The server runs the fake engine as an entry-point plug-in (``plugin_env``), so
its jobs go through the real scheduler, warm worker, ffmpeg and publish path.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    root: Path
    db: Path
    token: str | None
    env: dict[str, str]
    log: Path
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, **kwargs) -> httpx.Client:
        kwargs.setdefault("timeout", 60)
        return httpx.Client(base_url=self.url, headers=self.headers, **kwargs)

    def start(self, timeout: float = 60) -> Server:
        argv = [sys.executable, "-m", "lipsync_tool", "serve", *self.args]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"the server did not answer in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the server's whole process group (SIGKILL: as a crash would)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def wait_state(self, job_id: str, states=("done", "failed", "cancelled"), timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        with self.client() as c:
            while time.monotonic() < deadline:
                job = c.get(f"/v1/jobs/{job_id}").json()
                if job.get("state") in states:
                    return job
                time.sleep(0.1)
        raise AssertionError(f"job {job_id} did not reach {states} in {timeout} s: {job}\n{self.log.read_text()[-3000:]}")


def make_server(env: dict[str, str], tmp_path: Path, *, token: str | None = None, extra: list[str] | tuple[str, ...] = (), engine: str = "fake") -> Server:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    port = free_port()
    db = tmp_path / "jobs.sqlite3"
    args = ["--root", str(root), "--host", "127.0.0.1", "--port", str(port), "--db", str(db), "--engine", engine, *extra]
    if token:
        args += ["--token", token]
    return Server(f"http://127.0.0.1:{port}", root, db, token, env, tmp_path / "server.log", args)


@pytest.fixture
def serve_env(plugin_env, tmp_path) -> dict[str, str]:
    env = dict(plugin_env)
    env.pop("LIPSYNC_TOOL_TOKEN", None)
    env["TMPDIR"] = str(tmp_path)
    return env


@pytest.fixture
def server(serve_env, tmp_path):
    """A started server with the fake engine as its default (no token)."""
    srv = make_server(serve_env, tmp_path).start()
    yield srv
    srv.stop()
