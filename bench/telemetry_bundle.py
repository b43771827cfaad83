"""One bundle for a family of entities: a shared model vs per-entity baselines, on the telemetry.

    .venv/bin/python bench/telemetry_bundle.py [--seeds 0,1,2] [--protocols per-entity,short]
        [--families omi,machine] [--epochs 200] [--csv out.csv]

A worker serving many entities from one stream serves one bundle. For each family of
``../shared/data/telemetry`` (the 12 application servers ``omi``, the 2 machines ``machine``),
protocol (as ``bench/telemetry.py``) and seed, this fits ``anomaly-train fit --per-entity`` once
on every entity's fit rows pooled (each row with its entity): its generic baseline is the
shared model (all rows, the same split and seed), and its routed scores are each entity's own
baseline. Both are scored through :class:`worker.contract.scoring.Scorer` (the worker's code)
and judged per entity: VUS-PR, AUC-PR, AUC-ROC, and with ``entity_recent`` decisions the
false-alarm rate and the event recall.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.telemetry import load, split  # noqa: E402
from training.alarm_figures import alarm_figures, vus_pr  # noqa: E402
from training.config import FitConfig  # noqa: E402
from training.data import Table  # noqa: E402
from training.evaluate import average_precision, judge, roc_auc  # noqa: E402
from training.fit import fit_bundle  # noqa: E402
from worker.contract.recent_threshold import (  # noqa: E402
    DEFAULT_WARMUP_RECORDS,
    DEFAULT_WINDOW_RECORDS,
)
from worker.contract.scoring import Scorer  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "telemetry"
FAMILIES = {"omi": "omi-", "machine": "machine-"}
VARIANTS = ("shared", "per-entity")


def run_family(family: str, protocol: str, seed: int, epochs: int) -> list[dict]:
    names = sorted(p.stem for p in DATA.glob(f"{FAMILIES[family]}*.npz"))
    data = {n: load(n) for n in names}
    fits = {n: split(protocol, d[0], d[1]) for n, d in data.items()}
    X = np.concatenate(list(fits.values())).astype(np.float32)
    entities = [n for n, rows in fits.items() for _ in range(len(rows))]
    features = tuple(f"f{i}" for i in range(X.shape[1]))
    with tempfile.TemporaryDirectory() as tmp:
        config = FitConfig(seed=seed, epochs=epochs, per_entity=True)
        fit_bundle(Table(X, features, entities=entities), Path(tmp), config)
        scorer = Scorer.load(Path(tmp), "cpu")
    meta = scorer.metadata
    rows = []
    for name, (_, test, labels, segments) in data.items():
        test = np.ascontiguousarray(test, dtype=np.float32)
        for variant in VARIANTS:
            routed = [name] * len(test) if variant == "per-entity" else None
            scores = scorer.score(test, routed).scores.astype(np.float64)
            judged = judge(
                meta.threshold,
                meta.calibration.expected_alert_rate,
                scores,
                None,
                "entity_recent",
                DEFAULT_WINDOW_RECORDS,
                DEFAULT_WARMUP_RECORDS,
            )
            rows.append(
                {
                    "family": family,
                    "protocol": protocol,
                    "seed": seed,
                    "entity": name,
                    "variant": variant,
                    "baselines": len(meta.baselines),
                    "vus_pr": vus_pr(labels, scores, test[:, 0]),
                    "auc_pr": average_precision(labels, scores),
                    "auc_roc": roc_auc(labels, scores),
                    **alarm_figures(judged.alert, labels, segments),
                }
            )
        print(
            f"{family} {protocol} seed {seed} {name}: VUS-PR shared "
            f"{rows[-2]['vus_pr']:.3f}, per-entity {rows[-1]['vus_pr']:.3f}",
            flush=True,
        )
    return rows


def summary(rows: list[dict]) -> str:
    lines = [
        "| protocol | variant | seeds | VUS-PR (per seed) | AUC-PR | AUC-ROC "
        "| false alarms mean (worst) | event recall |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for protocol in sorted({r["protocol"] for r in rows}):
        for variant in VARIANTS:
            picked = [r for r in rows if r["protocol"] == protocol and r["variant"] == variant]
            seeds = sorted({r["seed"] for r in picked})
            per_seed = [np.mean([r["vus_pr"] for r in picked if r["seed"] == s]) for s in seeds]
            far = [r["false_alarm_rate"] for r in picked]
            lines.append(
                f"| {protocol} | {variant} | {len(seeds)} | {np.mean(per_seed):.3f} ("
                + " / ".join(f"{v:.3f}" for v in per_seed)
                + f") | {np.mean([r['auc_pr'] for r in picked]):.3f} "
                f"| {np.mean([r['auc_roc'] for r in picked]):.3f} "
                f"| {100 * np.mean(far):.2f}% ({100 * max(far):.2f}%) "
                f"| {np.nanmean([r['event_recall_all'] for r in picked]):.2f} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--protocols", default="per-entity,short")
    parser.add_argument("--families", default="omi,machine")
    parser.add_argument("--epochs", type=int, default=FitConfig.epochs)
    parser.add_argument("--csv", type=Path)
    args = parser.parse_args()
    if not (DATA / "segments.json").is_file():
        print(f"no telemetry set at {DATA}", file=sys.stderr)
        return 2
    rows = []
    for protocol in args.protocols.split(","):
        for family in args.families.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                rows += run_family(family, protocol, seed, args.epochs)
                if args.csv:
                    with args.csv.open("w", newline="") as handle:
                        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                        writer.writeheader()
                        writer.writerows(rows)
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
