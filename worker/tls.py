"""TLS pre-flight: a certificate problem fails at start in one line, whichever Kafka client runs."""

from __future__ import annotations

import contextlib
import socket
import ssl

from worker.exceptions import TlsError
from worker.settings import WorkerSettings

__all__ = ["check_tls"]

#: How long the TLS pre-flight waits for a broker's handshake (and a refusal of our certificate).
TLS_CHECK_SECONDS = 5.0


def check_tls(settings: WorkerSettings) -> None:
    """Fail at start, in one line, when TLS cannot work with these settings.

    The Kafka clients report a certificate that does not verify (a wrong CA, a
    name mismatch) or a client certificate the broker refuses only as "Unable to
    bootstrap" (kafka-python) or a transport error (librdkafka), retried forever.
    This handshake with each reachable bootstrap server, using the same files,
    says which. Unreachable servers are left to
    the connection backoff.
    """
    if not settings.security_protocol.endswith("SSL"):
        return
    context = ssl.create_default_context(
        cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None
    )
    if settings.ssl_certfile is not None:
        keyfile = str(settings.ssl_keyfile) if settings.ssl_keyfile else None
        try:
            context.load_cert_chain(str(settings.ssl_certfile), keyfile)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(
                f"TLS: cannot load ANOMALY_SSL_CERTFILE/ANOMALY_SSL_KEYFILE: {exc}"
            ) from exc
    for server in [s.strip() for s in settings.bootstrap_servers.split(",") if s.strip()]:
        host, _, port = server.rpartition(":")
        host = host.strip("[]")
        try:
            raw = socket.create_connection((host, int(port)), timeout=TLS_CHECK_SECONDS)
        except (OSError, ValueError):
            continue  # not reachable (yet): the connection backoff deals with it
        try:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                tls.settimeout(0.5)
                # A TLS 1.3 server refuses a client certificate after the handshake.
                with contextlib.suppress(TimeoutError, ssl.SSLWantReadError):
                    tls.recv(1)
        except ssl.SSLCertVerificationError as exc:
            raise TlsError(
                f"TLS: the certificate of {server} does not verify against "
                f"ANOMALY_SSL_CAFILE={settings.ssl_cafile or '(system CAs)'}: {exc.verify_message}"
            ) from exc
        except ssl.SSLError as exc:
            raise TlsError(
                f"TLS: {server} refused the connection ({exc.reason or exc}); "
                "check ANOMALY_SSL_CERTFILE/ANOMALY_SSL_KEYFILE (mutual TLS) and the protocol"
            ) from exc
        except OSError:
            continue
        finally:
            raw.close()
