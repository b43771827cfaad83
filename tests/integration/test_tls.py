"""TLS against a real TLS listener: Debian's stunnel in front of the embedded broker.

The broker advertises stunnel's port, so every client (the test's too) speaks TLS to it:
CA verification, mutual TLS with a client certificate, and a wrong CA or a missing client
certificate failing at start with one clear line and exit code 2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from demo.broker import LocalBroker, free_port, stop_process, wait_for_port
from tests.helpers import record
from tests.integration.conftest import CLIENTS
from tests.integration.kafka_helpers import Topics, produce, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("kafka_client", CLIENTS, indirect=True),
]


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(directory: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 it signs, a client certificate, another CA."""
    for ca in ("ca", "other-ca"):
        openssl(
            *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-subj", f"/CN={ca}"),
            cwd=directory,
        )
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, extra in (("server", ["-extfile", "san.ext"]), ("client", [])):
        openssl(
            *("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key"),
            *("-out", f"{name}.csr", "-subj", f"/CN={name}"),
            cwd=directory,
        )
        openssl(
            *("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key"),
            *("-CAcreateserial", "-out", f"{name}.pem", "-days", "2", *extra),
            cwd=directory,
        )


@pytest.fixture
def tls_broker(tmp_path):
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip("builds its own TLS listener in front of the embedded broker")
    if shutil.which("stunnel") is None or shutil.which("openssl") is None:
        pytest.skip("needs Debian's stunnel4 and openssl (scripts/system-deps.sh installs them)")
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certificates(certs)
    tls_port = free_port()
    with LocalBroker(log_path=tmp_path / "tansu-tls.log", advertised_port=tls_port) as broker:
        config = tmp_path / "stunnel.conf"
        config.write_text(
            "foreground = yes\npid =\n[kafka]\n"
            f"accept = 127.0.0.1:{tls_port}\nconnect = 127.0.0.1:{broker.port}\n"
            f"cert = {certs / 'server.pem'}\nkey = {certs / 'server.key'}\n"
            f"CAfile = {certs / 'ca.pem'}\nverifyChain = yes\n"  # mutual TLS: client cert required
        )
        log = (tmp_path / "stunnel.log").open("wb")
        stunnel = subprocess.Popen(["stunnel", str(config)], stdout=log, stderr=subprocess.STDOUT)
        try:
            assert wait_for_port(tls_port, 10), "stunnel did not listen"
            yield f"127.0.0.1:{tls_port}", certs
        finally:
            stop_process(stunnel)


def client_tls(certs: Path) -> dict[str, object]:
    return {
        "security.protocol": "ssl",
        "ssl.ca.location": str(certs / "ca.pem"),
        "ssl.certificate.location": str(certs / "client.pem"),
        "ssl.key.location": str(certs / "client.key"),
    }


def worker_tls(certs: Path, ca: str = "ca.pem", client: bool = True) -> dict[str, str]:
    env = {"ANOMALY_SECURITY_PROTOCOL": "SSL", "ANOMALY_SSL_CAFILE": str(certs / ca)}
    if client:
        env["ANOMALY_SSL_CERTFILE"] = str(certs / "client.pem")
        env["ANOMALY_SSL_KEYFILE"] = str(certs / "client.key")
    return env


def create_tls_topics(bootstrap: str, certs: Path, topics: Topics) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, **client_tls(certs)})
    names = [topics.input, topics.alerts, topics.dlq]
    for future in admin.create_topics([NewTopic(n, 3, 1) for n in names]).values():
        future.result(timeout=30)


def test_mutual_tls_with_ca_verification_end_to_end(tls_broker, topics, start_worker):
    bootstrap, certs = tls_broker
    create_tls_topics(bootstrap, certs, topics)
    produce(
        bootstrap,
        topics.input,
        [record([5, 5, 5, 5], id="over-tls"), b"broken"],
        config=client_tls(certs),
    )
    worker = start_worker(bootstrap=bootstrap, **worker_tls(certs))
    worker.wait_ready(60)
    wait_for(lambda: worker.metric("anomaly_offset_commits_total"), 60, message="a commit")
    wait_for(lambda: worker.metric("anomaly_records_consumed_total") == 2, 30)
    assert worker.metric("anomaly_alerts_total") == 1
    assert worker.metric("anomaly_records_invalid_total", {"reason": "invalid_json"}) == 1
    assert worker.terminate() == 0


@pytest.mark.parametrize(
    ("ca", "client", "expected"),
    [
        ("other-ca.pem", True, "does not verify against ANOMALY_SSL_CAFILE="),
        ("ca.pem", False, "refused the connection"),
    ],
    ids=["wrong-ca", "no-client-certificate"],
)
def test_a_tls_misconfiguration_fails_at_start_with_one_line(
    tls_broker, topics, start_worker, ca, client, expected
):
    bootstrap, certs = tls_broker
    worker = start_worker(bootstrap=bootstrap, **worker_tls(certs, ca, client))
    assert worker.process is not None
    assert worker.process.wait(timeout=30) == 2
    lines = [ln for ln in worker.log().splitlines() if ln.startswith("anomaly-worker: TLS")]
    assert len(lines) == 1 and expected in lines[0], worker.log()
    assert "Traceback" not in worker.log()
