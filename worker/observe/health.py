"""HTTP endpoints on the metrics port: ``/metrics``, ``/healthz`` (alive), ``/readyz`` (serving)."""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["HealthServer", "HealthState"]

logger = logging.getLogger(__name__)


class HealthState:
    """What the main loop tells the probes: a heartbeat and whether it is serving.

    Serving means the lifecycle says so (:meth:`set_ready`: loading, connecting, joined, the
    broker link) and no standing problem is raised (:meth:`set_problem`, e.g. a model that
    refuses every record); ``/readyz`` gives the first reason it is not.
    """

    def __init__(self, stall_seconds: float) -> None:
        self.stall_seconds = stall_seconds
        self._ready = False
        self._reason = "starting"
        self._problems: dict[str, str] = {}
        self._beat = time.monotonic()

    @property
    def ready(self) -> bool:
        return self._ready and not self._problems

    @property
    def reason(self) -> str:
        return next(iter(self._problems.values()), self._reason)

    def beat(self) -> None:
        self._beat = time.monotonic()

    def set_ready(self, ready: bool, reason: str) -> None:
        self._ready, self._reason = ready, reason

    def set_problem(self, name: str, problem: str | None) -> None:
        """Raise (a text) or clear (None) a standing problem named ``name``."""
        if problem is None:
            self._problems.pop(name, None)
        else:
            self._problems[name] = problem

    def alive(self) -> bool:
        return time.monotonic() - self._beat < self.stall_seconds


class HealthServer:
    """A small threaded HTTP server for Prometheus and Kubernetes probes."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, state: HealthState):
        self.registry, self.state = registry, state
        handler = self._handler()
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        logger.info("metrics and health endpoints on port %d", self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    alive = server.state.alive()
                    self._send(200 if alive else 503, b"ok\n" if alive else b"main loop stalled\n")
                elif path == "/readyz":
                    ready = server.state.ready
                    self._send(200 if ready else 503, (server.state.reason + "\n").encode())
                else:
                    self._send(404, b"not found\n")

            def _send(
                self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8"
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                logger.debug("http: " + format, *args)

        return Handler
