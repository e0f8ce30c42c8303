"""Training through tidepool equals plain PyTorch training: the same loss
at every step and the same parameters after it, for OPT, Llama and GPT-2
models whose state is several times the device pool, under `cpu` and
`auto`, with and without gradient checkpointing."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from models import (MixedPrecisionReference, PlainReference, batches,  # noqa: E402
                    make_model, relative_difference, state_bytes)

import tidepool.torch as tp  # noqa: E402

POOL = 8 << 20  # the daemon fixture's sim device
ADAMW = dict(lr=1e-3, weight_decay=0.01)
STEPS = 3


def _train_and_compare(daemon, arch, policy, checkpointing, dtype, loss_tol, param_tol):
    model = make_model(arch)
    assert state_bytes(model, 4 if dtype == torch.float32 else 2) >= 4 * POOL
    ref = (PlainReference(model, **ADAMW) if dtype == torch.float32
           else MixedPrecisionReference(model, dtype, **ADAMW))
    if checkpointing:
        model.gradient_checkpointing_enable()
        ref.model.gradient_checkpointing_enable()
    model, opt = tp.wrap(model, policy=policy, param_dtype=dtype, socket=daemon.socket,
                         verbose=False, **ADAMW)
    try:
        for step, x in enumerate(batches(STEPS)):
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            expected = ref.step(x)
            assert abs(loss.item() - expected) <= loss_tol * abs(expected), step
            diff = relative_difference(model.state_dict(), ref.model.state_dict())
            assert diff <= param_tol, (step, diff)
        stats = model.tidepool.stats()
        # The model really paged through the pool.
        assert stats["evictions"] > 0
        assert stats["peak_device_bytes"] <= POOL
        if policy == "auto":
            assert stats["placement"]["state"] == "planned"
            # The plan prefetched, and every prefetch that was used is
            # accounted once: in time or late (the demo prints these).
            assert stats["prefetches"] > 0
            used = stats["prefetch_hits"] + stats["prefetch_late"]
            assert used + stats["prefetch_wasted"] <= stats["prefetches"]
            assert 0 <= stats["prefetch_late_short_lead"] <= stats["prefetch_late"]
        phases = model.tidepool.engine.phases
        assert phases["fwd"] and phases["bwd"] and phases["grad"]
        # Checkpointed layers ran their forward again inside backward.
        assert bool(phases["recompute"]) == checkpointing
    finally:
        model.tidepool.close()


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("policy", ["cpu", "auto"])
@pytest.mark.parametrize("arch", ["opt", "llama", "gpt2"])
def test_fp32_equals_plain_adamw(daemon, arch, policy, checkpointing):
    _train_and_compare(daemon, arch, policy, checkpointing, torch.float32, 1e-5, 1e-5)


@pytest.mark.parametrize("policy", ["cpu", "auto"])
@pytest.mark.parametrize("arch", ["opt", "llama"])
def test_bf16_equals_the_mixed_precision_recipe(daemon, arch, policy):
    # Same recipe (bf16 compute, fp32 master from the fp32 init, AdamW).
    # The fp32 AdamW kernels round differently in the last bit, which moves
    # a few bf16 parameters by one ulp after the first step; bf16 compute
    # then amplifies it. Measured over 5 steps (docs/hf.md): loss within
    # 1e-4 relative, parameters within 4e-3 relative (1e-5 after step 1).
    _train_and_compare(daemon, arch, policy, False, torch.bfloat16, 5e-4, 1e-2)
