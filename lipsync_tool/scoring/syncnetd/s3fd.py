"""S3FD face detection as syncnet_python runs it: one scale, a score threshold, two NMS passes.

``detect_faces(rgb, conf_th=0.9, scale=0.25)`` resizes the RGB frame, takes
S3FD's mean colour off, and keeps the boxes whose face probability passes the
threshold, in the frame's own pixels: first S3FD's own NMS (IoU 0.3 among the
candidates above 0.05, as its detection layer does), then a stricter one
(IoU 0.1) across what is left.
"""

from __future__ import annotations

import numpy as np

MEAN_RGB = np.array([123.0, 117.0, 104.0], np.float32)
MIN_SIZES = (16, 32, 64, 128, 256, 512)
STEPS = (4, 8, 16, 32, 64, 128)
VARIANCES = (0.1, 0.2)
CANDIDATE_TH = 0.05
FIRST_NMS, FIRST_TOP_K, KEEP_TOP_K = 0.3, 5000, 750


def priors(image_hw: tuple[int, int], shapes: list[tuple[int, int]]) -> np.ndarray:
    """Anchor boxes (cx, cy, w, h), relative to the image, in the heads' order."""
    imh, imw = image_hw
    out = []
    for (fh, fw), step, size in zip(shapes, STEPS, MIN_SIZES):
        i, j = np.meshgrid(np.arange(fh), np.arange(fw), indexing="ij")
        cx = (j.ravel() + 0.5) / (imw / step)
        cy = (i.ravel() + 0.5) / (imh / step)
        out.append(np.stack([cx, cy, np.full_like(cx, size / imw), np.full_like(cy, size / imh)], axis=1))
    return np.concatenate(out).astype(np.float32)


def decode(loc: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Box offsets → (x1, y1, x2, y2), relative to the image."""
    centre = anchors[:, :2] + loc[:, :2] * VARIANCES[0] * anchors[:, 2:]
    size = anchors[:, 2:] * np.exp(loc[:, 2:] * VARIANCES[1])
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, top_k: int | None = None) -> list[int]:
    """Greedy non-maximum suppression, highest score first; the kept indices."""
    order = np.argsort(-scores, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= threshold]
    return keep


class Detector:
    """S3FD on one device; ``detect_faces`` returns an (n, 5) array of x1, y1, x2, y2, score."""

    def __init__(self, net, device) -> None:
        self.net = net.to(device).eval()
        self.device = device

    def detect_faces(self, rgb: np.ndarray, conf_th: float = 0.9, scale: float = 0.25) -> np.ndarray:
        import cv2
        import torch

        h, w = rgb.shape[:2]
        small = cv2.resize(rgb, dsize=(0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        x = torch.from_numpy((small.astype(np.float32) - MEAN_RGB).transpose(2, 0, 1).copy()).unsqueeze(0).to(self.device)
        with torch.no_grad():
            loc, scores, shapes = self.net(x)
        loc, scores = loc[0].cpu().numpy(), scores[0].cpu().numpy()
        anchors = priors(small.shape[:2], shapes)
        candidates = np.nonzero(scores > CANDIDATE_TH)[0]
        boxes = decode(loc[candidates], anchors[candidates])
        kept = nms(boxes, scores[candidates], FIRST_NMS, FIRST_TOP_K)[:KEEP_TOP_K]
        found = [(boxes[i] * [w, h, w, h], scores[candidates][i]) for i in kept if scores[candidates][i] > conf_th]
        if not found:
            return np.empty((0, 5))
        dets = np.array([[*box, s] for box, s in found], dtype=np.float64)
        return dets[nms(dets[:, :4], dets[:, 4], 0.1)]
