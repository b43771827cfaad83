"""The reduced telemetry benchmark CI runs: on three real entities, the entity_recent threshold
keeps each entity's false alarms near the model's target rate where the model's own threshold
pages for a large share of normal minutes. (``bench/telemetry.py`` runs all fourteen, three
seeds, both protocols, beside PyOD.)"""

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT.parent / "shared" / "data" / "telemetry"

pytestmark = pytest.mark.skipif(
    not DATA.is_dir(), reason="the telemetry development set is not beside the checkout"
)


@pytest.mark.parametrize("protocol", ["per-entity", "short"])
def test_entity_recent_alarms_stay_near_the_target_where_the_models_threshold_does_not(protocol):
    import sys

    sys.path.insert(0, str(ROOT))
    from bench import telemetry as bench

    rates = {"model": [], "entity_recent": []}
    rankings = []
    for entity in bench.FAST_ENTITIES:
        train_rows, test, labels, segments = bench.load(entity)
        scores, threshold, calibration = bench.our_scores(
            0, bench.split(protocol, train_rows, test), test, fast=True
        )
        target = calibration.expected_alert_rate
        rankings.append(bench.average_precision(labels, scores))
        for mode in rates:
            alerts = bench.decisions(mode, scores, threshold, target)
            rates[mode].append(bench.alarm_figures(alerts, labels, segments)["false_alarm_rate"])
    recent, model = np.array(rates["entity_recent"]), np.array(rates["model"])
    assert recent.max() <= 3 * target and recent.mean() <= 2 * target, recent
    assert model.mean() >= 5 * recent.mean(), (model, recent)  # what the model alone pages
    assert np.mean(rankings) >= 0.25, rankings
