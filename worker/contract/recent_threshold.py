"""A threshold that follows each entity's own recent past.

Real telemetry drifts: a deploy sets a new normal, load grows, weeks have cycles. A threshold
fixed at training time then pages for most records of a drifted entity (31-89% of minutes,
measured on server telemetry) or for none. :class:`RecentThreshold` judges each record against
its entity's recent scores instead: it alerts when the score is above the ``1 - rate``
quantile of the entity's last ``window`` scores, so each entity alerts on about ``rate`` of
its records while its traffic is stable, whatever its level, and adapts within a window after
it changes. The model's calibrated threshold decides while an entity has fewer than
``warmup`` scores (after a start, a restart, a rebalance, a new model, or for a new entity).

The quantile is recomputed every ``block`` records of an entity, from the ``window`` scores
before the block: a record's decision depends only on its entity's earlier records, never on
how they were cut into micro-batches, so ``anomaly-train score`` (rows in time order) and the
worker decide alike. Records of an entity are taken in arrival order; their timestamps are
not used (out-of-order or gappy records cannot corrupt the state).

Memory: ``window`` float32 scores per entity (1,440: 5.6 KiB), at most ``max_entities``
entities; the least recently seen is forgotten first (and warms up again when it returns).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "DEFAULT_BLOCK_RECORDS",
    "DEFAULT_WARMUP_RECORDS",
    "DEFAULT_WINDOW_RECORDS",
    "Judgement",
    "RecentThreshold",
]

#: A day of one-minute records.
DEFAULT_WINDOW_RECORDS = 1_440
#: An entity's own past decides once it holds this many scores: above their largest until
#: ``1 / rate - 1`` of them (99 at 1%), so a new entity alerts rarely while it warms up.
DEFAULT_WARMUP_RECORDS = 100
DEFAULT_BLOCK_RECORDS = 32


class Judgement(NamedTuple):
    """A threshold's verdict on a batch, row by row."""

    alert: np.ndarray  # bool
    threshold: np.ndarray  # float64: what each row was judged against
    warming: np.ndarray | None = None  # bool: decided by the model's threshold while warming up


class RecentThreshold:
    """Per entity, alert above the ``1 - rate`` quantile of its last ``window`` scores.

    >>> recent = RecentThreshold(10.0, rate=0.25, window=8, block=2, warmup=4)
    >>> first = recent.judge(np.array([1.0, 2.0, 3.0, 4.0, 20.0]), ["a"] * 5)
    >>> first.alert.tolist(), first.warming.tolist()  # 4 scores of 'a' so far: warmed up
    ([False, False, False, False, True], [True, True, True, True, False])
    >>> later = recent.judge(np.array([3.5, 4.5]), ["a", "b"])
    >>> later.alert.tolist(), later.threshold.tolist()  # 'b' is new: the model's threshold
    ([False, False], [4.0, 10.0])
    """

    def __init__(
        self,
        fallback: float,
        rate: float,
        window: int,
        block: int,
        warmup: int,
        max_entities: int = 10_000,
    ) -> None:
        if not 0 < rate < 0.5 or not 1 <= block <= window or not 1 <= warmup <= window:
            raise ValueError("need 0 < rate < 0.5, 1 <= block <= window and 1 <= warmup <= window")
        self.fallback, self.rate = fallback, rate
        self.window, self.block, self.warmup = window, block, warmup
        self.max_entities = max_entities
        self._slots: OrderedDict[Any, int] = OrderedDict()  # entity -> row of the arrays
        size = min(max_entities, 1024)
        self._scores = np.zeros((size, window), dtype=np.float32)  # ring per entity
        self._count = np.zeros(size, dtype=np.int64)  # scores seen per entity
        self._threshold = np.full(size, np.nan)  # of the entity's current block (NaN: warming)

    @property
    def entities(self) -> int:
        return len(self._slots)

    def memory_bytes(self) -> int:
        return self._scores.nbytes + self._count.nbytes + self._threshold.nbytes

    def judge(self, scores: np.ndarray, entities: Sequence[Any]) -> Judgement:
        """Decide each row (scores in arrival order; ``entities[i]`` is row i's entity, None
        for records without one: they share one recent past)."""
        n = len(scores)
        scores = np.asarray(scores, dtype=np.float64)
        slots = self._slots_of(entities)
        order = np.argsort(slots, kind="stable")  # rows by entity, in arrival order
        sorted_slots = slots[order]
        starts = np.flatnonzero(np.r_[True, sorted_slots[1:] != sorted_slots[:-1]])
        rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        seq = np.empty(n, dtype=np.int64)
        seq[order] = self._count[sorted_slots] + rank  # each row's index in its entity's past
        # Entities whose rows in this batch start a block need the quantile recomputed at
        # each start, from scores of this very batch: taken one entity at a time. The others
        # (most, when there are many entities) are decided and stored at once.
        starts_block = (seq % self.block == 0) & (seq >= self.warmup)
        slow = np.zeros(len(self._count), dtype=bool)
        slow[slots[starts_block]] = True
        fast = ~slow[slots]
        threshold = np.empty(n)
        threshold[fast] = self._threshold[slots[fast]]
        for slot in np.flatnonzero(slow).tolist():
            rows = np.flatnonzero(slots == slot)
            threshold[rows] = self._walk(slot, scores[rows])
        fast_rows = np.flatnonzero(fast)
        self._scores[slots[fast_rows], seq[fast_rows] % self.window] = scores[fast_rows]
        np.add.at(self._count, slots[fast_rows], 1)
        warming = np.isnan(threshold)
        threshold[warming] = self.fallback
        return Judgement(~(scores <= threshold), threshold, warming)

    def _walk(self, slot: int, scores: np.ndarray) -> np.ndarray:
        """One entity's rows of a batch, in order, recomputing at each block start."""
        thresholds = np.empty(len(scores))
        for i, score in enumerate(scores.tolist()):
            count = int(self._count[slot])
            if count % self.block == 0 and count >= self.warmup:
                self._threshold[slot] = self._quantile(slot, count)
            thresholds[i] = self._threshold[slot]
            self._scores[slot, count % self.window] = score
            self._count[slot] = count + 1
        return thresholds

    def _quantile(self, slot: int, count: int) -> float:
        """The conformal ``1 - rate`` quantile of the entity's last ``window`` scores: the
        ``ceil((1 - rate)(n + 1))``-th smallest of the ``n`` (their largest when ``n`` is
        small), so that a new score of the same traffic exceeds it with probability at most
        ``rate`` (1 in ``n + 1`` per rank)."""
        past = self._scores[slot, : min(count, self.window)]
        n = len(past)
        k = min(int(np.ceil((1.0 - self.rate) * (n + 1))), n) - 1
        return float(np.partition(past, k)[k])

    def _slots_of(self, entities: Sequence[Any]) -> np.ndarray:
        slots = self._slots
        known = [slots.get(e) for e in entities]
        batch = dict.fromkeys(entities)
        for e in batch:  # the batch's entities are the most recently seen ones
            if e in slots:
                slots.move_to_end(e)
        if None in known:
            for i, e in enumerate(entities):
                if known[i] is None:
                    known[i] = slots.get(e)
                    if known[i] is None:
                        known[i] = self._admit(e, batch)
        return np.fromiter(known, dtype=np.int64, count=len(known))

    def _admit(self, entity: Any, batch: dict[Any, None]) -> int:
        if len(self._slots) >= self.max_entities:
            oldest = next(iter(self._slots))
            if oldest in batch:
                raise ValueError(
                    f"a batch holds more than {self.max_entities} entities: raise the bound"
                )
            slot = self._slots.pop(oldest)  # the least recently seen: it warms up again
        else:
            slot = len(self._slots)
            if slot >= len(self._count):
                self._grow()
        self._count[slot] = 0
        self._threshold[slot] = np.nan
        self._slots[entity] = slot
        return slot

    def _grow(self) -> None:
        size = min(len(self._count) * 2, self.max_entities)
        self._scores = np.concatenate(
            [self._scores, np.zeros((size - len(self._count), self.window), np.float32)]
        )
        self._count = np.concatenate([self._count, np.zeros(size - len(self._count), np.int64)])
        self._threshold = np.concatenate(
            [self._threshold, np.full(size - len(self._threshold), np.nan)]
        )
