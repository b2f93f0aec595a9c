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
