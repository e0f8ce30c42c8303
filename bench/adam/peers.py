#!/usr/bin/env python3
"""Peer CPU AdamW implementations for bench/adam/run.sh, and its table.

  peers.py bench --n 268435456 --iters 5 --threads 16   # prints TSV rows
  peers.py table results.tsv                             # prints the table

Rows are "row<TAB>name<TAB>Gparam/s<TAB>bytes/param"; an implementation that
cannot run prints "skip<TAB>name<TAB>reason" instead. All peers update fp32
parameters from fp32 gradients (28 bytes per parameter), the case they
support; torch and DeepSpeed are imported only for "bench".
"""

import argparse
import gc
import os
import statistics
import sys
import time


def _time_steps(step, iters):
    step()  # warm-up: allocates optimizer state, builds kernels
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _make_param(torch, n):
    p = torch.nn.Parameter(torch.linspace(-1.0, 1.0, n, dtype=torch.float32))
    p.grad = torch.linspace(-1e-3, 1e-3, n, dtype=torch.float32)
    return p


def bench_torch(n, iters, mode):
    import torch

    p = _make_param(torch, n)
    kwargs = {"fused": True} if mode == "fused" else {"foreach": True}
    opt = torch.optim.AdamW([p], lr=1e-4, weight_decay=0.01, **kwargs)
    t = _time_steps(opt.step, iters)
    del opt, p
    gc.collect()
    return n / t / 1e9


def bench_deepspeed(n, iters):
    import torch
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    p = _make_param(torch, n)
    opt = DeepSpeedCPUAdam([p], lr=1e-4, weight_decay=0.01, adamw_mode=True)
    t = _time_steps(opt.step, iters)
    del opt, p
    gc.collect()
    return n / t / 1e9


def _first_line(exc):
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:200]


def cmd_bench(args):
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any import failure means skip
        for name in ("torch.optim.AdamW fused=True", "torch.optim.AdamW foreach=True",
                     "DeepSpeedCPUAdam"):
            print(f"skip\t{name}\ttorch not importable ({_first_line(exc)})")
        return
    torch.set_num_threads(args.threads)
    print(f"info\ttorch {torch.__version__}, {torch.get_num_threads()} threads")
    for mode in ("fused", "foreach"):
        name = f"torch.optim.AdamW {mode}=True"
        try:
            print(f"row\t{name}\t{bench_torch(args.n, args.iters, mode):.4f}\t28", flush=True)
        except Exception as exc:  # noqa: BLE001
            print(f"skip\t{name}\t{_first_line(exc)}", flush=True)
    name = "DeepSpeedCPUAdam"
    try:
        import deepspeed

        print(f"info\tdeepspeed {deepspeed.__version__}", flush=True)
    except Exception as exc:  # noqa: BLE001
        print(f"skip\t{name}\tdeepspeed not importable ({_first_line(exc)})")
        return
    try:
        print(f"row\t{name}\t{bench_deepspeed(args.n, args.iters):.4f}\t28", flush=True)
    except Exception as exc:  # noqa: BLE001 - typically its C++ op failed to build
        print(f"skip\t{name}\tcpu_adam op failed: {_first_line(exc)}", flush=True)


def cmd_table(args):
    rows, skips, info = [], [], []
    bandwidth = None
    with open(args.results, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if parts[0] == "row":
                rows.append((parts[1], float(parts[2]), float(parts[3])))
            elif parts[0] == "skip":
                skips.append((parts[1], parts[2]))
            elif parts[0] == "triad_gbs":
                bandwidth = float(parts[1])
            elif parts[0] in ("machine", "info", "triad_detail"):
                info.append(f"{parts[0]}: {parts[1]}")
    reference = next((r[1] for r in rows if r[0].startswith("tidepool")), None)
    for line in info:
        print(line)
    if bandwidth:
        print(f"bandwidth for the bound: {bandwidth:.1f} GB/s "
              f"(bound = GB/s / bytes per param)")
    print()
    header = f"{'implementation':<48} {'Gparam/s':>9} {'x tidepool':>11} {'of bound':>9}"
    print(header)
    print("-" * len(header))
    for name, gparams, nbytes in rows:
        ratio = f"{gparams / reference:.2f}" if reference else "-"
        bound = f"{100 * gparams * nbytes / bandwidth:.0f}%" if bandwidth else "-"
        print(f"{name:<48} {gparams:>9.3f} {ratio:>11} {bound:>9}")
    for name, reason in skips:
        print(f"{name:<48} {'skipped':>9}   {reason}")
    print()
    print("x tidepool: against the tidepool fp32-grad row; of bound: share of the "
          "measured bandwidth limit.")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="time the peers, print TSV rows")
    b.add_argument("--n", type=int, default=256 << 20)
    b.add_argument("--iters", type=int, default=5)
    b.add_argument("--threads", type=int, default=os.cpu_count())
    t = sub.add_parser("table", help="format a results TSV")
    t.add_argument("results")
    args = parser.parse_args()
    if args.cmd == "bench":
        cmd_bench(args)
    else:
        cmd_table(args)


if __name__ == "__main__":
    sys.exit(main())
