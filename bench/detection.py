"""Detection quality: the project's own fit/score path against PyOD detectors, same splits.

    .venv/bin/pip install pyod   # not a project dependency
    .venv/bin/python bench/detection.py [--seeds 0 1 2] [--datasets cardio thyroid ...]

Protocols (see ../shared/data/adbench/README.md): datasets over 10,000 rows are subsampled to
10,000 (seeded, stratified); a stratified 70/30 split; detectors fit on

- ``normal``: the normal rows of the 70% (what the training module is for), or
- ``contaminated``: the whole 70%, anomalies left in, labels ignored (the ADBench protocol),

and are scored on the 30%. PyOD detectors run with their defaults on MinMax-scaled features (the
paper's preprocessing); ours gets raw features, exactly as a user would give them to
``anomaly-train fit``, and is scored through ``worker.contract.scoring.Scorer``; "autoencoder
alone" is ours with ``score=reconstruction`` (what the combined score adds). Writes a CSV of
every run and a Markdown report with means over seeds, fit times, the paper's published
numbers, and our realised false-alarm rate on held-out normal rows against the configured
target, and checks the quality targets (the "Targets" table).
``--detectors anomaly-worker --reuse docs/detection.csv`` re-runs ours alone and takes the
peers' rows from the last full run.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.config import FitConfig  # noqa: E402
from training.data import Table  # noqa: E402
from training.evaluate import average_precision, roc_auc, score_table  # noqa: E402
from training.fit import fit_bundle  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "adbench"
MAX_ROWS = 10_000
PEERS = ("IForest", "ECOD", "PCA", "KNN", "AutoEncoder")
OURS = "anomaly-worker"
RECONSTRUCTION_ONLY = "autoencoder alone"
"""Ours with ``score=reconstruction``: what the combined score adds, on the same splits."""


def dataset_name(path: Path) -> str:
    return path.stem.split("_", 1)[1]


def stratified_subsample(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if len(y) <= n:
        return np.arange(len(y))
    keep = []
    for label in (0, 1):
        rows = np.flatnonzero(y == label)
        keep.append(rng.choice(rows, size=round(n * len(rows) / len(y)), replace=False))
    return np.sort(np.concatenate(keep))


def stratified_split(y: np.ndarray, rng: np.random.Generator, train_share: float = 0.7):
    train, test = [], []
    for label in (0, 1):
        rows = rng.permutation(np.flatnonzero(y == label))
        cut = round(len(rows) * train_share)
        train.append(rows[:cut])
        test.append(rows[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def peer(name: str, seed: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    from pyod.models.auto_encoder import AutoEncoder
    from pyod.models.ecod import ECOD
    from pyod.models.iforest import IForest
    from pyod.models.knn import KNN
    from pyod.models.pca import PCA

    factories = {
        "IForest": lambda: IForest(random_state=seed),
        "ECOD": lambda: ECOD(),
        "PCA": lambda: PCA(random_state=seed),
        "KNN": lambda: KNN(),
        "AutoEncoder": lambda: AutoEncoder(random_state=seed, verbose=0),
    }

    def run(train: np.ndarray, test: np.ndarray) -> np.ndarray:
        low, high = train.min(axis=0), train.max(axis=0)
        span = np.where(high > low, high - low, 1.0)
        model = factories[name]()
        model.fit((train - low) / span)
        return np.asarray(model.decision_function((test - low) / span), dtype=np.float64)

    return run


def ours(config: FitConfig, workdir: Path):  # type: ignore[no-untyped-def]
    def run(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, float]:
        names = tuple(f"f{i}" for i in range(train.shape[1]))
        bundle = workdir / f"bundle-{time.monotonic_ns()}"
        metadata = fit_bundle(Table(train.astype(np.float32), names), bundle, config)
        scores, _ = score_table(bundle, Table(test.astype(np.float32), names))
        return scores.astype(np.float64), metadata.threshold

    return run


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--datasets", nargs="*", help="names, e.g. cardio thyroid (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--protocols", nargs="+", default=["normal", "contaminated"])
    parser.add_argument("--detectors", nargs="+", default=[OURS, RECONSTRUCTION_ONLY, *PEERS])
    parser.add_argument(
        "--ours",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="FitConfig overrides for our detector, e.g. ensemble=3 scaling=minmax",
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        help="an earlier CSV of this script: rows of detectors not run now are taken from it "
        "(PyOD detectors are deterministic per seed, so re-running ours alone is enough)",
    )
    parser.add_argument("--csv", type=Path, default=ROOT / "docs" / "detection.csv")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "detection.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    files = sorted(args.data.glob("*.npz"), key=lambda p: int(p.stem.split("_")[0]))
    if args.datasets:
        files = [f for f in files if dataset_name(f) in args.datasets]
    overrides = dict(item.split("=", 1) for item in args.ours)
    defaults = FitConfig()
    config = FitConfig(**{k: type(getattr(defaults, k))(v) for k, v in overrides.items()})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            with np.load(path) as data:
                X_all, y_all = (
                    np.asarray(data["X"], dtype=np.float64),
                    np.asarray(data["y"]).astype(int),
                )
            for seed in args.seeds:
                rng = np.random.default_rng(seed)
                keep = stratified_subsample(y_all, MAX_ROWS, rng)
                X, y = X_all[keep], y_all[keep]
                train_idx, test_idx = stratified_split(y, rng)
                for protocol in args.protocols:
                    train_rows = (
                        train_idx if protocol == "contaminated" else train_idx[y[train_idx] == 0]
                    )
                    for detector in args.detectors:
                        started = time.perf_counter()
                        false_alarms = float("nan")
                        if detector in (OURS, RECONSTRUCTION_ONLY):
                            chosen = (
                                config
                                if detector == OURS
                                else replace(config, score="reconstruction")
                            )
                            scores, threshold = ours(chosen, Path(tmp))(X[train_rows], X[test_idx])
                            normal_test = y[test_idx] == 0
                            false_alarms = float((scores[normal_test] > threshold).mean())
                        else:
                            scores = peer(detector, seed)(X[train_rows], X[test_idx])
                        seconds = time.perf_counter() - started
                        row = {
                            "dataset": dataset_name(path),
                            "protocol": protocol,
                            "seed": seed,
                            "detector": detector,
                            "roc_auc": 100 * roc_auc(y[test_idx], scores),
                            "pr_auc": 100 * average_precision(y[test_idx], scores),
                            "fit_seconds": seconds,
                            "false_alarm_rate": false_alarms,
                        }
                        rows.append(row)
                        print(
                            f"{row['dataset']:>12} {protocol:>12} seed {seed} {detector:>14}: "
                            f"ROC-AUC {row['roc_auc']:6.2f} PR-AUC {row['pr_auc']:6.2f} "
                            f"({seconds:.1f}s)",
                            flush=True,
                        )
    if args.reuse:
        wanted = {(r["dataset"], r["protocol"], r["seed"]) for r in rows}
        with args.reuse.open() as handle:
            for r in csv.DictReader(handle):
                key = (r["dataset"], r["protocol"], int(r["seed"]))
                if r["detector"] not in args.detectors and key in wanted:
                    rows.append(
                        {
                            **r,
                            "seed": int(r["seed"]),
                            **{
                                k: float(r[k])
                                for k in ("roc_auc", "pr_auc", "fit_seconds", "false_alarm_rate")
                            },
                        }
                    )
    write_csv(args.csv, rows)
    write_markdown(args.markdown, rows, config)
    return 0


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def paper_table(metric_file: str) -> dict[str, dict[str, float]]:
    path = DATA / metric_file
    if not path.exists():
        return {}
    with path.open() as handle:
        return {
            r["dataset"]: {k: float(v) for k, v in r.items() if k in PEERS}
            for r in csv.DictReader(handle)
        }


def mean_auc(rows: list[dict], protocol: str) -> dict[str, dict[str, float]]:
    """``{detector: {dataset: mean ROC-AUC over seeds}}``."""
    values: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["protocol"] == protocol:
            values[r["detector"]][r["dataset"]].append(r["roc_auc"])
    return {d: {k: float(np.mean(v)) for k, v in per.items()} for d, per in values.items()}


def targets(rows: list[dict], config: FitConfig) -> list[str]:
    """The quality bar of the detection issue, checked against this run."""
    lines = ["## Targets", "", "| target | measured | met |", "|---|---|---|"]

    def line(target: str, measured: str, met: bool) -> None:
        lines.append(f"| {target} | {measured} | {'yes' if met else 'no'} |")

    peers = [p for p in PEERS if any(r["detector"] == p for r in rows)]
    normal = mean_auc(rows, "normal")
    if OURS in normal and peers:
        means = {d: float(np.mean(list(normal[d].values()))) for d in [OURS, *peers]}
        rival = "KNN" if "KNN" in means else max(peers, key=lambda p: means[p])
        line(
            f"normal protocol: mean ROC-AUC >= {rival}'s mean",
            f"{means[OURS]:.2f} vs {means[rival]:.2f}",
            means[OURS] >= means[rival],
        )
        close, missed = 0, []
        for dataset, ours_auc in normal[OURS].items():
            top = max(normal[p][dataset] for p in peers)
            if ours_auc >= top - 0.5:
                close += 1
            else:
                missed.append(f"{dataset} {ours_auc:.1f} vs {top:.1f}")
        share = close / len(normal[OURS])
        line(
            "normal protocol: >= best peer - 0.5 on at least 60% of datasets",
            f"{close}/{len(normal[OURS])} ({share:.0%}); below: {', '.join(missed) or 'none'}",
            share >= 0.6,
        )
    contaminated = mean_auc(rows, "contaminated")
    if OURS in contaminated and peers:
        means = {d: float(np.mean(list(contaminated[d].values()))) for d in [OURS, *peers]}
        best = max(peers, key=lambda p: means[p])
        line(
            "contaminated protocol: mean ROC-AUC >= the best peer's mean",
            f"{means[OURS]:.2f} vs {best} {means[best]:.2f}",
            means[OURS] >= means[best],
        )
    rates: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["detector"] == OURS and r["protocol"] == "normal":
            rates[r["dataset"]].append(r["false_alarm_rate"])
    if rates:
        target = config.target_alert_rate
        within = [d for d, v in rates.items() if abs(np.mean(v) - target) <= 0.5 * target]
        outside = [f"{d} {np.mean(v):.4f}" for d, v in rates.items() if d not in within]
        line(
            f"false-alarm rate on held-out normal rows within +-50% of {target}",
            f"{len(within)}/{len(rates)} datasets; outside: {', '.join(outside) or 'none'}",
            len(within) == len(rates),
        )
    return [*lines, ""]


def write_markdown(path: Path, rows: list[dict], config: FitConfig) -> None:
    detectors = list(dict.fromkeys(r["detector"] for r in rows))
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    lines = [
        "# Detection quality",
        "",
        "Generated by `bench/detection.py` (see its docstring for the protocols).",
        f"Ours: `anomaly-train fit` defaults (`{config}`).",
        "",
    ]
    lines += targets(rows, config)
    paper = {
        "roc_auc": paper_table("ADBench_paper_TableD4_unsup_AUCROC.csv"),
        "pr_auc": paper_table("ADBench_paper_TableD5_unsup_AUCPR.csv"),
    }
    for protocol in dict.fromkeys(r["protocol"] for r in rows):
        for metric, title in (("roc_auc", "ROC-AUC x100"), ("pr_auc", "PR-AUC x100")):
            table: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
            for r in rows:
                if r["protocol"] == protocol:
                    table[r["dataset"]][r["detector"]].append(r[metric])
            header = ["dataset", *detectors]
            if protocol == "contaminated":
                header += [f"paper {p}" for p in PEERS if p != "AutoEncoder"]
            lines += [
                f"## {protocol} protocol, {title} (mean of seeds)",
                "",
                "| " + " | ".join(header) + " |",
                "|" + "---|" * len(header),
            ]
            means = defaultdict(list)
            for dataset in datasets:
                cells = [dataset]
                for d in detectors:
                    value = float(np.mean(table[dataset][d])) if table[dataset][d] else float("nan")
                    means[d].append(value)
                    cells.append(f"{value:.1f}")
                if protocol == "contaminated":
                    published = paper[metric].get(dataset, {})
                    cells += [
                        f"{published[p]:.1f}" if p in published else ""
                        for p in PEERS
                        if p != "AutoEncoder"
                    ]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append(
                "| **mean** | "
                + " | ".join(f"**{np.nanmean(means[d]):.1f}**" for d in detectors)
                + (" |" * (len(header) - len(detectors) - 1))
                + " |"
            )
            lines.append("")
    fit: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        fit[r["detector"]].append(r["fit_seconds"])
    lines += [
        "## Fit + score time (seconds, mean per run)",
        "",
        "| detector | seconds |",
        "|---|---|",
    ]
    lines += [f"| {d} | {np.mean(v):.2f} |" for d, v in fit.items()]
    alarms = [r for r in rows if r["detector"] == OURS and r["protocol"] == "normal"]
    if alarms:
        lines += [
            "",
            "## Realised false-alarm rate on held-out normal rows "
            f"(target {config.target_alert_rate})",
            "",
            "| dataset | rate (mean of seeds) | within +-50% |",
            "|---|---|---|",
        ]
        for dataset in datasets:
            values = [r["false_alarm_rate"] for r in alarms if r["dataset"] == dataset]
            rate = float(np.mean(values))
            ok = abs(rate - config.target_alert_rate) <= 0.5 * config.target_alert_rate
            lines.append(f"| {dataset} | {rate:.4f} | {'yes' if ok else 'no'} |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
