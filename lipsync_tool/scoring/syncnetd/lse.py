"""The scoring maths (numpy only): offsets, LSE-D and LSE-C from two embedding sequences.

For each video window *i* (5 frames) the distance to the audio windows
*i − v … i + v* (``v`` = ``vshift``, 15: ±0.6 s at 25 fps) is measured, with
zero vectors standing in past either end of the audio, as syncnet_python pads
it.  The mean over *i* gives one distance per offset; then

* **LSE-D** is the smallest of those means (lower is better);
* **LSE-C** is their median minus that smallest (higher is better);
* the **AV offset** is ``vshift − argmin``, in frames, as syncnet_python
  reports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: torch.nn.functional.pairwise_distance's eps, which syncnet_python's distances include.
PAIRWISE_EPS = 1e-6


@dataclass(frozen=True)
class SyncScores:
    lse_d: float
    lse_c: float
    av_offset: int
    mean_dists: np.ndarray  # one per offset, from −vshift to +vshift audio windows


def offset_distances(video: np.ndarray, audio: np.ndarray, vshift: int = 15) -> np.ndarray:
    """(len(video), 2·vshift+1) distances: video window i to audio window i + k − vshift."""
    video = np.asarray(video, np.float64)
    audio = np.asarray(audio, np.float64)
    padded = np.concatenate([np.zeros((vshift, audio.shape[1])), audio, np.zeros((vshift, audio.shape[1]))])
    width = 2 * vshift + 1
    out = np.empty((len(video), width))
    for i in range(len(video)):
        window = padded[i : i + width]
        if len(window) < width:  # audio shorter than video: pad as torch does (zeros)
            window = np.concatenate([window, np.zeros((width - len(window), audio.shape[1]))])
        out[i] = np.linalg.norm(video[i][None, :] - window + PAIRWISE_EPS, axis=1)
    return out


def lower_median(values: np.ndarray) -> float:
    """torch.median: the lower of the two middle values for an even count."""
    ordered = np.sort(np.asarray(values))
    return float(ordered[(len(ordered) - 1) // 2])


def sync_scores(video: np.ndarray, audio: np.ndarray, vshift: int = 15) -> SyncScores:
    if len(video) == 0:
        raise ValueError("no windows to score")
    mean = offset_distances(video, audio, vshift).mean(axis=0)
    best = int(np.argmin(mean))
    return SyncScores(lse_d=float(mean[best]), lse_c=lower_median(mean) - float(mean[best]), av_offset=vshift - best, mean_dists=mean)


def window_count(frames: int, audio_samples: int, rate: int = 16000, fps: int = 25) -> int:
    """How many 5-frame windows syncnet_python scores: min(frames, whole audio frames) − 5."""
    return max(0, min(frames, audio_samples // (rate // fps)) - 5)
