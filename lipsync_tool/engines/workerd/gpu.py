"""GPU sizing for the adapters (stdlib only; unit-tested on the CPU).

``batch_size: "auto"`` in a job means: size the batch from the free VRAM the
worker sees.  The per-item figures are measured peaks per batch item in
fp32 (fp16 roughly halves them), with a margin kept free for the rest of the
job; the chosen value and why go into the run report.
"""

from __future__ import annotations

#: Bytes of VRAM one batch item needs at its peak, per engine and model size (fp32).
PER_ITEM_BYTES = {
    "wav2lip": 48 << 20,  # a 96x96 crop through the generator, plus its mel window
    "sadtalker-256": 900 << 20,  # the face renderer at 256 px
    "sadtalker-512": 3600 << 20,
}
#: Share of the free VRAM left alone (the allocator's fragmentation, cuDNN workspaces).
RESERVE = 0.25


def batch_size_from_free(free_bytes: int, per_item_bytes: int, *, fp16: bool = False, minimum: int = 1, maximum: int = 512) -> int:
    """The largest batch that fits in *free_bytes*, within [minimum, maximum]."""
    if per_item_bytes <= 0:
        raise ValueError("per_item_bytes must be positive")
    item = per_item_bytes // 2 if fp16 else per_item_bytes
    usable = int(free_bytes * (1.0 - RESERVE))
    return max(minimum, min(maximum, usable // item))


def choose_batch_size(requested, default: int, *, kind: str, free_bytes: int | None, fp16: bool = False, maximum: int = 512) -> tuple[int, str]:
    """The batch size for a job and why: the option the user gave, the size
    that fits the free VRAM (``auto``), or upstream's default."""
    if isinstance(requested, int) and not isinstance(requested, bool):
        return requested, "option"
    if requested == "auto" and free_bytes is not None and kind in PER_ITEM_BYTES:
        n = batch_size_from_free(free_bytes, PER_ITEM_BYTES[kind], fp16=fp16, maximum=maximum)
        return n, f"free VRAM {free_bytes / 2**30:.1f} GiB / {PER_ITEM_BYTES[kind] >> 20} MiB per item"
    return default, "upstream's default"


def free_vram(torch) -> int | None:
    """Free bytes on the current CUDA device (None on the CPU)."""
    if not torch.cuda.is_available():
        return None
    free, _total = torch.cuda.mem_get_info()
    return int(free)
