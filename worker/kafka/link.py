"""The broker link as the loop sees it: an outage said once, ``/readyz``, a capped backoff,
and the group membership after a pause.

Faults that are not the records' fault (a broker or network outage while polling or
committing) are ridden out: the first one logs a line and makes ``/readyz`` answer 503,
the loop backs off (doubling, capped), and the first sign of life logs how long it lasted.

A process that did not poll for longer than the session timeout (paused: SIGSTOP, a frozen
VM, a long GC; or starved) has probably been evicted from the group, and its batch in hand
and the client's buffer hold records of partitions another worker now owns. Processing them
would repeat their alerts. So the batch is *held* until the group says: a rebalance
callback (partitions revoked, lost or assigned), or, if none comes, a session timeout
after the worker woke up with the coordinator answering.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from worker.observe.health import HealthState

__all__ = ["BrokerLink"]

logger = logging.getLogger(__name__)


class BrokerLink:
    """What is wrong with the broker link, while it lasts, and how long to back off."""

    def __init__(
        self,
        health: HealthState,
        connect_backoff_max_seconds: float,
        session_timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.health = health
        self.connect_backoff_max_seconds = connect_backoff_max_seconds
        #: The coordinator must have answered within this long for ``/readyz`` to say 200.
        self.session_timeout_seconds = session_timeout_seconds
        self.clock = clock
        self.problem: str | None = None
        self.backoff_seconds = 0.0
        self._since = 0.0
        self._polled_at: float | None = None
        self.held_since: float | None = None  # a pause was noticed; membership unknown
        self._topic_id: str | None = None

    @property
    def down(self) -> bool:
        return self.problem is not None

    def trouble(self, what: str) -> None:
        """A transient broker/network fault: say so once, stop being ready, back off more."""
        if self.problem is None:
            self._since = self.clock()
            logger.warning("broker unreachable (%s); retrying with backoff", what)
        self.problem = what
        self.backoff_seconds = min(
            max(self.backoff_seconds * 2, 0.1), self.connect_backoff_max_seconds
        )
        self.health.set_ready(False, f"broker unreachable: {what}")

    def ok(self) -> None:
        """The broker answered."""
        if self.problem is not None:
            logger.info("broker reachable again after %.1fs", self.clock() - self._since)
        self.problem = None
        self.backoff_seconds = 0.0

    def follow(self, link_age: float | None, assigned: bool) -> None:
        """Once per loop: readiness from the group coordinator's last answer (``link_age``
        seconds ago, None when the client cannot tell) while partitions are ``assigned``."""
        age = link_age if assigned else None
        if age is not None and age > self.session_timeout_seconds:
            self.trouble(f"no heartbeat answer from the group coordinator for {age:.0f}s")
        elif self.problem is not None and age is not None and age < self.clock() - self._since:
            self.ok()  # the coordinator answered since the trouble began
        if self.problem is None and assigned:
            self.health.set_ready(True, "ok")

    def partitions_assigned(self) -> None:
        if self.problem is None:
            self.health.set_ready(True, "ok")

    # --- membership after a pause --------------------------------------------------------
    def polled(self) -> None:
        """A poll returned. After a gap longer than the session timeout, hold the batch."""
        now = self.clock()
        gap = None if self._polled_at is None else now - self._polled_at
        self._polled_at = now
        if gap is None or gap <= self.session_timeout_seconds or self.held_since is not None:
            return
        if self.problem is not None:
            return  # the loop was backing off from a broker outage on purpose
        self.held_since = now
        logger.warning(
            "no poll for %.0fs, longer than the %gs session timeout (the process was paused "
            "or starved): holding the records in hand and those the client had buffered until "
            "the group says whether this worker still owns their partitions",
            gap,
            self.session_timeout_seconds,
        )

    def holding(self) -> bool:
        """Whether the batch must wait: a pause was noticed and the group has not spoken."""
        if self.held_since is None:
            return False
        waited = self.clock() - self.held_since
        if waited < self.session_timeout_seconds or self.problem is not None:
            return True
        logger.info("no rebalance within %.0fs of waking up: still a member, processing", waited)
        self.held_since = None
        return False

    def membership_known(self) -> None:
        """A rebalance callback ran: the client knows which partitions are still this worker's."""
        if self.held_since is not None:
            logger.info(
                "the group answered %.1fs after the pause; the held batch keeps only the "
                "partitions this worker still owns",
                self.clock() - self.held_since,
            )
        self.held_since = None

    # --- the input topic's identity --------------------------------------------------------
    def topic_changed(self, topic_id: str | None) -> tuple[str, str] | None:
        """``(old id, new id)`` when the input topic's id changed since it was last seen: it
        was deleted and created again. None otherwise (or when the client does not tell)."""
        if topic_id is None or topic_id == self._topic_id:
            return None
        old, self._topic_id = self._topic_id, topic_id
        return None if old is None else (old, topic_id)
