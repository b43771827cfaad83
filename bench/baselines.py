"""What per-entity baselines cost at 10 / 1,000 / 10,000 entities: training time, bundle size,
model memory and scoring cost, beside the generic baseline alone.

    .venv/bin/python bench/baselines.py [--entities 10 1000 10000] [--features 8]
        [--rows-per-entity 600] [--epochs 3]

Each entity's rows are Gaussian around a level of its own. ``anomaly-train fit --per-entity``'s
training (``training.fit.train``) runs for ``--epochs`` (the cost of a fit is about epochs run x
seconds per epoch; the default fit stops early, at most 200). Scoring: batches of 5,000 rows of
entities drawn at random, one CPU thread, median of ``--repeats`` timed calls: the module's
``routed`` (each row by its entity's baseline) against ``forward`` (the generic baseline alone,
as a bundle without entity baselines scores) on the same rows.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import FitConfig
from training.fit import train

BATCH = 5000


def timed(call, repeats: int) -> float:
    """Median microseconds per record of ``call()`` on a batch of BATCH rows."""
    with torch.no_grad():
        call()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            times.append(time.perf_counter() - started)
    return statistics.median(times) / BATCH * 1e6


def measure(entities: int, args: argparse.Namespace) -> dict[str, float]:
    rng = np.random.default_rng(0)
    levels = rng.normal(scale=3.0, size=(entities, args.features))
    owner = np.repeat(np.arange(entities), args.rows_per_entity)
    X = (levels[owner] + rng.normal(size=(len(owner), args.features))).astype(np.float32)
    names = [f"host-{i:05d}" for i in range(entities)]
    config = FitConfig(
        per_entity=True,
        epochs=args.epochs,
        min_entity_rows=min(500, args.rows_per_entity),
        seed=0,
    )
    started = time.perf_counter()
    result = train(X, config, [names[i] for i in owner])
    seconds = time.perf_counter() - started
    entity_seconds = result.report["score"]["baselines"]["seconds"]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(result.module, buffer)
    module = result.module
    state = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    generic = sum(t.numel() * t.element_size() for t in module.generic.state_dict().values())
    pick = rng.integers(0, entities, BATCH)
    batch = torch.as_tensor(
        levels[pick] + rng.normal(size=(BATCH, args.features)), dtype=torch.float32
    )
    index = torch.as_tensor(pick, dtype=torch.long)
    return {
        "entities": entities,
        "baselines": len(result.baselines),
        "rows": len(X),
        "fit_s": seconds,
        "entity_fit_s": entity_seconds,
        "bundle_mb": len(buffer.getvalue()) / 1e6,
        "model_mb": state / 1e6,
        "generic_mb": generic / 1e6,
        "routed_us": timed(lambda: module.routed(batch, index), args.repeats),
        "generic_us": timed(lambda: module(batch), args.repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, nargs="+", default=[10, 1000, 10000])
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--rows-per-entity", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"{args.features} features, {args.rows_per_entity} rows per entity, {args.epochs} epochs")
    print(
        "| entities | rows | fit s (entity part) | bundle MB | model MB (generic) "
        "| us/record routed | us/record generic |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for entities in args.entities:
        r = measure(entities, args)
        print(
            f"| {r['entities']:,} | {r['rows']:,} | {r['fit_s']:.1f} ({r['entity_fit_s']:.1f}) "
            f"| {r['bundle_mb']:.1f} | {r['model_mb']:.1f} ({r['generic_mb']:.2f}) "
            f"| {r['routed_us']:.2f} | {r['generic_us']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
