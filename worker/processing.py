"""One micro-batch's work, in two halves so consecutive batches overlap.

:meth:`BatchProcessor.begin` dead-letters what did not decode and starts the model call on a
helper thread; :meth:`BatchProcessor.finish` waits for it, thresholds the scores and hands
alerts and scores to the producer. TorchScript and torch release the GIL while they compute,
so the loop (:mod:`worker.pipeline`) polls and decodes the next batch on the main thread
meanwhile. Everything but the model call runs on the calling thread, in batch order: the
threshold's per-entity state, the outputs and the commit protocol see batches one after the
other exactly as without the overlap.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.contract.decode import decode_batch
from worker.contract.messages import Partition
from worker.contract.recent_threshold import Judgement
from worker.contract.records import DecodedBatch
from worker.contract.scoring import Scored
from worker.core.alerts import AlertContext, build_alerts
from worker.core.scores import build_score_batches, build_scores
from worker.delivery.outputs import Outputs
from worker.kafka.ports import Consumer
from worker.model.served import ServedModel
from worker.observe.metrics import WorkerMetrics

__all__ = ["BatchProcessor", "InFlight", "ProcessingConfig"]

#: The helper thread's name (py-spy and thread dumps show it).
SCORING_THREAD = "anomaly-score"
#: Smaller batches are scored on the loop's thread, at once. A batch this large means a
#: backlog, where overlapping pays; a small one means the loop has time to spare, and handing
#: its model call to another thread only adds the GIL's hand-overs to its latency (measured
#: at 5,000 records/s, batches of ~40: p50 +1 to +10 ms).
OVERLAP_MIN_RECORDS = 1000


@dataclass(frozen=True)
class ProcessingConfig:
    max_record_bytes: int
    top_features: int
    #: ANOMALY_UNKNOWN_FEATURES=ignore: score records carrying named features the model lacks.
    ignore_unknown_features: bool
    #: ANOMALY_SCORES_FORMAT=batch: one scores message per micro-batch and input partition.
    batch_scores: bool


@dataclass
class InFlight:
    """A batch whose model call is running (``scored`` is None when no row decoded).

    ``overlapped``: the call runs on the helper thread; else it is done already."""

    messages: Sequence[Any]
    last: dict[Partition, int]
    decoded: DecodedBatch
    scored: Future[tuple[Scored, float]] | None
    started: float
    overlapped: bool


class BatchProcessor:
    """Decodes, scores and produces the outputs of batches; one model call at a time."""

    def __init__(
        self,
        config: ProcessingConfig,
        consumer: Consumer,
        model: ServedModel,
        outputs: Outputs,
        metrics: WorkerMetrics,
    ) -> None:
        self.config, self.consumer, self.model = config, consumer, model
        self.outputs, self.metrics = outputs, metrics
        self._executor: ThreadPoolExecutor | None = None

    def decode(self, values: Sequence[bytes | None]) -> DecodedBatch:
        """Decode against the model served now (decoding the next batch needs no scores)."""
        return decode_batch(
            values,
            self.model.schema,
            self.config.max_record_bytes,
            self.config.ignore_unknown_features,
        )

    def begin(
        self,
        messages: Sequence[Any],
        last: dict[Partition, int],
        decoded: DecodedBatch,
        started: float,
    ) -> InFlight:
        """Dead-letter the refused records and start the model call on the helper thread.

        ``messages`` are the client's records, ``decoded`` their values decoded by
        :meth:`decode` against the model served now, from ``started`` (``perf_counter``).
        """
        m, model = self.metrics, self.model
        m.records_consumed.inc(len(messages))
        m.batch_size.observe(len(messages))
        source_of = self.consumer.source_of
        for bad in decoded.invalid:
            self.outputs.dead_letter(source_of(messages[bad.position]), bad.reason, bad.detail)
        model.watch_fit(decoded)
        rows = len(decoded.positions)
        overlap, scored = rows >= OVERLAP_MIN_RECORDS, None
        if overlap:
            scored = self._helper().submit(self._score, decoded)
        elif rows:
            scored = Future()
            scored.set_result(self._score(decoded))  # its failure raises here, at once
        return InFlight(messages, last, decoded, scored, started, overlap)

    def _score(self, decoded: DecodedBatch) -> tuple[Scored, float]:
        """The model call alone (on the helper thread for large batches), and its duration."""
        started = time.perf_counter()
        scored = self.model.score(decoded)
        return scored, time.perf_counter() - started

    def finish(self, batch: InFlight) -> None:
        """Wait for the model call; threshold; hand alerts and scores to the producer.

        A model call that failed raises here, on the calling thread.
        """
        m, model, decoded = self.metrics, self.model, batch.decoded
        if batch.scored is not None:
            scored, seconds = batch.scored.result()
            m.inference_duration.observe(seconds)
            m.records_scored.inc(len(decoded.positions))
            judged = model.decide(scored.scores, decoded.records)
            m.score_ratio.observe_many(scored.scores / judged.threshold)
            if model.drift is not None:
                model.drift.observe(decoded.features, scored.scores)
            rows = np.flatnonzero(judged.alert)
            if rows.size:
                self._alert(batch.messages, decoded, scored, judged, rows)
            if self.outputs.scores_topic is not None:
                self._scores(batch.messages, decoded, scored, judged)
        m.batch_duration.observe(time.perf_counter() - batch.started)
        m.last_processed.set(time.time())

    def close(self) -> None:
        """Stop the helper thread (a later batch starts a new one)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _helper(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=SCORING_THREAD)
        return self._executor

    def _scores(
        self, messages: Sequence[Any], decoded: DecodedBatch, scored: Scored, judged: Judgement
    ) -> None:
        source_of = self.consumer.source_of
        sources = [source_of(messages[p]) for p in decoded.positions.tolist()]
        columns = (
            decoded.records,
            sources,
            scored.scores,
            judged.threshold,
            judged.alert,
            judged.warming,
            self.model.scorer.metadata.version,
            scored.baseline,
        )
        if self.config.batch_scores:
            batches, dropped = build_score_batches(*columns, self.config.max_record_bytes)
            self.outputs.scores(batches, sources, dropped)
        else:
            self.outputs.scores(build_scores(*columns), sources)

    def _alert(
        self,
        messages: Sequence[Any],
        decoded: DecodedBatch,
        scored: Scored,
        judged: Judgement,
        rows: np.ndarray,
    ) -> None:
        model = self.model
        errors, expected = scored.details(rows)
        context = AlertContext(
            feature_names=model.schema.names,
            threshold=model.threshold.value,
            model_version=model.scorer.metadata.version,
            top_features=self.config.top_features,
            detected_at=time.time(),
        )
        sources = [self.consumer.source_of(messages[int(decoded.positions[r])]) for r in rows]
        alerts = build_alerts(
            context,
            [decoded.records[r] for r in rows],
            sources,
            scored.scores[rows],
            decoded.features[rows],
            errors,
            expected,
            judged.threshold[rows],
            None if judged.warming is None else judged.warming[rows],
            None if scored.baseline is None else scored.baseline[rows],
        )
        self.outputs.alerts(alerts, sources)
