"""Seeded, stratified train/val splitting."""

from __future__ import annotations

import numpy as np

from cifarflow.data.splits import Split


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
    rng = np.random.default_rng(seed)
    held = []
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        count = int(round(fraction * members.size))
        held.append(rng.choice(members, size=count, replace=False))
    held_mask = np.zeros(len(data), dtype=bool)
    held_mask[np.concatenate(held)] = True
    return _take(data, ~held_mask), _take(data, held_mask)


def _take(data: Split, mask: np.ndarray) -> Split:
    return Split(data.images[mask], data.coarse_labels[mask], data.fine_labels[mask])
