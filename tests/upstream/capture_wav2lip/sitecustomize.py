"""TEST-ONLY: record every frame an engine hands to ``cv2.VideoWriter``.

Put this directory on the engine process's PYTHONPATH *after* lipsync-tool's
compat site dir: lipsync-tool's ``sitecustomize`` installs its shims and then
runs the next ``sitecustomize`` on ``sys.path``, which is this one.  With
``LIPSYNC_TOOL_CAPTURE_FRAMES=PATH.npy`` in the environment, ``cv2.VideoWriter``
becomes a wrapper that passes everything to the real writer and also keeps a
copy of each written frame; the frames (N x H x W x 3, uint8, in the order
written) are saved to PATH on every ``release()`` and at exit.  Without the
variable it does nothing.  It contains no engine code: it only wraps OpenCV.
"""

import atexit
import os

_PATH = os.environ.get("LIPSYNC_TOOL_CAPTURE_FRAMES")


def _install(path: str) -> None:
    import cv2
    import numpy as np

    real_writer = cv2.VideoWriter
    captured: list = []

    def save() -> None:
        if captured:
            with open(path, "wb") as f:
                np.save(f, np.stack(captured))

    class CapturingVideoWriter:
        """cv2.VideoWriter, plus a copy of every frame written."""

        def __init__(self, *args, **kwargs):
            self._writer = real_writer(*args, **kwargs)

        def write(self, frame):
            captured.append(np.array(frame, dtype=np.uint8, copy=True))
            return self._writer.write(frame)

        def release(self):
            save()
            return self._writer.release()

        def __getattr__(self, name):
            return getattr(self._writer, name)

    cv2.VideoWriter = CapturingVideoWriter
    atexit.register(save)


if _PATH:
    _install(_PATH)
