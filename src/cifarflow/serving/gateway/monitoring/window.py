"""Sliding windows of histogram counts, updated in O(1) per observation.

`SlidingCounts`: each observation is a vector of counts over fixed bins (one
image's features, features.py); the window keeps the last `size` of them in
a ring and their running sum, so adding one and forgetting the oldest costs
one vector add and one subtract, whatever the window's size. `SlidingBins`:
each observation falls in one bin (an answer's class or OOD verdict); the
ring keeps bin numbers.
"""

from __future__ import annotations

import numpy as np


class SlidingCounts:
    """The summed counts of the last `size` observations, each a `[bins]` count vector.

    >>> window = SlidingCounts(size=2, bins=3)
    >>> for counts in ([1, 0, 0], [0, 2, 0], [0, 0, 3]):
    ...     window.add(np.array(counts))
    >>> window.counts.tolist(), window.filled
    ([0, 2, 3], 2)
    """

    def __init__(self, size: int, bins: int) -> None:
        if size < 1 or bins < 1:
            raise ValueError(f"a window needs size >= 1 and bins >= 1, got {size}, {bins}")
        self.size = size
        self._ring = np.zeros((size, bins), dtype=np.int64)
        self.counts = np.zeros(bins, dtype=np.int64)
        self._next = 0
        self.filled = 0

    def add(self, counts: np.ndarray) -> None:
        """Adds one observation's counts `[bins]`, forgetting the oldest when full."""
        slot = self._ring[self._next]
        self.counts -= slot  # zeros while the window is still filling
        slot[:] = counts
        self.counts += slot
        self._next = (self._next + 1) % self.size
        self.filled = min(self.filled + 1, self.size)


class SlidingBins:
    """The counts per bin of the last `size` observations, each falling in ONE bin.

    What a per-answer statistic needs (the predicted class, the OOD verdict):
    the ring keeps bin numbers, so an observation costs two scalar updates.

    >>> window = SlidingBins(size=2, bins=3)
    >>> for bin_ in (0, 1, 2):
    ...     window.add(bin_)
    >>> window.counts.tolist(), window.filled
    ([0, 1, 1], 2)
    """

    def __init__(self, size: int, bins: int) -> None:
        if size < 1 or bins < 1:
            raise ValueError(f"a window needs size >= 1 and bins >= 1, got {size}, {bins}")
        self.size = size
        self._ring = [-1] * size  # -1: the slot is still empty
        self._counts = [0] * bins  # a list: NumPy's per-item cost would dominate here
        self._next = 0
        self.filled = 0

    @property
    def counts(self) -> np.ndarray:
        """int64 `[bins]`: the window's count per bin."""
        return np.array(self._counts, dtype=np.int64)

    @property
    def bins(self) -> int:
        return len(self._counts)

    def add(self, bin_: int) -> None:
        """Adds one observation in bin `bin_`, forgetting the oldest when full."""
        oldest = self._ring[self._next]
        if oldest >= 0:
            self._counts[oldest] -= 1
        self._ring[self._next] = bin_
        self._counts[bin_] += 1
        self._next = (self._next + 1) % self.size
        self.filled = min(self.filled + 1, self.size)
