"""The engine's interpreter: which device it can use, what it has installed,
and ``--install-deps``.

Everything here runs *in the engine's interpreter* (``--python``, default
this one) through small subprocesses, so that this process never imports
torch.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from .engines.base import Device, Engine
from .errors import DependencyError, DeviceError, UsageError

log = logging.getLogger(__name__)

_GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version", "/dev/kfd")


def engine_python(requested: Path | str | None) -> str:
    if requested is None:
        return sys.executable
    path = Path(requested).expanduser()
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise UsageError(f"{requested} is not an executable Python interpreter", subject="--python")
    return str(path)


def _run_python(python: str, code: str, timeout: float = 120) -> str:
    try:
        proc = subprocess.run([python, "-c", code], capture_output=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DependencyError(f"cannot run {python}: {exc}", subject="--python") from None
    lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise DependencyError(f"{python} failed: {err[-1] if err else f'exit {proc.returncode}'}", subject="--python")
    return lines[-1]


_VERSIONS = """
import json, platform, importlib.metadata as m
out = {"python": platform.python_version()}
for name in %r:
    try:
        out[name] = m.version(name)
    except m.PackageNotFoundError:
        out[name] = None
print(json.dumps(out))
"""


def package_versions(python: str, names: list[str]) -> dict[str, str | None]:
    """Installed versions in the engine's interpreter (no imports, fast)."""
    if python == sys.executable:
        import importlib.metadata as m
        import platform

        out: dict[str, str | None] = {"python": platform.python_version()}
        for n in names:
            try:
                out[n] = m.version(n)
            except m.PackageNotFoundError:
                out[n] = None
        return out
    return json.loads(_run_python(python, _VERSIONS % (names,)))


_CUDA_PROBE = """
import json
try:
    import torch
except Exception as e:
    print(json.dumps({"torch": None, "error": repr(e)}))
else:
    ok = torch.cuda.is_available()
    print(json.dumps({"torch": torch.__version__, "cuda": ok, "count": torch.cuda.device_count() if ok else 0,
                      "cuda_version": torch.version.cuda, "names": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if ok else []}))
"""


def probe_cuda(python: str) -> dict:
    return json.loads(_run_python(python, _CUDA_PROBE, timeout=300))


def gpu_driver_present() -> bool:
    return any(os.path.exists(p) for p in _GPU_NODES)


@dataclass(frozen=True)
class DeviceDecision:
    device: Device
    torch: str | None = None
    gpu_names: tuple[str, ...] = ()


def resolve_device(requested: str, python: str, *, driver_present: bool | None = None) -> DeviceDecision:
    """``auto`` → CUDA when the engine's torch sees a GPU, else the CPU (said
    out loud); ``cuda``/``cuda:N`` must be usable or it is an error."""
    driver = gpu_driver_present() if driver_present is None else driver_present
    if requested == "cpu":
        return DeviceDecision(Device("cpu", reason="--device cpu"))
    if requested == "auto" and not driver:
        return DeviceDecision(Device("cpu", reason="no GPU driver found on this machine"))
    info = probe_cuda(python)
    if info.get("torch") is None:
        error = info.get("error") or ""
        if "No module named 'torch'" in error or not error:
            raise DependencyError(
                f"torch is not installed in {python}",
                subject="torch",
                hint="Run again with --install-deps, or install the engine's extra: pip install 'lipsync-tool[all]'.",
            )
        raise DependencyError(f"torch cannot be imported in {python}: {error}", subject="torch", hint="Reinstall torch in that environment.")
    names = tuple(info.get("names") or ())
    if requested == "auto":
        if info.get("cuda"):
            return DeviceDecision(Device("cuda", reason=f"auto: {names[0] if names else 'GPU'}"), info["torch"], names)
        return DeviceDecision(Device("cpu", reason=f"auto: torch {info['torch']} sees no GPU (CPU-only build?)"), info["torch"])
    if not info.get("cuda"):
        raise DeviceError(
            f"{requested} was asked for, but torch {info['torch']} in {python} sees no usable GPU",
            subject="--device",
            hint="Install a CUDA build of torch, check nvidia-smi, or run with --device cpu (slow).",
        )
    index = int(requested.split(":", 1)[1]) if ":" in requested else None
    if index is not None and index >= int(info.get("count") or 0):
        raise DeviceError(f"{requested} was asked for, but only {info.get('count')} GPU(s) are visible", subject="--device")
    visible_id = None
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    if index is not None and inherited:
        ids = [i.strip() for i in inherited.split(",") if i.strip()]
        visible_id = ids[index] if index < len(ids) else None
    return DeviceDecision(Device("cuda", index, reason=requested, visible_id=visible_id), info["torch"], names)


def default_timeout(audio_seconds: float, device: Device) -> float:
    """About 4 min per minute of audio plus 2 min on a GPU; ten times that on the CPU."""
    gpu = audio_seconds / 60 * 240 + 120
    return gpu if device.kind == "cuda" else gpu * 10


# -- --install-deps ---------------------------------------------------------------------

_SATISFIED = """
import json, sys, importlib.metadata as m
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement
out = {}
for spec in json.loads(sys.argv[1]):
    r = Requirement(spec)
    try:
        v = m.version(r.name)
    except m.PackageNotFoundError:
        out[spec] = None
        continue
    out[spec] = v if (not r.specifier or r.specifier.contains(v, prereleases=True)) else False
print(json.dumps(out))
"""


def unsatisfied(python: str, requirements: list[str]) -> list[str]:
    try:
        proc = subprocess.run([python, "-c", _SATISFIED, json.dumps(requirements)], capture_output=True, check=False, stdin=subprocess.DEVNULL, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DependencyError(f"cannot inspect the packages of {python}: {exc}", subject="--python") from None
    if proc.returncode != 0:
        raise DependencyError(f"cannot inspect the packages of {python}: {proc.stderr.decode('utf-8', 'replace').strip()[-300:]}", subject="--python")
    state = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return [r for r, v in state.items() if not v]


def install_plan(engine: Engine, python: str) -> list[tuple[tuple[str, ...], list[str]]]:
    """The pip steps still needed, in upstream-safe order (torch first, then
    basicsr and friends without build isolation)."""
    plan = []
    for pip_args, reqs in engine.requirements:
        missing = unsatisfied(python, list(reqs))
        if missing:
            plan.append((pip_args, missing))
    return plan


def pip_install_argv(python: str, pip_args: tuple[str, ...], reqs: list[str]) -> list[str]:
    return [python, "-m", "pip", "install", "--disable-pip-version-check", *pip_args, *reqs]


_INSTALL_LOCK = threading.Lock()
_INSTALLED: set[tuple[str, str]] = set()


def install_deps(engine: Engine, python: str, *, log_path: Path | None = None) -> list[str]:
    """Install what *engine* needs into *python*; returns what was installed.

    Once per (engine, interpreter) and process, and never two pip runs at
    once (batch jobs stage on several threads)."""
    with _INSTALL_LOCK:
        if (engine.name, python) in _INSTALLED:
            return []
        installed = _install(engine, python, log_path)
        _INSTALLED.add((engine.name, python))
        return installed


def _install(engine: Engine, python: str, log_path: Path | None) -> list[str]:
    installed: list[str] = []
    for pip_args, missing in install_plan(engine, python):
        argv = pip_install_argv(python, pip_args, missing)
        log.info("installing into %s: %s", python, " ".join(missing))
        proc = subprocess.run(argv, capture_output=True, check=False, stdin=subprocess.DEVNULL)
        if log_path:
            with open(log_path, "ab") as f:
                f.write(b"$ " + " ".join(argv).encode() + b"\n" + proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.decode("utf-8", "replace").strip().splitlines()[-12:])
            raise DependencyError(f"pip failed to install {' '.join(missing)}:\n{tail}", subject="--install-deps", hint="Read pip's message above; a dedicated environment (--python) often helps.")
        installed += missing
    return installed
