"""Composition root: settings -> health server -> model -> Kafka clients -> pipeline.

``run_worker`` enters every resource through one ``ExitStack``; a stop request
(SIGTERM/SIGINT in :mod:`worker.cli`) only sets an event, and the pipeline
drains, flushes and commits before the clients close. :func:`build_pipeline` wires
the loop's collaborators and chooses the commit protocol, once.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from worker.contract.recent_threshold import DEFAULT_WARMUP_RECORDS, DEFAULT_WINDOW_RECORDS
from worker.contract.registry import resolve_bundle
from worker.contract.scoring import Scorer, set_torch_threads
from worker.core.batching import BatchWindow, MicroBatch
from worker.core.threshold import Threshold
from worker.delivery.checkpoint import AtLeastOnce, Committer
from worker.delivery.outputs import DeliveryFailures, Outputs
from worker.delivery.transactions import Transactional
from worker.delivery.undecodable import UndecodableBatches
from worker.exceptions import WorkerError
from worker.kafka.clients import connect_with_backoff, driver
from worker.kafka.link import BrokerLink
from worker.kafka.ports import Consumer, Producer
from worker.kafka.tls import check_tls
from worker.model.reload import ModelWatcher
from worker.model.served import DriftWindow, RecentPast, ServedModel
from worker.observe.health import HealthServer, HealthState
from worker.observe.metrics import WorkerMetrics
from worker.pipeline import LoopConfig, Pipeline
from worker.settings import WorkerSettings

__all__ = ["PipelineConfig", "build_pipeline", "pipeline_config", "run_worker"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    """The settings the loop's collaborators are built from, under the settings' own names."""

    input_topic: str
    alert_topic: str
    dlq_topic: str
    batch_max_records: int
    batch_max_wait_seconds: float
    max_record_bytes: int
    commit_interval_seconds: float
    top_features: int
    shutdown_timeout_seconds: float
    on_undecodable_batch: str = "fail"
    unknown_features: str = "ignore"
    scores_topic: str | None = None
    scores_format: str = "record"
    connect_backoff_max_seconds: float = 10.0
    session_timeout_seconds: float = 10.0
    processing_guarantee: str = "at_least_once"
    delivery_timeout_seconds: float = 120.0
    drift: bool = True
    drift_window_records: int = 10_000
    drift_window_seconds: float = 300.0
    threshold_mode: str = "model"
    recent_window_records: int = DEFAULT_WINDOW_RECORDS
    recent_warmup_records: int = DEFAULT_WARMUP_RECORDS
    recent_max_entities: int = 10_000


def pipeline_config(settings: WorkerSettings) -> PipelineConfig:
    return PipelineConfig(
        input_topic=settings.input_topic,
        alert_topic=settings.alert_topic,
        dlq_topic=settings.dlq_topic,
        batch_max_records=settings.batch_max_records,
        batch_max_wait_seconds=settings.batch_max_wait_seconds,
        max_record_bytes=settings.max_record_bytes,
        commit_interval_seconds=settings.commit_interval_seconds,
        top_features=settings.top_features,
        shutdown_timeout_seconds=settings.shutdown_timeout_seconds,
        on_undecodable_batch=settings.on_undecodable_batch,
        unknown_features=settings.unknown_features,
        scores_topic=settings.scores_topic,
        scores_format=settings.scores_format,
        connect_backoff_max_seconds=settings.connect_backoff_max_seconds,
        session_timeout_seconds=settings.session_timeout_seconds,
        processing_guarantee=settings.processing_guarantee,
        delivery_timeout_seconds=settings.effective_delivery_timeout_seconds,
        drift=settings.drift,
        drift_window_records=settings.drift_window_records,
        drift_window_seconds=settings.drift_window_seconds,
        threshold_mode=settings.threshold_mode,
        recent_window_records=settings.recent_window_records,
        recent_warmup_records=settings.recent_warmup_records,
        recent_max_entities=settings.recent_max_entities,
    )


def build_pipeline(
    config: PipelineConfig,
    consumer: Consumer,
    producer: Producer,
    scorer: Scorer,
    threshold: Threshold,
    metrics: WorkerMetrics,
    health: HealthState,
    watcher: ModelWatcher | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Pipeline:
    """The loop and its collaborators; the processing guarantee is chosen here and only here."""
    link = BrokerLink(
        health, config.connect_backoff_max_seconds, config.session_timeout_seconds, clock
    )
    failures = DeliveryFailures(clock)
    shared = (consumer, producer, failures, link, metrics, config.shutdown_timeout_seconds, clock)
    committer: Committer
    if config.processing_guarantee == "exactly_once":
        committer = Transactional(*shared, delivery_timeout_seconds=config.delivery_timeout_seconds)
    else:
        committer = AtLeastOnce(*shared)
    outputs = Outputs(
        producer,
        committer,
        failures,
        metrics,
        config.alert_topic,
        config.dlq_topic,
        config.scores_topic,
        config.max_record_bytes,
        clock,
    )
    drift = (
        DriftWindow(config.drift_window_records, config.drift_window_seconds)
        if config.drift
        else None
    )
    recent_past = (
        RecentPast(
            config.recent_window_records,
            config.recent_warmup_records,
            config.recent_max_entities,
        )
        if config.threshold_mode == "entity_recent"
        else None
    )
    return Pipeline(
        LoopConfig(
            config.input_topic,
            config.max_record_bytes,
            config.commit_interval_seconds,
            config.top_features,
            ignore_unknown_features=config.unknown_features == "ignore",
            batch_scores=config.scores_format == "batch",
        ),
        consumer,
        MicroBatch(BatchWindow(config.batch_max_records, config.batch_max_wait_seconds, clock)),
        ServedModel(scorer, threshold, metrics, health, drift, watcher, recent_past),
        outputs,
        committer,
        link,
        UndecodableBatches(
            consumer,
            outputs,
            committer,
            metrics,
            config.input_topic,
            config.on_undecodable_batch,
        ),
        metrics,
        health,
        clock,
    )


#: First-generation threshold of the cyclic garbage collector while serving. The
#: default (700 allocations) runs a collection every few records at 100k
#: records/s; measured with bench/throughput.py, the default costs ~40% of the
#: worker's throughput.
GC_GEN0_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Freeze what start-up allocated (modules, the model) and collect less often.

    The hot loop allocates many short-lived objects (Kafka records, decoded
    records) that die by reference counting; few form cycles.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def run_worker(
    settings: WorkerSettings,
    stop: threading.Event,
    registry: CollectorRegistry | None = None,
    max_seconds: float | None = None,
) -> None:
    """Run until ``stop`` is set. Raises BundleError for an unusable model (before connecting)."""
    metrics = WorkerMetrics(registry)
    health = HealthState(stall_seconds=max(60.0, 3 * settings.session_timeout_seconds))
    metrics.ready.set_function(lambda: float(health.ready))  # one source of truth: /readyz
    with ExitStack() as stack:
        server = HealthServer(
            settings.metrics_host, settings.metrics_port, metrics.registry, health
        )
        server.start()
        stack.callback(server.stop)

        health.set_ready(False, "loading model")
        bundle_path, registry_version = resolve_bundle(settings.model_path)
        set_torch_threads(settings.torch_threads)
        scorer = Scorer.load(bundle_path, settings.device)
        meta = scorer.metadata
        if settings.threshold is not None:
            threshold = Threshold(settings.threshold, source="ANOMALY_THRESHOLD")
            logger.info(
                "threshold %.6g from ANOMALY_THRESHOLD (bundle: %.6g)",
                settings.threshold,
                meta.threshold,
            )
        else:
            threshold = Threshold(meta.threshold)

        health.set_ready(False, "connecting to Kafka")
        connection = settings.connection()
        consumer_class, producer_class = driver(connection.client)
        check_tls(connection)
        backoff = settings.connect_backoff_max_seconds
        # Closing order (the stack unwinds last-in first-out): the consumer closes
        # before the producer, so its close-time rebalance listener never meets a
        # closed producer.
        producer_options = settings.producer_options()
        producer = connect_with_backoff(
            lambda: producer_class(connection, producer_options),
            stop,
            "producer",
            backoff,
            health.beat,
        )
        if producer is None:
            return
        stack.callback(producer.close, settings.shutdown_timeout_seconds)
        for topic in (settings.alert_topic, settings.dlq_topic, settings.scores_topic):
            if topic is None:
                continue
            producer.check_topic(topic)
        consumer_options = settings.consumer_options()
        consumer = connect_with_backoff(
            lambda: consumer_class(connection, consumer_options),
            stop,
            "consumer",
            backoff,
            health.beat,
        )
        if consumer is None:
            return
        stack.callback(consumer.close)
        logger.info(
            "connected to %s with %s; consuming %s as group %s (%s)",
            settings.bootstrap_servers,
            settings.kafka_client,
            settings.input_topic,
            settings.group_id,
            f"exactly_once, transactional id {producer_options.transactional_id}"
            if producer_options.transactional_id is not None
            else "at_least_once",
        )
        watcher = None
        if registry_version is not None:
            watcher = ModelWatcher(
                settings.model_path,
                scorer,
                registry_version,
                settings.device,
                settings.model_poll_seconds,
                on_result=lambda result, _: metrics.model_reloads.labels(result=result).inc(),
            )
            watcher.start()
            stack.callback(watcher.stop)
            logger.info("watching registry %s for new models", settings.model_path)
        health.set_ready(False, "joining consumer group")
        pipeline = build_pipeline(
            pipeline_config(settings),
            consumer,
            producer,
            scorer,
            threshold,
            metrics,
            health,
            watcher=watcher,
        )
        model = pipeline.model
        metrics.track_drift(
            lambda: (model.drift, model.schema.names), settings.drift_feature_labels
        )
        pipeline.subscribe()
        tune_garbage_collector()
        try:
            pipeline.run(stop, max_seconds=max_seconds)
        except Exception as exc:
            # Say what went wrong before the clients close (their close logs come after).
            health.set_ready(False, "stopping on an error")
            log_fatal(exc)
            raise
        health.set_ready(False, "stopping")
        logger.info("drained and committed; closing")


def log_fatal(exc: BaseException) -> None:
    """One line for the known fatal errors; a traceback for anything unexpected."""
    if isinstance(exc, WorkerError):
        logger.error("stopping: %s: %s", type(exc).__name__, exc)
    else:
        logger.exception("stopping on an unexpected error; uncommitted records will be read again")
    exc.logged = True  # type: ignore[attr-defined]
