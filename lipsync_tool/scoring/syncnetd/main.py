"""The scorer's process: ``python main.py`` in an interpreter with torch, numpy, scipy and OpenCV.

It needs nothing from lipsync-tool: its sibling modules are found beside it.
The protocol is JSON lines.  stdin: first a setup line
``{"device": "cpu"|"cuda[:N]", "ffmpeg": PATH, "options": {…}, "weights": {"syncnet": PATH, "s3fd": PATH|null}}``,
then one request per line ``{"video": PATH, "face_crop": bool, "work": DIR}``.
stdout (a private copy; fd 1 is pointed at stderr so library prints go to the
log): ``{"ready": …}`` once, then one reply per request:
``{"ok": true, "result": {…}}``, ``{"ok": false, "not_computed": REASON}`` or
``{"ok": false, "error": MESSAGE, "kind": KIND}``.  It exits when stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

nets = pipeline = s3fd = None  # imported in main(), where a missing package is reported to the parent


def _import_siblings() -> None:
    global nets, pipeline, s3fd
    import nets
    import pipeline
    import s3fd


class WeightsError(Exception):
    """A weight file that is not what it should be (its message names the file)."""


def load_weights(module, path: str, what: str):
    """Load a plain parameter dict into *module* by name (``num_batches_tracked`` entries are ignored)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise WeightsError(f"{path}: cannot be read as {what} weights (a plain parameter dictionary): {exc}") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, not a parameter dictionary")
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    expected = {k for k in module.state_dict() if not k.endswith("num_batches_tracked")}
    missing, unknown = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unknown:
        raise WeightsError(f"{path}: not {what} weights (missing {missing[:3]}, unexpected {unknown[:3]})")
    try:
        module.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: parameter shapes do not match {what}: {str(exc).splitlines()[-1].strip()}") from None
    return module.eval()


class Scorer:
    def __init__(self, setup: dict) -> None:
        import cv2  # noqa: F401 - checked here, so a missing package fails the setup, not a clip
        import scipy.signal  # noqa: F401
        import torch

        self.device = torch.device(setup.get("device") or "cpu")
        self.ff = setup["ffmpeg"]
        self.opt = pipeline.Options(**(setup.get("options") or {}))
        self.weights = setup.get("weights") or {}
        self._model = self._detector = None
        self.torch = torch.__version__

    @property
    def model(self):
        if self._model is None:
            self._model = load_weights(nets.SyncNet(), self.weights["syncnet"], "SyncNet v2").to(self.device)
        return self._model

    @property
    def detector(self):
        if self._detector is None:
            if not self.weights.get("s3fd"):
                raise WeightsError("the S3FD face detector's weights were not given")
            self._detector = s3fd.Detector(load_weights(nets.S3FDNet(), self.weights["s3fd"], "S3FD"), self.device)
        return self._detector

    def handle(self, req: dict) -> dict:
        from pathlib import Path

        work = Path(req["work"])
        try:
            if req.get("face_crop"):
                result = pipeline.score_crop(self.ff, self.model, self.device, Path(req["video"]), work, self.opt)
            else:
                result = pipeline.score_video(self.ff, self.detector, self.model, self.device, Path(req["video"]), work, self.opt)
        except pipeline.NotComputed as exc:
            return {"ok": False, "not_computed": str(exc)}
        except WeightsError as exc:
            return {"ok": False, "error": str(exc), "kind": "weights"}
        return {"ok": True, "result": result}


def main() -> int:
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    lines = iter(sys.stdin.readline, "")
    try:
        setup = json.loads(next(lines))
        _import_siblings()
        scorer = Scorer(setup)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises a typed error
        traceback.print_exc()
        send({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        return 1
    send({"ready": True, "torch": scorer.torch, "device": str(scorer.device)})
    for line in lines:
        if not line.strip():
            continue
        try:
            reply = scorer.handle(json.loads(line))
        except Exception as exc:  # noqa: BLE001 - one clip's failure is that clip's error
            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "kind": "error"}
        send(reply)
    return 0


if __name__ == "__main__":
    sys.exit(main())
