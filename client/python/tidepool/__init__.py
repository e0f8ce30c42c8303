"""tidepool: train models larger than the GPU.

The low-level face of libtidepool: a :class:`Session` of the node's
``tidepoold`` registers tensors (packed into chunks that the daemon places,
evicts and prefetches) and acquires them for computation; acquires return
torch tensors that view the chunk in this process (CPU tensors on the
``sim`` backend and for host acquires, CUDA tensors on the ``cuda``
backend), valid until the matching release. Most users want
:mod:`tidepool.torch` instead, which does all of this for a whole model::

    import tidepool
    s = tidepool.Session(policy="cpu")        # socket: $TIDEPOOL_SOCKET
    (w,) = s.register([("w", "f32", [1024], "param")])
    (t,) = s.acquire([w.id], write=True)
    t.fill_(1.0)
    s.release([w.id], "hold")

Every daemon error arrives as a :class:`tidepool.Error` subclass with the
daemon's message (``UnavailableError`` when no daemon answers on the
socket). ``release`` does not wait for the daemon: a release that fails is
raised by the session's next call (or ``s.flush()``), its message starting
"an earlier Release failed".
"""
from __future__ import annotations

import os

try:
    # torch first, where there is one: it brings its own NCCL, newer than a
    # system one that tidepool's extension would otherwise load first (and
    # torch then fails to start with an undefined NCCL symbol).
    import torch  # noqa: F401
except ImportError:
    pass

from tidepool._core import (  # noqa: F401,E402
    DEFAULT_SOCKET,
    Error,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    ShardedAdamW,
    TensorInfo,
    UnavailableError,
)
from tidepool import _core  # noqa: E402


def default_socket() -> str:
    """The daemon socket: ``$TIDEPOOL_SOCKET``, else the system default."""
    return os.environ.get("TIDEPOOL_SOCKET") or DEFAULT_SOCKET


def Session(socket: str | None = None, **options) -> "_core.Session":
    """Opens a session of tidepoold on ``socket`` (default: :func:`default_socket`).

    Options: policy ("cuda", "cpu", "static", "auto"), device, chunk_size,
    device_quota, host_quota, client_name, warmup_steps, margin_ratio,
    prefetch, lookahead_ops, static_param_offload, static_optim_offload,
    hot_path, cuda_device (the torch ordinal of the session's GPU).
    """
    return _core.Session(socket=socket or default_socket(), **options)


__all__ = [
    "Session", "ShardedAdamW", "TensorInfo", "default_socket", "Error",
    "UnavailableError", "InvalidArgumentError", "NotFoundError",
    "FailedPreconditionError", "ResourceExhaustedError",
    "PermissionDeniedError",
]
