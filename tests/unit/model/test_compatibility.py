"""A model the traffic does not fit says so: /readyz 503, one ERROR line, cleared on a score."""

from tests.fakes import make_pipeline, messages
from tests.helpers import record
from worker.model.compatibility import REFUSED_IN_A_ROW


def test_a_model_refusing_every_record_for_its_features_stops_being_ready(tmp_path, caplog):
    pipeline, _consumer, producer, _ = make_pipeline(tmp_path, [])
    pipeline.health.set_ready(True, "ok")
    six = [record([1, 2, 3, 4, 5, 6])] * (REFUSED_IN_A_ROW // 2)
    pipeline.process(messages(0, six), six)
    assert pipeline.health.ready  # half way: a producer of the wrong features among others?
    garbage = [b"not json"] * 500  # other refusals neither count nor clear
    pipeline.process(messages(0, garbage), garbage)
    pipeline.process(messages(0, six), six)
    assert not pipeline.health.ready
    reason = pipeline.health.reason
    assert "model test-v1 refuses every record for its features" in reason, reason
    assert "expects 4 (cpu, mem, disk, net)" in reason and "expected 4 features, got 6" in reason
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "--allow-feature-change" in errors[0] and "rollback" in errors[0]
    pipeline.process(messages(0, six), six)
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1  # not per batch
    good = [record([0, 0, 0, 0])]
    pipeline.process(messages(0, good), good)
    assert pipeline.health.ready and pipeline.health.reason == "ok"
    assert len([s for s in producer.sent if s[0] == "dlq"]) == len(six) * 3 + len(garbage)


def test_records_with_a_feature_the_model_lacks_are_scored_counted_and_said_once(tmp_path, caplog):
    pipeline, _consumer, producer, _ = make_pipeline(tmp_path, [])
    extra = [
        record({"cpu": 9, "mem": 9, "disk": 9, "net": 9, "gpu": 1}, id=f"e{i}") for i in range(3)
    ]
    pipeline.process(messages(0, extra), extra)
    pipeline.process(messages(0, extra), extra)
    assert [s[0] for s in producer.sent] == ["alerts"] * 6  # scored, alerted, none dead-lettered
    sample = pipeline.metrics.registry.get_sample_value
    assert sample("anomaly_features_ignored_total", {"feature": "gpu"}) == 6
    lines = [r.getMessage() for r in caplog.records if "does not have" in r.getMessage()]
    assert (
        len(lines) == 1 and "['gpu']" in lines[0] and "ANOMALY_UNKNOWN_FEATURES=refuse" in lines[0]
    )
    strict, _, producer, _ = make_pipeline(tmp_path / "strict", [], unknown_features="refuse")
    strict.process(messages(0, extra), extra)
    assert [dict(s[3])["error.reason"] for s in producer.sent] == [b"unknown_feature"] * 3


def test_bounded_series_for_ignored_features(tmp_path):
    pipeline, _, _, _ = make_pipeline(tmp_path, [])
    named = {"cpu": 1, "mem": 1, "disk": 1, "net": 1} | {f"x{i}": 1 for i in range(30)}
    values = [record(named)]
    pipeline.process(messages(0, values), values)
    families = {f.name: f for f in pipeline.metrics.registry.collect()}
    labels = {s.labels["feature"] for s in families["anomaly_features_ignored"].samples}
    assert len(labels) == 21 and "_others" in labels
