import json

import numpy as np
import pytest

from worker.contract.messages import Message
from worker.contract.records import Record
from worker.core.alerts import AlertContext, build_alerts
from worker.core.deadletters import build_dead_letter
from worker.core.threshold import Threshold

NAMES = ("a", "b", "c")


def context(top=2):
    return AlertContext(
        NAMES, threshold=2.0, model_version="v7", top_features=top, detected_at=1000.0
    )


def test_alert_carries_score_top_features_and_its_source():
    rec = Record(features=[1.0, 9.0, 3.0], id="tx-1", ts=50.0, entity="card-9")
    msg = Message("in", 2, 41, 7_000, None, b"")
    (alert,) = build_alerts(
        context(),
        [rec],
        [msg],
        scores=np.array([5.0]),
        features=np.array([[1.0, 9.0, 3.0]]),
        errors=np.array([[0.1, 8.0, 2.0]]),
        expected=np.array([[1.1, 1.0, 2.5]]),
    )
    body = json.loads(alert.value)
    assert alert.key == b"card-9"
    assert alert.event_ts == 50.0
    assert body["id"] == "tx-1" and body["entity"] == "card-9" and body["ts"] == 50.0
    assert body["score"] == 5.0 and body["threshold"] == 2.0 and body["score_ratio"] == 2.5
    assert body["model_version"] == "v7"
    assert body["top_features"] == [
        {"name": "b", "value": 9.0, "expected": 1.0, "error": 8.0},
        {"name": "c", "value": 3.0, "expected": 2.5, "error": 2.0},
    ]
    assert body["source"] == {"topic": "in", "partition": 2, "offset": 41}
    assert body["detected_at"] == 1000.0


def test_defaults_id_from_source_and_ts_from_kafka_timestamp():
    rec = Record(features=[0.0, 0.0, 0.0])
    (alert,) = build_alerts(
        context(top=0),
        [rec],
        [Message("in", 0, 5, 1_500, None, b"")],
        np.array([3.0]),
        np.zeros((1, 3)),
        np.zeros((1, 3)),
        np.zeros((1, 3)),
    )
    body = json.loads(alert.value)
    assert alert.key == b"in-0-5" and body["id"] == "in-0-5"
    assert body["ts"] == 1.5 and body["top_features"] == []


def test_threshold_decides_strictly_above_and_alerts_on_nan():
    threshold = Threshold(2.0)
    assert threshold.decide(np.array([1.0, 2.0, 2.5, np.nan])).tolist() == [
        False,
        False,
        True,
        True,
    ]
    assert threshold.ratio(np.array([4.0])).tolist() == [2.0]
    with pytest.raises(ValueError):
        Threshold(0.0)
    with pytest.raises(ValueError):
        Threshold(float("inf"))


def test_dead_letter_keeps_key_and_bytes_and_explains_in_headers():
    letter = build_dead_letter(
        Message("in", 3, 99, 0, b"key", b"\xffraw"), "invalid_utf8", "bad byte"
    )
    assert letter.key == b"key" and letter.value == b"\xffraw"
    assert dict(letter.headers) == {
        "error.reason": b"invalid_utf8",
        "error.detail": b"bad byte",
        "source.topic": b"in",
        "source.partition": b"3",
        "source.offset": b"99",
    }
