"""anomaly-replay's parts without a broker: the order rows are sent in, what a file becomes,
and the table's verdict (missing scores, gaps to offline)."""

from __future__ import annotations

import numpy as np

from demo.replay import stream_order
from demo.replay_data import Entity, ReplaySet, load_file
from demo.replay_report import Decisions, report
from training.alarm_figures import Segment


def entity(name: str, ts: list[float], labels: list[int]) -> Entity:
    y = np.array(labels, dtype=np.int8)
    X = np.arange(len(ts), dtype=np.float32)[:, None] + 1
    return Entity(name, X, y, [Segment(i, i) for i in np.flatnonzero(y)], np.array(ts))


def test_rows_go_out_in_time_order_across_entities():
    dataset = ReplaySet(
        ("f0",), [entity("a", [0, 60, 120], [0, 0, 0]), entity("b", [30, 60], [0, 0])], None, []
    )
    order = list(zip(*(x.tolist() for x in stream_order(dataset)), strict=True))
    assert order == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]


def test_a_file_is_sorted_by_time_per_entity_and_fits_on_its_normal_head(tmp_path):
    path = tmp_path / "rows.csv"
    lines = ["entity,ts,label,x"]
    for i in reversed(range(10)):  # newest first in the file
        lines.append(f"b,{i},{int(i == 1)},{100 + i}")
        lines.append(f"a,{i},0,{i}")
    path.write_text("\n".join(lines) + "\n")
    dataset = load_file(path, fit_share=0.3)
    assert [e.name for e in dataset.entities] == ["a", "b"]
    assert dataset.entities[1].X[:, 0].tolist() == [100 + i for i in range(10)]
    assert dataset.entities[1].segments == [Segment(1, 1)]
    # Each entity's first 3 rows, less b's labelled one.
    assert sorted(dataset.fit_rows[:, 0].tolist()) == [0, 1, 2, 100, 102]
    assert dataset.fit_entities == ["a"] * 3 + ["b"] * 2  # each fit row's entity
    cut = dataset.limit(1)
    assert [len(e.X) for e in cut.entities] == [1, 1] and cut.entities[1].segments == []


def test_the_verdict_counts_records_without_a_score_and_the_largest_gap(tmp_path):
    dataset = ReplaySet(("f0",), [entity("a", [0, 1, 2, 3], [0, 0, 1, 0])], None, [])
    offline = Decisions(
        np.array([0.1, 0.2, 0.9, 0.3]), np.array([False, False, True, False]), np.ones(4, bool)
    )
    same = Decisions(offline.scores.copy(), offline.alerts.copy(), offline.received.copy())
    text, worst, missing = report(dataset, [same], [offline])
    assert (worst, missing) == (0.0, 0) and "| a | 4 |" in text
    lost = Decisions(offline.scores.copy(), offline.alerts.copy(), offline.received.copy())
    lost.received[3] = False
    lost.alerts[0] = True  # a false alarm offline scoring did not raise
    _, worst, missing = report(dataset, [lost], [offline])
    assert missing == 1 and worst == 1 / 3
