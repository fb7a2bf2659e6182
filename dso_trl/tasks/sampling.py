"""Deterministic splitting and occupation-balanced sampling.

DSO's per-sample reward equals the aggregate per-occupation bias objective only when every occupation has the same
number of samples (the paper's Theorem 1), so training rows are drawn in equal counts per occupation.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Callable, Hashable, Sequence, TypeVar

T = TypeVar("T")


def rng(seed: int, purpose: str) -> random.Random:
    """An independent, reproducible stream per (seed, purpose): changing one use never shifts another."""
    return random.Random(f"{seed}:{purpose}")


def split_groups(keys: Sequence[Hashable], test_fraction: float, seed: int) -> set[Hashable]:
    """The keys (e.g. sentence groups) assigned to the test split: round(fraction x count) of them, by seed."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    unique = sorted(set(keys), key=str)
    rng(seed, "split").shuffle(unique)
    return set(unique[: round(test_fraction * len(unique))])


def balanced_sample(items: Sequence[T], n: int | None, seed: int, key: Callable[[T], str], what: str) -> list[T]:
    """`n` items with equal counts per key (counts differ by one when the number of keys does not divide `n`).

    `n=None` keeps every item. The result is shuffled so that consecutive rows (a training batch) mix occupations.
    """
    generator = rng(seed, f"sample:{what}")
    if n is None:
        chosen = list(items)
    else:
        if n < 0:
            raise ValueError(f"{what}: sample size must be >= 0, got {n}")
        groups: dict[str, list[T]] = defaultdict(list)
        for item in items:
            groups[key(item)].append(item)
        if n and not groups:
            raise ValueError(f"{what}: asked for {n} rows but there are none")
        names = sorted(groups)
        base, extra = divmod(n, len(names)) if names else (0, 0)
        plus_one = set(generator.sample(names, extra))
        chosen = []
        for name in names:
            want = base + (name in plus_one)
            if want > len(groups[name]):
                raise ValueError(f"{what}: occupation {name!r} has {len(groups[name])} rows, {want} needed for "
                                 f"{n} balanced over {len(names)} occupations; ask for fewer")
            chosen += generator.sample(groups[name], want)
    generator.shuffle(chosen)
    return chosen
