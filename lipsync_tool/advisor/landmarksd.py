"""The advisor's child process: face-alignment's detector and 68 landmarks on one image.

Run as ``python landmarksd.py REQUEST.json REPLY.json`` in an interpreter with
torch and face-alignment (this one with the ``advisor`` extra, or an engine's
through ``--python``).  It imports nothing from lipsync-tool, so it works from
any interpreter.

The request names the verified weight files (``s3fd``: the detector's state
dict; ``fan``: the 2DFAN4 TorchScript archive), the image and the device.
face-alignment 1.4 loads its landmark network with ``torch.jit.load(
load_file_from_url(url))``, which looks in ``<torch hub dir>/checkpoints``
first: the parent hands a link farm holding the verified archive as
``hub_dir``, this process points torch's hub there, and every download
function face-alignment could reach is replaced by one that refuses, so a file
the farm lacks is an error, never a download.  The detector's weights are
passed as ``path_to_detector``.

The reply: ``{"ok": true, "width", "height", "scale", "faces": [{"box":
[x1, y1, x2, y2], "score", "landmarks": [[x, y] * 68]}], "versions"}`` in the
original image's pixels, or ``{"ok": false, "kind": "dependency" | "download"
| "image" | "failed", "error"}``.
"""

from __future__ import annotations

import json
import sys
import traceback
import warnings

#: Images larger than this (longest side, pixels) are shrunk for detection:
#: S3FD's cost grows with the area, and a face it cannot find at this size is too
#: small to animate anyway.  Boxes and landmarks come back in the original's pixels.
MAX_SIDE = 1600


class DownloadRefused(RuntimeError):
    pass


def _refuse(url, *args, **kwargs):
    raise DownloadRefused(f"face-alignment tried to download {url}; lipsync-tool only hands it verified files")


def _block_downloads(hub_dir: str) -> None:
    import torch.hub

    torch.hub.set_dir(hub_dir)
    torch.hub.download_url_to_file = _refuse
    torch.hub.load_state_dict_from_url = _refuse
    import torch.utils.model_zoo

    torch.utils.model_zoo.load_url = _refuse
    import face_alignment.utils

    face_alignment.utils.download_url_to_file = _refuse
    try:
        import face_alignment.detection.sfd.sfd_detector as sfd

        sfd.load_url = _refuse
    except ImportError:  # another layout: path_to_detector still keeps it off the network
        pass


def _load_image(path: str):
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        width, height = im.size
        scale = 1.0
        if max(width, height) > MAX_SIDE:
            scale = MAX_SIDE / max(width, height)
            im = im.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.BILINEAR)
        return np.asarray(im).copy(), width, height, scale


def _landmarks_type(fa):
    types = fa.LandmarksType
    return getattr(types, "TWO_D", None) or types._2D  # 1.4 renamed _2D to TWO_D


def detect(request: dict) -> dict:
    try:
        import face_alignment as fa
        import torch
    except ImportError as exc:
        return {"ok": False, "kind": "dependency", "error": f"{exc} (in {sys.executable})"}
    _block_downloads(request["hub_dir"])
    try:
        image, width, height, scale = _load_image(request["image"])
    except OSError as exc:  # PIL's UnidentifiedImageError is one
        return {"ok": False, "kind": "image", "error": f"cannot be read as an image ({exc})"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No faces were detected." is our reply, not a warning
        model = fa.FaceAlignment(
            _landmarks_type(fa),
            device=request.get("device", "cpu"),
            flip_input=False,
            face_detector="sfd",
            face_detector_kwargs={"path_to_detector": request["s3fd"], "filter_threshold": request.get("threshold", 0.5)},
        )
        landmarks, _, boxes = model.get_landmarks_from_image(image, return_bboxes=True)
    faces = []
    for pts, box in zip(landmarks or [], boxes or []):
        faces.append(
            {
                "box": [float(v) / scale for v in box[:4]],
                "score": float(box[4]) if len(box) > 4 else None,
                "landmarks": [[float(x) / scale, float(y) / scale] for x, y in pts[:, :2].tolist()],
            }
        )
    versions = {"torch": torch.__version__, "face_alignment": getattr(fa, "__version__", "?"), "python": sys.version.split()[0]}
    return {"ok": True, "width": width, "height": height, "scale": scale, "faces": faces, "versions": versions}


def main(argv: list[str]) -> int:
    request_path, reply_path = argv[1], argv[2]
    with open(request_path, encoding="utf-8") as f:
        request = json.load(f)
    try:
        reply = detect(request)
    except DownloadRefused as exc:
        reply = {"ok": False, "kind": "download", "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - every failure becomes a reply the parent can word
        traceback.print_exc()
        reply = {"ok": False, "kind": "failed", "error": f"{type(exc).__name__}: {exc}"}
    with open(reply_path, "w", encoding="utf-8") as f:
        json.dump(reply, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
