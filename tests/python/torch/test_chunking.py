"""The chunk size chosen for a model: least waste of device slots for its
tensor sizes, then the largest such size the pool still holds several of."""
from __future__ import annotations

from tidepool.torch import choose_chunk_size
from tidepool.torch._chunking import packed_waste

MiB = 1 << 20


def test_waste_counts_slots_not_bytes():
    # Two 1.5 MiB tensors: 2 MiB chunks hold one each (0.5 MiB unused
    # twice); a 4 MiB chunk holds both (1 MiB unused).
    assert packed_waste([[3 * MiB // 2] * 2], 2 * MiB, 2 * MiB) == (MiB, 2)
    assert packed_waste([[3 * MiB // 2] * 2], 4 * MiB, 2 * MiB) == (MiB, 1)
    # Oversize tensors get their own chunk, rounded up to a slot.
    assert packed_waste([[5 * MiB]], 2 * MiB, 2 * MiB) == (MiB, 1)
    # Groups never share a chunk.
    assert packed_waste([[MiB], [MiB]], 2 * MiB, 2 * MiB) == (2 * MiB, 2)


def test_layers_that_tile_a_size_choose_it():
    # 24 layers of 3 MiB: 6 MiB chunks tile them exactly; 4 and 8 MiB waste.
    choice = choose_chunk_size([[3 * MiB] * 24], device_capacity=1 << 30)
    assert choice.waste_bytes == 0
    assert choice.size % (6 * MiB) == 0
    assert "unused" in choice.reason


def test_the_pool_bounds_the_size():
    choice = choose_chunk_size([[3 * MiB] * 24], device_capacity=64 * MiB)
    assert choice.size <= 8 * MiB
    tiny = choose_chunk_size([[100] * 10], device_capacity=4 * MiB)
    assert tiny.size == 2 * MiB
