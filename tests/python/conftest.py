"""Fixtures of the Python package's tests: real tidepoold processes on the
sim backend (started from $TIDEPOOL_BIN_DIR), tiny Hugging Face models built
from their config classes with random weights."""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import shutil

import pytest

# The daemon dies with the test process even when CTest kills it on its
# timeout and no fixture's teardown runs: setpriv (util-linux) sets the
# parent-death signal and execs tidepoold in the same process. Not
# preexec_fn, which is unsafe in a process with threads (torch's).
SETPRIV = shutil.which("setpriv")
DIE_WITH_TEST = [SETPRIV, "--pdeathsig", "KILL", "--"] if SETPRIV else []

BIN_DIR = Path(os.environ.get("TIDEPOOL_BIN_DIR", Path(__file__).parents[2] / "build" / "bin"))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU and a cuda-backend tidepoold")


class Daemon:
    """A tidepoold on a private socket; killed when the test ends."""

    def __init__(self, *flags: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="tidepool-pytest-")
        # The daemon owns its socket directory (and refuses a shared one).
        self.socket = os.path.join(self.dir, "run", "tidepoold.sock")
        self.log = open(os.path.join(self.dir, "tidepoold.log"), "w+")
        self.proc = subprocess.Popen(
            [*DIE_WITH_TEST, str(BIN_DIR / "tidepoold"), f"--socket={self.socket}",
             "--mutex_deadlock_detection", *flags],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"tidepoold did not start: {self.log.read()}")
            time.sleep(0.02)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)

    def close(self) -> None:
        self.kill(signal.SIGTERM)
        self.log.close()


def sim_daemon(capacity: str = "8MiB", host_pool: str = "1GiB", *extra: str) -> Daemon:
    return Daemon("--device=sim", f"--sim_capacity={capacity}", f"--host_pool={host_pool}",
                  "--chunk_size=2MiB", *extra)


@pytest.fixture(scope="module")
def daemon():
    """A sim daemon whose 8 MiB device holds four 2 MiB chunks."""
    d = sim_daemon()
    yield d
    d.close()


@pytest.fixture
def fresh_daemon():
    d = sim_daemon()
    yield d
    d.close()
