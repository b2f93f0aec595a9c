"""Out-of-distribution scores from a model's served logits, and their pass thresholds.

Pure NumPy, no project imports: evaluate records each score's distribution on
val and the gateway scores every answer with the same functions. The logits
are the served ones, already divided by the model's temperature T, so
`energy = -T * logsumexp(raw / T)` with T = 1 on them.

- energy: `-logsumexp(logits)`; LOWER means more in-distribution; an image
  passes when `energy <= threshold`.
- max-softmax: `max(softmax(logits))`, in 1/C..1; HIGHER means more
  in-distribution; an image passes when `max_softmax >= threshold`.

Which one the gateway uses is decided later, by measurement on a trained
model; the reference holds both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ENERGY = "energy"
MAX_SOFTMAX = "max_softmax"
SCORES = (ENERGY, MAX_SOFTMAX)
# True where a higher score means "more like the training data".
HIGHER_PASSES = {ENERGY: False, MAX_SOFTMAX: True}
# Where a row's plain sum of exponentials keeps full precision (row_score).
_SAFE_SUM = (1e-200, 1e200)

# Fixed histogram edges (values outside fall into the end bins, see image_statistics).
# Energy: 100 bins of 0.5 over -40..10, wide enough for 20 temperature-scaled logits.
ENERGY_EDGES = np.linspace(-40.0, 10.0, 101)
# Max-softmax: 50 bins of 0.02 over 0..1.
MAX_SOFTMAX_EDGES = np.linspace(0.0, 1.0, 51)
SCORE_EDGES = {ENERGY: ENERGY_EDGES, MAX_SOFTMAX: MAX_SOFTMAX_EDGES}


def energy(logits: np.ndarray) -> np.ndarray:
    """`-logsumexp(logits)` per row, float64 `[N]` (computed stably)."""
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(axis=1)
    return -(top + np.log(np.exp(z - top[:, None]).sum(axis=1)))


def max_softmax(logits: np.ndarray) -> np.ndarray:
    """`max(softmax(logits))` per row, float64 `[N]`: `1 / sum(exp(z - max z))`."""
    z = np.asarray(logits, dtype=np.float64)
    return 1.0 / np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)


def score(name: str, logits: np.ndarray) -> np.ndarray:
    """The score `name` (`energy` or `max_softmax`) of each row of logits."""
    if name == ENERGY:
        return energy(logits)
    if name == MAX_SOFTMAX:
        return max_softmax(logits)
    raise ValueError(f"unknown OOD score {name!r}; known: {', '.join(SCORES)}")


def row_score(name: str, row: Sequence[float]) -> float:
    """The score `name` of ONE row of logits, in plain Python.

    What the gateway computes per answer: for 20 numbers, NumPy's cost per
    call is most of the work, so this is several times cheaper than
    `score(name, [row])`, and equal to it to float rounding.

    >>> rows = [[2.0, -1.0, 0.5, 3.0], [800.0, 799.0, -5.0], [-900.0, -901.0, -950.0]]
    >>> all(
    ...     math.isclose(row_score(n, row), score(n, np.array([row]))[0])
    ...     for n in SCORES
    ...     for row in rows
    ... )
    True
    """
    if name not in HIGHER_PASSES:
        raise ValueError(f"unknown OOD score {name!r}; known: {', '.join(SCORES)}")
    try:  # served logits are small numbers: the sum needs no shift, at half the cost
        top, total = 0.0, sum(map(math.exp, row))
    except OverflowError:
        total = math.inf
    if not _SAFE_SUM[0] < total < _SAFE_SUM[1]:  # overflow or precision lost: shift by the top
        top = max(row)
        total = sum([math.exp(value - top) for value in row])
    if name == ENERGY:
        return -(top + math.log(total))
    return math.exp(max(row) - top) / total


def row_passes(name: str, value: float, threshold: float) -> bool:
    """Whether one score passes the threshold, in the score's own direction (see `passes`)."""
    return value >= threshold if HIGHER_PASSES[name] else value <= threshold


def pass_threshold(scores: np.ndarray, pass_rate: float, higher_passes: bool) -> float:
    """The threshold that lets `ceil(pass_rate * N)` of `scores` pass (more only on ties).

    Args:
        scores: the in-distribution scores (val), `[N]`, N > 0.
        pass_rate: the share that must pass, in (0, 1].
        higher_passes: True: pass means `score >= threshold`; False: `score <= threshold`.

    Returns:
        One of the scores: the most extreme that still passes.
    """
    values = np.sort(np.asarray(scores, dtype=np.float64))
    if values.size == 0:
        raise ValueError("a pass threshold needs at least one score")
    if not 0.0 < pass_rate <= 1.0:
        raise ValueError(f"pass_rate must be in (0, 1], got {pass_rate}")
    passing = math.ceil(pass_rate * values.size - 1e-9)  # 1e-9: 0.95 * 200 is 190, not 190.00000001
    if higher_passes:
        return float(values[values.size - passing])
    return float(values[passing - 1])


def passes(name: str, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean `[N]`: which scores pass the threshold, in the score's own direction."""
    values = np.asarray(scores, dtype=np.float64)
    return values >= threshold if HIGHER_PASSES[name] else values <= threshold
