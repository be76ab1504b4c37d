"""From a video to SyncNet scores, following syncnet_python's ``run_pipeline.py`` and Wav2Lip's
``calculate_scores_real_videos`` step by step (their re-encodes change the numbers, so they are kept):

1. the clip → MPEG-4 AVI at 25 fps (``-qscale:v 2 -async 1 -r 25``) → JPEG frames, 16 kHz mono WAV;
2. S3FD on every frame (scale 0.25, score > 0.9);
3. face tracks: IoU > 0.5 with the track's last box, at most 25 frames missed,
   more than ``min_track`` detections, boxes interpolated, mean size > 100 px;
4. each track → 224x224 crop (median-smoothed box, 40 % margin, grey padding)
   written as XVID AVI with its audio cut;
5. that crop → JPEG frames and WAV again → SyncNet embeddings of 5-frame and
   MFCC windows → :func:`lse.sync_scores`.

Scene cuts are not detected (syncnet_python runs PySceneDetect): the clips
scored here are single shots.  Every ffmpeg call is an argument list.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

try:  # as part of lipsync_tool (tests)
    from . import lse, mfcc
    from .options import Options
except ImportError:  # in the scorer's own process, where this folder is on sys.path
    import lse
    import mfcc
    from options import Options

FPS, RATE, CROP = 25, 16000, 224


@dataclass
class Track:
    frames: np.ndarray  # frame numbers, consecutive
    boxes: np.ndarray  # (n, 4) x1, y1, x2, y2
    scores: dict = field(default_factory=dict)


class NotComputed(Exception):
    """The clip cannot be scored; the message says why (it goes into the report)."""


def ffmpeg(ff: str, *args: str, timeout: float = 600) -> None:
    proc = subprocess.run([ff, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], capture_output=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise RuntimeError(f"ffmpeg failed ({' '.join(args[:2])}): {' | '.join(tail)}")


def convert(ff: str, video: Path, work: Path) -> tuple[list[Path], Path]:
    """Step 1: the 25 fps AVI, its JPEG frames and its 16 kHz mono WAV."""
    frames_dir = work / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    avi, wav = work / "video.avi", work / "audio.wav"
    ffmpeg(ff, "-i", str(video), "-qscale:v", "2", "-async", "1", "-r", str(FPS), str(avi))
    ffmpeg(ff, "-i", str(avi), "-qscale:v", "2", "-threads", "1", "-f", "image2", str(frames_dir / "%06d.jpg"))
    ffmpeg(ff, "-i", str(avi), "-ac", "1", "-vn", "-acodec", "pcm_s16le", "-ar", str(RATE), str(wav))
    return sorted(frames_dir.glob("*.jpg")), wav


def decoded_frames(avi: Path) -> int:
    """How many frames OpenCV decodes from the AVI: syncnet_python's one "scene" (PySceneDetect reads
    it through OpenCV), which can be a frame or two shorter than ffmpeg's JPEGs of the same file."""
    import cv2

    cap = cv2.VideoCapture(str(avi))
    count = 0
    try:
        while cap.grab():
            count += 1
    finally:
        cap.release()
    return count


def detect(detector, frames: list[Path], scale: float) -> list[list[np.ndarray]]:
    """Step 2: per frame, its face boxes (x1, y1, x2, y2, score)."""
    import cv2

    out = []
    for path in frames:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        out.append(list(detector.detect_faces(rgb, conf_th=0.9, scale=scale)))
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / float((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def track_faces(detections: list[list[np.ndarray]], opt: Options) -> list[Track]:
    """Step 3: greedy tracks over the whole clip (one shot), longest-lived first as found."""
    left = [list(faces) for faces in detections]
    tracks: list[Track] = []
    while True:
        track: list[tuple[int, np.ndarray]] = []
        for frame, faces in enumerate(left):
            if track and frame - track[-1][0] > opt.num_failed_det:
                break
            for k, face in enumerate(faces):
                if not track or _iou(face[:4], track[-1][1][:4]) > 0.5:
                    track.append((frame, face))
                    del faces[k]
                    break
        if not track:
            return tracks
        if len(track) <= opt.min_track:
            continue
        numbers = np.array([f for f, _ in track])
        boxes = np.array([b[:4] for _, b in track], dtype=np.float64)
        span = np.arange(numbers[0], numbers[-1] + 1)
        interp = np.stack([np.interp(span, numbers, boxes[:, k]) for k in range(4)], axis=1)
        if max(np.mean(interp[:, 2] - interp[:, 0]), np.mean(interp[:, 3] - interp[:, 1])) > opt.min_face_size:
            tracks.append(Track(span, interp))


def crop_track(ff: str, track: Track, frames: list[Path], wav: Path, out: Path, opt: Options) -> Path:
    """Step 4: the track's 224x224 XVID crop with its audio, as ``out``."""
    import cv2
    from scipy import signal

    size = signal.medfilt(np.maximum(track.boxes[:, 3] - track.boxes[:, 1], track.boxes[:, 2] - track.boxes[:, 0]) / 2, kernel_size=13)
    cy = signal.medfilt((track.boxes[:, 1] + track.boxes[:, 3]) / 2, kernel_size=13)
    cx = signal.medfilt((track.boxes[:, 0] + track.boxes[:, 2]) / 2, kernel_size=13)
    silent = out.with_name(out.stem + "t.avi")
    writer = cv2.VideoWriter(str(silent), cv2.VideoWriter_fourcc(*"XVID"), FPS, (CROP, CROP))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write XVID AVI files in this environment (an opencv build without video I/O?)")
    cs = opt.crop_scale
    try:
        for i, frame in enumerate(track.frames):
            bs = size[i]
            pad = int(bs * (1 + 2 * cs))
            image = np.pad(cv2.imread(str(frames[frame])), ((pad, pad), (pad, pad), (0, 0)), "constant", constant_values=(110, 110))
            my, mx = cy[i] + pad, cx[i] + pad
            face = image[int(my - bs) : int(my + bs * (1 + 2 * cs)), int(mx - bs * (1 + cs)) : int(mx + bs * (1 + cs))]
            writer.write(cv2.resize(face, (CROP, CROP)))
    finally:
        writer.release()
    cut = out.with_suffix(".wav")
    start, end = track.frames[0] / FPS, (track.frames[-1] + 1) / FPS
    ffmpeg(ff, "-i", str(wav), "-ss", f"{start:.3f}", "-to", f"{end:.3f}", str(cut))
    ffmpeg(ff, "-i", str(silent), "-i", str(cut), "-c:v", "copy", "-c:a", "copy", str(out))
    silent.unlink()
    return out


def load_crop(ff: str, crop: Path, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """Step 5a: a 224x224 face track's frames (BGR uint8) and its 16 kHz samples, decoded as the reference does."""
    import cv2
    from scipy.io import wavfile

    work.mkdir(parents=True, exist_ok=True)
    ffmpeg(ff, "-i", str(crop), "-threads", "1", "-f", "image2", str(work / "%06d.jpg"))
    ffmpeg(ff, "-i", str(crop), "-async", "1", "-ac", "1", "-vn", "-acodec", "pcm_s16le", "-ar", str(RATE), str(work / "audio.wav"))
    images = [cv2.resize(cv2.imread(str(p)), (CROP, CROP)) for p in sorted(work.glob("*.jpg"))]
    if not images:
        raise NotComputed("the face track has no frames")
    _, audio = wavfile.read(str(work / "audio.wav"))
    return np.stack(images), audio


def embed(model, device, images: np.ndarray, audio: np.ndarray, opt: Options) -> tuple[np.ndarray, np.ndarray]:
    """Step 5b: SyncNet embeddings of every 5-frame window and its 20 MFCC frames."""
    import torch

    windows = lse.window_count(len(images), len(audio), RATE, FPS)
    if windows < 1:
        raise NotComputed(f"too short to score: {len(images)} frames and {len(audio) / RATE:.2f} s of audio; SyncNet needs at least 6 frames (5-frame windows)")
    cc = torch.from_numpy(mfcc.mfcc(audio, RATE).T.astype(np.float32))[None, None]
    lip, aud = [], []
    with torch.no_grad():
        for i in range(0, windows, opt.batch_size):
            idx = range(i, min(windows, i + opt.batch_size))
            clip = np.stack([images[v : v + 5] for v in idx]).astype(np.float32)  # (B, 5, H, W, 3) BGR
            lip.append(model.forward_lip(torch.from_numpy(clip).permute(0, 4, 1, 2, 3).to(device)).cpu().numpy())
            aud.append(model.forward_aud(torch.cat([cc[:, :, :, v * 4 : v * 4 + 20] for v in idx]).to(device)).cpu().numpy())
    return np.concatenate(lip), np.concatenate(aud)


def score_crop(ff: str, model, device, crop: Path, work: Path, opt: Options) -> dict:
    """A 224x224 25 fps face track → its scores (syncnet_python's second stage alone)."""
    images, audio = load_crop(ff, crop, work)
    video_feats, audio_feats = embed(model, device, images, audio, opt)
    s = lse.sync_scores(video_feats, audio_feats, opt.vshift)
    return {
        "lse_d": s.lse_d,
        "lse_c": s.lse_c,
        "av_offset": s.av_offset,
        "frames": len(images),
        "windows": len(video_feats),
        "mean_dists": [float(x) for x in s.mean_dists],
    }


def score_video(ff: str, detector, model, device, video: Path, work: Path, opt: Options) -> dict:
    """A whole clip → scores of each face track; the longest track's are the clip's."""
    frames, wav = convert(ff, video, work)
    n = min(len(frames), decoded_frames(work / "video.avi"))  # the scene: tracks never run past it
    if n < opt.min_track:
        raise NotComputed(
            f"too short to score: {n} frames at {FPS} fps ({n / FPS:.2f} s); a face track needs more than {opt.min_track} frames "
            f"({opt.min_track / FPS:.1f} s, syncnet_python's min_track)"
        )
    detections = detect(detector, frames[:n], opt.facedet_scale)
    with_face = sum(1 for d in detections if len(d))
    tracks = track_faces(detections, opt)
    if not tracks:
        raise NotComputed(
            f"no face track: S3FD found a face in {with_face} of {n} frames; scoring needs one face in more than {opt.min_track} frames "
            f"(gaps of at most {opt.num_failed_det}) and larger than {opt.min_face_size} px"
        )
    results = []
    for i, track in enumerate(tracks):
        crop = crop_track(ff, track, frames, wav, work / f"crop{i:05d}.avi", opt)
        r = score_crop(ff, model, device, crop, work / f"crop{i:05d}", opt)
        results.append({**r, "start_frame": int(track.frames[0]), "frames": len(track.frames)})
    best = max(results, key=lambda r: r["frames"])
    return {**best, "tracks": results, "video_frames": n, "frames_with_face": with_face}
