"""The compat shims, against the real installed libraries.

Each shim is exercised the way an engine gets it: in a subprocess whose
PYTHONPATH starts with ``lipsync_tool/engines/compat/site`` (so the real
``sitecustomize`` installs the post-import hook).  Where it matters, the same
code is also run *without* the shims, to show that the installed library
really has the breakage the shim repairs.

Libraries these tests need: numpy, librosa, opencv-python-headless, pillow,
torch, and torchvision for its one test (on this kind of machine:
``pip install torch==2.14.1 torchvision==0.29.1 librosa opencv-python-headless numpy pillow``).
Where one is missing its tests are skipped, unless
``LIPSYNC_TOOL_REQUIRE_COMPAT_LIBS=1`` (set it in CI), which turns a missing
library into a failure of ``test_compat_libraries_are_installed``.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lipsync_tool.engines.compat import ENV_SEED, ENV_SHIM_LOG, ENV_TRUSTED, ENV_URL_MAP, SITE_DIR, compat_env

SHIMS_FILE = SITE_DIR / "lipsync_shims.py"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIPSYNC_TOOL_") and k != "PYTHONPATH"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.update(extra)
    return env


def run_py(code: str, *, shims: bool = True, extra_path: list[Path] = (), cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run *code* in a fresh interpreter, with the shims (as an engine gets them) or without."""
    path = ([str(SITE_DIR)] if shims else []) + [str(p) for p in extra_path]
    full_env = _clean_env(**env)
    if path:
        full_env["PYTHONPATH"] = os.pathsep.join(path)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=240, check=False)


def result_of(proc: subprocess.CompletedProcess):
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_shims_module():
    """lipsync_shims as a plain module in this process (no hook installed)."""
    spec = importlib.util.spec_from_file_location("lipsync_shims_under_test", SHIMS_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def needs(*modules: str):
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}")


def _torchvision_importable() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    return run_py("import torchvision", shims=False).returncode == 0


def version(dist: str) -> tuple[int, ...]:
    from importlib.metadata import version as v

    return load_shims_module().version_tuple(v(dist))


# -- the site dir itself -------------------------------------------------------------------------


def test_compat_libraries_are_installed():
    missing = [m for m in ("numpy", "librosa", "cv2", "PIL", "torch", "torchvision") if importlib.util.find_spec(m) is None]
    if "torchvision" not in missing and not _torchvision_importable():
        missing.append("torchvision (not importable beside this torch)")
    if missing and os.environ.get("LIPSYNC_TOOL_REQUIRE_COMPAT_LIBS") != "1":
        pytest.skip(f"not installed: {', '.join(missing)} (their shim tests are skipped)")
    assert not missing, f"the shim tests need: {', '.join(missing)}"



def test_site_files_are_standalone():
    """No file there imports lipsync_tool: the engine's interpreter may not have it."""
    files = sorted(SITE_DIR.glob("*.py"))
    assert SITE_DIR / "sitecustomize.py" in files and SHIMS_FILE in files
    for f in files:
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "lipsync_tool" for n in names), f"{f.name} imports {names}"


def test_startup_installs_hook_and_imports_nothing_heavy():
    proc = run_py(
        """
        import json, sys
        import lipsync_shims
        finders = [type(f).__name__ for f in sys.meta_path]
        heavy = sorted(m for m in ("numpy", "torch", "librosa", "cv2", "PIL", "torchvision", "lipsync_tool") if m in sys.modules)
        print(json.dumps({"finders": finders, "heavy": heavy}))
        """
    )
    out = result_of(proc)
    assert out["finders"][0] == "PostImportFinder"
    assert out["finders"].count("PostImportFinder") == 1
    assert out["heavy"] == []


def test_install_is_idempotent():
    out = result_of(
        run_py(
            """
            import json, sys, lipsync_shims
            lipsync_shims.install(); lipsync_shims.install()
            print(json.dumps(sum(type(f).__name__ == "PostImportFinder" for f in sys.meta_path)))
            """
        )
    )
    assert out == 1


def test_install_works_when_loaded_by_path():
    """sitecustomize's fallback: the site dir is not on sys.path, so the hook module is found beside the file."""
    out = result_of(
        run_py(
            f"""
            import importlib.util, json, sys
            assert {str(SITE_DIR)!r} not in sys.path
            spec = importlib.util.spec_from_file_location("lipsync_shims", {str(SHIMS_FILE)!r})
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            mod.install()
            print(json.dumps([type(f).__name__ for f in sys.meta_path][:1]))
            """,
            shims=False,
        )
    )
    assert out == ["PostImportFinder"]


def test_chains_to_the_sitecustomize_it_shadows(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['CHAINED_SITECUSTOMIZE_RAN'] = '1'\n")
    out = result_of(
        run_py(
            """
            import json, os, sys
            print(json.dumps({"chained": os.environ.get("CHAINED_SITECUSTOMIZE_RAN"),
                              "hook": any(type(f).__name__ == "PostImportFinder" for f in sys.meta_path)}))
            """,
            extra_path=[other],
        )
    )
    assert out == {"chained": "1", "hook": True}


@needs("numpy")
def test_real_loader_is_put_back_after_the_hook():
    out = result_of(
        run_py(
            """
            import json, numpy
            print(json.dumps([type(numpy.__loader__).__name__, type(numpy.__spec__.loader).__name__]))
            """
        )
    )
    assert out == ["SourceFileLoader", "SourceFileLoader"]


@needs("numpy")
def test_debug_log_only_when_asked():
    quiet = run_py("import numpy")
    loud = run_py("import numpy", **{ENV_SHIM_LOG: "1"})
    assert quiet.returncode == loud.returncode == 0
    assert "[lipsync_shims]" not in quiet.stderr
    assert re.search(r"\[lipsync_shims \d+\] DEBUG numpy", loud.stderr)


# -- 1. librosa.filters.mel with positional sr, n_fft (Wav2Lip's audio.py) --------------------------

MEL_CALL = "librosa.filters.mel(16000, 800, n_mels=80, fmin=55, fmax=7600)"


@needs("librosa")
def test_librosa_mel_positional_breaks_without_shim():
    if version("librosa") < (0, 10, 0):
        pytest.skip("librosa < 0.10 still takes sr and n_fft by position")
    proc = run_py(f"import librosa.filters\n{MEL_CALL}", shims=False)
    assert proc.returncode != 0 and "TypeError" in proc.stderr


@needs("librosa")
def test_librosa_mel_positional_with_shim():
    out = result_of(
        run_py(
            f"""
            import json, librosa, librosa.filters, numpy as np
            a = {MEL_CALL}
            b = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
            try:
                librosa.filters.mel(16000, 800, sr=16000)
                dup = None
            except TypeError as e:
                dup = str(e)
            print(json.dumps({{"shape": a.shape, "same": bool(np.array_equal(a, b)), "dup": dup}}))
            """,
            **{ENV_SHIM_LOG: "1"},
        )
    )
    assert out["shape"] == [80, 401]
    assert out["same"] is True
    assert "multiple values" in out["dup"]


def test_librosa_shim_leaves_an_old_signature_alone():
    shims = load_shims_module()

    class FakeFilters:
        @staticmethod
        def mel(sr, n_fft, n_mels=128):
            return (sr, n_fft, n_mels)

    original = FakeFilters.mel
    shims.shim_librosa_mel(FakeFilters)
    assert FakeFilters.mel is original
    assert shims.applied == []


# -- 2. numpy's removed aliases and VisibleDeprecationWarning ---------------------------------------


@needs("numpy")
def test_numpy_aliases_missing_without_shim():
    if version("numpy") < (1, 24, 0):
        pytest.skip("numpy < 1.24 still has np.float")
    proc = run_py("import numpy as np\nnp.float", shims=False)
    assert proc.returncode != 0 and "AttributeError" in proc.stderr


@needs("numpy")
def test_numpy_aliases_with_shim():
    out = result_of(
        run_py(
            """
            import json, warnings
            import numpy as np
            warnings.filterwarnings("ignore", category=np.VisibleDeprecationWarning)  # SadTalker does this at import
            vals = {n: getattr(np, n).__name__ for n in ("int", "float", "bool", "object", "complex", "str")}
            vals["vdw"] = np.VisibleDeprecationWarning is getattr(getattr(np, "exceptions", np), "VisibleDeprecationWarning")
            vals["astype"] = str(np.array([1.5, 2.5]).astype(np.float, copy=False).dtype)  # SadTalker's my_awing_arch
            vals["int_array"] = str(np.array([3, 4], dtype=np.int).dtype)  # Wav2Lip's face_detection/utils.py
            print(json.dumps(vals))
            """
        )
    )
    assert out["int"] == "int" and out["float"] == "float" and out["object"] == "object" and out["complex"] == "complex" and out["str"] == "str"
    assert out["bool"] in ("bool", "bool_")  # numpy 2 has np.bool again (its own type); then it is left alone
    assert out["vdw"] is True
    assert out["astype"] == "float64"
    assert out["int_array"] == "int64"


@needs("numpy")
def test_numpy_shim_is_idempotent_and_keeps_what_numpy_has():
    import numpy as np

    shims = load_shims_module()
    saved = dict(np.__dict__)
    try:
        shims.shim_numpy(np)
        first = list(shims.applied)
        shims.shim_numpy(np)
        assert shims.applied == first  # nothing more the second time
        if hasattr(np, "exceptions"):
            assert np.VisibleDeprecationWarning is np.exceptions.VisibleDeprecationWarning
        assert saved.get("bool", np.bool_) is np.__dict__.get("bool", np.bool_)  # never replaced
    finally:
        for name in list(np.__dict__):
            if name not in saved:
                delattr(np, name)


# -- 3. SadTalker's ragged trans_params (src/face3d/util/preprocess.py) --------------------------------

# A stand-in with the *shapes* of SadTalker's functions (not their code): POS
# returns t shaped (2, 1); resize_n_crop_img calls float() on t's elements;
# align_img packs [w0, h0, s, t[0], t[1]]; the caller float()s np.hsplit's pieces.
FACE3D_STANDIN = '''
import numpy as np

def POS(xp, x):
    t = np.array([[3.0], [4.0]])
    return t, np.float64(2.0)

def resize_n_crop_img(img, lm, t, s, target_size=224.0, mask=None):
    left = float((t[0] - 1.0) * s)
    up = float((1.0 - t[1]) * s)
    return img, lm, (left, up)

def align_img(img, lm, lm3D, mask=None, target_size=224.0, rescale_factor=102.0):
    w0, h0 = 640, 480
    t, s = POS(lm.transpose(), lm3D.transpose())
    s = rescale_factor / s
    img_new, lm_new, mask_new = resize_n_crop_img(img, lm, t, s, target_size=target_size, mask=mask)
    trans_params = np.array([w0, h0, s, t[0], t[1]])
    return trans_params, img_new, lm_new, mask_new
'''

FACE3D_CALLER = """
import json
import re
import numpy as np
from src.face3d.util.preprocess import align_img
trans_params, img, lm, crop = align_img(None, np.zeros((68, 2)), np.zeros((5, 3)))
values = np.array([float(item) for item in np.hsplit(trans_params, 5)]).astype(np.float32)
print(json.dumps({"values": values.tolist(), "crop": list(crop), "shape": list(trans_params.shape), "tail": trans_params[2:].tolist()}))
"""


@pytest.fixture
def face3d_standin(tmp_path) -> Path:
    pkg = tmp_path / "standin"
    mod = pkg / "src" / "face3d" / "util"
    mod.mkdir(parents=True)
    for d in (pkg / "src", pkg / "src" / "face3d", mod):
        (d / "__init__.py").write_text("")
    (mod / "preprocess.py").write_text(FACE3D_STANDIN)
    return pkg


@needs("numpy")
def test_sadtalker_trans_params_breaks_without_shim(face3d_standin):
    if version("numpy") < (1, 24, 0):
        pytest.skip("numpy < 1.24 tolerates ragged arrays")
    proc = run_py(FACE3D_CALLER, shims=False, extra_path=[face3d_standin])
    assert proc.returncode != 0
    assert "inhomogeneous" in proc.stderr or "only 0-dimensional arrays" in proc.stderr or "setting an array element with a sequence" in proc.stderr


@needs("numpy")
def test_sadtalker_trans_params_with_shim(face3d_standin):
    out = result_of(run_py(FACE3D_CALLER, extra_path=[face3d_standin], **{ENV_SHIM_LOG: "1"}))
    assert out["values"] == [640.0, 480.0, 51.0, 3.0, 4.0]
    assert out["shape"] == [5]
    assert out["tail"] == [51.0, 3.0, 4.0]
    assert out["crop"] == [102.0, -153.0]


@needs("numpy")
def test_floatable_array_refuses_more_than_one_element():
    import numpy as np

    cls = load_shims_module()._FloatableArray.make(np)
    a = np.arange(3.0).view(cls)
    assert float(a[1:2]) == 1.0
    with pytest.raises(TypeError):
        float(a)
    assert type(np.hsplit(a, 3)[0]) is cls


# -- 4. torchvision.transforms.functional_tensor (basicsr) ------------------------------------------


@pytest.mark.skipif(not _torchvision_importable(), reason="torchvision is not importable beside the installed torch")
def test_torchvision_functional_tensor_alias():
    plain = run_py("import torchvision.transforms.functional_tensor", shims=False)
    out = result_of(
        run_py(
            """
            import json, torch
            from torchvision.transforms.functional_tensor import rgb_to_grayscale
            import torchvision.transforms.functional_tensor as ft
            import torchvision.transforms._functional_tensor as real
            img = torch.rand(3, 4, 4)
            print(json.dumps({"same": bool(torch.equal(rgb_to_grayscale(img), real.rgb_to_grayscale(img))),
                              "fn": ft.rgb_to_grayscale is real.rgb_to_grayscale}))
            """
        )
    )
    assert out == {"same": True, "fn": True}
    if plain.returncode == 0:  # torchvision < 0.17 still has it: the alias must not have been used
        assert "is an alias" not in run_py("import torchvision.transforms.functional_tensor", **{ENV_SHIM_LOG: "1"}).stderr
    else:
        assert "ModuleNotFoundError" in plain.stderr


# -- 5. Pillow's Image.ANTIALIAS ------------------------------------------------------------------


@needs("PIL")
def test_pillow_antialias():
    if version("pillow") >= (10, 0, 0):
        assert run_py("from PIL import Image\nImage.ANTIALIAS", shims=False).returncode != 0
    out = result_of(
        run_py(
            """
            import json
            from PIL import Image
            img = Image.new("RGB", (64, 64)).resize((16, 16), Image.ANTIALIAS)  # SadTalker's croper
            print(json.dumps({"same": Image.ANTIALIAS == Image.LANCZOS, "size": img.size}))
            """
        )
    )
    assert out == {"same": True, "size": [16, 16]}


# -- 6. cv2.cv2 (OpenCV >= 4.6) ---------------------------------------------------------------------


@needs("cv2")
def test_cv2_cv2():
    if cv2_version() >= (4, 6, 0):
        assert run_py("import cv2\ncv2.cv2.ROTATE_90_CLOCKWISE", shims=False).returncode != 0
    out = result_of(
        run_py(
            """
            import json, sys
            import numpy as np, cv2
            frame = np.zeros((2, 3, 3), np.uint8)
            rotated = cv2.rotate(frame, cv2.cv2.ROTATE_90_CLOCKWISE)  # Wav2Lip's --rotate
            print(json.dumps({"shape": rotated.shape, "same_module": sys.modules["cv2"].cv2.ROTATE_90_CLOCKWISE == cv2.ROTATE_90_CLOCKWISE}))
            """
        )
    )
    assert out == {"shape": [3, 2, 3], "same_module": True}


def cv2_version() -> tuple[int, ...]:
    from importlib.metadata import PackageNotFoundError

    for dist in ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return (0, 0, 0)


# -- 7. torch.load weights_only, relaxed for trusted files only -------------------------------------


@pytest.fixture
def pickled_checkpoint(tmp_path) -> Path:
    """A checkpoint holding a numpy scalar, as older training scripts saved them."""
    path = tmp_path / "ckpt.pth"
    proc = run_py(
        f"""
        import numpy as np, torch
        torch.save({{"state_dict": {{"w": torch.ones(2)}}, "global_step": np.int64(7)}}, {str(path)!r})
        """,
        shims=False,
    )
    assert proc.returncode == 0, proc.stderr
    return path


LOAD = """
import json, sys, torch
kw = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
try:
    ck = torch.load(sys.argv[1], map_location="cpu", **kw)
    print(json.dumps({"ok": int(ck["global_step"])}))
except Exception as e:
    print(json.dumps({"error": type(e).__name__}))
"""


def _load(path: Path, *, shims: bool, trusted: list[str] = (), kwargs: dict | None = None) -> dict:
    env = _clean_env(**{ENV_TRUSTED: json.dumps([str(t) for t in trusted])})
    if shims:
        env["PYTHONPATH"] = str(SITE_DIR)
    argv = [sys.executable, "-c", LOAD, str(path)] + ([json.dumps(kwargs)] if kwargs is not None else [])
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=240, check=False)
    return result_of(proc)


@needs("torch", "numpy")
def test_torch_load_trusted_only(pickled_checkpoint, tmp_path):
    if version("torch") < (2, 6, 0):
        pytest.skip("torch < 2.6 loads full pickles by default")
    assert _load(pickled_checkpoint, shims=False, trusted=[pickled_checkpoint]) == {"error": "UnpicklingError"}
    assert _load(pickled_checkpoint, shims=True) == {"error": "UnpicklingError"}  # not trusted: torch's default stands
    assert _load(pickled_checkpoint, shims=True, trusted=[pickled_checkpoint]) == {"ok": 7}
    link = tmp_path / "linked.pth"
    link.symlink_to(pickled_checkpoint)  # the engine sees a link-farm path; realpath decides
    assert _load(link, shims=True, trusted=[pickled_checkpoint]) == {"ok": 7}
    # the caller's own choice is respected
    assert _load(pickled_checkpoint, shims=True, trusted=[pickled_checkpoint], kwargs={"weights_only": True}) == {"error": "UnpicklingError"}


def test_torch_shim_only_for_torch_2_6_and_later():
    shims = load_shims_module()

    class OldTorch:
        __version__ = "2.5.1+cpu"

        @staticmethod
        def load(f, **kw):
            return "original"

    original = OldTorch.load
    shims.shim_torch(OldTorch)
    assert OldTorch.load is original

    class NewTorch(OldTorch):
        __version__ = "2.6.0"

    shims.shim_torch(NewTorch)
    wrapped = NewTorch.load
    assert wrapped is not original and getattr(wrapped, shims.MARK)
    shims.shim_torch(NewTorch)
    assert NewTorch.load is wrapped  # idempotent


# -- seeding ------------------------------------------------------------------------------------------


@needs("torch", "numpy")
def test_seed_reaches_random_numpy_and_torch():
    draw = "import json, random, numpy, torch\nprint(json.dumps([random.random(), float(numpy.random.rand()), float(torch.rand(1))]))"
    seeded = result_of(run_py(draw, **{ENV_SEED: "1234"}))
    again = result_of(run_py(draw, **{ENV_SEED: "1234"}))
    reference = result_of(
        run_py(
            "import json, random, numpy, torch\nrandom.seed(1234); numpy.random.seed(1234); torch.manual_seed(1234)\n"
            "print(json.dumps([random.random(), float(numpy.random.rand()), float(torch.rand(1))]))",
            shims=False,
        )
    )
    unseeded = result_of(run_py(draw))
    assert seeded == again == reference
    assert unseeded != seeded


# -- URL map: download helpers serve verified local files ---------------------------------------------

# Stand-ins with the download helpers' names and signatures (the real
# basicsr/facexlib are exercised by the opt-in upstream tests).
FAKE_BASICSR = {
    "basicsr/__init__.py": "",
    "basicsr/utils/__init__.py": "from .download_util import load_file_from_url\n",
    "basicsr/utils/download_util.py": "def load_file_from_url(url, model_dir=None, progress=True, file_name=None):\n    raise OSError('network access to ' + url)\n",
    "facexlib/__init__.py": "",
    "facexlib/utils/__init__.py": "from .misc import load_file_from_url\n",
    "facexlib/utils/misc.py": "def load_file_from_url(url, model_dir=None, progress=True, file_name=None, save_dir=None):\n    raise OSError('network access to ' + url)\n",
}


def test_url_map_serves_local_files(tmp_path):
    root = tmp_path / "fakes"
    for rel, text in FAKE_BASICSR.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    local = tmp_path / "RealESRGAN_x2plus.pth"
    local.write_bytes(b"weights")
    url = "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth"
    code = f"""
        import json
        from basicsr.utils.download_util import load_file_from_url as b
        from facexlib.utils import load_file_from_url as f
        import facexlib.utils.misc as misc
        out = {{"basicsr": b(url={url!r}, model_dir="weights"), "facexlib": f({url!r}, model_dir="x", save_dir="y"), "misc": misc.load_file_from_url({url!r})}}
        try:
            b("https://example.org/other.pth")
        except OSError as e:
            out["other"] = str(e)
        print(json.dumps(out))
    """
    out = result_of(run_py(code, extra_path=[root], **{ENV_URL_MAP: json.dumps({url: str(local)})}))
    assert out == {"basicsr": str(local), "facexlib": str(local), "misc": str(local), "other": "network access to https://example.org/other.pth"}
    # without a map nothing is wrapped
    plain = run_py(code, extra_path=[root])
    assert plain.returncode != 0 and "network access to" in plain.stderr


@needs("torch")
def test_url_map_torch_hub(tmp_path):
    local = tmp_path / "weights.pth"
    result_of(run_py(f"import torch, json\ntorch.save({{'w': torch.arange(3)}}, {str(local)!r})\nprint(json.dumps(1))", shims=False))
    url = "https://example.invalid/weights-0123456789.pth"
    out = result_of(
        run_py(
            f"""
            import json, torch, torch.hub
            sd = torch.hub.load_state_dict_from_url({url!r}, map_location="cpu")
            torch.hub.download_url_to_file({url!r}, {str(tmp_path / 'copy.pth')!r})
            print(json.dumps({{"w": sd["w"].tolist(), "copied": torch.load({str(tmp_path / 'copy.pth')!r})["w"].tolist()}}))
            """,
            **{ENV_URL_MAP: json.dumps({url: str(local)})},
        )
    )
    assert out == {"w": [0, 1, 2], "copied": [0, 1, 2]}


# -- compat_env ---------------------------------------------------------------------------------------


def test_compat_env(tmp_path):
    real = tmp_path / "a.pth"
    real.write_bytes(b"x")
    link = tmp_path / "b.pth"
    link.symlink_to(real)
    env = compat_env(f"/some/where{os.pathsep}{SITE_DIR}", seed=7, trusted=[str(link), str(real)], url_map={"https://u": "/p"}, debug=True)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(SITE_DIR), "/some/where"]
    assert json.loads(env[ENV_TRUSTED]) == [str(real.resolve())]
    assert json.loads(env[ENV_URL_MAP]) == {"https://u": "/p"}
    assert env[ENV_SEED] == "7"
    assert env[ENV_SHIM_LOG] == "1"
    quiet = compat_env("", seed=None, trusted=[], url_map={}, debug=False)
    assert quiet["PYTHONPATH"] == str(SITE_DIR) and ENV_SEED not in quiet and quiet[ENV_SHIM_LOG] == "0"


def test_compat_env_debug_follows_the_tool_log_level(caplog):
    import logging

    logger = logging.getLogger("lipsync_tool")
    old = logger.level
    try:
        logger.setLevel(logging.DEBUG)
        assert compat_env("", seed=None, trusted=[], url_map={})[ENV_SHIM_LOG] == "1"
        logger.setLevel(logging.WARNING)
        assert ENV_SHIM_LOG not in compat_env("", seed=None, trusted=[], url_map={})
    finally:
        logger.setLevel(old)
