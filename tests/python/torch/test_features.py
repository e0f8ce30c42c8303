"""What users of the peers ask for and do not get, each checked against
plain PyTorch: LoRA on a frozen base, parameters unused in a step,
gradient accumulation, evaluation between steps, learning-rate schedules,
save_pretrained/from_pretrained, optimizer checkpoints, a daemon that dies."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from models import VOCAB, batches, make_model, relative_difference  # noqa: E402

import tidepool  # noqa: E402
import tidepool.torch as tp  # noqa: E402

ADAMW = dict(lr=1e-3, weight_decay=0.01)


def _wrap(model, daemon, **kw):
    return tp.wrap(model, socket=daemon.socket, verbose=False, **{**ADAMW, **kw})


def _plain_step(model, opt, x):
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.item()


def test_lora_on_a_frozen_base_that_does_not_fit(daemon):
    peft = pytest.importorskip("peft")
    base = make_model("opt")
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                             lora_dropout=0.0)
    model = peft.get_peft_model(base, config)
    # Make the adapters non-trivial from the start (B starts at zero).
    torch.manual_seed(3)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.02)
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], **ADAMW)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert sum(p.numel() * 4 for p in frozen.values()) > 8 << 20  # the base alone > pool
    n_params = len(list(model.parameters()))
    n_trainable = sum(1 for p in model.parameters() if p.requires_grad)
    model, opt = _wrap(model, daemon, policy="auto")
    try:
        for x in batches(3):
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            expected = _plain_step(ref, ref_opt, x)
            assert loss.item() == pytest.approx(expected, rel=1e-5)
        stats = model.tidepool.stats()
        # Frozen parameters: one tensor each, no master, no moments.
        assert stats["tensors"] == n_params + 3 * n_trainable
        assert stats["evictions"] > 0
        state = {k: v for k, v in model.state_dict().items()}
        assert relative_difference(state, ref.state_dict()) <= 1e-5
        for n, p in model.named_parameters():
            if not p.requires_grad:
                assert torch.equal(state[n], frozen[n]), n
    finally:
        model.tidepool.close()


class _Experts(torch.nn.Module):
    """A toy mixture: each step routes through one expert only."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(VOCAB, 128)
        self.experts = torch.nn.ModuleList(torch.nn.Linear(128, 128) for _ in range(3))
        self.never = torch.nn.Linear(128, 128)  # registered, never called
        self.head = torch.nn.Linear(128, VOCAB)

    def forward(self, input_ids, labels, expert):
        h = self.experts[expert](self.embed(input_ids)).relu()
        logits = self.head(h)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())


def test_parameters_unused_in_a_step_break_nothing(daemon):
    model = _Experts()
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.AdamW(ref.parameters(), **ADAMW)
    never = model.never.weight.detach().clone()
    model, opt = _wrap(model, daemon, policy="auto")
    try:
        for step, x in enumerate(batches(6)):
            loss = model(x, x, step % 2)  # expert 2 is never chosen
            loss.backward()
            opt.step()
            r = ref(x, x, step % 2)
            r.backward()
            ref_opt.step()
            ref_opt.zero_grad()
            assert loss.item() == pytest.approx(r.item(), rel=1e-5)
            assert opt.last_step["blocks_without_grad"] == 2 + 2 + 2  # other/unused experts
        assert relative_difference(model.state_dict(), ref.state_dict()) <= 1e-5
        assert torch.equal(model.state_dict()["never.weight"], never)
    finally:
        model.tidepool.close()


# AdamW on this model amplifies rounding step by step (near-zero gradients
# meet the normalisation): in plain torch 2.15 a relative perturbation of
# 2.6e-9 of the initial weights grows to 1.7e-6, 2.3e-6 and 6.7e-6 after
# three accumulated steps. Tidepool's accumulation measured 1.4e-8 after
# the first and 1.4e-5 / 2.4e-5 after the third and fourth; a micro-batch
# left out of the sum moves them by 3e-2 after the first.
ACCUMULATED_TOL = 1e-4


def test_accumulated_micro_batches_equal_one_step_on_the_summed_gradient(daemon):
    model = make_model("llama", layers=2)
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.AdamW(ref.parameters(), **ADAMW)
    model, opt = _wrap(model, daemon, policy="cpu", accumulation_steps=2)
    try:
        data = batches(6)
        for step in range(3):
            for x in data[2 * step:2 * step + 2]:
                (model(input_ids=x, labels=x).loss / 2).backward()
                (ref(input_ids=x, labels=x).loss / 2).backward()
            opt.step()
            opt.zero_grad()
            ref_opt.step()
            ref_opt.zero_grad()
            diff = relative_difference(model.state_dict(), ref.state_dict())
            assert diff <= (1e-6 if step == 0 else ACCUMULATED_TOL), (step, diff)
        # A step may come after fewer micro-batches than configured.
        x = data[0]
        model(input_ids=x, labels=x).loss.backward()
        ref(input_ids=x, labels=x).loss.backward()
        opt.step()
        ref_opt.step()
        diff = relative_difference(model.state_dict(), ref.state_dict())
        assert diff <= ACCUMULATED_TOL, diff
    finally:
        model.tidepool.close()


def test_a_second_backward_without_accumulation_is_a_clear_error(daemon):
    model, opt = _wrap(make_model("gpt2", layers=2), daemon, policy="cpu")
    try:
        x = batches(1)[0]
        model(input_ids=x, labels=x).loss.backward()
        with pytest.raises(RuntimeError, match="accumulation_steps"):
            model(input_ids=x, labels=x)
        opt.step()  # and the run goes on
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
    finally:
        model.tidepool.close()


def test_evaluation_between_steps_keeps_the_plan_and_the_results(daemon):
    model = make_model("opt")
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.AdamW(ref.parameters(), **ADAMW)
    model, opt = _wrap(model, daemon, policy="auto")
    try:
        data = batches(8)
        held_out = batches(1, seed=9)[0]
        replans = None
        for step, x in enumerate(data):
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            assert loss.item() == pytest.approx(_plain_step(ref, ref_opt, x), rel=1e-5)
            if step == 1:
                replans = opt.placement["replans"]
            if step % 2 == 0 and step >= 2:  # every other step, once planned
                for m in (model, ref):
                    m.eval()
                with torch.no_grad():
                    got = model(input_ids=held_out, labels=held_out).loss.item()
                    want = ref(input_ids=held_out, labels=held_out).loss.item()
                for m in (model, ref):
                    m.train()
                assert got == pytest.approx(want, rel=1e-5)
                # The evaluation's forward ops came out of the recorded
                # order; the plan picked up at their positions and kept on.
                placement = model.tidepool.session.placement()
                assert placement["state"] == "planned", placement
        placement = opt.placement
        assert placement["state"] == "planned"
        assert placement["replans"] == replans, placement
        assert placement["resyncs"] > 0
    finally:
        model.tidepool.close()


def test_learning_rate_schedules_apply(daemon):
    model = make_model("gpt2", layers=2)
    ref = copy.deepcopy(model)
    ref_opt = torch.optim.AdamW(ref.parameters(), **ADAMW)
    model, opt = _wrap(model, daemon, policy="cpu")
    decay = lambda step: 1.0 / (1 + step)  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref_opt, decay)
    try:
        for x in batches(4):
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            sched.step()
            assert loss.item() == pytest.approx(_plain_step(ref, ref_opt, x), rel=1e-5)
            ref_sched.step()
        assert relative_difference(model.state_dict(), ref.state_dict()) <= 1e-5
    finally:
        model.tidepool.close()


def test_save_pretrained_round_trip(daemon, tmp_path):
    import transformers
    model, opt = _wrap(make_model("opt"), daemon, policy="auto")
    try:
        for x in batches(2):
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
        model.save_pretrained(tmp_path)
        state = model.state_dict()
    finally:
        model.tidepool.close()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    loaded_state = loaded.state_dict()
    assert set(loaded_state) == set(state)
    for k in state:
        assert torch.equal(loaded_state[k], state[k]), k
    # Tied weights stay tied.
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_optimizer_checkpoint_resumes_bit_identically(daemon, tmp_path, dtype):
    import transformers
    data = batches(4)

    def train(model, opt, xs):
        for x in xs:
            model(input_ids=x, labels=x).loss.backward()
            opt.step()

    straight, opt = _wrap(make_model("llama", layers=2), daemon, policy="auto",
                          param_dtype=dtype)
    train(straight, opt, data)
    want = straight.state_dict()
    straight.tidepool.close()

    first, opt = _wrap(make_model("llama", layers=2), daemon, policy="auto",
                       param_dtype=dtype)
    train(first, opt, data[:2])
    first.save_pretrained(tmp_path / "model")
    opt.save_checkpoint(tmp_path / "optimizer")
    first.tidepool.close()

    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    model.train()
    resumed, opt = _wrap(model, daemon, policy="auto", param_dtype=dtype)
    opt.load_checkpoint(tmp_path / "optimizer")
    train(resumed, opt, data[2:])
    got = resumed.state_dict()
    resumed.tidepool.close()
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.timeout(120)
def test_a_dead_daemon_is_a_clear_exception(fresh_daemon):
    model, opt = _wrap(make_model("gpt2", layers=2), fresh_daemon, policy="cpu")
    x = batches(1)[0]
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    fresh_daemon.kill()
    with pytest.raises(tidepool.Error) as failure:
        for _ in range(3):
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
    assert "tidepoold" in str(failure.value) or "daemon" in str(failure.value)
