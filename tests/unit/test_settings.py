import os
import socket
import subprocess
import sys

import pytest
from pydantic import ValidationError

from worker.settings import WorkerSettings, describe_validation_error


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("ANOMALY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def error_line(monkeypatch, **env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError) as info:
        WorkerSettings()
    return describe_validation_error(info.value)


def test_defaults_are_usable():
    settings = WorkerSettings()
    assert settings.input_topic == "features" and settings.device == "auto"
    assert settings.threshold is None and settings.metrics_port == 9108


def test_reads_env_and_dotenv(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text(
        "ANOMALY_INPUT_TOPIC=from-dotenv\nANOMALY_GROUP_ID=dotenv-group\n"
    )
    monkeypatch.setenv("ANOMALY_GROUP_ID", "from-env")
    monkeypatch.setenv("ANOMALY_BATCH_MAX_WAIT_SECONDS", "0.25")
    settings = WorkerSettings()
    assert settings.input_topic == "from-dotenv"
    assert settings.group_id == "from-env"  # the environment wins over .env
    assert settings.batch_max_wait_seconds == 0.25


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"ANOMALY_METRICS_PORT": "70000"},
            "ANOMALY_METRICS_PORT: Input should be less than or equal to 65535 (got '70000')",
        ),
        (
            {"ANOMALY_BATCH_MAX_RECORDS": "many"},
            "ANOMALY_BATCH_MAX_RECORDS: Input should be a valid integer",
        ),
        (
            {"ANOMALY_DEVICE": "tpu"},
            "ANOMALY_DEVICE: Input should be 'auto', 'cpu' or 'cuda' (got 'tpu')",
        ),
        ({"ANOMALY_THRESHOLD": "-1"}, "ANOMALY_THRESHOLD: Input should be greater than 0"),
        (
            {"ANOMALY_SSL_CAFILE": "/nonexistent/ca.pem"},
            "ANOMALY_SSL_CAFILE: no such file: /nonexistent/ca.pem",
        ),
        (
            {"ANOMALY_SECURITY_PROTOCOL": "SASL_SSL"},
            "SASL_SSL needs ANOMALY_SASL_MECHANISM, ANOMALY_SASL_USERNAME, ANOMALY_SASL_PASSWORD",
        ),
        ({"ANOMALY_ALERT_TOPIC": "features"}, "must be three different topics"),
        (
            {"ANOMALY_MAX_RECORD_BYTES": "1048576"},
            "ANOMALY_MAX_RECORD_BYTES (1048576) must be at least 16384 below "
            "ANOMALY_MAX_REQUEST_BYTES (1048576)",
        ),
        (
            {"ANOMALY_OUTPUT_COMPRESSION": "brotli"},
            "ANOMALY_OUTPUT_COMPRESSION: Input should be 'none', 'gzip', 'snappy', 'lz4' or 'zstd'",
        ),
        ({"ANOMALY_ON_UNDECODABLE_BATCH": "ignore"}, "Input should be 'fail' or 'skip'"),
        (
            {"ANOMALY_PROCESSING_GUARANTEE": "exactly-once"},
            "Input should be 'at_least_once' or 'exactly_once'",
        ),
        (
            {
                "ANOMALY_PROCESSING_GUARANTEE": "exactly_once",
                "ANOMALY_ISOLATION_LEVEL": "read_uncommitted",
            },
            "ANOMALY_PROCESSING_GUARANTEE=exactly_once needs "
            "ANOMALY_ISOLATION_LEVEL=read_committed",
        ),
        (
            {
                "ANOMALY_PROCESSING_GUARANTEE": "exactly_once",
                "ANOMALY_COMMIT_INTERVAL_SECONDS": "90",
            },
            "ANOMALY_COMMIT_INTERVAL_SECONDS (90) must be below "
            "ANOMALY_TRANSACTION_TIMEOUT_SECONDS (60)",
        ),
        (
            {
                "ANOMALY_PROCESSING_GUARANTEE": "exactly_once",
                "ANOMALY_DELIVERY_TIMEOUT_SECONDS": "120",
            },
            "ANOMALY_DELIVERY_TIMEOUT_SECONDS (120) must not exceed "
            "ANOMALY_TRANSACTION_TIMEOUT_SECONDS (60)",
        ),
        ({"ANOMALY_TRANSACTION_TIMEOUT_SECONDS": "3600"}, "less than or equal to 900"),
        (
            {"ANOMALY_SCORES_TOPIC": "anomalies"},
            "ANOMALY_SCORES_TOPIC must differ from the input, alert and dead-letter topics",
        ),
        ({"ANOMALY_SCORES_TOPIC": ""}, "ANOMALY_SCORES_TOPIC: String should have at least 1"),
        ({"ANOMALY_SCORES_FORMAT": "rows"}, "ANOMALY_SCORES_FORMAT: Input should be 'record' or"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch, env, expected):
    line = error_line(monkeypatch, **env)
    assert expected in line
    assert "\n" not in line


def test_exactly_once_defaults_need_no_other_setting(monkeypatch):
    monkeypatch.setenv("ANOMALY_PROCESSING_GUARANTEE", "exactly_once")
    monkeypatch.setenv("ANOMALY_GROUP_ID", "fraud")
    settings = WorkerSettings()
    assert settings.exactly_once
    # One id per replica (the pod's name), the same after a restart of the container.
    assert settings.effective_transactional_id == f"fraud-{socket.gethostname()}"
    # Outputs are not retried past the broker's abort of their transaction.
    assert settings.effective_delivery_timeout_seconds == 60.0
    monkeypatch.setenv("ANOMALY_TRANSACTIONAL_ID", "fraud-worker-0")
    assert WorkerSettings().effective_transactional_id == "fraud-worker-0"
    monkeypatch.delenv("ANOMALY_PROCESSING_GUARANTEE")
    assert WorkerSettings().effective_delivery_timeout_seconds == 120.0


def test_password_is_never_echoed(monkeypatch):
    monkeypatch.setenv("ANOMALY_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("ANOMALY_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("ANOMALY_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("ANOMALY_SASL_USERNAME", "u")
    settings = WorkerSettings()
    assert "hunter2" not in repr(settings)
    assert settings.sasl_password.get_secret_value() == "hunter2"


def run_worker_cli(tmp_path, **env):
    return subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


def test_cli_exits_non_zero_with_one_line(tmp_path):
    result = run_worker_cli(tmp_path, ANOMALY_METRICS_PORT="-5")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ANOMALY_METRICS_PORT" in lines[0]


def test_cli_refuses_a_missing_model_before_connecting(tmp_path):
    result = run_worker_cli(
        tmp_path,
        ANOMALY_MODEL_PATH=str(tmp_path / "missing"),
        ANOMALY_METRICS_PORT="0",
        ANOMALY_BOOTSTRAP_SERVERS="127.0.0.1:1",
    )
    assert result.returncode == 2
    assert "is not a model bundle" in result.stderr.strip().splitlines()[-1]


SECRET = "hunter2-s3cr3t"


def kafka_producer(settings):
    """The producer's slices of ``settings``: what a driver's producer is built from."""
    return settings.connection(), settings.producer_options()


def sasl_env(monkeypatch, mechanism="SCRAM-SHA-512"):
    for key, value in {
        "ANOMALY_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "ANOMALY_SASL_MECHANISM": mechanism,
        "ANOMALY_SASL_USERNAME": "svc-anomaly",
        "ANOMALY_SASL_PASSWORD": SECRET,
    }.items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_settings_map_to_the_kafka_client_options(monkeypatch, mechanism):
    from worker.kafka.kafka_python import consumer_config
    from worker.kafka.kafka_python_producer import producer_config

    sasl_env(monkeypatch, mechanism)
    settings = WorkerSettings()
    consumer, producer = (
        consumer_config(settings.connection(), settings.consumer_options()),
        producer_config(*kafka_producer(settings)),
    )
    for config in (consumer, producer):
        assert config["security_protocol"] == "SASL_PLAINTEXT"
        assert config["sasl_mechanism"] == mechanism
        assert config["sasl_plain_username"] == "svc-anomaly"
        assert config["sasl_plain_password"] == SECRET
    assert consumer["isolation_level"] == "read_committed" and consumer["check_crcs"] is True
    assert consumer["enable_auto_commit"] is False
    assert producer["enable_idempotence"] is True and producer["acks"] == "all"
    assert producer["compression_type"] == "lz4"
    assert producer["max_request_size"] == 1_048_576
    assert producer["delivery_timeout_ms"] == 120_000 and producer["request_timeout_ms"] == 30_000
    monkeypatch.setenv("ANOMALY_DELIVERY_TIMEOUT_SECONDS", "5")
    short = producer_config(*kafka_producer(WorkerSettings()))
    assert short["delivery_timeout_ms"] > short["linger_ms"] + short["request_timeout_ms"]
    monkeypatch.setenv("ANOMALY_OUTPUT_COMPRESSION", "none")
    assert producer_config(*kafka_producer(WorkerSettings()))["compression_type"] is None
    assert "transactional_id" not in producer
    monkeypatch.setenv("ANOMALY_PROCESSING_GUARANTEE", "exactly_once")
    monkeypatch.setenv("ANOMALY_TRANSACTIONAL_ID", "fraud-0")
    transactional = producer_config(*kafka_producer(WorkerSettings()))
    assert transactional["transactional_id"] == "fraud-0"
    assert transactional["transaction_timeout_ms"] == 60_000
    assert transactional["enable_idempotence"] is True and transactional["acks"] == "all"


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_settings_map_to_librdkafka_properties_it_accepts(monkeypatch, tmp_path, mechanism):
    """librdkafka refuses an unknown property or a bad value when a client is created."""
    import confluent_kafka

    from worker.kafka.confluent import consumer_config
    from worker.kafka.confluent_producer import producer_config

    sasl_env(monkeypatch, mechanism)
    monkeypatch.setenv("ANOMALY_SECURITY_PROTOCOL", "SASL_SSL")
    ca = tmp_path / "ca.pem"
    ca.write_text("not used before connecting\n")
    monkeypatch.setenv("ANOMALY_SSL_CAFILE", str(ca))
    monkeypatch.setenv("ANOMALY_OUTPUT_COMPRESSION", "zstd")
    settings = WorkerSettings()
    consumer, producer = (
        consumer_config(settings.connection(), settings.consumer_options()),
        producer_config(*kafka_producer(settings)),
    )
    for config in (consumer, producer):
        assert config["security.protocol"] == "sasl_ssl"
        assert config["sasl.mechanism"] == mechanism and config["sasl.password"] == SECRET
        assert config["ssl.ca.location"] == str(ca)
    assert consumer["isolation.level"] == "read_committed" and consumer["check.crcs"] is True
    assert consumer["enable.auto.commit"] is False and consumer["enable.auto.offset.store"] is False
    assert producer["enable.idempotence"] is True and producer["acks"] == "all"
    assert producer["compression.type"] == "zstd" and producer["message.max.bytes"] == 1_048_576
    monkeypatch.setenv("ANOMALY_SECURITY_PROTOCOL", "PLAINTEXT")
    monkeypatch.delenv("ANOMALY_SSL_CAFILE")
    settings = WorkerSettings(bootstrap_servers="127.0.0.1:1")
    confluent_kafka.Producer(producer_config(*kafka_producer(settings))).flush(0)
    confluent_kafka.Consumer(
        consumer_config(settings.connection(), settings.consumer_options())
    ).close()
    monkeypatch.setenv("ANOMALY_PROCESSING_GUARANTEE", "exactly_once")
    transactional = producer_config(
        *kafka_producer(WorkerSettings(bootstrap_servers="127.0.0.1:1"))
    )
    assert (
        transactional["transactional.id"]
        == settings.group_id + "-" + __import__("socket").gethostname()
    )
    assert transactional["delivery.timeout.ms"] <= transactional["transaction.timeout.ms"]
    confluent_kafka.Producer(transactional).flush(0)  # librdkafka accepts the combination


def test_the_confluent_client_without_confluent_kafka_is_one_clear_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "confluent_kafka" else real(name, *a),
    )
    monkeypatch.setenv("ANOMALY_KAFKA_CLIENT", "confluent")
    with pytest.raises(ValidationError) as caught:
        WorkerSettings()
    assert "pip install 'anomaly-worker[confluent]'" in describe_validation_error(caught.value)


def test_secrets_never_reach_logs_settings_output_or_errors(monkeypatch, tmp_path):
    """A worker that cannot reach its broker logs at DEBUG for a while: no password anywhere."""
    import signal
    import time

    from tests.helpers import write_distance_bundle

    write_distance_bundle(tmp_path / "model")
    sasl_env(monkeypatch)
    env = {
        **os.environ,
        "ANOMALY_MODEL_PATH": str(tmp_path / "model"),
        "ANOMALY_METRICS_PORT": "0",
        "ANOMALY_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "ANOMALY_LOG_LEVEL": "DEBUG",
        "ANOMALY_CONNECT_BACKOFF_MAX_SECONDS": "0.5",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "worker", "run"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(6)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    assert "broker unreachable" in output  # it did try, and logged about it
    assert SECRET not in output
    listing = subprocess.run(
        [sys.executable, "-m", "worker", "settings"], env=env, capture_output=True, text=True
    )
    assert listing.returncode == 0 and SECRET not in listing.stdout + listing.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        env={**env, "ANOMALY_SASL_MECHANISM": "GSSAPI"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and SECRET not in bad.stdout + bad.stderr
    assert "ANOMALY_SASL_MECHANISM" in bad.stderr
