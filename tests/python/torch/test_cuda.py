"""On a GPU: the equality test of test_equality.py with CUDA tensors, over
tidepoold's cuda backend (device pool capped below the model's state)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import Daemon  # noqa: E402
from models import (MixedPrecisionReference, PlainReference, batches,  # noqa: E402
                    make_model, relative_difference, state_bytes)

import tidepool.torch as tp  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]

POOL = 16 << 20
ADAMW = dict(lr=1e-3, weight_decay=0.01)


@pytest.fixture(scope="module")
def cuda_daemon():
    d = Daemon("--device=auto", f"--device_pool={POOL >> 20}MiB", "--host_pool=2GiB",
               "--chunk_size=2MiB")
    yield d
    d.close()


def _cpu(state):
    return {k: v.detach().cpu() for k, v in state.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("policy", ["cpu", "auto"])
@pytest.mark.parametrize("arch", ["opt", "llama", "gpt2"])
def test_cuda_training_equals_plain_pytorch(cuda_daemon, arch, policy, dtype):
    model = make_model(arch)
    assert state_bytes(model, 4 if dtype == torch.float32 else 2) >= 2 * POOL
    if dtype == torch.float32:
        ref = PlainReference(model, "cuda", **ADAMW)
        loss_tol, param_tol = 1e-5, 1e-5
    else:
        ref = MixedPrecisionReference(model, dtype, "cuda", **ADAMW)
        loss_tol, param_tol = 5e-4, 1e-2
    model, opt = tp.wrap(model, policy=policy, param_dtype=dtype,
                         socket=cuda_daemon.socket, **ADAMW)
    try:
        assert model.tidepool.device.type == "cuda"
        for step, x in enumerate(batches(3)):
            x = x.cuda()
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            expected = ref.step(x)
            assert abs(loss.item() - expected) <= loss_tol * abs(expected), step
            diff = relative_difference(_cpu(model.state_dict()), _cpu(ref.model.state_dict()))
            assert diff <= param_tol, (step, diff)
        stats = model.tidepool.stats()
        assert stats["evictions"] > 0
        assert stats["peak_device_bytes"] <= POOL
    finally:
        model.tidepool.close()
