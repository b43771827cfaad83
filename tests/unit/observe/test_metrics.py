import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from worker.observe.metrics import ArrayHistogram


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

    from worker.observe.logs import RepeatFilter

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


def test_drift_is_exported_per_feature_with_a_bounded_number_of_series():
    from training.reference import build_reference
    from worker.contract.drift import DriftMonitor
    from worker.observe.metrics import WorkerMetrics

    rng = np.random.default_rng(0)
    X = rng.normal(size=(5_000, 30)).astype(np.float32)
    monitor = DriftMonitor.from_reference(build_reference(X, X[:, 0].astype(float)), 2_000, 60)
    names = [f"f{j}" for j in range(30)]
    metrics = WorkerMetrics()
    holder = {"monitor": None}
    metrics.track_drift(lambda: (holder["monitor"], names), max_feature_labels=5)
    registry = metrics.registry
    assert registry.get_sample_value("anomaly_score_drift") is None  # no monitor, no series
    holder["monitor"] = monitor
    assert registry.get_sample_value("anomaly_drift_window_records") == 0
    assert registry.get_sample_value("anomaly_feature_drift", {"feature": "f0"}) is None
    live = rng.normal(size=(2_000, 30)).astype(np.float32)
    live[:, 17] += 1.5
    live[:100, 4] = 99.0
    monitor.observe(live, live[:, 0].astype(float))
    assert registry.get_sample_value("anomaly_drift_window_records") == 2_000
    assert registry.get_sample_value("anomaly_feature_drift", {"feature": "f17"}) > 0.25
    series = [
        s.labels["feature"]
        for family in registry.collect()
        if family.name == "anomaly_feature_drift"
        for s in family.samples
    ]
    assert len(series) == 6 and series[0] == "f17" and series[-1] == "_others"
    assert registry.get_sample_value("anomaly_feature_drift", {"feature": "_others"}) < 0.1
    # 5% of f4 far outside its training range barely moves its PSI (they all land in the top
    # bin): the out-of-range ratio is what shows it.
    ratios = {
        s.labels["feature"]: s.value
        for family in registry.collect()
        if family.name == "anomaly_feature_out_of_range_ratio"
        for s in family.samples
    }
    assert max(ratios.values()) == 0.05 and ratios.keys() == set(series)
    assert registry.get_sample_value("anomaly_score_drift") < 0.1


def test_kafka_pythons_read_on_a_socket_it_just_closed_is_not_logged_as_a_traceback():
    # kafka-python 3's transport sets its socket to None before unregistering it; a read event
    # already selected then logs a traceback from None.recv (seen at SIGTERM, after the final
    # commit). The record comes from the client's own code here, not a hand-made copy.
    import logging

    from kafka.net.transport import KafkaTCPTransport

    from worker.observe.logs import ClosedSocketRaceFilter

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("kafka.net.transport")
    logger.addHandler(handler)
    try:
        transport = KafkaTCPTransport(net=None, sock=None, host=("127.0.0.1", 9092))
        transport._closed = True
        transport._sock_recv()
    finally:
        logger.removeHandler(handler)
    race = [r for r in records if r.exc_info]
    assert race and "Error receiving network data" in race[0].getMessage()
    keep = ClosedSocketRaceFilter()
    assert not keep.filter(race[0])
    # Any other error of the client, or ours, still shows.
    reset = ConnectionResetError("reset by peer")
    other = logging.makeLogRecord(
        {
            "name": "kafka.net.transport",
            "msg": "Error receiving",
            "exc_info": (ConnectionResetError, reset, None),
        }
    )
    assert keep.filter(other)
    ours = logging.makeLogRecord(
        {"name": "worker.pipeline", "msg": "x", "exc_info": race[0].exc_info}
    )
    assert keep.filter(ours)
