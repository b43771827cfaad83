import json

import numpy as np
import pytest

from tests.helpers import correlated
from training.cli import main as train_main
from training.config import FitConfig
from training.data import load_table
from training.exceptions import DataError, TrainingError
from training.fit import fit_bundle, train
from worker.contract.bundle import read_metadata
from worker.contract.scoring import Scorer

FAST = FitConfig(epochs=60, patience=10, seed=3)


def test_fit_writes_a_bundle_the_worker_serves_and_separates_anomalies(tmp_path):
    X = correlated(3000)
    y = np.zeros(len(X), dtype=int)
    y[:30] = 1
    X[:30, 2] += 6.0  # broken correlation
    np.savez(tmp_path / "train.npz", X=X, y=y)
    assert (
        train_main(
            [
                "fit",
                "--input",
                str(tmp_path / "train.npz"),
                "--output",
                str(tmp_path / "m"),
                "--epochs",
                "60",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    meta = read_metadata(tmp_path / "m")
    assert meta.training["rows_excluded"] == {"labelled_anomaly": 30}
    assert meta.calibration.method == "quantile" and meta.calibration.target_alert_rate == 0.01
    scorer = Scorer.load(tmp_path / "m", "cpu")
    test_normal = correlated(2000, seed=9)
    test_anomalous = correlated(200, seed=10)
    test_anomalous[:, 3] += 5.0
    normal_rate = (scorer.score(test_normal).scores > meta.threshold).mean()
    anomaly_rate = (scorer.score(test_anomalous).scores > meta.threshold).mean()
    assert 0.002 <= normal_rate <= 0.03
    assert anomaly_rate >= 0.95


def test_threshold_hits_the_target_alert_rate_on_held_out_rows():
    result = train(correlated(5000), FitConfig(epochs=40, seed=0, target_alert_rate=0.05))
    assert abs(result.calibration.realised_alert_rate - 0.05) <= 0.01
    assert result.calibration.calibration_rows == 1000


def test_same_seed_same_model(tmp_path):
    X = correlated(800)
    table_a = fit_bundle(_table(X), tmp_path / "a", FAST)
    table_b = fit_bundle(_table(X), tmp_path / "b", FAST)
    assert table_a.threshold == table_b.threshold
    probe = correlated(50, seed=4)
    np.testing.assert_array_equal(
        Scorer.load(tmp_path / "a", "cpu").score(probe).scores,
        Scorer.load(tmp_path / "b", "cpu").score(probe).scores,
    )


def _table(X):
    from training.data import Table

    return Table(X, ("a", "b", "c", "d"))


def test_csv_and_jsonl_inputs(tmp_path):
    csv = tmp_path / "rows.csv"
    csv.write_text("id,cpu,mem,label\nr1,1.0,2.0,0\nr2,3.0,4.0,1\n")
    table = load_table(csv)
    assert table.feature_names == ("cpu", "mem")
    np.testing.assert_array_equal(table.X, [[1, 2], [3, 4]])
    assert table.y.tolist() == [0, 1]

    jsonl = tmp_path / "rows.jsonl"
    lines = [
        {"features": {"cpu": 1, "mem": 2}},
        {"features": {"mem": 4, "cpu": 3}},
        {"features": [1]},
        "x",
    ]
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    table = load_table(jsonl)
    assert table.feature_names == ("cpu", "mem")
    np.testing.assert_array_equal(table.X, [[1, 2], [3, 4]])
    assert table.dropped == {"wrong_feature_count": 1, "not_an_object": 1}
    assert table.y is None
    # A record's label says it is a known anomaly (left out of training); an unreadable
    # label ("yes") leaves the row out too, counted.
    lines = [
        {"features": [1, 2], "label": 0},
        {"features": [3, 4], "label": True},
        {"features": [5, 6], "label": "yes"},
        {"features": [7, 8]},
    ]
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    table = load_table(jsonl)
    np.testing.assert_array_equal(table.X, [[1, 2], [3, 4], [7, 8]])
    assert table.y.tolist() == [0, 1, 0] and table.dropped == {"invalid_label": 1}


def test_event_times_and_entities_come_along_in_every_format(tmp_path):
    csv = tmp_path / "rows.csv"
    csv.write_text(
        "entity,ts,cpu\nh1,2024-01-01T00:01:00Z,1\nh2,1704067200,2\nh1,1704067260.5,nan\n"
    )
    table = load_table(csv)
    assert table.entities == ["h1", "h2"]  # the non-finite row left with its time and entity
    assert table.ts.tolist() == [1704067260.0, 1704067200.0]
    npz = tmp_path / "rows.npz"
    np.savez(npz, X=np.ones((2, 1)), ts=np.array([5.0, 6.0]), entity=np.array(["a", "b"]))
    assert load_table(npz).ts.tolist() == [5.0, 6.0]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text('{"features": [1], "ts": 7}\n{"features": [2], "ts": "1970-01-01T00:00:08"}\n')
    assert load_table(jsonl).ts.tolist() == [7.0, 8.0]
    csv.write_text("ts,cpu\nyesterday,1\n")
    with pytest.raises(DataError, match="'ts' value is not a time"):
        load_table(csv)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("x.csv", "a,b\n1,zz\n", "non-numeric"),
        ("x.csv", "a,b\n1\n", "1 fields"),
        ("x.txt", "1,2\n", "unsupported file type"),
        ("x.jsonl", "[1]\n", "first record"),
    ],
)
def test_unreadable_inputs_are_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_table(path)


def test_too_few_rows_is_refused():
    with pytest.raises(TrainingError, match="at least"):
        train(correlated(5), FAST)


def test_cli_reports_errors_in_one_line(tmp_path, capsys):
    assert (
        train_main(["fit", "--input", str(tmp_path / "none.npz"), "--output", str(tmp_path / "m")])
        == 2
    )
    assert "no such file" in capsys.readouterr().err


def test_parquet_input_with_labels_and_record_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    X = correlated(400)
    columns = {f"m{j}": X[:, j] for j in range(4)}
    pq.write_table(
        pa.table(
            {
                "id": [f"r{i}" for i in range(400)],
                **columns,
                "label": [1 if i < 10 else 0 for i in range(400)],
                "ts": np.arange(400.0),
            }
        ),
        tmp_path / "rows.parquet",
    )
    table = load_table(tmp_path / "rows.parquet")
    assert table.feature_names == ("m0", "m1", "m2", "m3") and table.X.dtype == np.float32
    assert table.y.sum() == 10 and np.allclose(table.X, X)
    pq.write_table(pa.table({"a": [1.0], "host": ["x"]}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"columns \['host'\] are not numeric"):
        load_table(tmp_path / "bad.parquet")
    pq.write_table(pa.table({"a": [1.0, None]}), tmp_path / "gap.parquet")
    with pytest.raises(DataError, match="'a' has 1 missing values"):
        load_table(tmp_path / "gap.parquet")


def test_encode_writes_the_latent_features_through_the_bundle(tmp_path):
    X = correlated(1000)
    np.savez(tmp_path / "train.npz", X=X, feature_names=np.array(["a", "b", "c", "d"]))
    fit = ["fit", "--input", str(tmp_path / "train.npz"), "--output", str(tmp_path / "m")]
    assert train_main([*fit, "--epochs", "20", "--ensemble", "2", "--no-progress"]) == 0
    # Columns by name in another order: matched to the model's features by name.
    header = "d,c,b,a,label\n"
    lines = [f"{r[3]},{r[2]},{r[1]},{r[0]},{int(i < 5)}" for i, r in enumerate(X[:50])]
    (tmp_path / "rows.csv").write_text(header + "\n".join(lines) + "\n")
    out = tmp_path / "latent.npz"
    encode = ["encode", "--model", str(tmp_path / "m"), "--output", str(out)]
    assert train_main([*encode, "--input", str(tmp_path / "rows.csv")]) == 0
    with np.load(out) as data:
        Z, y = data["Z"], data["y"]
    scorer = Scorer.load(tmp_path / "m", "cpu")
    assert Z.shape == (50, 2 * 2) and y.sum() == 5  # two members of latent 2, side by side
    assert np.allclose(Z, scorer.encode(X[:50]), atol=1e-5)
    (tmp_path / "other.csv").write_text("a,b,z\n1,2,3\n")
    code = train_main([*encode, "--input", str(tmp_path / "other.csv")])
    assert code == 2  # one line: the model's features ['c', 'd'] are not in the file
