"""tidepool's low-level Python face against a real daemon: zero-copy views
of chunk memory, the dtypes and shapes registered, and daemon errors as
exceptions with the daemon's message."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch

import tidepool


def test_views_are_zero_copy_and_survive_paging(daemon):
    s = tidepool.Session(daemon.socket, policy="cpu", chunk_size=1 << 20)
    try:
        assert s.chunk_size == 1 << 20
        specs = [(f"t{i}", "bf16", [512, 512], "param") for i in range(8)]  # 8 x 512 KiB
        infos = s.register(specs)
        assert [i.bytes for i in infos] == [512 * 512 * 2] * 8
        for i, info in enumerate(infos):
            (view,) = s.acquire([info.id], write=True)
            assert view.dtype == torch.bfloat16 and view.shape == (512, 512)
            view.fill_(i)
            s.release([info.id], "hold")
        # 4 MiB of tensors through an 8 MiB device pool shared with other
        # tests' sessions: every value comes back, wherever it went.
        for i, info in enumerate(infos):
            (view,) = s.acquire_on_host([info.id])
            assert torch.all(view == i)
            s.release([info.id])
        (a,) = s.acquire([infos[0].id], write=True)
        a[0, 0] = 7  # a write through the view is a write to the chunk
        s.release([infos[0].id], "hold")
        (host,) = s.acquire_on_host([infos[0].id])
        assert host[0, 0].item() == 7
        s.release([infos[0].id])
        assert s.stats()["tensors"] == 8
    finally:
        s.close()


def test_errors_carry_the_daemons_message(daemon, tmp_path):
    missing = str(tmp_path / "nothing.sock")
    with pytest.raises(tidepool.UnavailableError, match="nothing.sock") as e:
        tidepool.Session(missing)
    assert "tidepoold" in str(e.value) and isinstance(e.value, ConnectionError)
    with pytest.raises(ValueError, match="unknown policy 'fast'"):
        tidepool.Session(daemon.socket, policy="fast")
    with pytest.raises(tidepool.InvalidArgumentError, match="chunk_size"):
        tidepool.Session(daemon.socket, chunk_size=12345)
    s = tidepool.Session(daemon.socket, policy="cpu")
    try:
        with pytest.raises(ValueError, match="unknown dtype 'f17'"):
            s.register([("x", "f17", [4], "param")])
        with pytest.raises(tidepool.NotFoundError, match="not registered"):
            s.acquire([424242])
        (t,) = s.register([("x", "f32", [4], "param")])
        s.release([t.id])  # not acquired: posted, its failure comes next
        with pytest.raises(tidepool.FailedPreconditionError,
                           match="an earlier Release failed"):
            s.flush()
        s.flush()  # raised once
        s.acquire([t.id])
        s.release([t.id])  # the session is still fine
    finally:
        s.close()
    with pytest.raises(tidepool.FailedPreconditionError, match="closed"):
        s.stats()


def test_calls_release_the_gil():
    # The main thread is never preempted (a huge switch interval), so the
    # other thread can count only while a call has released the GIL. A slow
    # sim link makes the call below wait on a 4 MiB write-back.
    from conftest import sim_daemon
    d = sim_daemon("8MiB", "256MiB", "--sim_link_gbps=0.08")
    s = tidepool.Session(d.socket, policy="cpu")
    (t,) = s.register([("x", "u8", [4 << 20], "param")])
    (view,) = s.acquire([t.id], write=True)
    view.fill_(1)
    s.release([t.id], "hold")  # dirty on the device
    ticks = 0
    stop = threading.Event()

    def count():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0)
    interval = sys.getswitchinterval()
    thread = threading.Thread(target=count)
    try:
        sys.setswitchinterval(1000)
        thread.start()
        before = ticks
        (host,) = s.acquire_on_host([t.id])  # waits for the write-back
        during = ticks - before
        sys.setswitchinterval(interval)
        assert during > 0
        assert host[0].item() == 1
        s.release([t.id])
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        thread.join()
        s.close()
        d.close()


def test_importing_the_package_before_torch_works():
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", "import tidepool.torch, torch; print(torch.ones(1).item())"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
