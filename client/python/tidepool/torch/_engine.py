"""The hooks that drive a wrapped model through tidepool.

- Forward: each module that owns parameters acquires them in a forward
  pre-hook (op key ``<module>/fwd``, or ``/recompute`` when gradient
  checkpointing reruns it inside backward) and releases them in its forward
  hook, so a parameter's ``.data`` views its chunk only while its module
  computes.
- Saved tensors: autograd keeps what forward saved for backward, including
  views of parameters (the transposed weight of ``F.linear``). Those bytes
  may have moved by the time backward runs, so a saved-tensor hook stores a
  reference to the parameter instead, and backward re-acquires it (op key
  ``<module>/bwd``) and gets a fresh copy.
- Gradients: once autograd has accumulated a parameter's gradient (its
  post-accumulate-grad hook, which fires reliably where module backward
  hooks do not), the gradient is written into tidepool memory (the
  parameter's own chunk, as Gemini does, or a separate fp32 gradient
  tensor when accumulating micro-batches) and reported to ShardedAdamW,
  whose worker updates that chunk while backward goes on.
"""
from __future__ import annotations

import collections
import functools
from typing import Callable

import torch

from tidepool.torch._store import ManagedParam, ParamStore


def _in_backward() -> bool:
    return torch._C._current_graph_task_id() != -1


class _SavedParam:
    """What autograd keeps instead of a view of a parameter."""

    __slots__ = ("param", "module", "size", "stride", "offset")

    def __init__(self, param: ManagedParam, module: str, t: torch.Tensor) -> None:
        self.param = param
        self.module = module
        self.size = t.size()
        self.stride = t.stride()
        self.offset = t.storage_offset()


class Engine:
    def __init__(self, model: torch.nn.Module, store: ParamStore,
                 params: list[ManagedParam], optimizer, world: int,
                 accumulation_steps: int) -> None:
        self.model = model
        self.store = store
        self.session = store.session
        self.params = params
        self.optimizer = optimizer  # tidepool._core.ShardedAdamW or None
        self.world = world
        self.accumulation_steps = accumulation_steps
        self._by_param: dict[int, ManagedParam] = {id(p.param): p for p in params}
        self._stack: list[tuple[str, str, list[ManagedParam]]] = []
        self._recompute_held: list[ManagedParam] = []
        self._callback_tasks: set[int] = set()
        # Trainable parameters whose gradient memory holds this step's
        # gradient (param-memory mode: their chunk holds it instead of the
        # parameter until the optimizer step).
        self._grads_written: set[int] = set()
        self._reported: set[int] = set()
        self._train_forwards = 0  # training forwards since the last step
        self._handles: list = []
        # Ops begun so far, by phase (fwd, recompute, bwd, grad).
        self.phases: collections.Counter[str] = collections.Counter()
        self.on_before_forward: Callable[[], None] | None = None

    # ---- installation ----

    def install(self) -> None:
        by_module: dict[torch.nn.Module, list[ManagedParam]] = {}
        names: dict[torch.nn.Module, str] = {}
        for name, module in self.model.named_modules(remove_duplicate=False):
            names.setdefault(module, name or "root")
            own = []
            for p in module.parameters(recurse=False):
                rec = self._by_param.get(id(p))
                if rec is not None and rec not in own:
                    own.append(rec)
            if own:
                by_module.setdefault(module, own)
        for module, own in by_module.items():
            name = names[module]
            self._handles.append(module.register_forward_pre_hook(
                functools.partial(self._pre_forward, name, own)))
            self._handles.append(module.register_forward_hook(
                functools.partial(self._post_forward, name, own), always_call=True))
        for rec in self.params:
            if rec.trainable:
                self._handles.append(rec.param.register_post_accumulate_grad_hook(
                    self._on_grad))
        original = self.model.forward

        @functools.wraps(original)
        def forward(*args, **kwargs):
            self._before_forward()
            with torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack):
                return original(*args, **kwargs)

        self.model.forward = forward

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if "forward" in self.model.__dict__:
            del self.model.forward

    # ---- forward ----

    def _before_forward(self) -> None:
        if self._grads_written and self.accumulation_steps == 1:
            raise RuntimeError(
                "tidepool: the model's chunks hold this step's gradients until "
                "optimizer.step(); call optimizer.step() before the next forward, "
                "or wrap with accumulation_steps=N to accumulate micro-batches")
        if self.on_before_forward is not None:
            self.on_before_forward()
        if torch.is_grad_enabled() and self.model.training:
            self._train_forwards += 1

    def _non_model_bytes(self) -> int:
        if self.store.device.type == "cuda":
            return torch.cuda.memory_allocated(self.store.device)
        return 0  # on the sim backend activations are not in the device pool

    def _pre_forward(self, name: str, own: list[ManagedParam], module, args) -> None:
        phase = "recompute" if _in_backward() else "fwd"
        self.phases[phase] += 1
        self.session.begin_op(f"{name}/{phase}", self._non_model_bytes())
        self.store.acquire(own)
        self._stack.append((name, phase, own))
        if phase == "recompute":
            # What the recomputed forward saved are raw views (the
            # checkpoint's own hooks keep them): hold the parameters until
            # their gradients are in, or until backward ends.
            self._recompute_held.extend(own)
            self._ensure_backward_callback()

    def _post_forward(self, name: str, own: list[ManagedParam], module, args,
                      output) -> None:
        if not self._stack or self._stack[-1][0] != name:
            return  # the pre-hook failed; nothing acquired
        _, phase, _ = self._stack.pop()
        if phase != "recompute":
            self.store.release(own, "hold")

    # ---- saved tensors ----

    def _pack(self, t: torch.Tensor):
        if not self.store.held_by_address:
            return t
        try:
            address = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):
            return t
        rec = self.store.held_by_address.get(address)
        if rec is None:
            return t
        module = self._stack[-1][0] if self._stack else rec.name
        return _SavedParam(rec, module, t)

    def _unpack(self, saved):
        if not isinstance(saved, _SavedParam):
            return saved
        self._ensure_backward_callback()
        rec = saved.param
        if not rec.holds:
            self.phases["bwd"] += 1
            self.session.begin_op(f"{saved.module}/bwd", self._non_model_bytes())
        self.store.acquire([rec])
        try:
            # A copy: the chunk may move once released, and the node that
            # asked keeps it only while it runs.
            return rec.view.as_strided(saved.size, saved.stride, saved.offset).clone()
        finally:
            self.store.release([rec], "hold")

    # ---- gradients ----

    def _ensure_backward_callback(self) -> None:
        task = torch._C._current_graph_task_id()
        if task == -1 or task in self._callback_tasks:
            return
        self._callback_tasks.add(task)
        torch.autograd.Variable._execution_engine.queue_callback(
            functools.partial(self._end_backward, task))

    def _end_backward(self, task: int) -> None:
        self._callback_tasks.discard(task)
        if self._recompute_held:
            held, self._recompute_held = self._recompute_held, []
            self.store.release(held, "hold", all_holds=True)

    def _on_grad(self, param: torch.nn.Parameter) -> None:
        grad = param.grad
        param.grad = None
        if grad is None:
            return
        rec = self._by_param[id(param)]
        self._ensure_backward_callback()
        if rec.holds:  # held since a recompute: its backward is done
            self.store.release([rec], "hold", all_holds=True)
        if self.world > 1:  # ranks' gradients are summed: average them
            grad = grad.float().div_(self.world)
        self.phases["grad"] += 1
        self.session.begin_op(f"{rec.name}/grad", self._non_model_bytes())
        if rec.grad_id is None:
            self.store.acquire([rec], write=True)
            rec.view.copy_(grad.reshape(rec.shape))
            self.store.release([rec], "hold_after_bwd")
            self._grads_written.add(rec.block)
            self._report(rec)
            return
        stream = self.store.stream()
        (acc,) = self.session.acquire([rec.grad_id], write=True, stream=stream)
        if rec.block in self._grads_written:
            acc.add_(grad.reshape(rec.shape))
        else:
            acc.copy_(grad.reshape(rec.shape))
        self.session.release([rec.grad_id], "hold", stream=stream)
        self._grads_written.add(rec.block)
        if self._train_forwards >= self.accumulation_steps:
            self._report(rec)

    def _report(self, rec: ManagedParam) -> None:
        if rec.block in self._reported:
            return
        self._reported.add(rec.block)
        if rec.grad_id is None:
            self.optimizer.on_gradients_ready(rec.block)
        else:
            self.optimizer.on_gradients_ready(rec.block, rec.grad_id, "f32")

    # ---- steps ----

    def finish_step(self) -> None:
        """Reports what backward left unreported (accumulated gradients of a
        step that had fewer micro-batches than accumulation_steps)."""
        if self.store.device.type == "cuda":
            torch.cuda.current_stream(self.store.device).synchronize()
        by_block = {p.block: p for p in self.params if p.trainable}
        for block in sorted(self._grads_written - self._reported):
            self._report(by_block[block])

    def after_step(self) -> None:
        self._grads_written.clear()
        self._reported.clear()
        self._train_forwards = 0

    @property
    def grads_pending(self) -> bool:
        return bool(self._grads_written)
