"""Choosing a chunk size for the model being wrapped.

Tensors are packed into chunks in registration order and never straddle
one; a tensor larger than the chunk gets a chunk of its own, rounded up to
the device's slot size like every chunk. Gemini searches the size that
wastes least for the model's layer sizes; this does the same over every
group the session will hold (parameters, frozen parameters, the
optimizer's fp32 master and moment shards), counting the device slots a
chunk really occupies, and among the sizes that waste about as little it
takes the largest (fewer, larger copies run closer to the link's
bandwidth) that still leaves the device pool room for several chunks.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

MiB = 1 << 20
_ALIGN = 256  # tensors start at this alignment inside a chunk


@dataclasses.dataclass
class ChunkChoice:
    size: int
    waste_bytes: int
    total_bytes: int
    chunks: int
    searched: tuple[int, int]
    reason: str


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def packed_waste(groups: Sequence[Sequence[int]], chunk: int, slot: int) -> tuple[int, int]:
    """(device bytes not holding a tensor, number of chunks) when each group
    of tensor sizes is packed into chunks of `chunk` bytes."""
    waste = 0
    chunks = 0
    for sizes in groups:
        used = None  # bytes used in the open chunk
        for n in sizes:
            if n > chunk:  # its own chunk
                waste += _align(n, slot) - n
                chunks += 1
                continue
            if used is not None and _align(used, _ALIGN) + n <= chunk:
                used = _align(used, _ALIGN) + n
                continue
            if used is not None:
                waste += _align(chunk, slot) - used
            used = n
            chunks += 1
        if used is not None:
            waste += _align(chunk, slot) - used
    return waste, chunks


def choose_chunk_size(groups: Sequence[Sequence[int]], slot: int = 2 * MiB,
                      device_capacity: int = 0, max_size: int = 256 * MiB,
                      tolerance: float = 0.01) -> ChunkChoice:
    """The chunk size for tensors of these sizes (bytes, per group, in
    registration order): a multiple of the device's slot size `slot` in
    [slot, max_size], no more than an eighth of the device pool."""
    total = sum(sum(g) for g in groups)
    cap = max_size
    if device_capacity:
        cap = min(cap, max(slot, device_capacity // 8 // slot * slot))
    largest = max((n for g in groups for n in g), default=0)
    candidates = list(range(slot, cap + 1, slot)) or [slot]
    scored = [(packed_waste(groups, c, slot), c) for c in candidates]
    best = min(w for (w, _), _ in scored)
    slack = best + tolerance * max(total, 1)
    (waste, chunks), size = max(((wc, c) for wc, c in scored if wc[0] <= slack),
                                key=lambda x: x[1])
    reason = (f"searched {candidates[0] // MiB}-{candidates[-1] // MiB} MiB in "
              f"{slot // MiB} MiB slots: {waste / max(total, 1):.1%} of "
              f"{total / MiB:.1f} MiB unused in {chunks} chunks (least: "
              f"{best / max(total, 1):.1%}); largest tensor {largest / MiB:.2f} MiB")
    if device_capacity:
        reason += f"; the device pool holds {device_capacity // _align(size, slot)} such chunks"
    return ChunkChoice(size, waste, total, chunks, (candidates[0], candidates[-1]), reason)
