"""The per-entity recent threshold: the same decisions whatever the micro-batching, a bounded
state, and the rate it promises on stable traffic."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.contract.recent_threshold import RecentThreshold


def reference(scores, entities, fallback, rate, window, block, warmup):
    """Row by row, straight from the definition."""
    past: dict = {}
    current: dict = {}
    alerts, thresholds = [], []
    for score, entity in zip(scores, entities, strict=True):
        seen = past.setdefault(entity, [])
        n = len(seen)
        if n % block == 0 and n >= warmup:
            window_scores = np.array(seen[-window:], dtype=np.float32)
            m = len(window_scores)
            k = min(int(np.ceil((1 - rate) * (m + 1))), m) - 1
            current[entity] = float(np.sort(window_scores)[k])
        threshold = current.get(entity, fallback)
        thresholds.append(threshold)
        alerts.append(not score <= threshold)
        seen.append(score)
    return np.array(alerts), np.array(thresholds)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 10, width=32), st.sampled_from("abcd")), max_size=300),
    st.lists(st.integers(1, 40), min_size=1, max_size=30),
    st.integers(1, 6),
)
def test_decisions_match_the_definition_whatever_the_batching(rows, cuts, block):
    scores = np.array([s for s, _ in rows], dtype=np.float64)
    entities = [e for _, e in rows]
    args = dict(rate=0.2, window=12, block=block, warmup=5)
    expected_alert, expected_threshold = reference(scores, entities, 7.0, **args)
    recent = RecentThreshold(7.0, **args)
    got_alert, got_threshold = [], []
    start, i = 0, 0
    while start < len(rows):
        end = start + cuts[i % len(cuts)]
        judged = recent.judge(scores[start:end], entities[start:end])
        got_alert.append(judged.alert)
        got_threshold.append(judged.threshold)
        start, i = end, i + 1
    if rows:
        np.testing.assert_array_equal(np.concatenate(got_alert), expected_alert)
        np.testing.assert_allclose(np.concatenate(got_threshold), expected_threshold, rtol=1e-6)


def test_each_entity_alerts_on_about_the_rate_whatever_its_level():
    rng = np.random.default_rng(0)
    entities = np.array([f"host-{i}" for i in range(50)])
    recent = RecentThreshold(1.0, rate=0.01, window=1440, block=32, warmup=100)
    levels = rng.uniform(0.1, 100, size=50)  # a fixed threshold would page for half of them
    alerts = np.zeros(50)
    for _ in range(60):  # 60 batches of 1,000 records: 1,200 per entity
        who = rng.integers(0, 50, size=1000)
        scores = levels[who] * rng.lognormal(0, 0.3, size=1000)
        judged = recent.judge(scores, entities[who].tolist())
        np.add.at(alerts, who[~judged.warming], judged.alert[~judged.warming])
    warmed = np.full(50, 1200 - 100)
    assert np.all(alerts / warmed < 0.02), (alerts / warmed).max()


def test_memory_is_bounded_and_the_least_recently_seen_entity_warms_up_again():
    recent = RecentThreshold(5.0, rate=0.1, window=16, block=4, warmup=8, max_entities=3)
    for entity in "abc":
        recent.judge(np.ones(8), [entity] * 8)
    assert recent.entities == 3
    assert not recent.judge(np.array([1.0]), ["a"]).warming[0]  # 'a' is the most recent now
    recent.judge(np.array([1.0]), ["d"])  # evicts 'b', the least recently seen
    assert recent.entities == 3
    assert recent.judge(np.array([1.0]), ["b"]).warming[0]  # forgotten: warming up again
    assert recent.memory_bytes() < 3 * 16 * 4 + 1_000 + 1024 * (16 * 4 + 16)
