"""The population stability index (PSI): how far a live histogram has moved from a reference.

`PSI = sum_i (q_i - p_i) * ln(q_i / p_i)` over the bins, with `p` the
reference's share of each bin and `q` the live window's. It is the symmetric
Kullback-Leibler divergence of the two binned distributions: 0 when they
agree, growing without bound as mass moves to bins the other one rarely
fills. Both sides get half a count per bin first (additive smoothing), so an
empty bin gives a large but finite term instead of infinity.

Why PSI and not a two-sample test: the training reference stores histograms
over fixed edges, not the training images, so a test that needs both samples
(Kolmogorov-Smirnov, MMD) cannot run in the gateway; PSI needs exactly the
counts both sides have, costs O(bins), and its value does not grow with the
window the way a test's p-value shrinks (docs/monitoring.md, "Drift").
"""

from __future__ import annotations

import numpy as np

SMOOTHING = 0.5


def population_stability_index(reference: np.ndarray, live: np.ndarray) -> float:
    """PSI between two count vectors over the same bins.

    Args:
        reference: counts `[B]` (any scale: shares are taken).
        live: counts `[B]` of the live window.

    Returns:
        The index, >= 0; 0.0 when `live` is empty.

    >>> round(population_stability_index(np.array([50, 50]), np.array([50, 50])), 6)
    0.0
    >>> round(population_stability_index(np.array([50, 50]), np.array([90, 10])), 3)
    0.853
    """
    live = np.asarray(live, dtype=np.float64)
    if live.sum() <= 0:
        return 0.0
    p = np.asarray(reference, dtype=np.float64) + SMOOTHING
    q = live + SMOOTHING
    p /= p.sum()
    q /= q.sum()
    return float(np.sum((q - p) * np.log(q / p)))


class SegmentedPsi:
    """The PSI of several features at once, their bins laid end to end in one count vector.

    The reference side (smoothed shares) is computed once; each call then
    costs a handful of NumPy operations for all the features together,
    where `population_stability_index` per feature would cost a handful each.

    Args:
        references: each feature's reference counts, in the order of the live vector's segments.

    >>> psi = SegmentedPsi([np.array([50, 50]), np.array([1, 2, 3])])
    >>> live = np.array([90, 10, 3, 2, 1])
    >>> [round(v, 6) for v in psi(live)] == [
    ...     round(population_stability_index(np.array([50, 50]), live[:2]), 6),
    ...     round(population_stability_index(np.array([1, 2, 3]), live[2:]), 6),
    ... ]
    True
    """

    def __init__(self, references: list[np.ndarray]) -> None:
        sizes = [len(counts) for counts in references]
        if not sizes or min(sizes) < 1:
            raise ValueError("every feature needs at least one bin")
        self._starts = np.cumsum([0, *sizes[:-1]])
        self._sizes = np.array(sizes)
        shares = [np.asarray(c, dtype=np.float64) + SMOOTHING for c in references]
        self._reference = np.concatenate([s / s.sum() for s in shares])

    @property
    def bins(self) -> int:
        return len(self._reference)

    def __call__(self, live: np.ndarray) -> np.ndarray:
        """float64 `[features]`: each feature's PSI; a feature with no live counts gets 0.0."""
        counts = np.asarray(live, dtype=np.float64)
        if len(counts) != self.bins:
            raise ValueError(f"expected {self.bins} live counts, got {len(counts)}")
        empty = np.add.reduceat(counts, self._starts) <= 0
        q = counts + SMOOTHING
        q /= np.repeat(np.add.reduceat(q, self._starts), self._sizes)
        p = self._reference
        values = np.add.reduceat((q - p) * np.log(q / p), self._starts)
        values[empty] = 0.0
        return values
