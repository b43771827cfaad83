"""Detection on real service telemetry with labelled incidents, beside PyOD, on identical splits.

    .venv/bin/pip install pyod statsmodels tqdm && .venv/bin/pip install --no-deps TSB-AD==1.5
    .venv/bin/python bench/telemetry.py [--seeds 0,1,2] [--protocols per-entity,short]
        [--entities omi-1,...] [--detectors anomaly-worker,PCA,...] [--fast]

For each entity of ``../shared/data/telemetry`` (its README: 14 entities, one row a minute),
each protocol and seed:

- ``per-entity``: fit on ``train``, score ``test``;
- ``short``: fit on the first rows of ``test`` (a fifth, at most 3,000), score all of ``test``
  (TSB-AD's semi-supervised protocol);

then ranks with VUS-PR (TSB-AD's code, ``pip install --no-deps TSB-AD``: its dependencies are
not needed for the metric; sliding window from ``find_length_rank`` as the data README says),
AUC-PR and AUC-ROC, and for ours the decisions a worker makes: the **false-alarm rate** (alerts
on rows outside incidents / rows outside incidents) and the **event recall** (incident
segments with at least one alert; by kind: ``metric``, ``temporal``) at the deployed
threshold, for each ``ANOMALY_THRESHOLD_MODE``: ``model`` (the bundle's calibrated threshold)
and ``entity_recent`` (the entity's recent scores). The model is what ``anomaly-train fit``
writes with its defaults; decisions come from the same code as ``anomaly-train score``.
Writes ``docs/telemetry.md`` (``--markdown``) and a CSV of every run. ``--fast``: 3 entities,
1 seed, short fits, ours beside PCA (what CI's test runs).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.alarm_figures import Segment, alarm_figures, vus_pr  # noqa: E402
from training.config import FitConfig  # noqa: E402
from training.evaluate import average_precision, judge, roc_auc  # noqa: E402
from training.fit import train  # noqa: E402
from worker.contract.recent_threshold import (  # noqa: E402
    DEFAULT_WARMUP_RECORDS,
    DEFAULT_WINDOW_RECORDS,
)

DATA = ROOT.parent / "shared" / "data" / "telemetry"
PEERS = ("PCA", "IForest", "KNN", "ECOD", "AutoEncoder")
OURS = "anomaly-worker"
MODES = ("model", "entity_recent")
SHORT_SHARE, SHORT_MAX = 0.2, 3_000
FAST_ENTITIES = ("omi-1", "omi-9", "omi-12")


def load(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Segment]]:
    data = np.load(DATA / f"{name}.npz")
    segments = json.loads((DATA / "segments.json").read_text())[name]
    return (
        data["train"],
        data["test"],
        data["test_label"].astype(int),
        [Segment.parse(s) for s in segments],
    )


def split(protocol: str, train_rows: np.ndarray, test: np.ndarray) -> np.ndarray:
    if protocol == "per-entity":
        return train_rows
    return test[: min(int(len(test) * SHORT_SHARE), SHORT_MAX)]


def peer_scores(name: str, seed: int, fit_rows: np.ndarray, test: np.ndarray) -> np.ndarray:
    from pyod.models.auto_encoder import AutoEncoder
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN
    from pyod.models.pca import PCA

    model = {
        "PCA": lambda: PCA(random_state=seed),
        "IForest": lambda: IForest(random_state=seed),
        "KNN": lambda: KNN(),
        "ECOD": lambda: ECOD(),
        "AutoEncoder": lambda: AutoEncoder(random_state=seed, verbose=0),
    }[name]()
    model.fit(fit_rows)
    return np.asarray(model.decision_function(test), dtype=np.float64)


def our_scores(
    seed: int,
    fit_rows: np.ndarray,
    test: np.ndarray,
    fast: bool,
    ours: dict[str, Any] | None = None,
):
    config = FitConfig(seed=seed, epochs=40 if fast else FitConfig.epochs, **(ours or {}))
    result = train(np.ascontiguousarray(fit_rows, dtype=np.float32), config)
    with torch.no_grad():
        scores = result.module(torch.as_tensor(np.ascontiguousarray(test, dtype=np.float32)))[0]
    return scores.numpy().astype(np.float64), result.threshold, result.calibration


def decisions(mode: str, scores: np.ndarray, threshold: float, rate: float) -> np.ndarray:
    """The worker's decisions on one entity's rows (anomaly-train score's code)."""
    judged = judge(
        threshold, rate, scores, None, mode, DEFAULT_WINDOW_RECORDS, DEFAULT_WARMUP_RECORDS
    )
    return judged.alert


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    for protocol in args.protocols:
        for entity in args.entities:
            train_rows, test, labels, segments = load(entity)
            fit_rows = split(protocol, train_rows, test)
            for seed in args.seeds:
                for detector in args.detectors:
                    started = time.perf_counter()
                    row = {"protocol": protocol, "entity": entity, "seed": seed}
                    if detector == OURS:
                        scores, threshold, calibration = our_scores(
                            seed, fit_rows, test, args.fast, args.ours
                        )
                    else:
                        scores = peer_scores(detector, seed, fit_rows, test)
                    row.update(
                        detector=detector,
                        vus_pr=vus_pr(labels, scores, test[:, 0]),
                        auc_pr=average_precision(labels, scores),
                        auc_roc=roc_auc(labels, scores),
                        seconds=time.perf_counter() - started,
                    )
                    if detector != OURS:
                        rows.append(row)
                        continue
                    for mode in MODES:
                        alerts = decisions(mode, scores, threshold, calibration.expected_alert_rate)
                        rows.append(
                            {**row, "mode": mode, **alarm_figures(alerts, labels, segments)}
                        )
                    print(
                        f"{protocol} {entity} seed {seed}: VUS-PR {row['vus_pr']:.3f}, "
                        + ", ".join(
                            f"{r['mode']} FAR {r['false_alarm_rate']:.3f}"
                            for r in rows[-len(MODES) :]
                        ),
                        flush=True,
                    )
    return rows


def summary(rows: list[dict], protocols: list[str]) -> str:
    lines = []
    for protocol in protocols:
        mine = [r for r in rows if r["protocol"] == protocol]
        lines += [
            f"### Protocol `{protocol}`",
            "",
            "| detector | seeds | VUS-PR | AUC-PR | AUC-ROC "
            "| false-alarm rate: mean (worst entity) | event recall: all / metric / temporal |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        names = [(OURS, mode) for mode in MODES] + [(p, None) for p in PEERS]
        for detector, mode in names:
            picked = [r for r in mine if r["detector"] == detector and r.get("mode") == mode]
            if not picked:
                continue
            mean = {k: np.nanmean([r[k] for r in picked]) for k in ("vus_pr", "auc_pr", "auc_roc")}
            label = f"{detector} (`{mode}`)" if mode else detector
            far = recall = ""
            if mode:
                by_entity = defaultdict(list)
                for r in picked:
                    by_entity[r["entity"]].append(r["false_alarm_rate"])
                worst = max(np.mean(v) for v in by_entity.values())
                far = f"{np.mean([r['false_alarm_rate'] for r in picked]):.4f} ({worst:.4f})"
                recall = " / ".join(
                    f"{np.nanmean([r.get(f'event_recall_{k}', np.nan) for r in picked]):.2f}"
                    for k in ("all", "metric", "temporal")
                )
            seeds = len({r["seed"] for r in picked})
            lines.append(
                f"| {label} | {seeds} | {mean['vus_pr']:.3f} | {mean['auc_pr']:.3f} | "
                f"{mean['auc_roc']:.3f} | {far} | {recall} |"
            )
        lines.append("")
    return "\n".join(lines)


def read_row(row: dict[str, str]) -> dict:
    """A row of the CSV ``run`` wrote, its figures as numbers again."""
    out: dict = {}
    for key, value in row.items():
        if key in ("protocol", "entity", "detector", "mode"):
            out[key] = value or None
        elif key == "seed":
            out[key] = int(value)
        elif value != "":
            out[key] = float(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--protocols", default="per-entity,short")
    parser.add_argument("--entities", default=",".join(sorted(p.stem for p in DATA.glob("*.npz"))))
    parser.add_argument("--detectors", default=",".join((OURS, *PEERS)))
    parser.add_argument("--fast", action="store_true", help="3 entities, 1 seed, ours and PCA")
    parser.add_argument(
        "--ours",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="FitConfig overrides for ours, e.g. neighbour_scaling=range",
    )
    parser.add_argument("--csv", type=Path, default=ROOT / "docs" / "telemetry.csv")
    parser.add_argument("--markdown", type=Path, help="write the summary tables here")
    parser.add_argument(
        "--summarise",
        nargs="+",
        type=Path,
        help="only summarise earlier runs' CSVs together (e.g. 3 seeds of most detectors and "
        "1 of the slow, deterministic KNN)",
    )
    args = parser.parse_args()
    defaults = FitConfig()
    args.ours = {
        k: type(getattr(defaults, k))(v) for k, v in (item.split("=", 1) for item in args.ours)
    }
    if args.summarise:
        rows = [read_row(r) for path in args.summarise for r in csv.DictReader(path.open())]
        protocols = [p for p in ("per-entity", "short") if any(r["protocol"] == p for r in rows)]
        text = summary(rows, protocols)
        print(text)
        if args.markdown:
            args.markdown.write_text(text)
        return 0
    split_list = lambda text: [x for x in text.split(",") if x]  # noqa: E731
    args.seeds = [int(s) for s in split_list(args.seeds)]
    args.protocols = split_list(args.protocols)
    args.entities = split_list(args.entities)
    args.detectors = split_list(args.detectors)
    if args.fast:
        args.seeds, args.entities, args.detectors = [0], list(FAST_ENTITIES), [OURS, "PCA"]
    rows = run(args)
    fields = sorted({k for r in rows for k in r})
    with args.csv.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    text = summary(rows, args.protocols)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
