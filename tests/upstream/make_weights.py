"""Random-weight checkpoints for the opt-in upstream tests, built from upstream's own model classes.

Run it with the *engine's* interpreter (it needs torch and upstream's
dependencies), pointing at an upstream checkout::

    python tests/upstream/make_weights.py wav2lip   --repo /work/upstream/Wav2Lip   --out /work/upstream-weights/wav2lip
    python tests/upstream/make_weights.py sadtalker --repo /work/upstream/SadTalker --out /work/upstream-weights/sadtalker
    /work/venv-syncnet/bin/python tests/upstream/make_weights.py syncnet --repo /work/upstream/syncnet_python --out /work/upstream-weights/syncnet
    python tests/upstream/make_weights.py restorer --out /work/upstream-weights/restorer

It imports the model classes from the checkout at run time (no upstream code is
copied here), saves state dicts of the shapes upstream expects, and writes a
registry override (``registry.toml``) that points lipsync-tool at them through
``file://`` URLs with their sha256 and size, and at the checkout itself as the
repository.  The last line it prints is a JSON summary.

The weights are random except for a few heads that are set by hand so that
upstream's detectors behave predictably:

* Wav2Lip's s3fd (``s3fd.pth``): every confidence head says "background", so
  face detection finds nothing and upstream raises its real "Face not detected"
  error (the runs that render pass ``--wav2lip-box``, which skips s3fd).
* SadTalker's RetinaFace (``detection_Resnet50_Final.pth``): only its 32 px
  anchors two or more cells from the image border score "face" (a border
  falloff made from the zero padding), with a little image-dependent noise
  choosing among them, and the box regression is zero: the best detection is
  a 32 px box inside the image.  Every interior anchor passes the threshold,
  so code that uses *all* detections (GFPGAN's face helper, ``--enhancer``)
  sees hundreds of faces: the enhancer is impractical with these weights.
* SadTalker's awing FAN (``alignment_WFLW_4HG.pth``): the last hourglass reads
  only its coordinate channels, so each landmark heatmap is a plane whose
  maximum is a corner of the face box: eyes at the top corners, mouth corners
  at the bottom ones, the rest (nose included) at the centre.  Croppers and the
  3DMM alignment then see a plausible, non-degenerate face.

* GFPGAN (``restorer``: ``GFPGANv1.4.pth``, ``detection_Resnet50_Final.pth``,
  ``parsing_parsenet.pth``): random GFPGAN; the RetinaFace above, whose landmark
  head puts a frontal 5-point set around each detection; ParseNet saying "skin"
  everywhere, so GFPGAN's face helper aligns, restores and pastes a 32 px face.
* syncnet_python's SyncNet (``syncnet_v2.model``): random, with its BatchNorm
  statistics calibrated on synthetic batches (``calibrate_syncnet`` in
  ``tests/syncnet_rig.py``) so the embeddings stay finite; saved as the
  published file is, a plain parameter dict without ``num_batches_tracked``.
* syncnet_python's S3FD (``sfd_face.pth``): rigged by ``rig_s3fd`` (same file)
  to find exactly one face on the clips ``make_face_clip`` makes.  The syncnet
  registry has no repository: the scorer is lipsync-tool's own code.

A numpy scalar is stored in the non-safetensors checkpoints (as older
training scripts did), so torch >= 2.6 loads them only through lipsync-tool's
trusted-weights shim: a run that succeeds has exercised it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

SITE_DIR = Path(__file__).resolve().parents[2] / "lipsync_tool" / "engines" / "compat" / "site"
TESTS_DIR = Path(__file__).resolve().parents[1]
SYNCNET_SHIM = Path(__file__).resolve().parent / "syncnet_cpu" / "sitecustomize.py"
WAV2LIP_COMMIT = "5c90fa9b4a2c2a37d0b4ebf7633ac41534eb9941"
SADTALKER_COMMIT = "cd4c0465ae0b54a6f85af57f5c65fec9fe23e7f8"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def toml_str(s: str) -> str:
    return json.dumps(s)


def write_registry(out: Path, engine: str, repo: Path | None, commit: str | None, files: dict[str, Path]) -> Path:
    """``registry.toml``: the engine's repository (if any) and a section per checkpoint."""
    lines = [f"[{engine}]", f"repo_url = {toml_str(repo.resolve().as_uri())}", f"commit = {toml_str(commit)}", ""] if repo else []
    for name, path in files.items():
        lines += [
            f'[{engine}.checkpoints."{name}"]',
            f"urls = [{toml_str(path.resolve().as_uri())}]",
            f"sha256 = {toml_str(sha256(path))}",
            f"size = {path.stat().st_size}",
            "",
        ]
    reg = out / "registry.toml"
    reg.write_text("\n".join(lines))
    return reg


def git(*args: str, cwd: Path) -> str:
    import subprocess

    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def servable_repo(repo: Path, commit: str, out: Path) -> tuple[Path, str]:
    """The repository and commit lipsync-tool should clone: always *commit*.

    A checkout that lacks some blobs of its own history (copies of SadTalker
    without the docs GIFs) cannot serve a full clone of *commit*.  Then a bare
    repository in ``out/serve.git`` borrows the checkout's objects (git
    alternates, nothing copied, the checkout untouched) and allows partial
    fetches: lipsync-tool's sparse, blob-filtered clone then fetches only the
    blobs its checkout needs, exactly as it does from GitHub.
    """
    missing = git("rev-list", "--objects", "--missing=print", commit, cwd=repo)
    if not any(line.startswith("?") for line in missing.splitlines()):
        return repo, commit
    serve = out / "serve.git"
    if not serve.exists():
        git("init", "-q", "--bare", str(serve), cwd=out)
        objects = Path(git("rev-parse", "--path-format=absolute", "--git-common-dir", cwd=repo)) / "objects"
        (serve / "objects" / "info" / "alternates").write_text(f"{objects}\n")
        git("config", "uploadpack.allowFilter", "true", cwd=serve)
        git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=serve)
    git("update-ref", "refs/heads/main", commit, cwd=serve)
    return serve, commit


def _import_from(repo: Path):
    sys.path.insert(0, str(repo.resolve()))
    os.chdir(repo)  # some upstream modules read files relative to the CWD at import


# -- Wav2Lip ---------------------------------------------------------------------------------


def make_wav2lip(repo: Path, out: Path, seed: int) -> dict[str, Path]:
    import numpy as np
    import torch

    torch.manual_seed(seed)
    _import_from(repo)
    from face_detection.detection.sfd.net_s3fd import s3fd
    from models import Wav2Lip

    files: dict[str, Path] = {}
    model = Wav2Lip()
    state = {"module." + k: v for k, v in model.state_dict().items()}  # trained under DataParallel
    for name in ("wav2lip.pth", "wav2lip_gan.pth"):
        path = out / name
        torch.save({"state_dict": state, "optimizer": None, "global_step": np.int64(0), "global_epoch": np.int64(0)}, path)
        files[name] = path

    det = s3fd()
    sd = det.state_dict()
    for key in sd:
        if "mbox_conf" in key:
            if key.endswith("weight"):
                sd[key] = torch.zeros_like(sd[key])
            else:  # background high, face low (conv3_3's head has 3 background channels, then face)
                bias = torch.full_like(sd[key], 10.0)
                bias[-1] = -10.0
                sd[key] = bias
    path = out / "s3fd.pth"
    torch.save(sd, path)
    files["s3fd.pth"] = path
    return files


# -- SadTalker -------------------------------------------------------------------------------


def _retinaface(seed: int, *, find_faces: bool = True) -> dict:
    """RetinaFace (resnet50) state dict: random, but for the heads.

    With *find_faces*, only the level-1 anchors of 32 px can score "face", and
    their score is 20 x F plus a little image-dependent noise, where F is 1
    two or more cells from the image border and lower near it.  F is made in
    ``ssh1``'s 7x7 branch: its first BN outputs a constant 1 in channel 0 and
    the two 3x3 convs after it average that channel, so the zero padding pulls
    the border down.  The detection is therefore a 32 px box inside the image
    (where exactly depends on the image, through the noise); the box
    regression is zero, so the box is the anchor.  Without *find_faces* every
    head says background.
    """
    import torch
    from facexlib.detection.retinaface import RetinaFace

    torch.manual_seed(seed)
    model = RetinaFace(network_name="resnet50", half=False, device="cpu")
    sd = model.state_dict()
    for key in sd:
        if key.startswith(("BboxHead.", "LandmarkHead.")):
            sd[key] = torch.zeros_like(sd[key])
        elif key.startswith("ClassHead."):
            # channels: anchor 0 (background, face), anchor 1 (background, face)
            if key.endswith("weight"):
                sd[key] = torch.zeros_like(sd[key])
            else:
                sd[key] = torch.tensor([8.0, 0.0, 8.0, 0.0])
    if find_faces:
        c = 0  # the channel that carries F
        sd["ssh1.conv5X5_1.1.weight"][c] = 0.0  # BN: constant output ...
        sd["ssh1.conv5X5_1.1.bias"][c] = 1.0  # ... of 1
        for conv in ("ssh1.conv7X7_2.0.weight", "ssh1.conv7x7_3.0.weight"):
            w = sd[conv]
            w[c] = 0.0
            w[c, c] = 1.0 / 9.0  # a 3x3 mean of channel c (zero padding at the border)
        f_channel = 256 // 2 + 256 // 4 + c  # SSH concatenates conv3X3 (128), conv5X5 (64), conv7X7 (64)
        head_w = sd["ClassHead.0.conv1x1.weight"]
        head_w[3] = torch.randn_like(head_w[3]) * 1e-3  # tie-breaking noise from the image
        head_w[3, f_channel] = 20.0
        sd["ClassHead.0.conv1x1.bias"] = torch.tensor([8.0, 0.0, 0.0, -16.0])  # interior logit 4 (score 0.982 > 0.97)
    model.load_state_dict(sd)
    return {k: v.clone() for k, v in model.state_dict().items()}


#: 98-point (WFLW) landmark → which corner its heatmap peaks at.  Eyes at the
#: top corners, the left mouth corner at the bottom left, everything else
#: (nose, right mouth corner included) at the centre: non-degenerate for
#: SadTalker's cropper and 3DMM alignment.  The bottom-right corner is avoided
#: because upstream's ``calculate_points`` reads one past a peak in the last cell.
def _landmark_corner(i: int) -> str:
    if 60 <= i <= 67:
        return "top_left"
    if 68 <= i <= 75:
        return "top_right"
    if i == 76:
        return "bottom_left"
    return "centre"


def _awing_fan(repo: Path, seed: int) -> dict:
    """The awing FAN (4 hourglasses, 98 landmarks): random, but the last
    module reads only its coordinate channels, so each heatmap is a plane (or
    a cone for the centre) whose maximum is where ``_landmark_corner`` says."""
    import torch
    from src.face3d.util.my_awing_arch import FAN

    torch.manual_seed(seed)
    model = FAN(num_modules=4, num_landmarks=98, device="cpu")
    sd = model.state_dict()
    last = 3
    # every ConvBlock of the last hourglass, and top_m_3, becomes the identity (its convs output 0)
    for key in sd:
        if key.startswith((f"m{last}.b", f"top_m_{last}.")) and ".conv" in key and key.endswith("weight"):
            sd[key] = torch.zeros_like(sd[key])
    # the coordconv's input: 256 features, then two coordinates, r, and two boundary channels
    # AddCoordsTh's first coordinate channel runs down the rows, the second along the columns
    yy, xx, rr = 256, 257, 258
    w = torch.zeros_like(sd[f"m{last}.coordconv.conv.weight"])
    b = torch.zeros_like(sd[f"m{last}.coordconv.conv.bias"])
    planes = {"top_left": (0, -1.0, -1.0), "top_right": (1, 1.0, -1.0), "bottom_left": (2, -1.0, 1.0)}
    for ch, ax, ay in planes.values():
        w[ch, xx], w[ch, yy], b[ch] = ax, ay, 4.0  # positive everywhere, so the ReLUs pass it
    w[3, rr], b[3] = -1.0, 4.0  # the centre: a cone
    sd[f"m{last}.coordconv.conv.weight"], sd[f"m{last}.coordconv.conv.bias"] = w, b
    eye = torch.zeros_like(sd[f"conv_last{last}.weight"])
    for ch in range(4):
        eye[ch, ch, 0, 0] = 1.0
    sd[f"conv_last{last}.weight"], sd[f"conv_last{last}.bias"] = eye, torch.zeros_like(sd[f"conv_last{last}.bias"])
    head = torch.zeros_like(sd[f"l{last}.weight"])
    channel = {"top_left": 0, "top_right": 1, "bottom_left": 2, "centre": 3}
    for i in range(98):
        head[i, channel[_landmark_corner(i)], 0, 0] = 1.0
    sd[f"l{last}.weight"], sd[f"l{last}.bias"] = head, torch.zeros_like(sd[f"l{last}.bias"])
    model.load_state_dict(sd)
    return {k: v.clone() for k, v in model.state_dict().items()}


def make_sadtalker(repo: Path, out: Path, seed: int, *, find_faces: bool = True) -> dict[str, Path]:
    import numpy as np
    import torch
    import yaml
    from safetensors.torch import save_file

    _import_from(repo)
    from src.audio2exp_models.networks import SimpleWrapperV2
    from src.audio2pose_models.audio2pose import Audio2Pose
    from src.face3d.models import networks
    from src.facerender.modules.generator import OcclusionAwareSPADEGenerator
    from src.facerender.modules.keypoint_detector import HEEstimator, KPDetector
    from src.facerender.modules.mapping import MappingNet
    from yacs.config import CfgNode

    torch.manual_seed(seed)
    config = repo / "src" / "config"
    render = yaml.safe_load((config / "facerender.yaml").read_text())["model_params"]
    common = render["common_params"]
    with open(config / "auido2pose.yaml") as f:
        pose_cfg = CfgNode.load_cfg(f)
    parts = {
        "face_3drecon": networks.define_net_recon(net_recon="resnet50", use_last_fc=False, init_path=""),
        "audio2pose": Audio2Pose(pose_cfg, None, device="cpu"),
        "audio2exp": SimpleWrapperV2(),
        "generator": OcclusionAwareSPADEGenerator(**render["generator_params"], **common),
        "kp_extractor": KPDetector(**render["kp_detector_params"], **common),
        "he_estimator": HEEstimator(**render["he_estimator_params"], **common),
    }
    tensors = {}
    for prefix, module in parts.items():
        for k, v in module.state_dict().items():
            tensors[f"{prefix}.{k}"] = v.detach().clone().contiguous()
    # upstream picks each part by substring; make sure that recovers exactly its keys
    for prefix, module in parts.items():
        if prefix == "he_estimator":
            continue
        picked = {k.replace(prefix + ".", "") for k in tensors if prefix in k}
        assert picked == set(module.state_dict()), f"key clash for {prefix}"
    files: dict[str, Path] = {}
    path = out / "SadTalker_V0.0.2_256.safetensors"
    save_file(tensors, str(path))
    files[path.name] = path

    for name, cfg_file in (("mapping_00229-model.pth.tar", "facerender.yaml"), ("mapping_00109-model.pth.tar", "facerender_still.yaml")):
        params = yaml.safe_load((config / cfg_file).read_text())["model_params"]["mapping_params"]
        path = out / name
        torch.save({"mapping": MappingNet(**params).state_dict(), "epoch": np.int64(int(name[8:13]))}, path)
        files[name] = path

    path = out / "alignment_WFLW_4HG.pth"
    torch.save({"state_dict": _awing_fan(repo, seed), "epoch": np.int64(0)}, path)
    files[path.name] = path
    path = out / "detection_Resnet50_Final.pth"
    torch.save(_retinaface(seed, find_faces=find_faces), path)
    files[path.name] = path

    return files


# -- GFPGAN and its face helper (Wav2Lip's --wav2lip-quality enhanced) ------------------------------

#: The 5 landmarks RetinaFace's landmark head puts around each anchor's centre, in units of
#: 0.1 x the anchor's size (its decoding): eyes, nose, mouth corners of a frontal face.
_FIVE_POINTS = ((-2.5, -1.9), (2.5, -1.9), (0.0, 0.3), (-1.9, 2.8), (1.9, 2.8))


def make_restorer(out: Path, seed: int) -> dict[str, Path]:
    """GFPGAN v1.4 (random ``GFPGANv1Clean``), facexlib's RetinaFace rigged as for SadTalker but
    with a frontal 5-point landmark set around each detection (so GFPGAN's helper aligns a
    32 px face), and ParseNet whose mask says "skin" everywhere (so the restored face is pasted)."""
    import torch
    from facexlib.parsing.parsenet import ParseNet
    from gfpgan.archs.gfpganv1_clean_arch import GFPGANv1Clean

    torch.manual_seed(seed)
    files: dict[str, Path] = {}
    gfpgan = GFPGANv1Clean(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
                           num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)  # fmt: skip
    path = out / "GFPGANv1.4.pth"
    torch.save({"params_ema": gfpgan.state_dict()}, path)
    files[path.name] = path

    retina = _retinaface(seed, find_faces=True)
    for key in retina:
        if key.startswith("LandmarkHead.") and key.endswith("bias"):
            per_anchor = [v for point in _FIVE_POINTS for v in point]
            retina[key] = torch.tensor(per_anchor * (retina[key].numel() // 10), dtype=retina[key].dtype)
    path = out / "detection_Resnet50_Final.pth"
    torch.save(retina, path)
    files[path.name] = path

    parse = ParseNet(in_size=512, out_size=512, parsing_ch=19)
    sd = parse.state_dict()
    (weight,) = [k for k in sd if k.startswith("out_mask_conv.") and k.endswith("weight")]
    (bias,) = [k for k in sd if k.startswith("out_mask_conv.") and k.endswith("bias")]
    sd[weight] = torch.zeros_like(sd[weight])
    sd[bias] = torch.zeros_like(sd[bias])
    sd[bias][1] = 10.0  # class 1 (skin) everywhere
    parse.load_state_dict(sd)
    with torch.no_grad():
        mask, _ = parse.eval()(torch.zeros(1, 3, 512, 512))
    assert (mask.argmax(dim=1) == 1).all(), "the rigged ParseNet does not say skin everywhere"
    path = out / "parsing_parsenet.pth"
    torch.save(parse.state_dict(), path)
    files[path.name] = path
    return files


# -- syncnet_python (the reference scorer) ------------------------------------------------------


def _syncnet_cpu_shim() -> None:
    """Load the shim the reference runs under (``syncnet_cpu/sitecustomize.py``): CUDA
    calls on the CPU, ``np.int``, and a stand-in for the torchvision that
    ``detectors/__init__`` imports but does not use."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("syncnet_cpu_shim", SYNCNET_SHIM)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


def make_syncnet(repo: Path, out: Path, seed: int) -> dict[str, Path]:
    """``syncnet_v2.model`` and ``sfd_face.pth`` from syncnet_python's own classes."""
    import torch

    _syncnet_cpu_shim()
    _import_from(repo)
    sys.path.insert(0, str(TESTS_DIR))
    from detectors.s3fd.nets import S3FDNet
    from syncnet_rig import calibrate_syncnet, rig_s3fd, syncnet_state
    from SyncNetModel import S

    files: dict[str, Path] = {}
    torch.manual_seed(seed)
    model = S(num_layers_in_fc_layers=1024)
    calibrate_syncnet(model, seed=seed)
    path = out / "syncnet_v2.model"
    torch.save(syncnet_state(model), path)
    files[path.name] = path

    torch.manual_seed(seed)
    det = S3FDNet(device="cpu")
    state = rig_s3fd(det.state_dict())
    assert set(state) == set(det.state_dict())
    det.load_state_dict(state)  # the names and shapes syncnet_python's S3FD loads
    path = out / "sfd_face.pth"
    torch.save({k: v.contiguous() for k, v in state.items()}, path)
    files[path.name] = path
    return files


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("engine", choices=["wav2lip", "sadtalker", "syncnet", "restorer"])
    p.add_argument("--repo", type=Path, help="the upstream checkout (not for restorer: GFPGAN and facexlib come from the interpreter)")
    p.add_argument("--out", type=Path, required=True, help="where to write the checkpoints and registry.toml")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-face", action="store_true", help="sadtalker: a face detector that finds nothing (for the error path)")
    args = p.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.engine == "restorer":
        sys.path.insert(0, str(SITE_DIR))  # basicsr imports torchvision's functional_tensor: the compat shims
        import lipsync_shims

        lipsync_shims.install()
        files = make_restorer(out, args.seed)
        print(json.dumps({"files": {k: str(v) for k, v in files.items()}}))
        return 0
    if args.repo is None:
        p.error("--repo is required")
    repo = args.repo.resolve()
    if args.engine == "syncnet":  # the reference scorer: its own CPU shim, and no repository in the registry
        files = make_syncnet(repo, out, args.seed)
        reg = write_registry(out, "syncnet", None, None, files)
        print(json.dumps({"registry": str(reg), "files": {k: str(v) for k, v in files.items()}}))
        return 0
    # upstream's model modules need the same compat shims as the engine (numpy aliases, functional_tensor, …)
    sys.path.insert(0, str(SITE_DIR))
    import lipsync_shims

    lipsync_shims.install()
    if args.engine == "wav2lip":
        files = make_wav2lip(repo, out, args.seed)
        reg = write_registry(out, "wav2lip", *servable_repo(repo, WAV2LIP_COMMIT, out), files)
    else:
        files = make_sadtalker(repo, out, args.seed, find_faces=not args.no_face)
        reg = write_registry(out, "sadtalker", *servable_repo(repo, SADTALKER_COMMIT, out), files)
    print(json.dumps({"registry": str(reg), "files": {k: str(v) for k, v in files.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
