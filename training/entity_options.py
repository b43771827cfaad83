"""``anomaly-train``'s per-entity baseline options (``fit``, ``retrain``, ``schedule``)."""

from __future__ import annotations

import argparse
from typing import Any

from training.config import FitConfig

__all__ = ["add_entity_options", "entity_settings"]

FIT = FitConfig()


def add_entity_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("per-entity baselines")
    g.add_argument(
        "--per-entity",
        action="store_true",
        help="each entity with enough rows gets its own baseline in the bundle (autoencoder, "
        "neighbour memory, tails); other and unseen entities are scored by the generic one "
        "every row trains (needs an 'entity' column, or keyed records from Kafka)",
    )
    g.add_argument(
        "--min-entity-rows",
        type=int,
        default=FIT.min_entity_rows,
        help="normal rows an entity needs for its own baseline (%(default)s)",
    )
    g.add_argument(
        "--max-baselines",
        type=int,
        default=FIT.max_baselines,
        help="at most this many entity baselines, the entities with most rows (%(default)s)",
    )
    g.add_argument(
        "--entity-memory-rows",
        type=int,
        default=FIT.entity_memory_rows,
        help="rows each entity baseline remembers for its neighbour distance (%(default)s)",
    )
    g.add_argument(
        "--entity-tail-cells",
        type=int,
        default=FIT.entity_tail_cells,
        help="cells of each entity baseline's tail table per feature (%(default)s)",
    )


def entity_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The FitConfig fields these options set."""
    return {
        "per_entity": args.per_entity,
        "min_entity_rows": args.min_entity_rows,
        "max_baselines": args.max_baselines,
        "entity_memory_rows": args.entity_memory_rows,
        "entity_tail_cells": args.entity_tail_cells,
    }
