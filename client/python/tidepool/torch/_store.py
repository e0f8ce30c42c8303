"""Where a wrapped model's parameters live: tidepool tensors, viewed only
while computing.

Each distinct parameter (tied weights are one) is a tidepool tensor of the
session. Outside the moments a module computes with it, ``param.data`` is a
placeholder of the right shape, dtype and device that holds no memory (one
NaN element, expanded), so nothing can use stale bytes unnoticed; while a
module computes, ``param.data`` views the parameter's bytes in its chunk.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import torch

_DTYPES = {
    torch.float32: "f32",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.float64: "f64",
}

# Tensors per acquire or release call: what the shared-memory hot path
# carries in one request (more would fall back to gRPC).
_BATCH = 64


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise TypeError(f"tidepool: parameters of dtype {dtype} are not supported "
                        f"(use one of {', '.join(map(str, _DTYPES))})") from None


@dataclasses.dataclass(eq=False)
class ManagedParam:
    """One parameter in tidepool memory."""

    name: str  # its first qualified name
    param: torch.nn.Parameter
    shape: tuple[int, ...]
    dtype: torch.dtype
    trainable: bool
    tensor_id: int = 0
    chunk_id: int = 0
    block: int | None = None  # its ShardedAdamW block, if trainable
    grad_id: int | None = None  # separate fp32 gradient tensor (accumulation)
    view: torch.Tensor | None = None  # while acquired
    holds: int = 0  # acquisitions not yet released
    writable: bool = False
    placeholder: torch.Tensor | None = None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class ParamStore:
    """Registers parameters with a session and swaps their ``.data``
    between chunk views and placeholders. Not thread-safe: the hooks that
    call it run on the trainer's forward and backward threads one at a
    time."""

    def __init__(self, session, device: torch.device) -> None:
        self.session = session
        self.device = device
        self._cuda = device.type == "cuda"
        self._placeholders: dict[torch.dtype, torch.Tensor] = {}
        # Storage address of every view now held -> its parameter, so the
        # saved-tensor hooks recognise views of parameters.
        self.held_by_address: dict[int, ManagedParam] = {}

    # ---- registration ----

    def register(self, params: Sequence[ManagedParam], grad_tensors: bool) -> None:
        """Registers the parameters in order: trainable ones as group
        "param", frozen ones as "other" (their own chunks, so that no chunk
        mixes what the optimizer updates with what it never touches), then,
        if asked, one fp32 gradient tensor per trainable parameter."""
        specs = [(p.name, dtype_name(p.dtype), list(p.shape),
                  "param" if p.trainable else "other") for p in params]
        infos = self.session.register(specs)
        for p, info in zip(params, infos):
            p.tensor_id = info.id
            p.chunk_id = info.chunk_id
            p.placeholder = self._placeholder(p.dtype).expand(p.shape)
        if grad_tensors:
            trainable = [p for p in params if p.trainable]
            infos = self.session.register(
                [(p.name + ".grad", "f32", list(p.shape), "grad") for p in trainable])
            for p, info in zip(trainable, infos):
                p.grad_id = info.id

    def _placeholder(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._placeholders:
            self._placeholders[dtype] = torch.full((1,), float("nan"), dtype=dtype,
                                                   device=self.device)
        return self._placeholders[dtype]

    def write_initial(self, params: Sequence[ManagedParam],
                      values: dict[int, torch.Tensor]) -> None:
        """Copies each parameter's initial value into its tidepool tensor
        (in the host home, so no device traffic) and frees the original."""
        for batch in _batches(params):
            ids = [p.tensor_id for p in batch]
            if self.session.policy == "cuda":
                views = self.session.acquire(ids, write=True, stream=self.stream())
            else:
                views = self.session.acquire_on_host(ids, write=True)
            for p, v in zip(batch, views):
                v.copy_(values[id(p)].reshape(p.shape))
            if self._cuda:
                torch.cuda.current_stream(self.device).synchronize()
            self.session.release(ids, "hold", stream=self.stream())
        for p in params:
            p.param.data = p.placeholder

    # ---- views ----

    def stream(self) -> int:
        return torch.cuda.current_stream(self.device).cuda_stream if self._cuda else 0

    def acquire(self, params: Iterable[ManagedParam], write: bool = False) -> None:
        """Makes the parameters COMPUTE and points ``.data`` at their bytes.
        Already held ones are only counted again."""
        todo: list[ManagedParam] = []
        for p in params:
            if p.holds:
                if write and not p.writable:
                    raise RuntimeError(f"tidepool: {p.name} is held read-only")
                p.holds += 1
            else:
                todo.append(p)
        for batch in _batches(todo):
            views = self.session.acquire([p.tensor_id for p in batch], write=write,
                                         stream=self.stream())
            for p, v in zip(batch, views):
                p.view = v
                p.holds = 1
                p.writable = write
                p.param.data = v
                self.held_by_address[v.data_ptr()] = p

    def release(self, params: Iterable[ManagedParam], target: str = "hold",
                all_holds: bool = False) -> None:
        """Drops one hold (or all) of each parameter; the last one hands the
        tensor back to the daemon and restores the placeholder."""
        done: list[ManagedParam] = []
        for p in params:
            if not p.holds:
                continue
            p.holds = 0 if all_holds else p.holds - 1
            if p.holds == 0:
                done.append(p)
        for batch in _batches(done):
            for p in batch:
                self.held_by_address.pop(p.view.data_ptr(), None)
                p.param.data = p.placeholder
                p.view = None
            self.session.release([p.tensor_id for p in batch], target,
                                 stream=self.stream())

    def read(self, params: Sequence[ManagedParam]) -> dict[int, torch.Tensor]:
        """Copies of the parameters' current values on the CPU, read from
        their host homes one batch at a time (never the whole model on the
        device)."""
        out: dict[int, torch.Tensor] = {}
        for batch in _batches(params):
            ids = [p.tensor_id for p in batch]
            if self.session.policy == "cuda":
                views = self.session.acquire(ids, write=False, stream=self.stream())
                for p, v in zip(batch, views):
                    out[id(p)] = v.to("cpu", copy=True)
            else:
                views = self.session.acquire_on_host(ids, write=False)
                for p, v in zip(batch, views):
                    out[id(p)] = v.clone()
            self.session.release(ids, "hold", stream=self.stream())
        return out


def _batches(items: Sequence[ManagedParam] | list[ManagedParam]):
    items = list(items)
    for i in range(0, len(items), _BATCH):
        yield items[i:i + _BATCH]
