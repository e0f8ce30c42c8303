"""Train a PyTorch (Hugging Face) model larger than the GPU through tidepool.

A few lines around an unchanged training loop::

    import tidepool.torch as tp
    model = AutoModelForCausalLM.from_config(config)
    model, optimizer = tp.wrap(model, policy="auto", lr=1e-4, weight_decay=0.01,
                               param_dtype=torch.bfloat16)
    for batch in loader:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step(); optimizer.zero_grad()

The model's parameters, gradients, fp32 master weights and Adam moments
live in tidepool chunks, which the node's ``tidepoold`` places, evicts and
prefetches (``policy``: ``cuda``, ``cpu``, ``static`` or ``auto``). Under
``torchrun`` each rank is a session of the same daemon and the optimizer is
sharded across ranks (ZeRO). See docs/hf.md for the knobs and limits.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any

import torch

import tidepool
from tidepool import _core
from tidepool.torch._chunking import ChunkChoice, choose_chunk_size
from tidepool.torch._dist import broadcast_initial, open_communicator, world_and_rank
from tidepool.torch._engine import Engine
from tidepool.torch._optim import Optimizer
from tidepool.torch._store import ManagedParam, ParamStore, dtype_name

__all__ = ["wrap", "Optimizer", "Handle", "choose_chunk_size"]


@dataclasses.dataclass
class Handle:
    """What :func:`wrap` attaches to the model as ``model.tidepool``."""

    session: Any
    engine: Engine
    optimizer: Optimizer | None
    chunk: ChunkChoice | None
    params: list[ManagedParam]
    device: torch.device
    comm: Any = None

    def stats(self) -> dict[str, Any]:
        """The session's traffic and residency (bytes each way, evictions,
        prefetch hits, peak device use), the auto planner's state under
        "placement" (its updates_on_* count the daemon's placed acquires),
        and block_updates_on_device/_host: the optimizer's parameter-block
        updates by where they ran."""
        out = dict(self.session.stats())
        out["placement"] = dict(self.session.placement())
        if self.optimizer is not None:
            out["block_updates_on_device"] = self.optimizer.device_updates
            out["block_updates_on_host"] = self.optimizer.host_updates
        return out

    def close(self) -> None:
        """Ends the session (the daemon reclaims its memory); the model is
        unusable afterwards."""
        self.engine.remove()
        if self.optimizer is not None:
            self.optimizer._core.close()
        self.session.close()


def _unique_params(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    seen: set[int] = set()
    out = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


def _open_session(socket: str | None, local_rank: int, options: dict) -> Any:
    """A session on this rank's GPU where torch sees one (by UUID, as the
    daemon names GPUs), else on the daemon's first device (sim)."""
    if torch.cuda.is_available() and "device" not in options:
        index = local_rank % torch.cuda.device_count()
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        try:
            return tidepool.Session(socket, device=f"GPU-{uuid}", cuda_device=index,
                                    **options)
        except tidepool.NotFoundError:
            pass  # a daemon without this GPU (sim): its first device
    return tidepool.Session(socket, **options)


def wrap(model: torch.nn.Module, *, policy: str = "auto", lr: float = 1e-3,
         betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0.0, max_grad_norm: float = 0.0,
         param_dtype: torch.dtype | None = None, socket: str | None = None,
         chunk_size: int | None = None, accumulation_steps: int = 1,
         overlap: bool = True, verbose: bool = True, **session_options
         ) -> tuple[torch.nn.Module, Optimizer | None]:
    """Moves ``model``'s parameters into tidepool and returns ``(model,
    optimizer)``; the model is changed in place and keeps its class.

    policy: the daemon's placement policy (``auto`` traces the first
      step(s) and plans eviction and prefetch; ``cpu`` pages on demand;
      ``cuda`` keeps everything on the device; ``static``).
    lr, betas, eps, weight_decay, max_grad_norm: AdamW (torch's semantics,
      one group; clipping of the global norm when max_grad_norm > 0).
    param_dtype: what compute reads (e.g. torch.bfloat16); the optimizer
      keeps fp32 master weights. Default: the model's dtype.
    socket: tidepoold's socket (default ``$TIDEPOOL_SOCKET``, else
      /run/tidepool/tidepoold.sock).
    chunk_size: bytes per chunk; default: searched for this model (printed
      when verbose).
    accumulation_steps: micro-batches per optimizer step. With 1 the
      gradient reuses its parameter's chunk memory; with more, separate
      fp32 gradient tensors accumulate them (step() may come earlier).
    session_options: passed to the session (device_quota, host_quota,
      warmup_steps, margin_ratio, prefetch, lookahead_ops, ...).

    Parameters with ``requires_grad=False`` get no gradient, master or
    optimizer memory (e.g. a LoRA adapter's frozen base).
    """
    if accumulation_steps < 1:
        raise ValueError("tidepool: accumulation_steps must be >= 1")
    if hasattr(model, "tidepool"):
        raise RuntimeError("tidepool: this model is wrapped already")
    world, rank, local_rank = world_and_rank()
    named = _unique_params(model)
    if not named:
        raise ValueError("tidepool: the model has no parameters")
    dtype = param_dtype or named[0][1].dtype
    dtype_name(dtype)  # a clear error for unsupported dtypes
    records = [ManagedParam(name=n, param=p, shape=tuple(p.shape), dtype=dtype,
                            trainable=p.requires_grad) for n, p in named]
    trainable = [r for r in records if r.trainable]

    choice = None
    if chunk_size is None:
        esize = torch.empty((), dtype=dtype).element_size()
        shard = lambda r: -(-r.numel // world) * 4  # noqa: E731
        groups = [[r.numel * esize for r in trainable],
                  [r.numel * esize for r in records if not r.trainable],
                  [shard(r) for r in trainable],
                  [shard(r) for r in trainable for _ in (0, 1)]]
        if accumulation_steps > 1:
            groups.append([r.numel * 4 for r in trainable])
        probe = _open_session(socket, local_rank, dict(session_options, policy=policy))
        capacity = probe.device["capacity_bytes"]
        probe.close()
        choice = choose_chunk_size(groups, device_capacity=capacity)
        chunk_size = choice.size
    session = _open_session(socket, local_rank,
                            dict(session_options, policy=policy, chunk_size=chunk_size,
                                 client_name=session_options.get(
                                     "client_name", f"torch rank {rank}")))
    device = (torch.device("cuda", session.cuda_device)
              if session.device["backend"] == "cuda" else torch.device("cpu"))
    if verbose and rank == 0:
        why = f" ({choice.reason})" if choice else " (as given)"
        print(f"tidepool: session {session.id} on {session.device['name']} "
              f"({session.device['backend']}), policy {session.policy}, chunk size "
              f"{session.chunk_size / (1 << 20):g} MiB{why}", file=sys.stderr)

    # Buffers (rotary tables, position ids) move to the compute device as
    # they are; parameters go into tidepool.
    for module in model.modules():
        for key, buf in module._buffers.items():
            if buf is not None and buf.device != device:
                module._buffers[key] = buf.to(device)
    comm = open_communicator(world, rank)
    initial = {id(r): r.param.detach() for r in records}
    broadcast_initial(list(initial.values()), world)

    store = ParamStore(session, device)
    store.register(records, grad_tensors=accumulation_steps > 1)
    store.write_initial(records, {k: v.to(dtype) for k, v in initial.items()})

    core = None
    optimizer = None
    if trainable:
        blocks = []
        for i, r in enumerate(trainable):
            r.block = i
            blocks.append((r.tensor_id, r.numel, dtype_name(dtype), r.chunk_id))
        core = _core.ShardedAdamW(session, comm, blocks, lr=lr, beta1=betas[0],
                                  beta2=betas[1], eps=eps, weight_decay=weight_decay,
                                  max_grad_norm=max_grad_norm, overlap=overlap,
                                  dynamic_loss_scale=dtype == torch.float16)
        # Masters from the original values (fp32 weights keep their
        # precision when compute reads a bf16 copy).
        for r in trainable:
            core.init_from_values(r.block, initial[id(r)].float().contiguous().reshape(-1))
    del initial
    engine = Engine(model, store, records, core, world, accumulation_steps)
    engine.install()
    if core is not None:
        optimizer = Optimizer([r.param for r in trainable], engine, core, session,
                              dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
    handle = Handle(session, engine, optimizer, choice, records, device, comm)
    _install_state_dict(model, store, records)
    model.tidepool = handle
    return model, optimizer


def _install_state_dict(model: torch.nn.Module, store: ParamStore,
                        records: list[ManagedParam]) -> None:
    """model.state_dict() (and so save_pretrained) returns the full
    parameters, read from their host homes a batch at a time; tied
    parameters stay one tensor."""
    by_param = {id(r.param): r for r in records}
    names = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in by_param:
            names[name] = by_param[id(p)]

    def hook(module, state_dict, prefix, local_metadata):
        wanted = [(k, names[k[len(prefix):]]) for k in state_dict
                  if k.startswith(prefix) and k[len(prefix):] in names]
        recs = list({id(r): r for _, r in wanted}.values())
        values = store.read(recs)
        for key, r in wanted:
            state_dict[key] = values[id(r)]
        return state_dict

    model._register_state_dict_hook(hook)
