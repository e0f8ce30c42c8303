"""On a GPU: the equality test of test_equality.py with CUDA tensors, over
tidepoold's cuda backend (device pool capped below the model's state)."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from conftest import Daemon  # noqa: E402
from models import (MixedPrecisionReference, batches, make_model,  # noqa: E402
                    relative_difference, state_bytes)

import tidepool.torch as tp  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]

POOL = 16 << 20


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
        ref = copy.deepcopy(model).cuda()
        ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.01)

        def ref_step(x):
            loss = ref(input_ids=x, labels=x).loss
            loss.backward()
            ref_opt.step()
            ref_opt.zero_grad()
            return loss.item()
        loss_tol, param_tol = 1e-5, 1e-5
    else:
        mp = MixedPrecisionReference(model, dtype, lr=1e-3, weight_decay=0.01)
        mp.model.cuda()
        mp.masters = [m.detach().cuda().requires_grad_(True) for m in mp.masters]
        mp.opt = torch.optim.AdamW(mp.masters, lr=1e-3, weight_decay=0.01)
        ref, ref_step = mp.model, mp.step
        loss_tol, param_tol = 5e-4, 1e-2
    model, opt = tp.wrap(model, policy=policy, lr=1e-3, weight_decay=0.01,
                         param_dtype=dtype, socket=cuda_daemon.socket)
    try:
        assert model.tidepool.device.type == "cuda"
        for step, x in enumerate(batches(3)):
            x = x.cuda()
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            expected = ref_step(x)
            assert abs(loss.item() - expected) <= loss_tol * abs(expected), step
            diff = relative_difference(_cpu(model.state_dict()), _cpu(ref.state_dict()))
            assert diff <= param_tol, (step, diff)
        stats = model.tidepool.stats()
        assert stats["evictions"] > 0
        assert stats["peak_device_bytes"] <= POOL
    finally:
        model.tidepool.close()
