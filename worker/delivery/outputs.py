"""Sending the outputs: alerts and dead letters to their topics, and what the broker refused.

Every output is handed to the producer with a delivery callback. A refusal is kept in
:class:`DeliveryFailures` (thread-safe: kafka-python reports on its IO thread) and raised
by the committer before it commits anything; the processing guarantee decides around each
send (:class:`OutputGuarantee`: exactly_once opens a transaction, and an alert counts as
readable when its transaction commits, not when the broker acknowledges it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from worker.contract.messages import SourceMessage
from worker.core.alerts import MILLISECONDS_LIKELY, Alert, event_time_outside
from worker.core.deadletters import DeadLetter, build_dead_letter
from worker.delivery.exceptions import DeliveryError
from worker.kafka.ports import OnDelivery, Producer
from worker.observe.logs import Throttle
from worker.observe.metrics import WorkerMetrics

__all__ = ["DeliveryFailures", "OutputGuarantee", "Outputs", "location"]

logger = logging.getLogger(__name__)

#: At most one log line per dead-letter reason (and per delivery error) per this many seconds.
LOG_INTERVAL_SECONDS = 10.0


def location(message: SourceMessage) -> str:
    """``topic[partition]@offset``: where a record is, as every log line names it."""
    return f"{message.topic}[{message.partition}]@{message.offset}"


class OutputGuarantee(Protocol):
    """What the processing guarantee does around each output (the committer implements it)."""

    def before_send(self) -> None:
        """An output is about to be handed to the producer."""
        ...

    def alert_sent(self, event_ts: float) -> None: ...
    def alert_acknowledged(self, event_ts: float) -> None: ...


class DeliveryFailures:
    """Outputs the broker refused, oldest first, per *epoch*.

    An epoch ends with each transaction (exactly_once); a refusal reported for an output of
    an ended epoch is its abort's doing (the abort purges what it sent) and is not kept.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.epoch = 0
        self._failures: list[BaseException] = []
        self._lock = threading.Lock()
        self._log = Throttle(LOG_INTERVAL_SECONDS, clock)

    def watcher(self, where: str) -> OnDelivery:
        """A delivery callback for an output of ``where``, sent in the current epoch."""
        epoch = self.epoch

        def delivered(error: BaseException | None) -> None:
            if error is not None:
                self.refused(where, error, epoch)

        return delivered

    def refused(self, where: str, exc: BaseException, epoch: int) -> None:
        if epoch < self.epoch:
            return  # an output of a transaction already aborted (by the abort, or for this)
        with self._lock:
            self._failures.append(exc)
        held = self._log.allow(type(exc).__name__)
        if held is not None:
            more = f"; {held} more since the last line" if held else ""
            logger.error("delivery failed for the output of %s: %r%s", where, exc, more)

    def end_epoch(self) -> None:
        self.epoch += 1

    def snapshot(self) -> list[BaseException]:
        with self._lock:
            return list(self._failures)

    def restore(self, failures: list[BaseException]) -> None:
        with self._lock:
            self._failures = list(failures)

    def raise_any(self) -> None:
        """DeliveryError if an output was refused: nothing may be committed past it."""
        failures = self.snapshot()
        if failures:
            raise DeliveryError(
                f"{len(failures)} output(s) were not acknowledged (first: {failures[0]!r}); "
                "offsets not committed"
            )


class Outputs:
    """Alerts to ``alert_topic``, dead letters to ``dlq_topic``, scores to ``scores_topic``;
    each counted and logged."""

    def __init__(
        self,
        producer: Producer,
        guarantee: OutputGuarantee,
        failures: DeliveryFailures,
        metrics: WorkerMetrics,
        alert_topic: str,
        dlq_topic: str,
        scores_topic: str | None,
        max_record_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.producer, self.guarantee, self.failures = producer, guarantee, failures
        self.metrics = metrics
        self.alert_topic, self.dlq_topic = alert_topic, dlq_topic
        #: Every scored record's score goes here too (ANOMALY_SCORES_TOPIC), when set.
        self.scores_topic = scores_topic
        self.max_record_bytes = max_record_bytes
        self._dead_letter_log = Throttle(LOG_INTERVAL_SECONDS, clock)
        self._event_time_log = Throttle(LOG_INTERVAL_SECONDS, clock)

    def alerts(self, alerts: Sequence[Alert], sources: Sequence[SourceMessage]) -> None:
        """Send each alert; one too large to produce dead-letters its record instead.

        The latency of an alert whose event time is implausible (more than a day old, or
        minutes ahead) is not measured: it is counted, and said once per interval.
        """
        sent = 0
        now = time.time()
        for alert, source in zip(alerts, sources, strict=True):
            size = len(alert.key) + len(alert.value)
            if size > self.max_record_bytes:
                # A huge id or entity: the alert cannot be produced, its record is dead-lettered.
                self.dead_letter(source, "alert_too_large", f"the alert would be {size} bytes")
                continue
            measured = self._plausible(alert.event_ts, now, source)
            watcher = self._alert_watcher(alert, source, measured)
            self._send(self.alert_topic, alert.key, alert.value, None, watcher)
            if measured:
                self.guarantee.alert_sent(alert.event_ts)
            sent += 1
            logger.debug("alert for %s", location(source))
        self.metrics.alerts.inc(sent)

    def _plausible(self, event_ts: float, now: float, source: SourceMessage) -> bool:
        side = event_time_outside(event_ts, now)
        if side is None:
            return True
        self.metrics.event_time_outside_range.labels(side=side).inc()
        held = self._event_time_log.allow(side)
        if held is not None:
            hint = " (milliseconds sent as seconds?)" if event_ts > MILLISECONDS_LIKELY else ""
            more = f"; {held} more since the last line" if held else ""
            logger.warning(
                "event time of %s is %.0f s in the %s%s: alerted, its latency not measured%s",
                location(source),
                abs(now - event_ts),
                side,
                hint,
                more,
            )
        return False

    def scores(
        self,
        outputs: Sequence[tuple[bytes, bytes]],
        sources: Sequence[SourceMessage],
        dropped: int = 0,
    ) -> None:
        """Send the score messages of a batch (under the same guarantee as alerts); a record
        whose score is too large to produce (a huge id or entity) is left out, counted:
        ``dropped`` are those its builder left out already."""
        assert self.scores_topic is not None
        if dropped:
            self.metrics.scores_dropped.inc(dropped)
        if not outputs:
            return
        # One delivery callback for the batch's scores: a refusal stops every commit anyway.
        watcher = self.failures.watcher(f"{location(sources[0])} (a score of its batch)")
        too_large = 0
        for key, value in outputs:
            if len(key) + len(value) > self.max_record_bytes:
                too_large += 1
                continue
            self._send(self.scores_topic, key, value, None, watcher)
        if too_large:
            self.metrics.scores_dropped.inc(too_large)

    def dead_letter(self, source: SourceMessage, reason: str, detail: str) -> None:
        letter = build_dead_letter(source, reason, detail, self.max_record_bytes)
        self.letter(letter, location(source))
        self.metrics.records_invalid.labels(reason=reason).inc()
        # One line per reason per interval (a 1% malformed rate at 100k records/s would
        # otherwise log 1,000 lines a second); the metric counts every one.
        held = self._dead_letter_log.allow(reason)
        if held is None:
            return
        more = f"; {held} more {reason} since the last line" if held else ""
        logger.warning("dead letter %s: %s (%s)%s", location(source), reason, detail, more)

    def letter(self, letter: DeadLetter, where: str) -> None:
        """Send a dead letter built already (a record's, or a skipped range's)."""
        # kafka-python cannot produce a record with neither key nor value (a key-less
        # tombstone, a skipped range): such a dead letter gets an empty value.
        value = b"" if letter.key is None and letter.value is None else letter.value
        self._send(self.dlq_topic, letter.key, value, letter.headers, self.failures.watcher(where))

    def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        on_delivery: OnDelivery,
    ) -> None:
        self.guarantee.before_send()
        self.producer.send(topic, key, value, headers, on_delivery)

    def _alert_watcher(self, alert: Alert, source: SourceMessage, measured: bool) -> OnDelivery:
        refused = self.failures.watcher(location(source))
        acknowledged = self.guarantee.alert_acknowledged
        event_ts = alert.event_ts

        def delivered(error: BaseException | None) -> None:
            if error is not None:
                refused(error)
            elif measured:
                acknowledged(event_ts)

        return delivered
