"""``anomaly-replay``: a labelled dataset streamed through a real worker in time order gives
the figures offline scoring gives, per entity (exit 0), and says so when it cannot."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from demo.replay import main as replay
from demo.replay_data import TELEMETRY_DIR

pytestmark = pytest.mark.integration


def write_rows(path, rng: np.random.Generator) -> None:
    """Three hosts at their own levels, 900 minutes each, two labelled incidents each; the
    file's rows shuffled (the replay sorts them by ``ts``)."""
    rows = []
    for h in range(3):
        level = 1.0 + h
        for i in range(900):
            x = rng.normal(0, 0.3 * level, size=4)
            label = int(450 <= i < 460 or 750 <= i < 755)  # further apart than the window
            if label:
                x += 6 * level
            rows.append([f"host-{h}", 1_700_000_000 + 60 * i, label, *x.round(5).tolist()])
    order = rng.permutation(len(rows))
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["entity", "ts", "label", "cpu", "mem", "disk", "net"])
        writer.writerows(rows[i] for i in order)


def test_a_file_replayed_through_the_worker_matches_offline(kafka_bootstrap, tmp_path, capsys):
    write_rows(tmp_path / "rows.csv", np.random.default_rng(2))
    code = replay(
        [
            str(tmp_path / "rows.csv"),
            *("--bootstrap-servers", kafka_bootstrap, "--epochs", "30"),
            *("--recent-window", "200", "--recent-warmup", "100"),
            *("--output", str(tmp_path / "figures.json")),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2,700 records through a real worker" in out and "0 without a score" in out
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert [f["entity"] for f in figures] == ["host-0", "host-1", "host-2"]
    for entity in figures:
        assert entity["gap"] <= 0.01
        # Each host against its own past: both incidents caught, few false alarms.
        assert entity["worker"]["event_recall_all"] == 1.0
        assert entity["worker"]["false_alarm_rate"] < 0.03
        assert entity["worker"]["auc_roc"] > 0.95


@pytest.mark.skipif(not TELEMETRY_DIR.is_dir(), reason="no ../shared/data/telemetry")
@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_telemetry_entities_through_one_worker_match_offline(
    kafka_bootstrap, tmp_path, capsys, client
):
    code = replay(
        [
            "telemetry:omi-1,omi-5,omi-9",
            *("--bootstrap-servers", kafka_bootstrap, "--client", client),
            *("--limit", "2000", "--epochs", "20"),
            *("--output", str(tmp_path / "figures.json")),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert len(figures) == 3 and max(f["gap"] for f in figures) <= 0.01


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["telemetry:omi-1,machine-1-6"], "one stream needs one feature schema"),
        (["telemetry:nope"], "unknown telemetry entities"),
        (["rows.csv", "--fit-share", "1.5"], "--fit-share must be between 0 and 1"),
        (["missing.csv"], "no such file"),
        (["rows.csv", "--speed", "-1"], "--speed must be 0 or more"),
    ],
)
def test_bad_datasets_and_options_are_one_line(tmp_path, capsys, monkeypatch, args, message):
    if args[0].startswith("telemetry:") and not TELEMETRY_DIR.is_dir():
        pytest.skip("no ../shared/data/telemetry")
    monkeypatch.chdir(tmp_path)
    write_rows(tmp_path / "rows.csv", np.random.default_rng(0))
    assert replay(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_a_worker_that_cannot_start_is_said_with_its_log(tmp_path, capsys, monkeypatch):
    write_rows(tmp_path / "rows.csv", np.random.default_rng(1))
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'worker: cannot start (boom)'\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr("demo.replay.sys.executable", str(fake))
    with pytest.raises(SystemExit) as stopped:
        replay([str(tmp_path / "rows.csv"), "--epochs", "5"])
    message = str(stopped.value)
    assert "the worker did not become ready" in message and "cannot start (boom)" in message


def test_a_model_that_is_not_a_bundle_is_one_line(tmp_path, capsys):
    write_rows(tmp_path / "rows.csv", np.random.default_rng(1))
    (tmp_path / "empty").mkdir()
    assert replay([str(tmp_path / "rows.csv"), "--model", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a model bundle" in err and "\n" not in err
