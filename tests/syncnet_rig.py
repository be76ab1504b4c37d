"""Random SyncNet/S3FD weights that behave predictably, and the clips they are meant for.

Used by the CI scoring tests (with lipsync-tool's own network classes) and by
the opt-in reference check (``tests/upstream/make_weights.py syncnet``, with
syncnet_python's classes): both have the same parameter names, so the same
state-dict surgery applies to either.

:func:`rig_s3fd` makes the S3FD face detector see brightness.  Every VGG and
extra conv passes two channels through its centre tap and zeroes the rest:

* channel 0: ``relu((mean(RGB − S3FD's mean) − THRESHOLD) / SCALE)``, bright
  pixels only, max-pooled on the way down;
* channel 1: a constant 1 (a bias), so the L2Norm of conv4_3 gives
  ``c0 / sqrt(c0² + 1)``, which grows with brightness.

Only conv4_3's head (stride 8, 32 px anchors) can say "face", with a logit
that grows with that value; every other head says background and every box
regression is zero.  On :func:`make_face_clip`'s frames (a bright, slightly
off-centre Gaussian "face" on a dark background) the brightest 8x8 cell wins:
one 32 px box at the detector's 0.25 scale, which is a 128 px face in the
640x480 frame.  Frames without the blob have no face.

:func:`calibrate_syncnet` sets a randomly initialised SyncNet's BatchNorm
statistics from synthetic batches, so its embeddings are O(1) instead of
overflowing: random, but numerically tame.
"""

from __future__ import annotations

import math
import subprocess
import wave
from pathlib import Path

#: The conv layers of S3FD's ``vgg`` ModuleList and of ``extras``.
VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28, 31, 33)
EXTRA_CONVS = (0, 1, 2, 3)
THRESHOLD = 40.0  # how far above S3FD's mean colour a pixel must be to count
SCALE = 100.0
FACE_GAIN = 40.0  # the face logit per unit of normalised brightness
FACE_BIAS = -12.0  # so only c0/sqrt(c0²+1) > ~0.36 scores > 0.9


def _centre_taps(weight, bias, pairs, *, zero_bias: bool = True) -> None:
    weight.zero_()
    if zero_bias:
        bias.zero_()
    kh, kw = weight.shape[-2:]
    for out_c, in_c, value in pairs:
        weight[out_c, in_c, kh // 2, kw // 2] = value


def rig_s3fd(state: dict) -> dict:
    """A copy of an S3FD state dict (syncnet_python's parameter names) rigged as described above."""
    sd = {k: v.clone() for k, v in state.items()}
    for i in VGG_CONVS:
        w, b = sd[f"vgg.{i}.weight"], sd[f"vgg.{i}.bias"]
        if i == 0:
            _centre_taps(w, b, [(0, c, 1.0 / (3 * SCALE)) for c in range(3)])
            b[0] = -THRESHOLD / SCALE
            b[1] = 1.0  # the constant channel
        else:
            _centre_taps(w, b, [(0, 0, 1.0), (1, 1, 1.0)])
    for i in EXTRA_CONVS:
        _centre_taps(sd[f"extras.{i}.weight"], sd[f"extras.{i}.bias"], [(0, 0, 1.0), (1, 1, 1.0)])
    for i in range(6):
        sd[f"loc.{i}.weight"].zero_()
        sd[f"loc.{i}.bias"].zero_()
        w, b = sd[f"conf.{i}.weight"], sd[f"conf.{i}.bias"]
        w.zero_()
        b.fill_(10.0)  # background ...
        b[-1] = -10.0  # ... and no face (conf.0 has 3 background channels, then face)
    for name in ("L2Norm3_3.weight", "L2Norm4_3.weight", "L2Norm5_3.weight"):
        sd[name].fill_(1.0)
    w, b = sd["conf.1.weight"], sd["conf.1.bias"]
    w[1, 0, 1, 1] = FACE_GAIN
    b[0], b[1] = 0.0, FACE_BIAS
    return sd


def calibrate_syncnet(model, seed: int = 0, batches: int = 3) -> None:
    """Set *model*'s BatchNorm running statistics from synthetic inputs (then eval)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model.forward_lip(torch.rand(4, 3, 5, 224, 224, generator=gen) * 255.0)
            model.forward_aud(torch.randn(4, 1, 13, 20, generator=gen) * 10.0)
    model.eval()


def syncnet_state(model) -> dict:
    """The published layout: a plain parameter dict without ``num_batches_tracked``."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


# -- clips -------------------------------------------------------------------------------------


def _envelope(t: float) -> float:
    """A syllable-like loudness, 0..1, about 4 syllables a second."""
    return max(0.0, math.sin(2 * math.pi * 2.1 * t)) ** 2 * (0.6 + 0.4 * math.sin(2 * math.pi * 0.37 * t))


def make_face_clip(
    path: Path,
    *,
    seconds: float = 5.0,
    size: tuple[int, int] = (640, 480),
    fps: int = 25,
    face: bool = True,
    blank_frames: tuple[int, ...] = (),
    ffmpeg: str = "ffmpeg",
) -> Path:
    """An MP4 (H.264 + AAC) of a bright Gaussian "face" whose dark "mouth" opens with the audio's loudness."""
    import numpy as np

    w, h = size
    n = round(seconds * fps)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy, sigma = w * 0.48 + 3.3, h * 0.5 + 1.7, 40.0
    blob = 40.0 + 200.0 * np.exp(-(((xx - cx) / sigma) ** 2 + ((yy - cy) / (sigma * 1.15)) ** 2) / 2.0)
    frames = []
    for i in range(n):
        img = np.full((h, w), 40.0, np.float32) if (not face or i in blank_frames) else blob.copy()
        if face and i not in blank_frames:
            opening = 2.0 + 14.0 * _envelope(i / fps)
            mouth = (((xx - cx) / 16.0) ** 2 + ((yy - (cy + 30.0)) / opening) ** 2) <= 1.0
            img[mouth] = 60.0
        frames.append(np.repeat(img[:, :, None], 3, axis=2).clip(0, 255).astype(np.uint8))
    wav = path.with_suffix(".wav")
    rate = 16000
    t = np.arange(int(seconds * rate)) / rate
    env = np.array([_envelope(x) for x in t[:: rate // 100]]).repeat(rate // 100)[: len(t)]
    voice = (np.sin(2 * np.pi * 180 * t) + 0.5 * np.sin(2 * np.pi * 360 * t) + 0.25 * np.sin(2 * np.pi * 720 * t)) * env
    with wave.open(str(wav), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes((voice / 1.75 * 20000).astype("<i2").tobytes())
    argv = [ffmpeg, "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-", "-i", str(wav)]
    argv += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18", "-c:a", "aac", "-shortest", str(path)]
    subprocess.run(argv, input=b"".join(f.tobytes() for f in frames), check=True, timeout=120)
    wav.unlink()
    return path


# -- weights in the published format, with a registry override ----------------------------------


def write_weights(out: Path, *, seed: int = 0, syncnet_cls=None, s3fd_cls=None) -> Path:
    """``syncnet_v2.model`` and ``sfd_face.pth`` (plain parameter dicts) in *out*, and
    ``registry.toml`` naming them by ``file://`` URL with their sha256 and size.

    The classes default to lipsync-tool's own (:mod:`lipsync_tool.scoring.syncnetd.nets`);
    the opt-in reference check passes syncnet_python's.
    """
    import hashlib

    import torch

    if syncnet_cls is None or s3fd_cls is None:
        from lipsync_tool.scoring.syncnetd import nets

        syncnet_cls, s3fd_cls = syncnet_cls or nets.SyncNet, s3fd_cls or nets.S3FDNet
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = syncnet_cls()
    calibrate_syncnet(model, seed)
    torch.save(syncnet_state(model), out / "syncnet_v2.model")
    torch.save(rig_s3fd(s3fd_cls().state_dict()), out / "sfd_face.pth")
    lines = []
    for name in ("syncnet_v2.model", "sfd_face.pth"):
        path = out / name
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f'[syncnet.checkpoints."{name}"]\nurls = ["{path.as_uri()}"]\nsha256 = "{digest}"\nsize = {path.stat().st_size}\n')
    registry = out / "registry.toml"
    registry.write_text("\n".join(lines))
    return registry
