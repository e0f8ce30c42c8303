#!/usr/bin/env python3
"""Train a Hugging Face causal LM through tidepool and check it against plain
PyTorch.

The model (OPT or Llama, from its config class with random weights: no hub)
learns real text that ships with the machine and the repository (the licence
texts under /usr/share/common-licenses and the project's own README and
docs/*.md), tokenized by a byte-level BPE tokenizer trained on that text with
the `tokenizers` library. It trains twice from the same initial weights on
the same batches:

- through tidepool (``tidepool.torch.wrap`` under a policy, ``auto`` by
  default): bf16 parameters for compute (fp32 on a CPU without native bf16
  matmul, --param_dtype), fp32 masters and Adam moments in
  tidepool chunks that the daemon pages through a device pool several times
  smaller than the model's state;
- without tidepool, with the same mixed-precision recipe written out here: a
  bf16 compute copy, fp32 masters updated by torch.optim.AdamW on the
  gradients cast to fp32, then copied back to bf16.

It prints a summary (throughput of both, loss, tidepool's traffic and
residency), writes the two loss curves to a PNG, and exits 2 when the model
did not learn, 1 when tidepool's curve strays from the baseline's:

- the first --early_steps (20) losses, one by one, within --early_tolerance
  (0.005 nats). This is the sharp check: before rounding noise compounds,
  tidepool and the baseline differ by <= 7e-4 (6 runs, seeds 0-4; the same
  as torch.optim.AdamW against a hand-written fp32 AdamW, 6e-4), while a
  learning rate only 2% off already differs by 0.017.
- the whole run, mean |difference| of the --smooth (20)-step moving averages
  within --tolerance (0.2 nats). Coarse on purpose: bf16 rounding
  differences grow chaotically, so two correct runs drift apart by 0.007-0.04
  (tidepool vs baseline, 300 steps) and up to 0.09 (torch AdamW vs the
  hand-written one); a model that stops learning or blows up is off by far
  more.

    TIDEPOOL_SOCKET=/path/tidepoold.sock python examples/hf/train_hf.py
"""
from __future__ import annotations

import argparse
import copy
import glob
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
DEFAULT_TEXT = ["/usr/share/common-licenses/*", str(REPO / "README.md"), str(REPO / "docs" / "*.md")]
MiB = 1 << 20


def parse_args() -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--socket", default=env("TIDEPOOL_SOCKET"), help="tidepoold's socket")
    p.add_argument("--policy", default="auto", choices=["auto", "cpu", "static", "cuda"])
    p.add_argument("--arch", default=env("TIDEPOOL_DEMO_ARCH", "opt"), choices=["opt", "llama"])
    p.add_argument("--hidden", type=int, default=int(env("TIDEPOOL_DEMO_HIDDEN", 256)))
    p.add_argument("--layers", type=int, default=int(env("TIDEPOOL_DEMO_LAYERS", 4)))
    p.add_argument("--ffn", type=int, default=0, help="MLP width (default 4x hidden)")
    p.add_argument("--heads", type=int, default=0, help="attention heads (default hidden/64)")
    p.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary to train")
    p.add_argument("--seq", type=int, default=int(env("TIDEPOOL_DEMO_SEQ", 64)))
    p.add_argument("--batch", type=int, default=int(env("TIDEPOOL_DEMO_BATCH", 4)))
    p.add_argument("--steps", type=int, default=int(env("TIDEPOOL_DEMO_STEPS", 300)))
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=20, help="linear LR warm-up steps, then cosine")
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text", nargs="+", default=DEFAULT_TEXT, help="files or globs to learn")
    p.add_argument("--eval_fraction", type=float, default=0.1, help="held-out tail of the text")
    p.add_argument("--eval_batches", type=int, default=8)
    p.add_argument("--eval_every", type=int, default=0,
                   help="also evaluate every N steps (0: only at the end)")
    p.add_argument("--smooth", type=int, default=20, help="moving-average window of the curves")
    p.add_argument("--tolerance", type=float, default=float(env("TIDEPOOL_DEMO_TOLERANCE", 0.2)),
                   help="largest mean |smoothed loss difference| to the baseline over the "
                   "whole run (nats; coarse: rounding differences compound chaotically)")
    p.add_argument("--early_steps", type=int, default=20,
                   help="steps compared one by one before bf16 rounding noise compounds")
    p.add_argument("--early_tolerance", type=float, default=0.005,
                   help="largest |loss difference| to the baseline in the first --early_steps")
    p.add_argument("--warm_steps", type=int, default=5,
                   help="steps left out of tokens/s (auto traces and plans during the first)")
    p.add_argument("--min_state_ratio", type=float, default=4.0,
                   help="refuse to run unless model state / device pool is at least this")
    p.add_argument("--param_dtype", default=env("TIDEPOOL_DEMO_DTYPE", "auto"),
                   choices=["auto", "bf16", "fp32"],
                   help="what compute reads; auto: bf16 on a GPU and on CPUs with native bf16 "
                        "matmul, fp32 elsewhere (AVX2-only CPUs run bf16 matmul ~60x slower)")
    p.add_argument("--no_baseline", action="store_true")
    p.add_argument("--out", default=env("TIDEPOOL_DEMO_OUT", "demo-output"))
    return p.parse_args()


# ---- data ----

def corpus_files(patterns: list[str]) -> list[Path]:
    """Regular text files matching the patterns, each once (the licence
    directory holds symlinks such as GPL -> GPL-3)."""
    seen, out = set(), []
    for pattern in patterns:
        for name in sorted(glob.glob(pattern)):
            path = Path(name)
            real = path.resolve()
            if not real.is_file() or real in seen:
                continue
            seen.add(real)
            out.append(path)
    return out


def load_text(patterns: list[str]) -> tuple[list[str], list[Path]]:
    files = corpus_files(patterns)
    docs = []
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            docs.append(text)
    if not docs:
        sys.exit(f"train_hf: no text found under {patterns}")
    return docs, files


def train_tokenizer(docs: list[str], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


def tokenize(tok, docs: list[str]) -> torch.Tensor:
    eot = tok.token_to_id("<|endoftext|>")
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc.ids)
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.long)


def windows(tokens: torch.Tensor, n: int, batch: int, seq: int, seed: int) -> list[torch.Tensor]:
    """n batches of random windows of seq tokens (fixed by seed)."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(tokens) - seq, (n, batch), generator=g)
    offsets = torch.arange(seq)
    return [tokens[s[:, None] + offsets] for s in starts]


# ---- model ----

def make_model(args, vocab: int) -> torch.nn.Module:
    import transformers
    ffn = args.ffn or 4 * args.hidden
    heads = args.heads or max(1, args.hidden // 64)
    torch.manual_seed(args.seed)
    if args.arch == "opt":
        cfg = transformers.OPTConfig(
            vocab_size=vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
            ffn_dim=ffn, num_attention_heads=heads, max_position_embeddings=max(128, args.seq),
            word_embed_proj_dim=args.hidden, dropout=0.0, attention_dropout=0.0,
            activation_dropout=0.0, layerdrop=0.0, pad_token_id=0, bos_token_id=0,
            eos_token_id=0)
        model = transformers.OPTForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=args.hidden, intermediate_size=ffn,
            num_hidden_layers=args.layers, num_attention_heads=heads,
            num_key_value_heads=heads, max_position_embeddings=max(128, args.seq),
            pad_token_id=0, bos_token_id=0, eos_token_id=0, tie_word_embeddings=True)
        model = transformers.LlamaForCausalLM(cfg)
    model.train()
    return model


def unique_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    seen, out = set(), []
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def param_dtype(choice: str) -> torch.dtype:
    """The compute copy's dtype: bf16 where the compute device runs it
    natively (a GPU, a CPU with AVX-512 BF16 or AMX), fp32 elsewhere: torch
    runs bf16 matmul on an AVX2-only CPU through a scalar fallback, ~60x
    slower than fp32, which would time the CPU's arithmetic, not tidepool."""
    if choice != "auto":
        return torch.bfloat16 if choice == "bf16" else torch.float32
    if torch.cuda.is_available():
        return torch.bfloat16
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = True
    return torch.bfloat16 if native else torch.float32


def dtype_label(dtype: torch.dtype) -> str:
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def state_bytes(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Parameters (bf16 or fp32) + fp32 master + Adam m and v: 14 or 16
    bytes a parameter."""
    esize = torch.empty((), dtype=dtype).element_size()
    return sum(p.numel() for p in unique_params(model)) * (esize + 12)


def lr_lambda(args):
    def f(step: int) -> float:
        if step < args.warmup:
            return (step + 1) / args.warmup
        t = (step - args.warmup) / max(1, args.steps - args.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


class MixedPrecisionBaseline:
    """The recipe tidepool's bf16 path follows, in plain PyTorch: compute on
    a bf16 copy of the model, fp32 master weights updated by
    torch.optim.AdamW on the gradients cast to fp32, copied back to bf16
    (with ``dtype`` fp32, the compute copy is fp32)."""

    def __init__(self, model: torch.nn.Module, device: torch.device, args,
                 dtype: torch.dtype) -> None:
        self.model = model.to(device)
        self.params = unique_params(self.model)
        self.masters = [p.detach().clone().float().requires_grad_(True) for p in self.params]
        for p in self.params:  # parameters only: buffers stay as they are
            p.data = p.data.to(dtype)
        self.opt = torch.optim.AdamW(self.masters, lr=args.lr, weight_decay=args.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(args))

    def step(self, x: torch.Tensor) -> float:
        loss = self.model(input_ids=x, labels=x).loss
        loss.backward()
        for p, m in zip(self.params, self.masters):
            m.grad = None if p.grad is None else p.grad.float()
            p.grad = None
        self.opt.step()
        self.sched.step()
        with torch.no_grad():
            for p, m in zip(self.params, self.masters):
                p.copy_(m)
        return loss.item()


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[torch.Tensor], device) -> float:
    model.eval()
    losses = [model(input_ids=x.to(device), labels=x.to(device)).loss.item() for x in batches]
    model.train()
    return sum(losses) / len(losses)


# ---- training ----

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train(name: str, step_fn, batches, device, args, eval_fn=None
          ) -> tuple[list[float], list[float], dict[int, float]]:
    from tqdm import tqdm
    losses, times, evals = [], [], {}
    bar = tqdm(batches, desc=f"{name:>9}", unit="step", dynamic_ncols=True, file=sys.stderr,
               mininterval=0.5 if sys.stderr.isatty() else 5.0)
    for x in bar:
        x = x.to(device, non_blocking=True)
        t0 = time.perf_counter()
        loss = step_fn(x)
        sync(device)
        times.append(time.perf_counter() - t0)
        losses.append(loss)
        if not math.isfinite(loss):
            bar.close()
            sys.exit(f"train_hf: {name} loss is {loss} at step {len(losses) - 1}")
        if eval_fn is not None and args.eval_every and len(losses) % args.eval_every == 0 \
                and len(losses) < len(batches):
            evals[len(losses)] = eval_fn()
        bar.set_postfix(loss=f"{loss:.3f}")
    bar.close()
    return losses, times, evals


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (shorter at the start)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def tokens_per_s(times: list[float], tokens_per_step: int, warm: int) -> float:
    t = times[warm:] if len(times) > warm else times
    return tokens_per_step * len(t) / sum(t)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def plot(path: Path, tp_losses, base_losses, args, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    steps = range(len(tp_losses))
    ax.plot(steps, tp_losses, color="tab:blue", alpha=0.25, linewidth=0.8)
    ax.plot(steps, smooth(tp_losses, args.smooth), color="tab:blue", linewidth=2,
            label=f"tidepool ({args.policy}), {args.smooth}-step mean")
    if base_losses:
        ax.plot(steps, base_losses, color="tab:orange", alpha=0.25, linewidth=0.8)
        ax.plot(steps, smooth(base_losses, args.smooth), color="tab:orange", linewidth=2,
                linestyle="--", label=f"baseline (plain PyTorch), {args.smooth}-step mean")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (cross-entropy, nats/token)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    args = parse_args()
    import tidepool.torch as tp

    cuda = torch.cuda.is_available()
    device = torch.device("cuda") if cuda else torch.device("cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # Data: real text, a BPE tokenizer trained on it, a held-out tail.
    t0 = time.perf_counter()
    docs, files = load_text(args.text)
    tok = train_tokenizer(docs, args.vocab)
    tok.save(str(out / "tokenizer.json"))
    tokens = tokenize(tok, docs)
    split = int(len(tokens) * (1 - args.eval_fraction))
    train_tokens, eval_tokens = tokens[:split], tokens[split:]
    vocab = tok.get_vocab_size()
    print(f"data: {len(files)} files, {sum(map(len, docs)) / 1e3:.0f} kB of text -> "
          f"{len(tokens):,} tokens (byte-level BPE, vocab {vocab}, trained in "
          f"{time.perf_counter() - t0:.1f} s); {len(train_tokens):,} train / "
          f"{len(eval_tokens):,} held out", file=sys.stderr)
    batches = windows(train_tokens, args.steps, args.batch, args.seq, args.seed + 1)
    eval_batches = windows(eval_tokens, args.eval_batches, args.batch, args.seq, args.seed + 2)
    tokens_per_step = args.batch * args.seq
    print(f"      {args.steps} steps x {args.batch} x {args.seq} tokens = "
          f"{args.steps * tokens_per_step / len(train_tokens):.2f} epochs", file=sys.stderr)

    model = make_model(args, vocab)
    nparams = sum(p.numel() for p in unique_params(model))
    baseline_model = None if args.no_baseline else copy.deepcopy(model)  # same init

    dtype = param_dtype(args.param_dtype)
    model, optimizer = tp.wrap(model, policy=args.policy, lr=args.lr,
                               weight_decay=args.weight_decay, param_dtype=dtype,
                               socket=args.socket)
    handle = model.tidepool
    pool = handle.stats()["device_pool_capacity"]
    ratio = state_bytes(model, dtype) / pool
    print(f"model: {args.arch.upper()} {args.layers} layers x {args.hidden} wide, "
          f"{nparams / 1e6:.2f} M parameters; state {human(state_bytes(model, dtype))} "
          f"({state_bytes(model, dtype) // nparams} B/param, {dtype_label(dtype)} compute) = "
          f"{ratio:.1f}x the {human(pool)} device pool of "
          f"{handle.session.device['name']}; compute on {handle.device}", file=sys.stderr)
    if ratio < args.min_state_ratio:
        handle.close()
        sys.exit(f"train_hf: the model state is only {ratio:.1f}x the device pool "
                 f"(want >= {args.min_state_ratio}x): shrink the pool or grow the model")
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args))

    def tp_step(x):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        sched.step()
        return loss.item()

    wall0 = time.perf_counter()
    tp_losses, tp_times, tp_evals = train(
        "tidepool", tp_step, batches, handle.device, args,
        lambda: evaluate(model, eval_batches, handle.device))
    tp_wall = time.perf_counter() - wall0
    stats = handle.stats()  # of training (an evaluation pass is off auto's plan)
    tp_eval = evaluate(model, eval_batches, handle.device)
    last = dict(optimizer.last_step)
    chunk = handle.session.chunk_size
    chunk_why = handle.chunk.reason if handle.chunk else "as given"
    backend = handle.session.device["backend"]
    handle.close()

    base_losses, base_times, base_eval, base_wall = [], [], float("nan"), float("nan")
    base_evals: dict[int, float] = {}
    if baseline_model is not None:
        base = MixedPrecisionBaseline(baseline_model, device, args, dtype)
        wall0 = time.perf_counter()
        base_losses, base_times, base_evals = train(
            "baseline", base.step, batches, device, args,
            lambda: evaluate(base.model, eval_batches, device))
        base_wall = time.perf_counter() - wall0
        base_eval = evaluate(base.model, eval_batches, device)

    # ---- summary ----
    w = args.smooth
    tp_s = smooth(tp_losses, w)
    tp_tps = tokens_per_s(tp_times, tokens_per_step, args.warm_steps)
    lines = ["", "=== tidepool demo summary ==="]
    lines.append(f"model        {args.arch.upper()} (random init) {nparams / 1e6:.2f} M params: "
                 f"hidden {args.hidden}, {args.layers} layers, ffn {args.ffn or 4 * args.hidden}, "
                 f"vocab {vocab}; seq {args.seq} x batch {args.batch}, {args.steps} steps, "
                 f"AdamW lr {args.lr:g} (warm-up {args.warmup}, cosine), wd {args.weight_decay:g}")
    lines.append(f"data         {len(files)} text files (licences + docs), byte-level BPE "
                 f"trained here; {len(train_tokens):,} train / {len(eval_tokens):,} held-out tokens")
    lines.append(f"memory       state {human(state_bytes(model, dtype))} "
                 f"({dtype_label(dtype)} + fp32 master + m + v) = "
                 f"{ratio:.1f}x the device pool ({human(pool)}); chunk {human(chunk)} "
                 f"({chunk_why})")
    lines.append(f"peak device  {human(stats['peak_device_bytes'])} of {human(pool)} "
                 f"({stats['peak_device_bytes'] / pool:.0%})")
    lines.append(f"traffic      to device {human(stats['bytes_to_device'])}, to host "
                 f"{human(stats['bytes_to_host'])} "
                 f"({stats['bytes_to_device'] / args.steps / MiB:.1f} / "
                 f"{stats['bytes_to_host'] / args.steps / MiB:.1f} MiB a step)")
    lines.append(f"evictions    {stats['evictions']} ({stats['clean_evictions']} clean)")
    lines.append(f"prefetch     {stats['prefetches']} issued, {stats['prefetch_hits']} hits, "
                 f"{stats['prefetch_late']} late ({stats.get('prefetch_late_short_lead', 0)} of them "
                 f"issued only an op ahead), {stats['prefetch_wasted']} wasted")
    placement = stats["placement"]
    lines.append(f"placement    policy {args.policy}: {placement.get('state')}, "
                 f"{placement.get('replans', 0)} replans")
    lines.append(f"updates      block updates on device {stats.get('block_updates_on_device', 0)}, "
                 f"on host {stats.get('block_updates_on_host', 0)} (last step: "
                 f"{last.get('blocks_on_device', 0)} device / {last.get('blocks_on_host', 0)} host)")
    lines.append(f"loss         tidepool {tp_s[min(w, len(tp_s)) - 1]:.3f} -> {tp_s[-1]:.3f} "
                 f"(first/last {w}-step mean); held-out {tp_eval:.3f}")
    verdict: list[str] = []
    if base_losses:
        bs = smooth(base_losses, w)
        base_tps = tokens_per_s(base_times, tokens_per_step, args.warm_steps)
        raw_max = max(abs(a - b) for a, b in zip(tp_losses, base_losses))
        raw_mean = sum(abs(a - b) for a, b in zip(tp_losses, base_losses)) / len(tp_losses)
        sm_mean = sum(abs(a - b) for a, b in zip(tp_s, bs)) / len(tp_s)
        sm_max = max(abs(a - b) for a, b in zip(tp_s, bs))
        early = max(abs(a - b) for a, b in zip(tp_losses[:args.early_steps],
                                               base_losses[:args.early_steps]))
        lines.append(f"             baseline {bs[min(w, len(bs)) - 1]:.3f} -> {bs[-1]:.3f}; "
                     f"held-out {base_eval:.3f}")
        lines.append(f"throughput   tidepool {tp_tps:,.0f} tokens/s, baseline {base_tps:,.0f} "
                     f"tokens/s: {tp_tps / base_tps:.2f}x (steps {args.warm_steps}+; wall "
                     f"{tp_wall:.1f} s vs {base_wall:.1f} s)")
        lines.append(f"difference   per step |loss diff| max {raw_max:.4f}, mean {raw_mean:.4f}; "
                     f"smoothed max {sm_max:.4f}, mean {sm_mean:.4f} (tolerance: mean <= "
                     f"{args.tolerance:g}); first {args.early_steps} steps max {early:.5f} "
                     f"(tolerance {args.early_tolerance:g})")
        if sm_mean > args.tolerance:
            verdict.append(f"FAIL: tidepool's loss curve diverges from the baseline "
                           f"({sm_mean:.4f} > {args.tolerance:g})")
        if early > args.early_tolerance:
            verdict.append(f"FAIL: tidepool's first {args.early_steps} losses differ from the "
                           f"baseline's by {early:.5f} > {args.early_tolerance:g}")
    else:
        lines.append(f"throughput   tidepool {tp_tps:,.0f} tokens/s (steps {args.warm_steps}+; "
                     f"wall {tp_wall:.1f} s)")
    if tp_evals:
        lines.append("held-out     step " + ", ".join(
            f"{k}: {v:.3f}" + (f" / {base_evals[k]:.3f}" if k in base_evals else "")
            for k, v in tp_evals.items()) + (" (tidepool / baseline)" if base_evals else ""))
    status = 1 if verdict else 0
    if not tp_s[-1] < tp_s[min(w, len(tp_s)) - 1] - 0.5:
        verdict.append("FAIL: the loss did not fall by 0.5 nats: the model did not learn")
        status = status or 2
    if not verdict:
        verdict.append("check        PASS: tidepool trains like the plain mixed-precision recipe"
                       if base_losses else "check        PASS: the model learned (no baseline)")
    lines += verdict

    png = out / f"loss_{args.arch}_{args.policy}.png"
    title = (f"{args.arch.upper()} {nparams / 1e6:.1f}M params, state {ratio:.1f}x the "
             f"{human(pool)} {backend} device pool (tidepool {args.policy}, chunk "
             f"{human(chunk)}), compute on {handle.device.type}\n"
             f"licence + docs text, BPE vocab {vocab}, seq {args.seq} x batch {args.batch}")
    plot(png, tp_losses, base_losses, args, title)
    lines.append(f"plot         {png.resolve()}")
    summary = {"args": vars(args), "params": nparams, "state_bytes": state_bytes(model, dtype),
               "pool_bytes": pool, "chunk_bytes": chunk, "stats": stats,
               "tidepool_losses": tp_losses, "baseline_losses": base_losses,
               "tidepool_eval": tp_eval, "baseline_eval": base_eval,
               "tidepool_evals": tp_evals, "baseline_evals": base_evals, "status": status}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main())
