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
import platform as pyplatform
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from .constants import ENV_TORCH
from .engines.base import Device, Engine, EngineOptions
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
    """About 4 min per minute of audio plus 2 min on a GPU; on the CPU 6 min per
    *second* of audio plus 20 min, since SadTalker's face renderer alone took
    about 10 s per frame (250 s per second of audio at 25 fps) on a 2-core machine."""
    if device.kind == "cuda":
        return audio_seconds / 60 * 240 + 120
    return audio_seconds * 360 + 1200


# -- --install-deps ---------------------------------------------------------------------

#: PyTorch's own index of CPU-only wheels (torch, torchvision and their dependencies).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
_TORCH_INDEX_ROOT = "https://download.pytorch.org/whl/"
#: Packages whose build must match torch's, so they come from torch's index.
TORCH_FAMILY = frozenset({"torch", "torchvision", "torchaudio"})
TORCH_CHOICES = ("auto", "cpu", "cuda")
TorchChoice = Literal["auto", "cpu", "cuda"]

#: About how big torch + torchvision are (MB download, MB on disk), for the announcement.
_SIZE_CPU = (200, 700)
_SIZE_CUDA = (2500, 6000)  # with its nvidia-* packages
_SIZE_MACOS = (100, 400)
_SIZE_KEPT = (10, 30)  # torchvision (and the like) beside a torch that is kept


@dataclass(frozen=True)
class TorchPlan:
    """Which build of torch ``--install-deps`` installs, from which index, and about how big it is."""

    variant: Literal["cpu", "cuda", "default"]  # default: whatever pip's index serves here (CPU/MPS on macOS)
    index_url: str | None  # None: pip's own index (PyPI, or what the user configured)
    why: str
    download_mb: int | None = None
    installed_mb: int | None = None
    keep: str | None = None  # "torch==<installed>": the torch already there, pinned so pip keeps it

    @property
    def label(self) -> str:
        return {"cpu": "CPU build", "cuda": "CUDA build", "default": "default build"}[self.variant]


def torch_choice(value: str | None = None) -> TorchChoice:
    """*value*, else ``LIPSYNC_TOOL_TORCH``, else ``auto``; anything else is a usage error."""
    subject = "torch_variant" if value is not None else ENV_TORCH
    raw = value if value is not None else os.environ.get(ENV_TORCH, "")
    choice = raw.strip().lower() or "auto"
    if choice not in TORCH_CHOICES:
        raise UsageError(f"{subject}={raw!r} is not one of {', '.join(TORCH_CHOICES)}", subject=subject)
    return choice  # type: ignore[return-value]


def requirement_name(spec: str) -> str:
    """``torchvision>=0.17`` → ``torchvision`` (normalised)."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    return re.sub(r"[-_.]+", "-", m.group(1)).lower() if m else spec.strip().lower()


def plan_torch_install(
    *,
    driver_present: bool,
    platform: str,
    machine: str,
    choice: TorchChoice = "auto",
    already_installed: str | None = None,
) -> TorchPlan:
    """Which torch build to install: pure, so that it can be tested everywhere.

    *platform* is ``sys.platform``, *machine* ``platform.machine()``, and
    *already_installed* the version of a torch that the interpreter already
    has (and that satisfies the engine): it is kept, and what joins it comes
    from its index.  Otherwise, with no GPU driver (or ``cpu`` chosen), Linux
    and Windows x86_64 get PyTorch's CPU wheels, since PyPI's Linux torch is
    the multi-GB CUDA build; macOS and other CPUs get PyPI's, which have no
    CUDA anyway.  A driver (or ``cuda`` chosen) means PyPI's default build.
    """
    if choice not in TORCH_CHOICES:
        raise ValueError(f"choice must be one of {TORCH_CHOICES}, not {choice!r}")
    x86_64 = machine.lower() in ("x86_64", "amd64")
    linux = platform.startswith("linux")
    windows = platform in ("win32", "cygwin")
    if already_installed:
        why = f"torch {already_installed} is already installed and is kept"
        if choice != "auto":
            why += f" ({ENV_TORCH}={choice} applies to a new install only)"
        local = already_installed.partition("+")[2]
        if re.fullmatch(r"cpu|cu\d+|rocm[\d.]+|xpu", local):
            variant = "cpu" if local == "cpu" else "cuda" if local.startswith("cu") else "default"
            return TorchPlan(variant, _TORCH_INDEX_ROOT + local, why, *_SIZE_KEPT, keep=f"torch=={already_installed}")
        variant = "cuda" if linux and x86_64 else "default"
        return TorchPlan(variant, None, why, *_SIZE_KEPT, keep=f"torch=={already_installed}")
    if choice == "cpu" or (choice == "auto" and not driver_present):
        why = f"{ENV_TORCH}=cpu" if choice == "cpu" else "no NVIDIA driver found"
        if (linux or windows) and x86_64:
            return TorchPlan("cpu", TORCH_CPU_INDEX, why, *_SIZE_CPU)
        size = _SIZE_MACOS if platform == "darwin" else (None, None)
        return TorchPlan("default", None, f"{why}; PyPI's torch for this platform is CPU-only already", *size)
    why = f"{ENV_TORCH}=cuda" if choice == "cuda" else "a GPU driver was found"
    if linux and x86_64:
        return TorchPlan("cuda", None, why, *_SIZE_CUDA)
    if windows:
        return TorchPlan("default", None, f"{why}, but PyPI's torch for Windows is CPU-only; see pytorch.org for a CUDA build", *_SIZE_CPU)
    return TorchPlan("default", None, why, *(_SIZE_MACOS if platform == "darwin" else (None, None)))


class PipCommand(NamedTuple):
    argv: list[str]
    packages: list[str]  # the requirements it installs (a kept torch's pin aside)


def pip_install_argv(python: str, pip_args: tuple[str, ...], reqs: list[str]) -> list[str]:
    return [python, "-m", "pip", "install", "--disable-pip-version-check", *pip_args, *reqs]


def install_commands(python: str, steps: list[tuple[tuple[str, ...], list[str]]], torch_plan: TorchPlan | None) -> list[PipCommand]:
    """The pip argument lists (never a shell line) for *steps*, in order.

    torch and its family go in a pip call of their own, with the plan's
    ``--index-url`` (which replaces PyPI for that call, so nothing else may
    ride along), and with the kept torch pinned so pip cannot replace it."""
    commands = []
    for pip_args, reqs in steps:
        family = [r for r in reqs if requirement_name(r) in TORCH_FAMILY]
        others = [r for r in reqs if requirement_name(r) not in TORCH_FAMILY]
        if family:
            if torch_plan is None:
                raise ValueError(f"{', '.join(family)} need a TorchPlan")
            index = ("--index-url", torch_plan.index_url) if torch_plan.index_url else ()
            keep = [torch_plan.keep] if torch_plan.keep else []
            commands.append(PipCommand(pip_install_argv(python, (*pip_args, *index), [*family, *keep]), family))
        if others:
            commands.append(PipCommand(pip_install_argv(python, pip_args, others), others))
    return commands


def _size(mb: int) -> str:
    return f"{mb / 1000:g} GB" if mb >= 1000 else f"{mb} MB"


def describe_install(python: str, commands: list[PipCommand], torch_plan: TorchPlan | None, choice: TorchChoice = "auto") -> str:
    """The one line said before pip runs: what, from where, about how big."""
    packages = [requirement_name(r) for c in commands for r in c.packages]
    family = [n for n in packages if n in TORCH_FAMILY]
    others = [n for n in packages if n not in TORCH_FAMILY]
    if not family or torch_plan is None:
        return f"Installing {len(others)} package(s) into {python}: {', '.join(others)}."
    where = f"from {torch_plan.index_url}" if torch_plan.index_url else "from pip's default index"
    size = ""
    if torch_plan.download_mb and torch_plan.installed_mb:
        size = f"; about {_size(torch_plan.download_mb)} download, {_size(torch_plan.installed_mb)} on disk"
    text = f"Installing {', '.join(family)} ({torch_plan.label} {where}: {torch_plan.why}{size})"
    if others:
        text += f" and {len(others)} other package(s) ({', '.join(others)})"
    text += f" into {python}."
    if torch_plan.keep is None and choice == "auto":
        if torch_plan.variant == "cpu":
            text += f" Set {ENV_TORCH}=cuda for the CUDA build (about {_size(_SIZE_CUDA[0])} download, {_size(_SIZE_CUDA[1])} on disk)."
        elif torch_plan.variant == "cuda":
            text += f" Set {ENV_TORCH}=cpu for the CPU-only build (about {_size(_SIZE_CPU[0])} download, {_size(_SIZE_CPU[1])} on disk)."
    return text


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


def requirement_state(python: str, requirements: list[str]) -> dict[str, str | Literal[False] | None]:
    """Each requirement → the installed version that satisfies it, ``False``
    (installed, but another version) or ``None`` (not installed)."""
    try:
        proc = subprocess.run([python, "-c", _SATISFIED, json.dumps(requirements)], capture_output=True, check=False, stdin=subprocess.DEVNULL, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DependencyError(f"cannot inspect the packages of {python}: {exc}", subject="--python") from None
    if proc.returncode != 0:
        raise DependencyError(f"cannot inspect the packages of {python}: {proc.stderr.decode('utf-8', 'replace').strip()[-300:]}", subject="--python")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def unsatisfied(python: str, requirements: list[str]) -> list[str]:
    state = requirement_state(python, requirements)
    return [r for r in requirements if not state.get(r)]


def require_packages(python: str, needs: dict[str, str]) -> None:
    """Raise :class:`DependencyError` unless every distribution of *needs* (name → the flag that needs it) is in *python*."""
    if not needs:
        return
    versions = package_versions(python, list(needs))
    missing = [name for name in needs if not versions.get(name)]
    if missing:
        flags = sorted({needs[name] for name in missing})
        raise DependencyError(
            f"{' and '.join(flags)} needs {', '.join(missing)} in the engine's Python ({python}), and it is not installed",
            subject=", ".join(flags),
            hint="Add --install-deps (it installs them), or pip install them into that interpreter (--python).",
        )


def _all(engine: Engine, options: EngineOptions | None) -> list[str]:
    return [r for _, reqs in engine.requirements_for(options) for r in reqs]


def _steps(engine: Engine, state: dict, options: EngineOptions | None = None) -> list[tuple[tuple[str, ...], list[str]]]:
    steps = []
    for pip_args, reqs in engine.requirements_for(options):
        missing = [r for r in reqs if not state.get(r)]
        if missing:
            steps.append((pip_args, missing))
    return steps


def install_plan(engine: Engine, python: str, options: EngineOptions | None = None) -> list[tuple[tuple[str, ...], list[str]]]:
    """The pip steps still needed for *options*, in upstream-safe order (torch
    first, then basicsr and friends without build isolation)."""
    return _steps(engine, requirement_state(python, _all(engine, options)), options)


def _platform() -> tuple[str, str]:
    """(``sys.platform``, ``platform.machine()``); a seam for tests."""
    return sys.platform, pyplatform.machine()


_INSTALL_LOCK = threading.Lock()
_INSTALLED: set[tuple[str, str, tuple[str, ...]]] = set()


def install_deps(
    engine: Engine, python: str, *, options: EngineOptions | None = None, log_path: Path | None = None, torch_variant: str | None = None
) -> list[str]:
    """Install what *engine* needs (with *options*: :meth:`Engine.requirements_for`) into *python*; returns what was installed.

    *torch_variant* is auto, cpu or cuda (default: ``LIPSYNC_TOOL_TORCH``, else
    auto: the CPU build where there is no GPU driver); see plan_torch_install.
    What will be installed, from where and about how big is logged first.

    Once per (engine, interpreter) and process, and never two pip runs at
    once (batch jobs stage on several threads)."""
    choice = torch_choice(torch_variant)
    with _INSTALL_LOCK:
        key = (engine.name, python, tuple(_all(engine, options)))
        if key in _INSTALLED:
            return []
        installed = _install(engine, python, log_path, choice, options)
        _INSTALLED.add(key)
        return installed


def _install(engine: Engine, python: str, log_path: Path | None, choice: TorchChoice, options: EngineOptions | None = None) -> list[str]:
    state = requirement_state(python, _all(engine, options))
    steps = _steps(engine, state, options)
    if not steps:
        return []
    torch_plan = None
    if any(requirement_name(r) in TORCH_FAMILY for _, missing in steps for r in missing):
        kept = next((v for r, v in state.items() if requirement_name(r) == "torch" and v), None)
        platform_, machine = _platform()
        torch_plan = plan_torch_install(driver_present=gpu_driver_present(), platform=platform_, machine=machine, choice=choice, already_installed=kept)
    commands = install_commands(python, steps, torch_plan)
    log.warning("%s", describe_install(python, commands, torch_plan, choice))
    installed: list[str] = []
    for argv, packages in commands:
        log.info("installing into %s: %s", python, " ".join(packages))
        proc = subprocess.run(argv, capture_output=True, check=False, stdin=subprocess.DEVNULL)
        if log_path:
            with open(log_path, "ab") as f:
                f.write(b"$ " + " ".join(argv).encode() + b"\n" + proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.decode("utf-8", "replace").strip().splitlines()[-12:])
            raise DependencyError(
                f"pip failed to install {' '.join(packages)}:\n{tail}",
                subject="--install-deps",
                hint="Read pip's message above; a dedicated environment (--python) often helps.",
            )
        installed += packages
    return installed
