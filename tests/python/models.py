"""Tiny causal LMs of the architectures users bring (OPT, Llama, GPT-2),
from their transformers config classes with random weights, and the plain
PyTorch training that tidepool must reproduce."""
from __future__ import annotations

import copy

import torch
import transformers

VOCAB = 2048


def make_model(arch: str, seed: int = 0, layers: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    if arch == "opt":
        cfg = transformers.OPTConfig(
            vocab_size=VOCAB, hidden_size=256, num_hidden_layers=layers, ffn_dim=1024,
            num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=256,
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
        model = transformers.OPTForCausalLM(cfg)
    elif arch == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=256, intermediate_size=768,
            num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=128)
        model = transformers.LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=256, n_layer=layers, n_head=4, n_positions=128,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, loss_type="ForCausalLM")
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        raise ValueError(arch)
    model.train()
    return model


def batches(n: int, seed: int = 1, batch: int = 2, seq: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (batch, seq), generator=g) for _ in range(n)]


def state_bytes(model: torch.nn.Module, param_bytes: int = 4) -> int:
    """Parameters + fp32 master + Adam m and v of the trainable ones."""
    total = 0
    seen = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel() * param_bytes
        if p.requires_grad:
            total += p.numel() * 12
    return total


class PlainReference:
    """Plain PyTorch training of a copy of the model: torch AdamW on its
    fp32 parameters."""

    def __init__(self, model: torch.nn.Module, device: str = "cpu", **adamw) -> None:
        self.model = copy.deepcopy(model).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), **adamw)

    def step(self, x: torch.Tensor) -> float:
        loss = self.model(input_ids=x, labels=x).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        return loss.item()


class MixedPrecisionReference:
    """Plain PyTorch training with the recipe tidepool's bf16 path follows:
    compute on a bf16 copy, fp32 master weights updated by torch AdamW on
    the gradients cast to fp32, then copied back to bf16."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, device: str = "cpu",
                 **adamw) -> None:
        self.model = copy.deepcopy(model).to(device)
        self.masters = [p.detach().clone().float().requires_grad_(True)
                        for p in self.model.parameters()]
        # Parameters only: buffers (rotary tables) stay as they are, as
        # tidepool.torch.wrap leaves them.
        for p in self.model.parameters():
            p.data = p.data.to(dtype)
        self.opt = torch.optim.AdamW(self.masters, **adamw)

    def step(self, x: torch.Tensor) -> float:
        loss = self.model(input_ids=x, labels=x).loss
        loss.backward()
        for p, m in zip(self.model.parameters(), self.masters):
            m.grad = None if p.grad is None else p.grad.float()
            p.grad = None
        self.opt.step()
        with torch.no_grad():
            for p, m in zip(self.model.parameters(), self.masters):
                p.copy_(m)
        return loss.item()


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||a - b|| / ||b|| over every tensor of two state dicts."""
    num = sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in b)
    den = sum(float((b[k].double() ** 2).sum()) for k in b)
    return (num / den) ** 0.5
