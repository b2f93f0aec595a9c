"""Seeded, stratified hold-out splits (val and gate from the official train set)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cifarflow.data.splits import Split


def stratum_counts(strata: np.ndarray, fraction: float) -> dict[int, int]:
    """`round(fraction * size)` of every stratum: how many of each to hold out."""
    values, sizes = np.unique(strata, return_counts=True)
    return {int(v): int(round(fraction * s)) for v, s in zip(values, sizes, strict=True)}


def stratified_split(
    data: Split, fraction: float, seed: int, strata: np.ndarray
) -> tuple[Split, Split]:
    """Moves `round(fraction * n)` items of every stratum from `data` into a held-out split.

    Args:
        data: the split to divide.
        fraction: share of each stratum to hold out, in (0, 1).
        seed: makes the choice repeatable.
        strata: one integer per item; each value is split separately, so the
            held-out split keeps the class balance exactly (up to rounding).

    Returns:
        (kept, held_out), both in the original order of `data`.
    """
    return hold_out(data, strata, stratum_counts(strata, fraction), seed)


def hold_out(
    data: Split, strata: np.ndarray, counts: Mapping[int, int], seed: int
) -> tuple[Split, Split]:
    """Moves `counts[v]` randomly chosen items of each stratum `v` into a held-out split.

    A stratum with fewer members than asked gives all it has.

    Returns:
        (kept, held_out), both in the original order of `data`.
    """
    rng = np.random.default_rng(seed)
    held_mask = np.zeros(len(data), dtype=bool)
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        count = min(counts.get(int(value), 0), members.size)
        held_mask[rng.choice(members, size=count, replace=False)] = True
    return _take(data, ~held_mask), _take(data, held_mask)


def _take(data: Split, mask: np.ndarray) -> Split:
    return Split(data.images[mask], data.coarse_labels[mask], data.fine_labels[mask])
