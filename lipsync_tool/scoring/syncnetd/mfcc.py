"""MFCCs exactly as ``python_speech_features.mfcc`` computes them with its defaults (numpy, scipy).

SyncNet v2 was trained on these features (13 coefficients of 26 mel filters,
25 ms windows every 10 ms, pre-emphasis 0.97, lifter 22, the log frame energy
in place of c0).  The package itself has not been released since 2017, so the
few lines it runs are written here and checked against it in the tests.
"""

from __future__ import annotations

import decimal
import math

import numpy as np


def _round_half_up(x: float) -> int:
    return int(decimal.Decimal(x).quantize(decimal.Decimal("1"), rounding=decimal.ROUND_HALF_UP))


def _frames(signal: np.ndarray, frame_len: float, frame_step: float) -> np.ndarray:
    n = len(signal)
    frame_len, frame_step = _round_half_up(frame_len), _round_half_up(frame_step)
    count = 1 if n <= frame_len else 1 + math.ceil((1.0 * n - frame_len) / frame_step)
    padded = np.concatenate((signal, np.zeros((int((count - 1) * frame_step + frame_len) - n,))))
    idx = np.arange(frame_len)[None, :] + (np.arange(count) * frame_step)[:, None]
    return padded[idx]


def _hz2mel(hz):
    return 2595 * np.log10(1 + hz / 700.0)


def _mel2hz(mel):
    return 700 * (10 ** (mel / 2595.0) - 1)


def filterbanks(nfilt: int = 26, nfft: int = 512, rate: int = 16000, low: float = 0, high: float | None = None) -> np.ndarray:
    high = high or rate / 2
    points = np.linspace(_hz2mel(low), _hz2mel(high), nfilt + 2)
    bins = np.floor((nfft + 1) * _mel2hz(points) / rate)
    bank = np.zeros([nfilt, nfft // 2 + 1])
    for j in range(nfilt):
        for i in range(int(bins[j]), int(bins[j + 1])):
            bank[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(int(bins[j + 1]), int(bins[j + 2])):
            bank[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    return bank


def mfcc(signal: np.ndarray, rate: int = 16000, numcep: int = 13, nfilt: int = 26, preemph: float = 0.97, ceplifter: int = 22) -> np.ndarray:
    """(frames, 13) MFCCs of a mono signal (any numeric dtype, e.g. int16 samples)."""
    from scipy.fftpack import dct

    winlen, winstep = 0.025 * rate, 0.01 * rate
    nfft = 1
    while nfft < winlen:
        nfft *= 2
    signal = np.append(signal[0], signal[1:] - preemph * signal[:-1])
    frames = _frames(signal, winlen, winstep)
    power = 1.0 / nfft * np.square(np.absolute(np.fft.rfft(frames, nfft)))
    energy = np.sum(power, 1)
    energy = np.where(energy == 0, np.finfo(float).eps, energy)
    feat = np.dot(power, filterbanks(nfilt, nfft, rate).T)
    feat = np.where(feat == 0, np.finfo(float).eps, feat)
    feat = dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :numcep]
    n = np.arange(feat.shape[1])
    feat = (1 + (ceplifter / 2.0) * np.sin(np.pi * n / ceplifter)) * feat
    feat[:, 0] = np.log(energy)
    return feat
