"""ffmpeg and media: finding ffmpeg, probing files, staging inputs, encoding.

ffmpeg-python is imported only in this package, and only inside the
functions that build a graph, so importing it stays cheap.

* :mod:`.binary`: the ffmpeg binary (discovery, version, the engine's shim);
* :mod:`.probe`: describing a file with ``ffmpeg -i``;
* :mod:`.images`: decoding any still image into 8-bit RGB;
* :mod:`.staging`: validating the inputs and staging them for the engine;
* :mod:`.faces`: the face pre-check;
* :mod:`.encoding`: the upscale, HLS and chunk passes, and running them;
* :mod:`.compose`: compare's labelled side-by-side video.
"""

from __future__ import annotations

from .binary import FFmpeg, find_ffmpeg
from .compose import ENV_FONT, FONT_DIRS, Clip, find_font, side_by_side_argv, side_by_side_graph
from .encoding import (
    AAC_FRAME,
    AAC_PRIMING,
    AudioSource,
    adts_frames,
    concat_list,
    encode_aac_argv,
    frame_rate,
    hls_argv,
    normalize_clip_argv,
    run_ffmpeg_job,
    slice_adts,
    upscale_argv,
    upscale_graph,
)
from .faces import FACE_NOTICE_MIN_SCORE, FaceBox, count_faces, find_faces, find_faces_in_array, several_faces_message
from .probe import AudioStream, MediaInfo, VideoStream, parse_probe, probe, read_error
from .staging import (
    ENGINE_SAMPLE_RATE,
    MAX_ASPECT,
    MAX_IMAGE_SIDE,
    MIN_AUDIO_SECONDS,
    MIN_IMAGE_SIDE,
    SILENCE_DB,
    TRUNCATION_MIN_FRACTION,
    TRUNCATION_MIN_SECONDS,
    AudioCheck,
    FaceInput,
    first_frame,
    stage_audio,
    stage_face,
    stage_video,
)

__all__ = [
    "AAC_FRAME",
    "AAC_PRIMING",
    "ENGINE_SAMPLE_RATE",
    "ENV_FONT",
    "FACE_NOTICE_MIN_SCORE",
    "FONT_DIRS",
    "MAX_ASPECT",
    "MAX_IMAGE_SIDE",
    "MIN_AUDIO_SECONDS",
    "MIN_IMAGE_SIDE",
    "SILENCE_DB",
    "TRUNCATION_MIN_FRACTION",
    "TRUNCATION_MIN_SECONDS",
    "AudioCheck",
    "AudioSource",
    "AudioStream",
    "Clip",
    "FFmpeg",
    "FaceBox",
    "FaceInput",
    "MediaInfo",
    "VideoStream",
    "adts_frames",
    "concat_list",
    "count_faces",
    "encode_aac_argv",
    "find_faces",
    "find_faces_in_array",
    "find_ffmpeg",
    "find_font",
    "first_frame",
    "frame_rate",
    "hls_argv",
    "normalize_clip_argv",
    "parse_probe",
    "probe",
    "read_error",
    "run_ffmpeg_job",
    "several_faces_message",
    "side_by_side_argv",
    "side_by_side_graph",
    "slice_adts",
    "stage_audio",
    "stage_face",
    "stage_video",
    "upscale_argv",
    "upscale_graph",
]
