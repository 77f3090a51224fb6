"""A real `vlkit serve` in a subprocess on a free port, and images made in memory (for tests/test_serve*.py)."""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

TESTS_DIR = Path(__file__).resolve().parent  # subprocesses run here: they import the installed vlkit


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png_bytes(rgb=(200, 30, 30), seed: int = 0, size: int = 32, fmt: str = "PNG") -> bytes:
    """A noisy solid-colour image, encoded; a different ``seed`` gives different pixels."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(rgb)[None, None] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


class Server:
    """``vlkit --threads 1 serve RUN --port P ...`` running until :meth:`stop` (or ``kill``)."""

    def __init__(self, run: Path, *options: str, log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log or Path(run).parent / f"server-{self.port}.log")
        code = "from vlkit.cli.main import main; main()"
        command = [sys.executable, "-c", code, "--threads", "1", "serve", str(run), "--port", str(self.port),
                   "--no-access-log", *options]
        env = {**os.environ, "VLKIT_QUIET": "1"}
        with open(self.log, "wb") as handle:
            self.process = subprocess.Popen(command, cwd=TESTS_DIR, stdout=handle, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 120.0) -> "Server":
        """Block until GET /health answers (or fail with the server's log)."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind."""
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
