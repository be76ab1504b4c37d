"""--install-deps picks torch's build before pip runs: the CPU wheels where
there is no GPU driver (PyPI's Linux torch is the multi-GB CUDA build), and
says what it will install, from where, and about how big.  Nothing here
downloads anything: pip is a fake interpreter that records its argv."""

from __future__ import annotations

import json
import logging
import stat
import sys
from pathlib import Path

import pytest

from lipsync_tool import runtime
from lipsync_tool.engines.sadtalker import SadTalker
from lipsync_tool.engines.wav2lip import Wav2Lip
from lipsync_tool.errors import UsageError
from lipsync_tool.runtime import TORCH_CPU_INDEX, TorchPlan, describe_install, install_commands, plan_torch_install, torch_choice

LINUX = {"platform": "linux", "machine": "x86_64"}


# -- the choice -------------------------------------------------------------------------------


def test_no_driver_on_linux_x86_64_means_the_cpu_index():
    plan = plan_torch_install(driver_present=False, **LINUX)
    assert (plan.variant, plan.index_url, plan.keep) == ("cpu", TORCH_CPU_INDEX, None)
    assert (plan.download_mb, plan.installed_mb) == (200, 700)
    assert "no NVIDIA driver" in plan.why


def test_a_driver_means_the_default_index_and_the_cuda_build():
    plan = plan_torch_install(driver_present=True, **LINUX)
    assert (plan.variant, plan.index_url) == ("cuda", None)
    assert (plan.download_mb, plan.installed_mb) == (2500, 6000)


def test_cuda_chosen_without_a_driver_means_the_default_index():
    plan = plan_torch_install(driver_present=False, choice="cuda", **LINUX)
    assert (plan.variant, plan.index_url) == ("cuda", None)
    assert "LIPSYNC_TOOL_TORCH=cuda" in plan.why


def test_cpu_chosen_with_a_driver_means_the_cpu_index():
    plan = plan_torch_install(driver_present=True, choice="cpu", **LINUX)
    assert (plan.variant, plan.index_url) == ("cpu", TORCH_CPU_INDEX)


@pytest.mark.parametrize("machine", ["arm64", "x86_64"])
@pytest.mark.parametrize("choice", ["auto", "cpu"])
def test_macos_needs_no_extra_index(machine, choice):
    """PyPI's macOS wheels are the CPU/MPS build already."""
    plan = plan_torch_install(driver_present=False, platform="darwin", machine=machine, choice=choice)
    assert (plan.variant, plan.index_url) == ("default", None)
    assert plan.download_mb and plan.download_mb < 200


def test_windows_without_a_driver_gets_the_cpu_index_too():
    plan = plan_torch_install(driver_present=False, platform="win32", machine="AMD64")
    assert (plan.variant, plan.index_url) == ("cpu", TORCH_CPU_INDEX)


def test_linux_aarch64_without_a_driver_uses_pypi():
    plan = plan_torch_install(driver_present=False, platform="linux", machine="aarch64")
    assert (plan.variant, plan.index_url) == ("default", None)


@pytest.mark.parametrize(
    ("installed", "variant", "index"),
    [
        ("2.5.1+cpu", "cpu", TORCH_CPU_INDEX),
        ("2.5.1+cu121", "cuda", "https://download.pytorch.org/whl/cu121"),
        ("2.14.1", "cuda", None),  # PyPI's Linux build
        ("2.6.0a0+git1234", "cuda", None),  # a local build: no index of its own
    ],
)
@pytest.mark.parametrize("driver", [False, True])
def test_an_installed_torch_is_kept_and_sets_the_index(installed, variant, index, driver):
    plan = plan_torch_install(driver_present=driver, choice="auto", already_installed=installed, **LINUX)
    assert (plan.variant, plan.index_url, plan.keep) == (variant, index, f"torch=={installed}")
    assert "already installed" in plan.why


def test_the_choice_comes_from_the_keyword_then_the_environment(monkeypatch):
    monkeypatch.delenv("LIPSYNC_TOOL_TORCH", raising=False)
    assert torch_choice() == "auto"
    monkeypatch.setenv("LIPSYNC_TOOL_TORCH", " CPU ")
    assert torch_choice() == "cpu"
    assert torch_choice("cuda") == "cuda"
    monkeypatch.setenv("LIPSYNC_TOOL_TORCH", "rocm")
    with pytest.raises(UsageError, match="LIPSYNC_TOOL_TORCH='rocm' is not one of auto, cpu, cuda"):
        torch_choice()
    with pytest.raises(ValueError):
        plan_torch_install(driver_present=False, choice="gpu", **LINUX)  # type: ignore[arg-type]


# -- the pip argv -----------------------------------------------------------------------------

PIP = ["/env/bin/python", "-m", "pip", "install", "--disable-pip-version-check"]


def test_argv_cpu_index_for_torch_alone_then_pypi():
    steps = [((), ["torch>=2.0", "torchvision>=0.17"]), ((), ["numpy>=1.24", "scipy"]), (("--no-build-isolation", "--no-deps"), ["basicsr>=1.4.2"])]
    commands = install_commands("/env/bin/python", steps, plan_torch_install(driver_present=False, **LINUX))
    assert [c.argv for c in commands] == [
        [*PIP, "--index-url", "https://download.pytorch.org/whl/cpu", "torch>=2.0", "torchvision>=0.17"],
        [*PIP, "numpy>=1.24", "scipy"],
        [*PIP, "--no-build-isolation", "--no-deps", "basicsr>=1.4.2"],
    ]
    assert [c.packages for c in commands] == [["torch>=2.0", "torchvision>=0.17"], ["numpy>=1.24", "scipy"], ["basicsr>=1.4.2"]]


def test_argv_default_index_and_a_mixed_step_is_split():
    commands = install_commands("/env/bin/python", [((), ["numpy", "torch>=2.0", "TorchVision"])], plan_torch_install(driver_present=True, **LINUX))
    assert [c.argv for c in commands] == [[*PIP, "torch>=2.0", "TorchVision"], [*PIP, "numpy"]]
    commands = install_commands("/env/bin/python", [((), ["numpy", "torch>=2.0", "torchvision"])], plan_torch_install(driver_present=False, **LINUX))
    assert [c.argv for c in commands] == [[*PIP, "--index-url", TORCH_CPU_INDEX, "torch>=2.0", "torchvision"], [*PIP, "numpy"]]


def test_argv_pins_the_kept_torch():
    plan = plan_torch_install(driver_present=False, already_installed="2.5.1+cpu", **LINUX)
    (command,) = install_commands("/env/bin/python", [((), ["torchvision>=0.17"])], plan)
    assert command.argv == [*PIP, "--index-url", TORCH_CPU_INDEX, "torchvision>=0.17", "torch==2.5.1+cpu"]
    assert command.packages == ["torchvision>=0.17"]


def test_the_announcement_says_what_where_and_how_big():
    plan = plan_torch_install(driver_present=False, **LINUX)
    commands = install_commands("/env/bin/python", [((), ["torch>=2.0", "torchvision>=0.17"]), ((), ["numpy>=1.24", "scipy"])], plan)
    text = describe_install("/env/bin/python", commands, plan)
    assert text == (
        f"Installing torch, torchvision (CPU build from {TORCH_CPU_INDEX}: no NVIDIA driver found; about 200 MB download, 700 MB on disk)"
        " and 2 other package(s) (numpy, scipy) into /env/bin/python. Set LIPSYNC_TOOL_TORCH=cuda for the CUDA build (about 2.5 GB download, 6 GB on disk)."
    )
    cuda = plan_torch_install(driver_present=True, **LINUX)
    text = describe_install("/py", install_commands("/py", [((), ["torch>=2.0"])], cuda), cuda)
    assert "CUDA build from pip's default index" in text and "about 2.5 GB download, 6 GB on disk" in text and "LIPSYNC_TOOL_TORCH=cpu" in text
    assert describe_install("/py", install_commands("/py", [((), ["numpy"])], None), None) == "Installing 1 package(s) into /py: numpy."


# -- install_deps, end to end with a fake interpreter ----------------------------------------------


def recording_python(tmp_path: Path, state: dict[str, str | None]) -> tuple[str, Path]:
    """An interpreter that answers the requirement query from *state* and
    records each ``-m pip …`` argv (as JSON) instead of running pip."""
    calls = tmp_path / "pip-calls.jsonl"
    script = tmp_path / "python"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"STATE, CALLS = {json.dumps(state)!r}, {str(calls)!r}\n"
        "if sys.argv[1] == '-m':\n"
        "    open(CALLS, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "else:\n"
        "    state = json.loads(STATE)\n"
        "    print(json.dumps({r: state.get(r) for r in json.loads(sys.argv[3])}))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), calls


@pytest.fixture
def no_driver_linux(monkeypatch, caplog):
    monkeypatch.setattr(runtime, "gpu_driver_present", lambda: False)
    monkeypatch.setattr(runtime, "_platform", lambda: ("linux", "x86_64"))
    monkeypatch.delenv("LIPSYNC_TOOL_TORCH", raising=False)
    monkeypatch.setattr(logging.getLogger("lipsync_tool"), "propagate", True)  # the CLI's setup turns it off
    caplog.set_level(logging.WARNING, logger="lipsync_tool.runtime")
    return caplog


def test_install_deps_without_a_driver_installs_cpu_torch_and_says_so(tmp_path, no_driver_linux):
    engine = SadTalker()
    py, calls = recording_python(tmp_path, {"numpy>=1.24": "2.4.6"})
    installed = runtime.install_deps(engine, py)
    argvs = [json.loads(line) for line in calls.read_text().splitlines()]
    assert argvs[0] == ["-m", "pip", "install", "--disable-pip-version-check", "--index-url", TORCH_CPU_INDEX, "torch>=2.0", "torchvision>=0.17"]
    assert all("--index-url" not in a and not any(r.startswith("torch") for r in a) for a in argvs[1:])
    assert argvs[-1][4:6] == ["--no-build-isolation", "--no-deps"]
    assert installed[:2] == ["torch>=2.0", "torchvision>=0.17"] and "numpy>=1.24" not in installed
    (announcement,) = [r for r in no_driver_linux.records if r.levelno == logging.WARNING and r.name == "lipsync_tool.runtime"]
    text = announcement.getMessage()
    assert text.startswith("Installing torch, torchvision (CPU build from https://download.pytorch.org/whl/cpu: no NVIDIA driver found; about 200 MB download")
    others = len([r for _, reqs in engine.requirements for r in reqs]) - 3  # torch, torchvision, numpy
    assert f"and {others} other package(s) (setuptools, wheel, scipy," in text and f"into {py}." in text
    assert "LIPSYNC_TOOL_TORCH=cuda" in text


def test_install_deps_honours_the_choice(tmp_path, no_driver_linux, monkeypatch):
    py, calls = recording_python(tmp_path, {})
    monkeypatch.setenv("LIPSYNC_TOOL_TORCH", "cuda")
    runtime.install_deps(Wav2Lip(), py)
    argvs = [json.loads(line) for line in calls.read_text().splitlines()]
    assert argvs[0] == ["-m", "pip", "install", "--disable-pip-version-check", "torch>=2.0"]
    assert "CUDA build" in no_driver_linux.text and "about 2.5 GB download, 6 GB on disk" in no_driver_linux.text


def test_install_deps_keeps_an_installed_torch(tmp_path, no_driver_linux):
    """torch there (a CUDA build from PyPI), torchvision missing: torchvision
    comes from torch's index, with torch pinned so that pip keeps it."""
    py, calls = recording_python(tmp_path, {"torch>=2.0": "2.14.1"})
    installed = runtime.install_deps(SadTalker(), py, torch_variant="cpu")
    argvs = [json.loads(line) for line in calls.read_text().splitlines()]
    assert argvs[0] == ["-m", "pip", "install", "--disable-pip-version-check", "torchvision>=0.17", "torch==2.14.1"]
    assert "torch>=2.0" not in installed
    assert "torch 2.14.1 is already installed and is kept (LIPSYNC_TOOL_TORCH=cpu applies to a new install only)" in no_driver_linux.text


def test_install_deps_with_nothing_missing_runs_no_pip(tmp_path, no_driver_linux):
    engine = Wav2Lip()
    py, calls = recording_python(tmp_path, {r: "1.0" for _, reqs in engine.requirements for r in reqs})
    assert runtime.install_deps(engine, py) == []
    assert not calls.exists() and not no_driver_linux.records


def test_a_bad_choice_fails_before_pip(tmp_path, no_driver_linux):
    py, calls = recording_python(tmp_path, {})
    with pytest.raises(UsageError, match="torch_variant='gpu'"):
        runtime.install_deps(Wav2Lip(), py, torch_variant="gpu")
    assert not calls.exists()


def test_torch_plan_is_a_value():
    assert plan_torch_install(driver_present=False, **LINUX) == TorchPlan("cpu", TORCH_CPU_INDEX, "no NVIDIA driver found", 200, 700)
