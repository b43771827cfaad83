import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import NAMES, record
from worker.contract.decode import decode_batch
from worker.contract.records import REASONS, FeatureSchema, parse_timestamp

SCHEMA = FeatureSchema(NAMES)


def decode(values, max_bytes=10_000):
    return decode_batch(values, SCHEMA, max_bytes)


def test_list_and_named_features_decode_to_one_matrix_in_model_order():
    values = [
        record([1, 2, 3, 4], id="a"),
        record({"net": 40, "disk": 30, "mem": 20, "cpu": 10}, entity="host-1"),
    ]
    batch = decode(values)
    assert batch.invalid == []
    assert batch.features.dtype == np.float32
    np.testing.assert_array_equal(batch.features, [[1, 2, 3, 4], [10, 20, 30, 40]])
    assert batch.positions.tolist() == [0, 1]
    assert batch.records[0].id == "a" and batch.records[1].entity == "host-1"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "empty_value"),
        (b"x" * 20_000, "oversized"),
        (b'{"features": [1, 2, 3, "\xff"]}', "invalid_utf8"),
        (b'{"features": [1, 2, 3, 4], "skipped": "\xff\xfe"}', "invalid_utf8"),
        (b"{not json", "invalid_json"),
        (b"[1, 2, 3, 4]", "not_an_object"),
        (b'"text"', "not_an_object"),
        (record(None)[:-1] + b', "x": 1}', "invalid_features"),
        (b'{"id": "a"}', "missing_features"),
        (record("1,2,3,4"), "invalid_features"),
        (record([1, 2, "3", 4]), "non_numeric_feature"),
        (record([1, 2, True, 4]), "non_numeric_feature"),
        (record({"cpu": 1, "mem": 2, "disk": 3, "net": None}), "non_numeric_feature"),
        (record([1, 2, 3]), "wrong_feature_count"),
        (record([1, 2, 3, 4, 5]), "wrong_feature_count"),
        (record({"cpu": 1, "mem": 2, "disk": 3, "net": 4, "gpu": 5}), "unknown_feature"),
        (record({"cpu": 1, "mem": 2, "disk": 3}), "missing_feature"),
        (b'{"features": [1, 2, NaN, 4]}', "non_finite"),
        (b'{"features": [1, 2, Infinity, 4]}', "non_finite"),
        (b'{"features": [1, 2, 1e400, 4]}', "non_finite"),
        (record([1, 2, 1e39, 4]), "non_finite"),  # finite in float64, not in float32
        (record([1, 2, 3, 4], id=7), "invalid_field"),
        (record([1, 2, 3, 4], entity=["a"]), "invalid_field"),
        (record([1, 2, 3, 4], ts="yesterday"), "invalid_field"),
        (record([1, 2, 3, 4], ts=True), "invalid_field"),
    ],
)
def test_every_malformed_value_is_refused_with_its_reason(value, reason):
    assert reason in REASONS
    good = record([0, 0, 0, 0])
    batch = decode([good, value, good])
    assert [(i.position, i.reason) for i in batch.invalid] == [(1, reason)]
    assert batch.invalid[0].detail
    assert batch.positions.tolist() == [0, 2]
    assert batch.features.shape == (2, 4)


HUGE = b"9" * 400  # a 400-digit integer: no float holds it


@pytest.mark.parametrize(
    ("value", "reason", "named"),
    [
        (b'{"features": [1, 2, 3, 4], "ts": ' + HUGE + b"}", "invalid_field", "'ts'"),
        (b'{"features": [1, 2, 3, 4], "ts": -' + HUGE + b"}", "invalid_field", "'ts'"),
        (b'{"features": [1, 2, ' + HUGE + b", 4]}", "non_finite", "[2]"),
        (
            b'{"features": {"cpu": 1, "mem": 2, "disk": 3, "net": ' + HUGE + b"}}",
            "non_finite",
            "net",
        ),
        (b'{"features": [1, 2, 3, 4], "id": ' + HUGE + b"}", "invalid_field", "'id'"),
        (b'{"features": [1, 2, 3, 4], "entity": ' + HUGE + b"}", "invalid_field", "'entity'"),
        (b'{"features": [1, 2, 3, 4], "id": "\\ud800"}', "invalid_unicode", "$.id"),
        (b'{"features": [1, 2, 3, 4], "x": ["\\udfff"]}', "invalid_unicode", "$.x[0]"),
    ],
)
def test_huge_integers_and_lone_surrogates_are_refused_naming_the_field(value, reason, named):
    """A 400-digit ``ts`` once raised OverflowError out of the decoder: a crash loop."""
    batch = decode([record([0, 0, 0, 0]), value])
    assert [(i.position, i.reason) for i in batch.invalid] == [(1, reason)]
    assert named in batch.invalid[0].detail, batch.invalid[0].detail


@pytest.mark.parametrize("label", ["yes", 0.5, [1], {"a": 1}, -1, 10**400])
def test_a_label_of_any_type_never_keeps_a_record_from_being_scored(label):
    from worker.contract.records import labelled_anomaly

    value = (
        b'{"features": [1, 2, 3, 4], "label": ' + HUGE + b"}"
        if label == 10**400
        else record([1, 2, 3, 4], label=label)
    )
    batch = decode([value])
    assert batch.invalid == [] and batch.positions.tolist() == [0]
    expected = True if isinstance(label, int) else None  # training leaves the others out
    assert labelled_anomaly(batch.records[0]) is expected


def test_a_leading_byte_order_mark_is_ignored_as_rfc_8259_allows():
    batch = decode([b"\xef\xbb\xbf" + record([1, 2, 3, 4], id="bom")])
    assert batch.invalid == [] and batch.records[0].id == "bom"
    assert decode([b"\xef\xbb\xbf\xef\xbb\xbf" + record([1, 2, 3, 4])]).invalid[0].reason == (
        "invalid_json"  # one mark is tolerated, not two
    )


def test_duplicate_keys_the_last_one_wins_as_in_javascript_and_python():
    values = [
        b'{"features": [9, 9, 9, 9], "features": [1, 2, 3, 4]}',
        b'{"features": {"cpu": 9, "cpu": 1, "mem": 2, "disk": 3, "net": 4}}',
    ]
    batch = decode(values)
    assert batch.invalid == []
    np.testing.assert_array_equal(batch.features, [[1, 2, 3, 4], [1, 2, 3, 4]])


def test_named_features_the_model_lacks_are_ignored_and_counted_when_asked():
    extra = record({"cpu": 1, "mem": 2, "disk": 3, "net": 4, "gpu": 5, "fan": 6})
    missing = record({"cpu": 1, "mem": 2, "disk": 3, "gpu": 5})
    strict = decode_batch([extra, missing], SCHEMA, 10_000)
    # Strict (today's behaviour): a name the model lacks is the reason, first.
    assert [i.reason for i in strict.invalid] == ["unknown_feature", "unknown_feature"]
    lenient = decode_batch([extra, missing, extra], SCHEMA, 10_000, ignore_unknown=True)
    assert lenient.positions.tolist() == [0, 2]
    assert [i.reason for i in lenient.invalid] == ["missing_feature"]  # still a dead letter
    np.testing.assert_array_equal(lenient.features, [[1, 2, 3, 4], [1, 2, 3, 4]])
    assert lenient.ignored_features == {"gpu": 2, "fan": 2}


def test_refusals_keep_the_rest_of_the_batch_aligned():
    values = [record([i, i, i, i], id=str(i)) if i % 3 else b"bad" for i in range(10)]
    batch = decode(values)
    assert [i.position for i in batch.invalid] == [0, 3, 6, 9]
    assert [r.id for r in batch.records] == [str(p) for p in batch.positions]
    np.testing.assert_array_equal(batch.features[:, 0], batch.positions)


def test_timestamps_numbers_and_iso_strings():
    assert parse_timestamp(1.5) == 1.5
    assert parse_timestamp("2024-01-01T00:00:00+00:00") == 1704067200.0
    assert parse_timestamp("2024-01-01T01:00:00+01:00") == 1704067200.0
    batch = decode([record([1, 2, 3, 4], ts="2024-01-01T00:00:00Z")])
    assert batch.invalid == []


def test_empty_batch():
    batch = decode([])
    assert batch.features.shape == (0, 4) and batch.invalid == []


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            json_values.map(lambda v: json.dumps(v).encode()),
            st.lists(st.floats(width=32), min_size=3, max_size=5).map(lambda f: record(f)),
            st.dictionaries(st.sampled_from((*NAMES, "x")), st.floats(), max_size=5).map(
                lambda d: record(d)
            ),
        ),
        max_size=12,
    )
)
def test_every_value_is_either_scored_or_refused_never_both(values):
    batch = decode(values)
    refused = [i.position for i in batch.invalid]
    assert sorted(refused + batch.positions.tolist()) == list(range(len(values)))
    assert all(i.reason in REASONS for i in batch.invalid)
    assert np.isfinite(batch.features).all()
    assert batch.features.shape == (len(batch.positions), 4)
    for row, position in zip(batch.features, batch.positions, strict=True):
        features = json.loads(values[position])["features"]
        if isinstance(features, dict):
            features = [features[n] for n in NAMES]
        assert all(
            math.isclose(a, np.float32(b), rel_tol=1e-6) for a, b in zip(row, features, strict=True)
        )


def nested(depth: int, open_: bytes = b'{"a":', close: bytes = b"}") -> bytes:
    return open_ * depth + b"1" + close * depth


@pytest.mark.parametrize(
    "value",
    [
        nested(5_000),  # the 30 KB poison record: an unknown field nested 5,000 deep
        nested(5_000, b"[", b"]"),
        b'{"features": [1, 2, 3, 4], "id": ' + nested(3_000, b"[", b"]") + b"}",
        b'{"features": ' + nested(3_000, b"[", b"]") + b"}",
        b'{"features": [1, 2, 3, 4], "entity": ' + nested(3_000) + b"}",
    ],
)
def test_deep_nesting_is_refused_as_too_deep_not_raised(value):
    batch = decode([record([0, 0, 0, 0]), value], max_bytes=1 << 20)
    assert [(i.position, i.reason) for i in batch.invalid] == [(1, "too_deep")]
    assert batch.positions.tolist() == [0]


@pytest.mark.parametrize("ts", [1e400, "NaN", "2024-13-01", ""])
def test_timestamps_that_cannot_be_epoch_seconds_are_refused(ts):
    value = (
        b'{"features": [1, 2, 3, 4], "ts": 1e400}' if ts == 1e400 else record([1, 2, 3, 4], ts=ts)
    )
    batch = decode([value])
    assert [i.reason for i in batch.invalid] == ["invalid_field"]


def hostile_values() -> st.SearchStrategy[bytes]:
    """What a producer can put on a topic, biased towards what breaks decoders."""
    digits = st.integers(min_value=1, max_value=600).map(lambda n: b"9" * n)
    number = st.one_of(
        st.floats().map(lambda f: json.dumps(f).encode()),
        digits,
        digits.map(lambda d: b"-" + d + b".5e" + d[:3]),
        st.sampled_from([b"1e400", b"-1e400", b"1e-400", b"NaN", b"-Infinity", b"0x10", b"01"]),
    )
    text = st.text(st.characters(codec="utf-8", exclude_categories=()), max_size=20).map(
        lambda t: json.dumps(t, ensure_ascii=False).encode()
    )
    odd_text = st.sampled_from(
        [b'"\\ud800"', b'"\\udfff\\ud800"', b'"\xed\xa0\x80"', b'"\xc0\x80"', b'"\x00"']
    )
    depth = st.integers(min_value=1, max_value=4_000)
    deep = st.one_of(
        depth.map(nested),
        depth.map(lambda d: b'{"features": ' + nested(d, b"[", b"]") + b"}"),
        depth.map(lambda d: b'{"features": [1, 2, 3, 4], "id": ' + nested(d, b"[", b"]") + b"}"),
    )
    features = st.lists(number, min_size=0, max_size=6).map(lambda xs: b"[" + b",".join(xs) + b"]")
    long_array = st.integers(min_value=5, max_value=100_000).map(
        lambda n: b'{"features": [' + b",".join([b"1"] * n) + b"]}"
    )
    duplicated = st.tuples(features, features).map(
        lambda f: b'{"features": ' + f[0] + b', "features": ' + f[1] + b', "id": "a", "id": 3}'
    )
    field = st.one_of(number, text, odd_text, st.just(b"null"), st.just(b"true"), features)
    # Mostly scoreable features, so that every other field is reached (a valid record with a
    # huge integer in one field is what crashed the decoder once).
    good_features = st.lists(number, min_size=4, max_size=4).map(
        lambda xs: b"[" + b",".join(xs) + b"]"
    )
    shaped = st.tuples(st.one_of(features, good_features), field, field, field, field).map(
        lambda p: b'{"features": %s, "id": %s, "ts": %s, "entity": %s, "label": %s}' % p
    )
    return st.one_of(
        st.binary(max_size=200),
        st.none(),
        number,
        text,
        odd_text,
        deep,
        long_array,
        duplicated,
        shaped,
        shaped.map(lambda v: v[: len(v) // 2]),  # cut short
        st.just(record([0.5, 0.5, 0.5, 0.5])),
    )


@settings(max_examples=400, deadline=None)
@given(st.lists(hostile_values(), max_size=10))
def test_hostile_input_decodes_or_is_refused_with_a_documented_reason(values):
    """No exception escapes decode_batch, and what it accepts can be alerted on."""
    from worker.contract.messages import Message
    from worker.contract.records import event_time, record_id
    from worker.core.alerts import AlertContext, build_alerts

    batch = decode(values, max_bytes=1 << 20)
    refused = [i.position for i in batch.invalid]
    assert sorted(refused + batch.positions.tolist()) == list(range(len(values)))
    assert all(i.reason in REASONS and i.detail for i in batch.invalid)
    assert np.isfinite(batch.features).all()
    messages = [Message("t", 0, p, 0, None, values[p]) for p in batch.positions.tolist()]
    for rec, message in zip(batch.records, messages, strict=True):
        assert math.isfinite(event_time(rec, message))
        record_id(rec, message).encode("utf-8")  # keys and ids are Unicode text
    n = len(batch.records)
    context = AlertContext(NAMES, 1.0, "v", 2, 0.0)
    scores = np.ones(n)
    alerts = build_alerts(
        context, batch.records, messages, scores, batch.features, np.ones((n, 4)), batch.features
    )
    assert [json.loads(a.value)["id"] for a in alerts] == [
        record_id(r, m) for r, m in zip(batch.records, messages, strict=True)
    ]
