"""TLS pre-flight: a certificate problem fails at start in one line, whichever Kafka client runs."""

from __future__ import annotations

import contextlib
import socket
import ssl

from worker.kafka.options import Connection
from worker.kafka.ports import TlsError

__all__ = ["check_tls"]

#: How long the TLS pre-flight waits for a broker's handshake (and a refusal of our certificate).
TLS_CHECK_SECONDS = 5.0


def check_tls(connection: Connection) -> None:
    """Fail at start, in one line, when TLS cannot work with these settings.

    The Kafka clients report a certificate that does not verify (a wrong CA, a
    name mismatch) or a client certificate the broker refuses only as "Unable to
    bootstrap" (kafka-python) or a transport error (librdkafka), retried forever.
    This handshake with each reachable bootstrap server, using the same files,
    says which. Unreachable servers are left to
    the connection backoff.
    """
    if not connection.security_protocol.endswith("SSL"):
        return
    context = ssl.create_default_context(cafile=connection.ssl_cafile)
    if connection.ssl_certfile is not None:
        try:
            context.load_cert_chain(connection.ssl_certfile, connection.ssl_keyfile)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(
                f"TLS: cannot load ANOMALY_SSL_CERTFILE/ANOMALY_SSL_KEYFILE: {exc}"
            ) from exc
    for server in connection.servers:
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
            cafile = connection.ssl_cafile or "(system CAs)"
            raise TlsError(
                f"TLS: the certificate of {server} does not verify against "
                f"ANOMALY_SSL_CAFILE={cafile}: {exc.verify_message}"
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
