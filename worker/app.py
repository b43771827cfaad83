"""Composition root: settings -> health server -> model -> Kafka clients -> pipeline.

``run_worker`` enters every resource through one ``ExitStack``; a stop request
(SIGTERM/SIGINT in :mod:`worker.cli`) only sets an event, and the pipeline
drains, flushes and commits before the clients close.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable
from contextlib import ExitStack

from prometheus_client import CollectorRegistry

from worker.exceptions import WorkerError
from worker.health import HealthServer, HealthState
from worker.metrics import WorkerMetrics
from worker.pipeline import Pipeline, PipelineConfig
from worker.registry import resolve_bundle
from worker.reload import ModelWatcher
from worker.scoring import Scorer, set_torch_threads
from worker.settings import WorkerSettings
from worker.threshold import Threshold
from worker.tls import check_tls
from worker.transport import Consumer, Producer, connect_with_backoff

__all__ = ["pipeline_config", "run_worker"]

logger = logging.getLogger(__name__)


def transport(
    settings: WorkerSettings,
) -> tuple[Callable[[WorkerSettings, float], Consumer], Callable[[WorkerSettings], Producer]]:
    """The consumer and producer classes of ``ANOMALY_KAFKA_CLIENT``."""
    if settings.kafka_client == "confluent":
        from worker.transport_confluent import ConfluentConsumer, ConfluentProducer

        return ConfluentConsumer, ConfluentProducer
    from worker.transport_kafka_python import KafkaPythonConsumer, KafkaPythonProducer

    return KafkaPythonConsumer, KafkaPythonProducer


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
        flush_timeout_seconds=settings.shutdown_timeout_seconds,
        on_undecodable_batch=settings.on_undecodable_batch,
        backoff_max_seconds=settings.connect_backoff_max_seconds,
        link_stale_seconds=settings.session_timeout_seconds,
        exactly_once=settings.exactly_once,
        delivery_timeout_seconds=settings.effective_delivery_timeout_seconds,
        drift=settings.drift,
        drift_window_records=settings.drift_window_records,
        drift_window_seconds=settings.drift_window_seconds,
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
        metrics.set_model(meta.version, threshold.value, meta.calibration.expected_alert_rate)

        health.set_ready(False, "connecting to Kafka")
        consumer_class, producer_class = transport(settings)
        check_tls(settings)
        backoff = settings.connect_backoff_max_seconds
        # Closing order (the stack unwinds last-in first-out): the consumer closes
        # before the producer, so its close-time rebalance listener never meets a
        # closed producer.
        producer = connect_with_backoff(
            lambda: producer_class(settings), stop, "producer", backoff, health.beat
        )
        if producer is None:
            return
        stack.callback(producer.close, settings.shutdown_timeout_seconds)
        for topic in (settings.alert_topic, settings.dlq_topic):
            producer.check_topic(topic)
        commit_timeout = settings.shutdown_timeout_seconds
        consumer = connect_with_backoff(
            lambda: consumer_class(settings, commit_timeout), stop, "consumer", backoff, health.beat
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
            f"exactly_once, transactional id {settings.effective_transactional_id}"
            if settings.exactly_once
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
        pipeline = Pipeline(
            pipeline_config(settings),
            consumer,
            producer,
            scorer,
            threshold,
            metrics,
            health,
            watcher=watcher,
        )
        metrics.track_drift(
            lambda: (pipeline.drift, pipeline.schema.names), settings.drift_feature_labels
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
