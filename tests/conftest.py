"""Fixtures: no network but loopback, a temp cache, real media, a fake engine.

The fake engine's "upstream" is a git repository made here; its checkpoint is
a small file served over file://; its inference script writes a real video
with the ffmpeg it finds on PATH.  So the real clone, download, subprocess,
upscale and publish path runs in every test.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).parent
DATA = HERE / "data"
FAKE_DIR = HERE / "fake_engine"
PORTRAIT = DATA / "portrait.jpg"


# -- isolation ----------------------------------------------------------------------------

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _loopback_only(sock: socket.socket, address) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            infos = socket.getaddrinfo(host, None)
        except socket.gaierror:
            infos = []
        ips = {i[4][0] for i in infos} or {host}
        if not all(ip.startswith("127.") or ip == "::1" for ip in ips):
            raise ConnectionRefusedError(f"tests may only reach loopback, not {host}")


def _guarded_connect(self, address):
    _loopback_only(self, address)
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    _loopback_only(self, address)
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("LIPSYNC_TOOL_CACHE", str(cache))
    # Runs' temp dirs (kept ones included) go under pytest's own tmp, not /tmp.
    tmp = tmp_path_factory.mktemp("tmp")
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    for var in ("LIPSYNC_TOOL_REGISTRY", "LIPSYNC_TOOL_OFFLINE", "LIPSYNC_TOOL_DEBUG", "LIPSYNC_TOOL_FFMPEG"):
        monkeypatch.delenv(var, raising=False)
    # Proxies would route loopback requests elsewhere.
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    yield cache


# -- ffmpeg and media ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ff():
    from lipsync_tool.media import find_ffmpeg

    return find_ffmpeg()


def run_ffmpeg(ff, *args: str) -> None:
    proc = subprocess.run([ff.path, "-hide_banner", "-loglevel", "error", "-y", *args], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()


@dataclass
class Media:
    ff: object
    root: Path

    def audio(self, name: str = "speech.wav", seconds: float = 1.2, *, silence: bool = False, rate: int = 44100) -> Path:
        """A speech-like tone (amplitude-modulated), or digital silence."""
        path = self.root / name
        src = f"anullsrc=r={rate}:cl=stereo" if silence else f"sine=frequency=220:sample_rate={rate},volume='0.6+0.4*sin(2*PI*3*t)':eval=frame"
        run_ffmpeg(self.ff, "-f", "lavfi", "-i", src, "-t", f"{seconds}", path.as_posix())
        return path

    def video(self, name: str = "clip.mp4", seconds: float = 1.0, size: str = "320x240", audio: bool = True) -> Path:
        path = self.root / name
        args = ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25", "-t", f"{seconds}"]
        if audio:
            args += ["-f", "lavfi", "-i", "sine=frequency=330", "-t", f"{seconds}", "-c:a", "aac"]
        run_ffmpeg(self.ff, *args, "-c:v", "libx264", "-pix_fmt", "yuv420p", path.as_posix())
        return path

    def portrait(self, name: str = "portrait.jpg") -> Path:
        path = self.root / name
        shutil.copyfile(PORTRAIT, path)
        return path

    def no_face(self, name: str = "landscape.png") -> Path:
        from PIL import Image

        img = Image.linear_gradient("L").convert("RGB").resize((320, 240))
        path = self.root / name
        img.save(path)
        return path


@pytest.fixture
def media(ff, tmp_path) -> Media:
    d = tmp_path / "media"
    d.mkdir()
    return Media(ff, d)


# -- a fake upstream repository and engine -----------------------------------------------------


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@dataclass
class FakeUpstream:
    path: Path  # a bare repository with two commits
    first: str  # the commit the fake engine pins
    second: str  # a later commit that must not be checked out

    @property
    def url(self) -> str:
        return self.path.as_uri()


@pytest.fixture(scope="session")
def fake_upstream(tmp_path_factory) -> FakeUpstream:
    repo = tmp_path_factory.mktemp("fake-upstream")
    git("init", "-q", "-b", "main", cwd=repo)
    shutil.copyfile(FAKE_DIR / "upstream_inference.py", repo / "inference.py")
    (repo / "temp").mkdir()
    (repo / "temp" / "README.md").write_text("upstream's own temp/ folder\n")
    (repo / "README.md").write_text("fake upstream\n")
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "first", cwd=repo)
    first = git("rev-parse", "HEAD", cwd=repo)
    (repo / "NEWER.txt").write_text("only in the second commit\n")
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "second", cwd=repo)
    second = git("rev-parse", "HEAD", cwd=repo)
    # Served as a bare repository, like a real upstream.
    bare = repo.with_name(repo.name + ".git")
    git("clone", "-q", "--bare", str(repo), str(bare), cwd=repo.parent)
    return FakeUpstream(bare, first, second)


@dataclass
class FakeEngineSetup:
    upstream: FakeUpstream
    ckpt: Path
    sha256: str
    env: dict[str, str]


@pytest.fixture
def fake_engine(fake_upstream, tmp_path, monkeypatch):
    """Register the fake engine (and set what it reads from the environment)."""
    sys.path.insert(0, str(FAKE_DIR))
    import fake_lipsync_engine

    from lipsync_tool import engines

    ckpt = tmp_path / "weights" / "fake.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(os.urandom(4096))
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    env = {
        "FAKE_ENGINE_REPO": fake_upstream.url,
        "FAKE_ENGINE_COMMIT": fake_upstream.first,
        "FAKE_ENGINE_CKPT_URLS": ckpt.as_uri(),
        "FAKE_ENGINE_CKPT_SIZE": str(ckpt.stat().st_size),
        "FAKE_ENGINE_CKPT_SHA256": sha,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    engines.register(fake_lipsync_engine.FakeEngine, replace=True)
    yield FakeEngineSetup(fake_upstream, ckpt, sha, env)
    engines.unregister("fake")
    sys.path.remove(str(FAKE_DIR))


@pytest.fixture
def plugin_env(fake_engine, tmp_path) -> dict[str, str]:
    """Environment for a ``lipsync-tool`` subprocess that loads the fake engine as
    a real entry-point plug-in."""
    site = tmp_path / "plugin-site"
    dist = site / "fake_lipsync_engine-0.0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-lipsync-engine\nVersion: 0.0.0\n")
    (dist / "entry_points.txt").write_text("[lipsync_tool.engines]\nfake = fake_lipsync_engine:FakeEngine\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(FAKE_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


# -- running the CLI ----------------------------------------------------------------------------


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def cli():
    """Invoke the CLI in-process (the fake engine, when registered, is included)."""
    from typer.testing import CliRunner

    from lipsync_tool.cli import build_app

    def invoke(*args: str) -> CliResult:
        runner = CliRunner()
        result = runner.invoke(build_app(), [str(a) for a in args], catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    return invoke


def cli_subprocess(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> CliResult:
    proc = subprocess.run([sys.executable, "-m", "lipsync_tool", *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


# -- small shared fixtures -----------------------------------------------------------------------


@pytest.fixture
def ws(tmp_path):
    """An engine workspace laid out as the pipeline lays it out."""
    from lipsync_tool.engines.base import Workspace

    root = tmp_path / "lipsync-abc"
    (root / "inputs").mkdir(parents=True)
    (root / "work" / "results").mkdir(parents=True)
    return Workspace(root)


@pytest.fixture
def cache(tmp_path):
    from lipsync_tool.resources.cache import Cache

    return Cache(tmp_path / "cache")


def spec_for(data: bytes, *urls: str, name: str = "model.pth"):
    """A registry entry for *data*, served from *urls*."""
    from lipsync_tool.engines.base import CheckpointSpec

    return CheckpointSpec(name=name, urls=tuple(urls), size=len(data), sha256=hashlib.sha256(data).hexdigest(), dest=f"checkpoints/{name}")


# -- the service ----------------------------------------------------------------------------------

# A real `lipsync-tool serve` on a loopback port (tests/serve_harness.py): fixtures `serve_env`, `server`.
from serve_harness import serve_env, server  # noqa: E402,F401
