"""syncnet_python's knobs, with its defaults (stdlib only: lipsync-tool's side imports it too)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Options:
    """``run_pipeline.py``'s and ``calculate_scores``' options (their flag names, their defaults)."""

    vshift: int = 15
    batch_size: int = 20
    facedet_scale: float = 0.25
    crop_scale: float = 0.40
    min_track: int = 100
    num_failed_det: int = 25
    min_face_size: int = 100
