"""Worker settings: every field from an ``ANOMALY_*`` environment variable or ``.env``.

The Kafka slice (cluster, client, topics, security) is
:class:`~worker.kafka.settings.KafkaSettings`, which ``anomaly-train`` reads too;
:class:`WorkerSettings` adds the rest. Components receive the slice they use
(``connection()``, :meth:`WorkerSettings.consumer_options`, ...) through their
constructors; nothing else in the package reads ``os.environ``. The README's settings
table is generated from these fields (``anomaly-worker settings``).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from worker.contract.recent_threshold import DEFAULT_WARMUP_RECORDS, DEFAULT_WINDOW_RECORDS
from worker.kafka.options import ConsumerOptions, ProducerOptions
from worker.kafka.settings import ENV_PREFIX, KafkaSettings, describe_validation_error

__all__ = ["WorkerSettings", "describe_validation_error", "settings_table"]

DEFAULT_MODEL_PATH = Path("model")
DEFAULT_METRICS_PORT = 9108
DEFAULT_BATCH_MAX_RECORDS = 5000
DEFAULT_BATCH_MAX_WAIT_SECONDS = 0.05
DEFAULT_COMMIT_INTERVAL_SECONDS = 1.0
DEFAULT_SHUTDOWN_TIMEOUT_SECONDS = 20.0
DEFAULT_MAX_RECORD_BYTES = 1_000_000
DEFAULT_MAX_REQUEST_BYTES = 1_048_576  # Kafka's default message.max.bytes is 1,048,588
#: Room a dead letter needs beyond the record it carries: headers, key, batch framing.
OUTPUT_HEADROOM_BYTES = 16_384
DEFAULT_TOP_FEATURES = 3
DEFAULT_TRANSACTION_TIMEOUT_SECONDS = 60.0
DEFAULT_DRIFT_WINDOW_RECORDS = 10_000
DEFAULT_DRIFT_WINDOW_SECONDS = 300.0
DEFAULT_DRIFT_FEATURE_LABELS = 50


class WorkerSettings(KafkaSettings):
    """Settings of ``anomaly-worker run``.

    Each field reads ``ANOMALY_<FIELD NAME IN CAPITALS>``; a ``.env`` file in the
    working directory is read too (the environment wins).
    """

    # --- the consumer and the producer ---------------------------------------
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where a group with no committed offset starts reading."""
    session_timeout_seconds: float = Field(10.0, ge=6.0, le=300.0)
    """Consumer group session timeout; a joining worker waits about half of it."""
    heartbeat_interval_seconds: float = Field(1.0, gt=0.0, le=60.0)
    """Consumer group heartbeat interval; must be below a third of the session timeout."""
    fetch_max_wait_seconds: float = Field(0.02, ge=0.0, le=5.0)
    """How long the broker may hold a fetch for data: lower gives quicker alerts, more idle CPU."""
    isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed"
    """`read_committed` never scores records of aborted (or still open) producer transactions."""
    linger_seconds: float = Field(0.005, ge=0.0, le=1.0)
    """How long the producer waits to fill a batch of outputs (adds to alert latency)."""
    output_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    """Compression of the alerts and dead letters the worker produces."""
    max_request_bytes: int = Field(DEFAULT_MAX_REQUEST_BYTES, ge=65_536)
    """Producer `max_request_size`; keep it at most the broker's `message.max.bytes`."""
    delivery_timeout_seconds: float = Field(120.0, ge=5.0, le=3600.0)
    """How long an output is retried; then the worker exits 1 with nothing committed past it."""
    on_undecodable_batch: Literal["fail", "skip"] = "fail"
    """A batch the client cannot decode: `fail` exits 3 naming it, `skip` dead-letters it."""
    scores_topic: str | None = Field(None, min_length=1)
    """When set, every scored record's score goes there too (id, entity, ts, score, alert)."""
    scores_format: Literal["record", "batch"] = "record"
    """`record`: one message per score, keyed by entity; `batch`: one per micro-batch and input
    partition (lists of the same fields), a producer call per batch instead of per record."""
    unknown_features: Literal["ignore", "refuse"] = "ignore"
    """Named features the model lacks (a producer added one): `ignore` scores the record and
    counts them, `refuse` dead-letters it as `unknown_feature`."""

    # --- delivery guarantee ----------------------------------------------------------
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    """`exactly_once` commits each interval's outputs and offsets in one Kafka transaction."""
    transactional_id: str | None = Field(None, min_length=1, max_length=200)
    """exactly_once: this worker's transactional id; unset: `<group id>-<host name>`."""
    transaction_timeout_seconds: float = Field(
        DEFAULT_TRANSACTION_TIMEOUT_SECONDS, ge=1.0, le=900.0
    )
    """exactly_once: the broker aborts a transaction open this long (a crashed worker's)."""

    # --- model and scoring ---------------------------------------------------------
    model_path: Path = DEFAULT_MODEL_PATH
    """A bundle directory (``anomaly-train fit --output``) or a registry (``--registry``)."""
    model_poll_seconds: float = Field(10.0, gt=0.0, le=3600.0)
    """With a registry: how often to look for a newly promoted model (hot reload)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model runs: ``auto`` takes the GPU when one is present."""
    torch_threads: int = Field(1, ge=1, le=256)
    """CPU threads per model call; more only help batches of thousands on otherwise idle cores."""
    threshold: float | None = Field(None, gt=0.0)
    """Alert when score > threshold; unset uses the bundle's calibrated threshold."""
    top_features: int = Field(DEFAULT_TOP_FEATURES, ge=0, le=100)
    """How many top contributing features an alert lists."""
    threshold_mode: Literal["model", "entity_recent"] = "model"
    (
        """`model`: every record against the model's threshold; `entity_recent`: each entity """
        """against the (1 - the model's alert rate) quantile of its own recent scores."""
    )
    recent_window_records: int = Field(DEFAULT_WINDOW_RECORDS, ge=32, le=100_000)
    """entity_recent: an entity's recent past is its last this many scores ..."""
    recent_warmup_records: int = Field(DEFAULT_WARMUP_RECORDS, ge=16, le=100_000)
    """... and it decides once there are this many (the model's threshold meanwhile)."""
    recent_max_entities: int = Field(10_000, ge=1, le=10_000_000)
    (
        """entity_recent: entities remembered (4 bytes x the window each); the least recently """
        """seen go first."""
    )

    # --- drift ---------------------------------------------------------------------
    drift: bool = True
    """Compare live traffic with the model's training traffic (needs a bundle with a reference)."""
    drift_window_records: int = Field(DEFAULT_DRIFT_WINDOW_RECORDS, ge=100, le=10_000_000)
    """Drift is measured over the newest this many records ..."""
    drift_window_seconds: float = Field(DEFAULT_DRIFT_WINDOW_SECONDS, gt=0.0, le=86_400.0)
    """... of at most this many seconds."""
    drift_feature_labels: int = Field(DEFAULT_DRIFT_FEATURE_LABELS, ge=1, le=10_000)
    """Features with their own drift series, the most drifted first; the rest share `_others`."""

    # --- batching, commits, shutdown -------------------------------------------------
    batch_max_records: int = Field(DEFAULT_BATCH_MAX_RECORDS, ge=1, le=100_000)
    """A micro-batch closes at this many records ..."""
    batch_max_wait_seconds: float = Field(DEFAULT_BATCH_MAX_WAIT_SECONDS, gt=0.0, le=10.0)
    """... or this long after its first record, or as soon as nothing more is buffered."""
    max_record_bytes: int = Field(DEFAULT_MAX_RECORD_BYTES, ge=64)
    """Records larger than this go to the dead-letter topic as ``oversized`` (cut to this size)."""
    commit_interval_seconds: float = Field(DEFAULT_COMMIT_INTERVAL_SECONDS, gt=0.0, le=300.0)
    """Offsets are committed (after every alert is acknowledged) at this interval."""
    shutdown_timeout_seconds: float = Field(DEFAULT_SHUTDOWN_TIMEOUT_SECONDS, gt=0.0, le=600.0)
    """On SIGTERM the worker finishes its batch, flushes and commits within this bound."""

    # --- observability -------------------------------------------------------------
    metrics_host: str = "0.0.0.0"
    """Address the metrics/health HTTP server binds to."""
    metrics_port: int = Field(DEFAULT_METRICS_PORT, ge=0, le=65535)
    """Port for ``/metrics``, ``/healthz`` and ``/readyz`` (0 picks a free port)."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level."""
    log_format: Literal["text", "json"] = "text"
    """``json`` writes one JSON object per line."""

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> WorkerSettings:
        if self.heartbeat_interval_seconds * 3 > self.session_timeout_seconds:
            raise ValueError(
                f"{ENV_PREFIX}HEARTBEAT_INTERVAL_SECONDS must be at most a third of "
                f"{ENV_PREFIX}SESSION_TIMEOUT_SECONDS"
            )
        if self.max_record_bytes + OUTPUT_HEADROOM_BYTES > self.max_request_bytes:
            raise ValueError(
                f"{ENV_PREFIX}MAX_RECORD_BYTES ({self.max_record_bytes}) must be at least "
                f"{OUTPUT_HEADROOM_BYTES} below {ENV_PREFIX}MAX_REQUEST_BYTES "
                f"({self.max_request_bytes}), so that a dead letter always fits a produce request"
            )
        if self.processing_guarantee == "exactly_once":
            self._check_transactions()
        if self.scores_topic in (self.input_topic, self.alert_topic, self.dlq_topic):
            raise ValueError(
                f"{ENV_PREFIX}SCORES_TOPIC must differ from the input, alert and dead-letter topics"
            )
        if self.recent_warmup_records > self.recent_window_records:
            raise ValueError(
                f"{ENV_PREFIX}RECENT_WARMUP_RECORDS ({self.recent_warmup_records}) must not "
                f"exceed {ENV_PREFIX}RECENT_WINDOW_RECORDS ({self.recent_window_records})"
            )
        if self.recent_max_entities < self.batch_max_records:
            raise ValueError(
                f"{ENV_PREFIX}RECENT_MAX_ENTITIES ({self.recent_max_entities}) must be at least "
                f"{ENV_PREFIX}BATCH_MAX_RECORDS ({self.batch_max_records}): one batch's entities "
                "must fit"
            )
        return self

    def _check_transactions(self) -> None:
        exactly_once = f"{ENV_PREFIX}PROCESSING_GUARANTEE=exactly_once"
        if self.isolation_level != "read_committed":
            raise ValueError(
                f"{exactly_once} needs {ENV_PREFIX}ISOLATION_LEVEL=read_committed "
                "(records of aborted upstream transactions would be scored)"
            )
        if self.commit_interval_seconds >= self.transaction_timeout_seconds:
            raise ValueError(
                f"{ENV_PREFIX}COMMIT_INTERVAL_SECONDS ({self.commit_interval_seconds:g}) must be "
                f"below {ENV_PREFIX}TRANSACTION_TIMEOUT_SECONDS "
                f"({self.transaction_timeout_seconds:g}): each interval is one transaction"
            )
        if (
            "delivery_timeout_seconds" in self.model_fields_set
            and self.delivery_timeout_seconds > self.transaction_timeout_seconds
        ):
            raise ValueError(
                f"{ENV_PREFIX}DELIVERY_TIMEOUT_SECONDS ({self.delivery_timeout_seconds:g}) must "
                f"not exceed {ENV_PREFIX}TRANSACTION_TIMEOUT_SECONDS "
                f"({self.transaction_timeout_seconds:g}) with {exactly_once}: the broker aborts "
                "a transaction whose outputs are still being retried"
            )

    @property
    def exactly_once(self) -> bool:
        return self.processing_guarantee == "exactly_once"

    @property
    def effective_transactional_id(self) -> str:
        """``ANOMALY_TRANSACTIONAL_ID``, else ``<group id>-<host name>``.

        The host name is the pod's name on Kubernetes: unique per replica, and the same
        after a container restart, so a restarted worker fences its predecessor and aborts
        the transaction it left open.
        """
        return self.transactional_id or f"{self.group_id}-{socket.gethostname()}"

    @property
    def effective_delivery_timeout_seconds(self) -> float:
        """With exactly_once, outputs are retried at most as long as a transaction may stay open."""
        if self.exactly_once:
            return min(self.delivery_timeout_seconds, self.transaction_timeout_seconds)
        return self.delivery_timeout_seconds

    def consumer_options(self) -> ConsumerOptions:
        return ConsumerOptions(
            group_id=self.group_id,
            auto_offset_reset=self.auto_offset_reset,
            isolation_level=self.isolation_level,
            session_timeout_seconds=self.session_timeout_seconds,
            heartbeat_interval_seconds=self.heartbeat_interval_seconds,
            fetch_max_wait_seconds=self.fetch_max_wait_seconds,
            batch_max_records=self.batch_max_records,
            shutdown_timeout_seconds=self.shutdown_timeout_seconds,
        )

    def producer_options(self) -> ProducerOptions:
        return ProducerOptions(
            linger_seconds=self.linger_seconds,
            output_compression=self.output_compression,
            max_request_bytes=self.max_request_bytes,
            delivery_timeout_seconds=self.effective_delivery_timeout_seconds,
            transactional_id=self.effective_transactional_id if self.exactly_once else None,
            transaction_timeout_seconds=self.transaction_timeout_seconds,
        )


def settings_table() -> str:
    """The settings as a Markdown table (README and docs embed it; a test keeps it current)."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in WorkerSettings.model_fields.items():
        default = field.default
        shown = "(unset)" if default is None else f"`{default}`"
        description = (field.description or "").replace("``", "`").replace("|", "\\|")
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {shown} | {description} |")
    return "\n".join(rows) + "\n"
