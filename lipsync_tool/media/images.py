"""Decoding still images into 8-bit RGB, whatever their format, mode or bit depth."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .binary import FFmpeg
from .probe import read_error


def open_image(src: Path):
    """*src* opened and loaded by Pillow, or None when Pillow does not know its format."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(src)
        im.load()
        return im
    except UnidentifiedImageError:
        return None
    except Image.DecompressionBombError as exc:
        raise InputError(f"is too large to decode safely ({exc})", subject=src, hint="Downscale it first.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot be decoded as an image ({exc})", subject=src, hint="Re-save it as PNG or JPEG.") from None


def decode_with_ffmpeg(src: Path, ff: FFmpeg, tmp: Path):
    """The first frame of an image Pillow cannot read, decoded by ffmpeg into 8-bit RGBA.

    ffmpeg converts any bit depth and pixel format (16-bit gray with alpha,
    float, planar) correctly; *tmp* is a scratch PNG, removed afterwards.
    """
    from PIL import Image

    proc = ff.run(
        ["-y", "-i", str(src), "-map", "0:v:0", "-frames:v", "1", "-pix_fmt", "rgba", "-c:v", "png", "-f", "image2", str(tmp)],
        what=f"decoding {src}",
        timeout=120,
    )
    try:
        if proc.returncode != 0 or not tmp.exists():
            raise InputError(
                f"is not an image that can be decoded (ffmpeg: {read_error(proc.stderr.decode('utf-8', 'replace'))})",
                subject=src,
                hint="Give a PNG, JPEG, WebP, BMP or TIFF portrait.",
            )
        with Image.open(tmp) as im:
            im.load()
            return im.copy()
    finally:
        tmp.unlink(missing_ok=True)


#: Pillow modes of one high-precision channel: 16-bit, 32-bit integer, 32-bit float.
_DEEP_GRAY = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;16LS", "I;16BS")


def _deep_gray_to_l(im):
    """An 8-bit "L" image of a 16-bit, 32-bit integer or float grayscale one.

    Pillow's own ``convert`` clips these values to 0..255 (a 16-bit image
    turns almost white), so the samples are rescaled from their real range:
    16 bits (a 16-bit mode, or "I" read from a PNG, which only has 16-bit
    gray) map 0..65535 to 0..255; floats in 0..1 map to 0..255; otherwise the
    values are taken as 8-bit when they fit, as 16-bit when they fit that, and
    stretched from their minimum to their maximum beyond.
    """
    import numpy as np
    from PIL import Image

    try:
        a = np.asarray(im)
    except (TypeError, ValueError):  # a raw mode numpy has no type for
        a = np.asarray(im.convert("I"))
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG"):
        lo, scale = 0.0, 255 / 65535
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        lo, scale = 0.0, 255.0
    elif lo >= 0 and hi <= 255:
        lo, scale = 0.0, 1.0
    elif lo >= 0 and hi <= 65535:
        lo, scale = 0.0, 255 / 65535
    else:
        scale = 255 / (hi - lo) if hi > lo else 1.0
    out = np.clip(np.rint((a - lo) * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def flatten(im):
    """8-bit RGB of an image of any Pillow mode: deep gray rescaled (not
    clipped), palettes expanded, CMYK/YCbCr converted, and any transparency
    composited on white.  Raises ValueError for a mode Pillow cannot convert."""
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode in _DEEP_GRAY:
        return _deep_gray_to_l(im).convert("RGB")
    if "A" in im.getbands() or "a" in im.getbands() or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")
