import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from worker.metrics import ArrayHistogram


def test_array_histogram_matches_observing_one_by_one():
    buckets = (0.5, 1.0, 2.0)
    values = np.array([0.1, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 50.0, np.nan])
    reg_a, reg_b = CollectorRegistry(), CollectorRegistry()
    ArrayHistogram("x", "doc", buckets, reg_a).observe_many(values)
    reference = Histogram("x", "doc", buckets=buckets, registry=reg_b)
    for v in values[~np.isnan(values)]:
        reference.observe(v)
    for le in ("0.5", "1.0", "2.0", "+Inf"):
        assert reg_a.get_sample_value("x_bucket", {"le": le}) == reg_b.get_sample_value(
            "x_bucket", {"le": le}
        )
    assert reg_a.get_sample_value("x_count") == 8
    assert reg_a.get_sample_value("x_sum") == reg_b.get_sample_value("x_sum")


def test_the_kafka_clients_repeated_log_lines_are_held_back_and_counted():
    import logging

    from worker.logs import RepeatFilter

    now = [0.0]
    repeat = RepeatFilter("kafka", interval_seconds=30, clock=lambda: now[0])

    def passes(name, msg="Connection failed: %s"):
        return repeat.filter(logging.makeLogRecord({"name": name, "msg": msg, "args": ("x",)}))

    assert passes("kafka.net.manager")
    assert [passes("kafka.net.manager") for _ in range(100)] == [False] * 100
    assert passes("kafka.net.manager", "another message")
    assert passes("worker.pipeline") and passes("worker.pipeline")  # ours are never held back
    now[0] = 31.0
    record = logging.makeLogRecord({"name": "kafka.net.manager", "msg": "Connection failed: %s"})
    assert repeat.filter(record) and "[100 like this in the last 30s]" in record.getMessage()
