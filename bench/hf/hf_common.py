"""What bench_hf.py's parent and its workers share: the models, the
configurations, the time estimates and small helpers."""
from __future__ import annotations

import os

GiB = 1 << 30
MiB = 1 << 20
KiB = 1 << 10

# OPT configurations from the published sizes (no model hub). Everything
# not given is OPTConfig's default, which matches the released models
# (pre-LayerNorm, ReLU, dropout 0.1, tied lm_head, word_embed_proj_dim =
# hidden).
MODELS = {
    "opt-1.3b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32,
                     ffn_dim=8192, vocab_size=50272, max_position_embeddings=2048),
    "opt-2.7b": dict(hidden_size=2560, num_hidden_layers=32, num_attention_heads=32,
                     ffn_dim=10240, vocab_size=50272, max_position_embeddings=2048),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 ffn_dim=256, vocab_size=512, max_position_embeddings=64),
}
CONFIGS = ("plain", "fsdp2", "tidepool")
# A configuration may carry variants after "+": an AdamW implementation of
# the peers (fused, foreach, forloop, default) or "mp" (FSDP2 with
# MixedPrecisionPolicy bf16 parameters instead of fp32 + autocast), e.g.
# "fsdp2+fused".
VARIANTS = ("fused", "foreach", "forloop", "default", "mp")


def split_config(config: str) -> tuple[str, list[str]]:
    base, *mods = config.split("+")
    return base, mods

# Rough wall time on an H200 of one run: fixed seconds (interpreter,
# imports, CUDA context, model build and setup) and seconds per step, from
# the H100 figures in DESIGN.md (plain 0.18 / 0.34 s/step, FSDP2 offload
# 2.6 / 4.5 s/step) and a guess for tidepool. Scaled by parameter count for
# other models. Used to decide whether a run still fits the budget and to
# size its timeout.
ESTIMATES = {  # config: (fixed s, s/step) at 1.3B parameters
    "plain": (20.0, 0.19),
    "fsdp2": (25.0, 2.6),
    "tidepool": (30.0, 1.5),
}


def opt_param_count(spec: dict) -> int:
    """Distinct parameters of OPTForCausalLM (lm_head tied to the token
    embedding; learned positions have 2 extra rows)."""
    h, f = spec["hidden_size"], spec["ffn_dim"]
    v, p, n = spec["vocab_size"], spec["max_position_embeddings"], spec["num_hidden_layers"]
    layer = 4 * (h * h + h) + 2 * 2 * h + (h * f + f) + (f * h + h)
    return v * h + (p + 2) * h + n * layer + 2 * h


def estimate_s(config: str, model: str, steps: int, smoke: bool) -> float:
    if smoke:
        return 10.0 + 0.5 * steps
    base, mods = split_config(config)
    fixed, per_step = ESTIMATES[base]
    if base == "fsdp2" and ("fused" in mods or "mp" in mods):
        per_step = 1.0  # CPU AdamW at ~4.8 Gparam/s instead of ~0.8
    scale = opt_param_count(MODELS[model]) / 1.3e9
    return fixed * (0.5 + 0.5 * scale) + per_step * scale * steps


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / MiB:.1f} MiB"


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []
