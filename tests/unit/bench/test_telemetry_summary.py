"""bench/telemetry.py --summarise: runs written to CSV read back into the same table, each
detector with the number of seeds behind its figures."""

import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_csvs_of_separate_runs_summarise_into_one_table(tmp_path):
    sys.path.insert(0, str(ROOT))
    from bench import telemetry as bench

    ours = [
        {
            "protocol": "short",
            "entity": e,
            "seed": s,
            "detector": bench.OURS,
            "mode": m,
            "vus_pr": 0.5,
            "auc_pr": 0.4,
            "auc_roc": 0.8,
            "false_alarm_rate": 0.01 * (1 + (e == "b")),
            "event_recall_all": 1.0,
        }
        for e in ("a", "b")
        for s in (0, 1, 2)
        for m in bench.MODES
    ]
    knn = [
        {
            "protocol": "short",
            "entity": e,
            "seed": 0,
            "detector": "KNN",
            "vus_pr": 0.3,
            "auc_pr": 0.2,
            "auc_roc": 0.6,
        }
        for e in ("a", "b")
    ]
    paths = []
    for name, rows in (("ours", ours), ("knn", knn)):
        paths.append(tmp_path / f"{name}.csv")
        fields = sorted({k for r in rows for k in r})
        with paths[-1].open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
    rows = [bench.read_row(r) for p in paths for r in csv.DictReader(p.open())]
    text = bench.summary(rows, ["short"])
    assert (
        "| anomaly-worker (`entity_recent`) | 3 | 0.500 | 0.400 | 0.800 | 0.0150 (0.0200) |" in text
    )
    assert "| KNN | 1 | 0.300 | 0.200 | 0.600 |" in text
