"""Scoring cost of the default bundle against its memory size: us per record, CPU, one thread.

    .venv/bin/python bench/scoring_cost.py [--features 8 36] [--memory-rows 256 512 1024 2048 4096]

Fits the default combined score (few epochs: the cost does not depend on the weights) on
Gaussian rows for each feature count and memory size and times the TorchScript module on
batches of 5,000 rows: the median of ``--repeats`` timed calls after a warm-up. The same
module with ``score=reconstruction`` (the autoencoder alone) is the floor.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import FitConfig
from training.fit import train

BATCH = 5000


def cost(module: torch.nn.Module, batch: torch.Tensor, repeats: int) -> float:
    """Median microseconds per record of ``module(batch)``."""
    with torch.no_grad():
        module(batch)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            module(batch)
            times.append(time.perf_counter() - started)
    return statistics.median(times) / len(batch) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--features", type=int, nargs="+", default=[8, 36])
    parser.add_argument("--memory-rows", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print("| features | memory rows | us per record (batch 5,000) |")
    print("| ---: | ---: | ---: |")
    for d in args.features:
        X = rng.normal(size=(max(args.memory_rows) * 2, d)).astype(np.float32)
        batch = torch.as_tensor(rng.normal(size=(BATCH, d)).astype(np.float32))
        alone = train(X, FitConfig(epochs=2, score="reconstruction")).module
        print(f"| {d} | autoencoder alone | {cost(alone, batch, args.repeats):.2f} |", flush=True)
        for rows in args.memory_rows:
            config = FitConfig(epochs=2, memory_rows=rows, sample_rows=max(4096, rows * 2))
            module = train(X, config).module
            print(f"| {d} | {rows} | {cost(module, batch, args.repeats):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
