#!/usr/bin/env python3
"""bench/hf: train OPT-1.3B and OPT-2.7B (random weights, batch 8 x 1024
tokens, AdamW) three ways on one GPU and compare the time per step:

- plain:    PyTorch, model.cuda() in fp32, bf16 autocast, torch.optim.AdamW
            on the GPU (the recipe of the H100 reference figures in DESIGN.md);
- fsdp2:    torch.distributed.fsdp.fully_shard with CPUOffloadPolicy, world
            size 1 (NCCL on localhost), the same recipe (fp32 parameters,
            bf16 autocast), AdamW on the CPU-resident shards;
- tidepool: tidepool.torch.wrap(policy="auto", param_dtype=bf16): bf16
            parameters for compute, fp32 masters and Adam moments, all in
            tidepool chunks, through a tidepoold whose device pool is capped
            at --pool_fraction (1/3) of the model's 16 bytes/parameter state,
            so that the state does not fit.

Every configuration runs in its own subprocess under a timeout (a failure,
OOM or hang is reported and the rest still run), with a few warm-up steps
and then timed steps, and prints s/step, tokens/s and peak GPU memory
(torch.cuda.max_memory_allocated; for tidepool the daemon's peak device
bytes for the session plus torch's own allocations). The parent prints the
machine, the load, a table with the ratios tidepool/plain and
fsdp2/tidepool (of s/step), and one JSON line per result.

The whole run keeps to a time budget (--budget_s, $TIDEPOOL_HF_BUDGET_S;
240 s): runs start in order while their estimated time fits, each worker
cuts its timed steps short before its deadline.

--smoke runs the same code paths on the CPU with a tiny OPT (hidden 64, 2
layers, vocab 512, batch 2 x 32): tidepool on the sim backend, plain and
FSDP2 (gloo) on the CPU.

    bench/hf/run.sh                      # on the GPU machine
    python bench/hf/bench_hf.py --smoke --tidepoold build/bin/tidepoold
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from hf_common import (CONFIGS, GiB, KiB, MODELS, MiB, VARIANTS, estimate_s, fmt_bytes,
                       loadavg, opt_param_count, split_config)
from hf_worker import worker_main


# ======================================================================
# Parent: plan, daemons, subprocesses, report.
# ======================================================================

class Daemon:
    """One tidepoold for one tidepool run, its device pool capped."""

    def __init__(self, binary: str, args: list[str], log_path: Path,
                 pid_file: Path | None = None) -> None:
        self.pid_file = pid_file
        self.dir = tempfile.mkdtemp(prefix="bench-hf-tp-")
        self.socket = os.path.join(self.dir, "tidepoold.sock")
        self.log_path = log_path
        self.cmd = [binary, f"--socket={self.socket}"] + args
        self.proc = None

    def start(self, timeout: float) -> None:
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        # run.sh stops what is listed here if this process dies first.
        if self.pid_file:
            with open(self.pid_file, "a") as f:
                f.write(f"{self.proc.pid}\n")
        deadline = time.time() + timeout
        while time.time() < deadline:
            if os.path.exists(self.socket):
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"tidepoold exited with {self.proc.returncode}: "
                                   + self.tail())
            time.sleep(0.05)
        raise RuntimeError(f"tidepoold did not open its socket in {timeout:.0f} s: " + self.tail())

    def tail(self, n: int = 8) -> str:
        try:
            lines = Path(self.log_path).read_text(errors="replace").splitlines()
            return " | ".join(lines[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


_children: list[subprocess.Popen] = []
_daemons: list[Daemon] = []


class Interrupted(Exception):
    """SIGTERM/SIGHUP/SIGINT: the current run is killed and reported, the
    rest is not started, and the table of what ran is still printed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_signal(signum, frame):
    raise Interrupted(signum)


def run_worker(args, model: str, config: str, timeout: float, socket_path: str | None,
               out_dir: Path | None) -> dict:
    """Runs one configuration in a subprocess, echoing its output; returns
    its result (or what went wrong)."""
    deadline = time.time() + timeout - 5
    cmd = [sys.executable, "-u", str(Path(__file__).resolve()), "--worker",
           "--model", model, "--config", config, "--batch", str(args.batch),
           "--seq", str(args.seq), "--warmup", str(args.warmup), "--steps", str(args.steps),
           "--lr", str(args.lr), "--weight_decay", str(args.weight_decay),
           "--attn", args.attn, "--adam_impl", args.adam_impl, "--policy", args.policy,
           "--init_device", args.init_device, "--deadline", f"{deadline:.1f}",
           "--seed", str(args.seed), "--threads", str(args.threads)]
    if args.chunk_size:
        cmd += ["--chunk_size", str(args.chunk_size)]
    if args.warmup_trace:
        cmd += ["--warmup_trace", str(args.warmup_trace)]
    if args.fsdp_mp:
        cmd.append("--fsdp_mp")
    if args.smoke:
        cmd.append("--cpu")
    if socket_path:
        cmd += ["--socket", socket_path]
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.smoke:
        env.setdefault("OMP_NUM_THREADS", "1")
        env["CUDA_VISIBLE_DEVICES"] = ""
    if socket_path:
        env["TIDEPOOL_SOCKET"] = socket_path
    log_file = open(out_dir / f"{model}-{config}.log", "w") if out_dir else None
    lines: list[str] = []
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, text=True, bufsize=1,
                            errors="replace")
    _children.append(proc)

    def pump():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if log_file:
                log_file.write(line)
                log_file.flush()
            if not line.startswith("RESULT "):
                sys.stdout.write(("  " if line.startswith("[") else f"  [{model}/{config}] ") + line)
                sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    status = None
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        status = "timeout"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        _children.remove(proc)
        if log_file:
            log_file.close()
    elapsed = time.time() - t0
    result = None
    for line in lines:
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
    if result is None:
        result = dict(model=model, config=config, status=status or "failed")
        tail = [ln for ln in lines if ln.strip()][-6:]
        if status == "timeout":
            result["error"] = f"killed after {timeout:.0f} s"
        else:
            result["error"] = f"exit {proc.returncode}"
        oom = [ln for ln in lines if "OutOfMemoryError" in ln or "out of memory" in ln]
        if oom:
            result["status"] = "oom"
            result["error"] += ": " + oom[-1].strip()[:300]
        result["tail"] = tail
        steps = [ln for ln in lines if " step " in ln and "timed" in ln]
        if steps:
            result["timed_lines"] = steps[-3:]
    elif status == "timeout":
        result["status"] = "timeout"
    result["wall_s"] = round(elapsed, 1)
    return result


def machine_info() -> dict:
    info = dict(host=platform.node(), cpus=os.cpu_count(), loadavg=loadavg(),
                python=platform.python_version())
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_gib"] = round(int(f.readline().split()[1]) * 1024 / GiB, 1)
    except (OSError, ValueError, IndexError):
        pass
    if shutil.which("nvidia-smi"):
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                "--format=csv,noheader"], capture_output=True, text=True,
                               timeout=20)
            if q.returncode == 0 and q.stdout.strip():
                info["gpu"] = q.stdout.strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return info


def plan_runs(args) -> list[tuple[str, str]]:
    if args.models or args.configs:
        models = args.models.split(",") if args.models else ["opt-1.3b", "opt-2.7b"]
        configs = args.configs.split(",") if args.configs else list(CONFIGS)
        runs = [(m, c) for m in models for c in configs]
    else:
        runs = []
        for item in args.runs.split(","):
            m, _, c = item.strip().partition(":")
            runs.append((m, c))
    if args.smoke:
        # The tiny model, each configuration once.
        seen = []
        for _, c in runs:
            if c not in seen:
                seen.append(c)
        runs = [("tiny", c) for c in seen]
    for m, c in runs:
        if m not in MODELS:
            raise SystemExit(f"bench_hf: unknown model {m!r} (one of {', '.join(MODELS)})")
        base, mods = split_config(c)
        if base not in CONFIGS or any(v not in VARIANTS for v in mods):
            raise SystemExit(f"bench_hf: unknown configuration {c!r} (one of "
                             f"{', '.join(CONFIGS)}, optionally +{'/+'.join(VARIANTS)})")
    return runs


def daemon_args(args, model: str) -> tuple[list[str], int]:
    n = opt_param_count(MODELS[model])
    state16 = 16 * n  # fp32 params + grads + Adam m, v: what the peers hold
    pool = int(state16 * args.pool_fraction)
    # The host pool holds every chunk's home: bf16 params (grads reuse
    # them), fp32 masters, m and v = 14 bytes/parameter, plus chunk waste.
    host = int(14 * n * 1.3) + (64 * MiB if args.smoke else 2 * GiB)
    if args.host_pool:
        host = parse_size(args.host_pool)
    if args.smoke:
        # The sim device hands out 2 MiB slots (a chunk takes at least one)
        # and has at least one: the tiny model's 1.9 MB of state is four
        # chunks, which two slots do not hold.
        pool = args.smoke_pool
        dev = ["--device=sim", f"--sim_capacity={pool // MiB}MiB"]
    else:
        pool = max(2 * MiB, pool // (2 * MiB) * (2 * MiB))
        dev = [f"--device={args.daemon_device}", f"--device_pool={pool // MiB}MiB"]
    return dev + [f"--host_pool={-(-host // MiB)}MiB"] + args.daemon_arg, pool


def parse_size(s: str) -> int:
    units = {"kib": KiB, "mib": MiB, "gib": GiB, "k": KiB, "m": MiB, "g": GiB, "": 1}
    s = s.strip().lower()
    i = len(s)
    while i and not s[i - 1].isdigit() and s[i - 1] != ".":
        i -= 1
    return int(float(s[:i]) * units[s[i:]])


def report(results: list[dict], args, info: dict) -> list[dict]:
    print()
    print(f"== bench/hf results ({'smoke, CPU + sim' if args.smoke else info.get('gpu', 'no GPU')}; "
          f"batch {args.batch} x {args.seq} tokens; {args.warmup} warm-up + {args.steps} timed steps)")
    head = f"{'model':<9} {'config':<12} {'status':<11} {'s/step':>8} {'tokens/s':>9} " \
           f"{'peak GPU':>10} {'pool':>10}  notes"
    print(head)
    print("-" * len(head))
    for r in results:
        s = r.get("s_per_step")
        tps = r.get("tokens_per_s")
        notes = []
        tidepool = split_config(r["config"])[0] == "tidepool"
        if r.get("s_per_step_source"):
            notes.append(f"s/step from {r['s_per_step_source']}")
        elif r.get("timed_steps") is not None and r["timed_steps"] != args.steps:
            notes.append(f"{r['timed_steps']} timed (deadline)")
        if r.get("error"):
            notes.append(r["error"][:160])
        if r.get("daemon"):
            notes.append(r["daemon"][:160])
        if tidepool and r.get("per_timed_step"):
            p = r["per_timed_step"]
            notes.append(f"per step: {fmt_bytes(p.get('bytes_to_device'))} in, "
                         f"{fmt_bytes(p.get('bytes_to_host'))} out, "
                         f"{p.get('evictions', 0):g} evictions, "
                         f"{p.get('prefetch_hits', 0):g} prefetch hits, "
                         f"Adam blocks on device/host {p.get('block_updates_on_device', 0):g}/"
                         f"{p.get('block_updates_on_host', 0):g}")
        if tidepool and r.get("tidepool_peak_device_bytes") is not None and r.get("torch_peak_bytes"):
            notes.append(f"peak = pool {fmt_bytes(r['tidepool_peak_device_bytes'])} + "
                         f"torch {fmt_bytes(r['torch_peak_bytes'])}")
        if r.get("peak_gpu_bytes") is None and r.get("max_rss_bytes"):
            notes.append(f"max RSS {fmt_bytes(r['max_rss_bytes'])}")
        pool = fmt_bytes(r.get("device_pool_capacity")) if tidepool else ""
        print(f"{r['model']:<9} {r['config']:<12} {r['status']:<11} "
              f"{(f'{s:.3f}' if s else '-'):>8} {(f'{tps:.0f}' if tps else '-'):>9} "
              f"{fmt_bytes(r.get('peak_gpu_bytes')):>10} {pool:>10}  {'; '.join(notes)}")
    print()
    print("ratios of s/step (tidepool/plain > 1: tidepool slower than plain PyTorch; "
          "fsdp2/tidepool > 1: tidepool faster than FSDP2 offload):")
    ok = {(r["model"], r["config"]): r["s_per_step"] for r in results
          if r["status"] == "ok" and r.get("s_per_step")}
    models = list(dict.fromkeys(r["model"] for r in results))
    ratios = []
    for m in models:
        rec = dict(model=m)
        tp, pl = ok.get((m, "tidepool")), ok.get((m, "plain"))
        rec["tidepool/plain"] = round(tp / pl, 3) if tp and pl else None
        fsdp = [c for (mm, c) in ok if mm == m and split_config(c)[0] == "fsdp2"]
        if not fsdp:
            fsdp = ["fsdp2"]
        for c in fsdp:
            fs = ok.get((m, c))
            rec[f"{c}/tidepool"] = round(fs / tp, 3) if fs and tp else None
            rec[f"{c}/plain"] = round(fs / pl, 3) if fs and pl else None
        ratios.append(rec)
        text = "   ".join(f"{k} {f'{v:.2f}x' if v else '-':>7}" for k, v in rec.items()
                          if k != "model")
        print(f"  {m:<9} {text}")
    print()
    print("recipes:")
    seen = set()
    for r in results:
        if r.get("recipe") and r["config"] not in seen:
            seen.add(r["config"])
            print(f"  {r['config']:<12} {r['recipe']}")
    return ratios


def parent_main(args) -> int:
    t_start = time.time()
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _on_signal)
    info = machine_info()
    out_dir = Path(args.out) if args.out else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    print(f"bench/hf: {info.get('gpu', 'no GPU seen by nvidia-smi')}; host {info['host']}, "
          f"{info['cpus']} CPUs ({info.get('cpu', '?')}), {info.get('mem_gib', '?')} GiB RAM; "
          f"load {info['loadavg']}; python {info['python']} ({sys.executable})")
    if args.dry_run:
        runs = plan_runs(args)
        total = 0.0
        for m, c in runs:
            est = estimate_s(c, m, args.warmup + args.steps, args.smoke)
            total += est
            line = f"  {m}:{c}: estimated {est:.0f} s, timeout " \
                   f"{args.run_timeout_s or max(60.0, 2.5 * est):.0f} s"
            if split_config(c)[0] == "tidepool":
                dargs, pool = daemon_args(args, m)
                line += f"; tidepoold {' '.join(dargs)}"
            print(line)
        print(f"  total estimated {total:.0f} s of a {args.budget_s:.0f} s budget")
        return 0
    if not args.smoke and "gpu" not in info and not args.force:
        print("bench/hf: no GPU answers (nvidia-smi); use --smoke on a machine without one")
        return 77
    runs = plan_runs(args)
    need_daemon = any(split_config(c)[0] == "tidepool" for _, c in runs)
    if need_daemon and not args.socket and not args.tidepoold:
        print("bench/hf: tidepool runs need --tidepoold BINARY (or --socket of a running daemon)")
        return 2
    print(f"bench/hf: {len(runs)} runs ({', '.join(f'{m}:{c}' for m, c in runs)}), "
          f"{args.warmup} warm-up + {args.steps} timed steps each, budget {args.budget_s:.0f} s")
    budget_end = t_start + args.budget_s - 8  # leave time for the report
    results = []
    jsonl = open(out_dir / "results.jsonl", "w") if out_dir else None
    interrupted = None
    try:
        for model, config in runs:
            left = budget_end - time.time()
            est = estimate_s(config, model, args.warmup + args.steps, args.smoke)
            name = f"{model}:{config}"
            if interrupted is not None:
                results.append(dict(model=model, config=config, status="skipped",
                                    error=f"not started: {interrupted}"))
                continue
            if left < max(15.0, 0.5 * est):
                r = dict(model=model, config=config, status="skipped",
                         error=f"budget: {left:.0f} s left, estimated {est:.0f} s")
                print(f"\n-- {name}: skipped ({r['error']})")
                results.append(r)
                continue
            timeout = min(left, args.run_timeout_s or max(60.0, 2.5 * est))
            print(f"\n-- {name}: starting (timeout {timeout:.0f} s, estimated {est:.0f} s, "
                  f"{left:.0f} s of the budget left; load {loadavg()})", flush=True)
            r = one_run(args, model, config, timeout, out_dir)
            if r["status"] == "interrupted":
                interrupted = r["error"]
            results.append(r)
            line = f"{r['status']}"
            if r.get("s_per_step"):
                line += f": {r['s_per_step']:.3f} s/step, {r['tokens_per_s']:.0f} tokens/s, " \
                        f"peak GPU {fmt_bytes(r.get('peak_gpu_bytes'))}"
            if r.get("error"):
                line += f" ({r['error'][:300]})"
            print(f"-- {name}: {line} [{r.get('wall_s', 0):.0f} s]", flush=True)
    except Interrupted as e:  # between runs
        interrupted = str(e)
    finally:
        for p in list(_children):
            p.kill()
        for d in list(_daemons):
            d.stop()
    ratios = report(results, args, info)
    print()
    for r in results:
        rec = dict(bench="hf", smoke=bool(args.smoke), machine=info.get("gpu", "cpu"), **r)
        print(json.dumps(rec, sort_keys=False))
        if jsonl:
            jsonl.write(json.dumps(rec) + "\n")
    for q in ratios:
        rec = dict(bench="hf", kind="ratios", smoke=bool(args.smoke), **q)
        print(json.dumps(rec))
        if jsonl:
            jsonl.write(json.dumps(rec) + "\n")
    if jsonl:
        jsonl.close()
    print(f"\nbench/hf: done in {time.time() - t_start:.0f} s; load {loadavg()}"
          + (f"; logs and results.jsonl in {out_dir}" if out_dir else ""))
    if interrupted is not None:
        return 143
    bad = [r for r in results if r["status"] not in ("ok", "skipped")]
    return 1 if bad else 0


def one_run(args, model: str, config: str, timeout: float, out_dir: Path | None) -> dict:
    """One configuration: its daemon (tidepool), its worker, its result."""
    run_start = time.time()
    daemon = None
    sock = args.socket
    pool = None
    try:
        if split_config(config)[0] == "tidepool" and not args.socket:
            dargs, pool = daemon_args(args, model)
            daemon = Daemon(args.tidepoold, dargs,
                            (out_dir or Path(tempfile.gettempdir())) / f"{model}-tidepoold.log",
                            out_dir / "tidepoold.pids" if out_dir else None)
            _daemons.append(daemon)
            print(f"  tidepoold {' '.join(dargs)} (pool {fmt_bytes(pool)} = "
                  f"{args.pool_fraction:.3g} of {fmt_bytes(16 * opt_param_count(MODELS[model]))}"
                  f" = 16 bytes/param)", flush=True)
            t0 = time.time()
            daemon.start(timeout=min(60.0, timeout / 2))
            print(f"  tidepoold up in {time.time() - t0:.1f} s", flush=True)
            sock = daemon.socket
        r = run_worker(args, model, config, timeout - (time.time() - run_start), sock, out_dir)
    except RuntimeError as e:
        r = dict(model=model, config=config, status="failed", error=str(e)[:400])
    except Interrupted as e:
        r = dict(model=model, config=config, status="interrupted",
                 error=f"{e} after {time.time() - run_start:.0f} s")
    finally:
        if daemon is not None:
            exited = daemon.proc is not None and daemon.proc.poll() is not None
            daemon.stop()
            _daemons.remove(daemon)
    if daemon is not None and exited:
        r.setdefault("daemon", f"tidepoold exited with {daemon.proc.returncode}; "
                               f"log: {daemon.tail(3)}")
    if pool is not None:
        r.setdefault("device_pool_capacity", pool)
    r.setdefault("wall_s", round(time.time() - run_start, 1))
    return r


def main() -> int:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="tiny OPT on the CPU, tidepool on the sim backend")
    p.add_argument("--runs", default=env("TIDEPOOL_HF_RUNS",
                                         "opt-1.3b:plain,opt-1.3b:tidepool,opt-1.3b:fsdp2,"
                                         "opt-2.7b:plain,opt-2.7b:tidepool,"
                                         "opt-1.3b:fsdp2+fused"),
                   help="model:config pairs, run in this order")
    p.add_argument("--models", default=env("TIDEPOOL_HF_MODELS"),
                   help="with --configs: their cross product instead of --runs")
    p.add_argument("--configs", default=env("TIDEPOOL_HF_CONFIGS"),
                   help="subset of plain,fsdp2,tidepool")
    p.add_argument("--warmup", type=int, default=int(env("TIDEPOOL_HF_WARMUP", 2)))
    p.add_argument("--steps", type=int, default=int(env("TIDEPOOL_HF_STEPS", 3)))
    p.add_argument("--batch", type=int, default=None, help="default 8 (smoke 2)")
    p.add_argument("--seq", type=int, default=None, help="default 1024 (smoke 32)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight_decay", type=float, default=0.0)
    p.add_argument("--attn", default=env("TIDEPOOL_HF_ATTN", "sdpa"),
                   help="attention implementation (all configurations)")
    p.add_argument("--adam_impl", default=env("TIDEPOOL_HF_ADAM", "default"),
                   choices=["default", "fused", "foreach", "forloop"],
                   help="torch.optim.AdamW implementation of the peers")
    p.add_argument("--fsdp_mp", action="store_true",
                   help="FSDP2 with MixedPrecisionPolicy(bf16 params) instead of fp32 + autocast")
    p.add_argument("--policy", default="auto", help="tidepool policy")
    p.add_argument("--pool_fraction", type=float,
                   default=float(env("TIDEPOOL_HF_POOL_FRACTION", 1 / 3)),
                   help="tidepool device pool as a fraction of 16 bytes/parameter")
    p.add_argument("--host_pool", default=None, help="tidepoold --host_pool (default 14 B/param x 1.3 + 2 GiB)")
    p.add_argument("--smoke_pool", type=int, default=4 * MiB,
                   help="sim device capacity in bytes under --smoke (2 MiB slots)")
    p.add_argument("--chunk_size", type=int, default=0, help="tidepool chunk bytes (0: searched)")
    p.add_argument("--warmup_trace", type=int, default=0,
                   help="tidepool session warmup_steps (0: the daemon's default)")
    p.add_argument("--daemon_device", default=env("TIDEPOOL_HF_DEVICE", "cuda:0"),
                   help="tidepoold --device on the GPU machine")
    p.add_argument("--daemon_arg", action="append", default=[],
                   help="extra tidepoold flag (repeatable)")
    p.add_argument("--tidepoold", default=env("TIDEPOOLD"),
                   help="tidepoold binary: one daemon per tidepool run, pool sized to the model")
    p.add_argument("--socket", default=None,
                   help="use this running daemon instead (its pool is then the caller's)")
    p.add_argument("--init_device", default="auto",
                   help="where the random init runs (auto: the GPU when there is one)")
    p.add_argument("--budget_s", type=float, default=None,
                   help="seconds for the whole run (default $TIDEPOOL_HF_BUDGET_S, at most "
                        "$TIDEPOOL_HF_MAX_BUDGET_S = 290 since scripts/gpu_check.sh gives "
                        "this step 300 s; else 240)")
    p.add_argument("--run_timeout_s", type=float, default=0,
                   help="timeout of each run (0: from its estimate, within the budget)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (smoke)")
    p.add_argument("--out", default=env("OUT"), help="directory for logs and results.jsonl")
    p.add_argument("--dry_run", action="store_true",
                   help="print the plan (estimates, timeouts, daemon flags) and exit")
    p.add_argument("--force", action="store_true", help="run the GPU plan without nvidia-smi")
    p.add_argument("--seed", type=int, default=0)
    # Worker-only flags.
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=0, help=argparse.SUPPRESS)
    p.add_argument("--cpu", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.batch is None:
        args.batch = 2 if args.smoke else 8
    if args.seq is None:
        args.seq = 32 if args.smoke else 1024
    if args.smoke and not args.threads:
        args.threads = 1
    if args.budget_s is None:
        args.budget_s = min(float(env("TIDEPOOL_HF_BUDGET_S", 240)),
                            float(env("TIDEPOOL_HF_MAX_BUDGET_S", 290)))
    if args.worker:
        return worker_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
