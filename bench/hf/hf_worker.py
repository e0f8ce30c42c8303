"""bench/hf's worker: one configuration (plain, FSDP2 offload or tidepool)
of one model, in its own process, started by bench_hf.py with --worker; it
prints one RESULT line."""
from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time

from hf_common import MiB, MODELS, loadavg, opt_param_count, split_config


def _autocast_step(model, opt, x, amp):
    """One training step of the peers' recipe (bf16 autocast, AdamW)."""
    def step():
        with amp:
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step

def worker_main(args: argparse.Namespace) -> int:
    t_start = time.time()
    load_start = loadavg()
    import torch
    import transformers

    torch.manual_seed(args.seed)
    cuda = torch.cuda.is_available() and not args.cpu
    dev = torch.device("cuda", 0) if cuda else torch.device("cpu")
    if not cuda and args.threads:
        torch.set_num_threads(args.threads)
    spec = dict(MODELS[args.model])
    cfg = transformers.OPTConfig(**spec)
    cfg._attn_implementation = args.attn
    log = lambda *a: print(f"[{args.model}/{args.config}]", *a, flush=True)  # noqa: E731
    result: dict = dict(model=args.model, config=args.config, status="ok",
                        batch=args.batch, seq=args.seq, warmup=args.warmup,
                        device=torch.cuda.get_device_name(0) if cuda else "cpu",
                        torch=torch.__version__, transformers=transformers.__version__,
                        attn=args.attn, loadavg_start=load_start)
    base, mods = split_config(args.config)
    for m in mods:
        if m == "mp":
            args.fsdp_mp = True
        else:
            args.adam_impl = m
    adam_kw = {}
    if args.adam_impl == "fused":
        adam_kw["fused"] = True
    elif args.adam_impl == "foreach":
        adam_kw["foreach"] = True
    elif args.adam_impl == "forloop":
        adam_kw["foreach"] = False

    def build(device) -> torch.nn.Module:
        t0 = time.time()
        with torch.device(device):
            model = transformers.OPTForCausalLM(cfg)
        model.train()
        n = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        if n != opt_param_count(spec):
            log(f"note: {n} parameters, the estimate says {opt_param_count(spec)}")
        result["params"] = n
        log(f"built {args.model} ({n / 1e6:.1f} M parameters, fp32, attention "
            f"{model.config._attn_implementation}) on {device} in {time.time() - t0:.1f} s")
        return model

    init_dev = dev if args.init_device == "auto" else torch.device(args.init_device)
    g = torch.Generator(device=dev).manual_seed(args.seed + 1)
    x = torch.randint(0, spec["vocab_size"], (args.batch, args.seq), device=dev, generator=g)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16)
    handle = None
    t_setup = time.time()

    if base == "plain":
        model = build(init_dev).to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr,
                                weight_decay=args.weight_decay, **adam_kw)
        result["recipe"] = f"fp32 params, bf16 autocast, torch AdamW ({args.adam_impl}) on {dev.type}"

        step = _autocast_step(model, opt, x, amp)

    elif base == "fsdp2":
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
        store_dir = tempfile.mkdtemp(prefix="bench-hf-pg-")
        backend = "nccl" if cuda else "gloo"
        if cuda:
            torch.cuda.set_device(dev)
        dist.init_process_group(backend, init_method=f"file://{store_dir}/store",
                                rank=0, world_size=1)
        mesh = init_device_mesh(dev.type, (1,))
        model = build(init_dev)
        kw = dict(mesh=mesh, offload_policy=CPUOffloadPolicy(pin_memory=cuda))
        if args.fsdp_mp:
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16,
                                                   reduce_dtype=torch.float32)
        for layer in model.model.decoder.layers:
            fully_shard(layer, **kw)
        fully_shard(model, **kw)
        if cuda:
            torch.cuda.empty_cache()
        p0 = next(model.parameters())
        log(f"fully_shard: parameters on {p0.to_local().device}, "
            f"pinned {p0.to_local().is_pinned() if cuda else 'n/a'}")
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr,
                                weight_decay=args.weight_decay, **adam_kw)
        result["recipe"] = (("bf16 params (MixedPrecisionPolicy)" if args.fsdp_mp else
                             "fp32 params") + ", bf16 autocast, CPUOffloadPolicy, "
                            f"torch AdamW ({args.adam_impl}) on the CPU shards, {backend}")

        step = _autocast_step(model, opt, x, amp)

    elif base == "tidepool":
        import tidepool.torch as tp
        model = build(init_dev)
        if init_dev.type == "cuda":
            model = model.to("cpu")  # wrap reads the initial values from host memory
            torch.cuda.empty_cache()
        opts = {}
        if args.chunk_size:
            opts["chunk_size"] = args.chunk_size
        if args.warmup_trace:
            opts["warmup_steps"] = args.warmup_trace
        t0 = time.time()
        model, opt = tp.wrap(model, policy=args.policy, lr=args.lr,
                             weight_decay=args.weight_decay, param_dtype=torch.bfloat16,
                             socket=args.socket, **opts)
        handle = model.tidepool
        if cuda:
            torch.cuda.empty_cache()
        log(f"wrapped in {time.time() - t0:.1f} s: chunk size "
            f"{handle.session.chunk_size / MiB:g} MiB, device {handle.session.device['name']} "
            f"({handle.session.device['backend']}), compute on {handle.device}")
        if handle.device.type != dev.type:
            raise RuntimeError(f"tidepool computes on {handle.device} but torch sees {dev}: "
                               "is the daemon on the wrong backend?")
        result["recipe"] = (f"bf16 params, fp32 masters + Adam moments in tidepool chunks, "
                            f"policy {args.policy}, tidepool AdamW")
        result["chunk_size"] = handle.session.chunk_size

        def step():
            loss = model(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            return loss
    else:
        raise ValueError(args.config)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    sync()
    result["setup_s"] = round(time.time() - t_setup, 2)
    log(f"setup {result['setup_s']} s; load {loadavg()}")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    import resource

    losses = []
    times = []
    last_dt = None
    stats0 = None
    total = args.warmup + args.steps
    for i in range(total):
        if i == args.warmup and handle is not None:
            stats0 = handle.stats()
        if i >= args.warmup and args.deadline and last_dt is not None:
            # Cut the timed steps short before the parent's deadline.
            if time.time() + 1.2 * last_dt + 3 > args.deadline:
                log(f"deadline: stopping after {len(times)} timed steps")
                result["cut_by_deadline"] = True
                break
        sync()
        t0 = time.perf_counter()
        loss = step()
        sync()
        dt = time.perf_counter() - t0
        last_dt = dt
        lv = float(loss.detach().float().item())
        losses.append(lv)
        kind = "warm-up" if i < args.warmup else "timed"
        if i >= args.warmup:
            times.append(dt)
        log(f"step {i + 1}/{total} ({kind}) {dt:.3f} s, loss {lv:.4f}")
        if not math.isfinite(lv):
            result["status"] = "failed"
            result["error"] = f"loss is {lv} at step {i + 1}"
            break

    if not times and result["status"] == "ok" and result.get("cut_by_deadline") and last_dt:
        # No time for a timed step: the last warm-up step stands in.
        times = [last_dt]
        result["s_per_step_source"] = "the last warm-up step (deadline)"
    elif not times and result["status"] == "ok":
        result["status"] = "failed"
        result["error"] = "no timed step completed"
    if times:
        s = sum(times) / len(times)
        result.update(s_per_step=round(s, 4), s_per_step_min=round(min(times), 4),
                      timed_steps=0 if result.get("s_per_step_source") else len(times),
                      tokens_per_s=round(args.batch * args.seq / s, 1),
                      step_times=[round(t, 4) for t in times])
    result["losses"] = [round(v, 4) for v in losses]
    result["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if cuda:
        torch_peak = torch.cuda.max_memory_allocated()
        result["torch_peak_bytes"] = torch_peak
        result["torch_reserved_peak_bytes"] = torch.cuda.max_memory_reserved()
        result["peak_gpu_bytes"] = torch_peak
    if handle is not None:
        st = handle.stats()
        result["tidepool_peak_device_bytes"] = st.get("peak_device_bytes")
        result["device_pool_capacity"] = st.get("device_pool_capacity")
        if cuda:
            result["peak_gpu_bytes"] = result["torch_peak_bytes"] + (st.get("peak_device_bytes") or 0)
        keys = ["bytes_to_device", "bytes_to_host", "evictions", "prefetch_hits",
                "updates_on_device", "updates_on_host", "block_updates_on_device",
                "block_updates_on_host"]
        if stats0 is not None and times and not result.get("s_per_step_source"):
            per = {k: round((st[k] - stats0.get(k, 0)) / len(times), 1)
                   for k in keys if isinstance(st.get(k), (int, float))}
            p1, p0 = st.get("placement", {}), stats0.get("placement", {})
            for k in ("updates_on_device", "updates_on_host"):
                if isinstance(p1.get(k), (int, float)):
                    per["placed_" + k] = round((p1[k] - p0.get(k, 0)) / len(times), 1)
            result["per_timed_step"] = per
        result["tidepool_stats"] = {k: v for k, v in st.items() if not isinstance(v, dict)}
        result["placement"] = {k: v for k, v in st.get("placement", {}).items()
                               if isinstance(v, (int, float, str, bool))}
        handle.close()
    result["loadavg_end"] = loadavg()
    result["worker_s"] = round(time.time() - t_start, 1)
    print("RESULT " + json.dumps(result), flush=True)
    if base == "fsdp2":
        import torch.distributed as dist
        dist.destroy_process_group()
        shutil.rmtree(store_dir, ignore_errors=True)
    return 0 if result["status"] == "ok" else 1
