"""The optimizer that :func:`tidepool.torch.wrap` returns: a
``torch.optim.Optimizer`` in form (param_groups, LR schedulers work), whose
state lives in tidepool chunks and whose update is tidepool's ShardedAdamW
(fp32 master weights and Adam moments, 1/world of them on each rank)."""
from __future__ import annotations

import os
from typing import Any, Callable

import torch

from tidepool.torch._engine import Engine


class Optimizer(torch.optim.Optimizer):
    """AdamW over tidepool memory. ``step()`` waits for the updates that
    started during backward and ends the training step; ``zero_grad()`` has
    nothing to clear (gradients never stay in ``param.grad``).

    Changing ``param_groups[0]["lr"]`` (by hand or with a
    ``torch.optim.lr_scheduler``) applies from the next forward on.
    """

    def __init__(self, params, engine: Engine, core, session, defaults: dict) -> None:
        super().__init__(params, defaults)
        self._engine = engine
        self._core = core
        self._session = session
        self.last_step: dict[str, Any] = {}
        self.placement: dict[str, Any] = {}
        self.device_updates = 0
        self.host_updates = 0
        self._lr = float(defaults["lr"])  # what the update uses
        engine.on_before_forward = self._sync_lr

    def _sync_lr(self) -> None:
        lr = float(self.param_groups[0]["lr"])
        if lr != self._lr and not self._engine.grads_pending:
            self._core.set_lr(lr)
            self._lr = lr

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._engine.finish_step()
        self.last_step = self._core.step()
        self.device_updates += self.last_step["blocks_on_device"]
        self.host_updates += self.last_step["blocks_on_host"]
        self._engine.after_step()
        self.placement = self._session.mark_step()
        self._sync_lr()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    @property
    def loss_scale(self) -> float:
        """Multiply the loss by this before backward (1 except fp16)."""
        return self._core.loss_scale

    def save_checkpoint(self, directory: str | os.PathLike) -> None:
        """Writes this rank's master weights, moments and step counters under
        ``directory`` (all ranks call it); :meth:`load_checkpoint` resumes
        bit-identically, at any world size."""
        os.makedirs(directory, exist_ok=True)
        self._core.save_checkpoint(os.fspath(directory))

    def load_checkpoint(self, directory: str | os.PathLike) -> None:
        """Restores the optimizer and the model's parameters (rebuilt from
        the master weights) from :meth:`save_checkpoint`'s directory."""
        if self._engine.grads_pending:
            raise RuntimeError("tidepool: call optimizer.step() before loading a checkpoint")
        self._core.load_checkpoint(os.fspath(directory))

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError(
            "tidepool: the optimizer state lives in tidepool chunks, sharded across "
            "ranks; use optimizer.save_checkpoint(dir) / load_checkpoint(dir)")

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        raise NotImplementedError(
            "tidepool: use optimizer.load_checkpoint(dir) (see save_checkpoint)")
