"""A real S3-speaking server for tests: moto's standalone server in a subprocess on loopback.

Not moto's in-process mock: boto3 talks HTTP to a separate process, as it would to MinIO.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto_s3_server(timeout_s: float = 60.0) -> Iterator[str]:
    """Start ``moto.server`` on a free loopback port, wait until it answers, yield its
    ``http://127.0.0.1:<port>`` endpoint, and stop it afterwards."""
    port = free_port()
    endpoint = f"http://{HOST}:{port}"
    with tempfile.TemporaryDirectory(prefix="moto-") as tmp:
        log_path = Path(tmp) / "moto.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"moto server exited with {proc.returncode}: {log_path.read_text()[-2000:]}"
                    )
                try:
                    # moto's own health endpoint; any HTTP answer means it is serving.
                    httpx.get(f"{endpoint}/moto-api/", timeout=1.0)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(
                            f"moto server not answering on {endpoint} after {timeout_s} s"
                        ) from None
                    time.sleep(0.1)  # bounded by the deadline above
            yield endpoint
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
