"""McNemar's test on two classifiers' paired predictions, and the publish gate.

Only the images the two models disagree on carry information: `b` counts
those the challenger gets right and the champion wrong, `c` the reverse.
Under "equally good", each discordant image is a fair coin, so `b ~
Binomial(b + c, 1/2)`. For few discordant images the exact binomial tail is
used; for many, the chi-square approximation with continuity correction.

Effective level: the gate publishes only when the challenger is ahead
(`b > c`) *and* the two-sided p-value is below `alpha`. Half of the
two-sided rejection region is on the champion's side, so this is a
one-sided test at `alpha / 2` (0.025 for the default 0.05).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from cifarflow.errors import BadInputError

EXACT_BELOW = 25  # discordant pairs under which the exact binomial test is used


@dataclasses.dataclass(frozen=True)
class McNemarResult:
    """Counts and the two-sided p-value of one McNemar test.

    Attributes:
        challenger_only: `b`, images only the challenger classifies correctly.
        champion_only: `c`, images only the champion classifies correctly.
        both_correct: images both get right.
        both_wrong: images both get wrong.
        statistic: the chi-square statistic, or `b` for the exact test.
        p_value: two-sided p-value of "the two models are equally accurate".
        method: "exact-binomial" or "chi-square-corrected".
    """

    challenger_only: int
    champion_only: int
    both_correct: int
    both_wrong: int
    statistic: float
    p_value: float
    method: str

    @property
    def discordant(self) -> int:
        return self.challenger_only + self.champion_only


def exact_binomial_p(b: int, c: int) -> float:
    """Two-sided exact p-value of b successes in b + c fair coin flips, for any b + c.

    The tail is summed in exact integers and divided once, so nothing
    overflows (`2.0**n` does from n = 1,024) and the only rounding is the
    final division, which Python rounds correctly for integers of any size.
    A p-value under about 1e-308 comes out as 0.0.
    """
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    term, tail = 1, 0  # term = comb(n, i), updated exactly
    for i in range(k + 1):
        tail += term
        term = term * (n - i) // (i + 1)
    return min(1.0, 2 * tail / (1 << n))


def chi_square_p(b: int, c: int) -> tuple[float, float]:
    """(statistic, p-value) of McNemar's chi-square test with Edwards' continuity correction."""
    n = b + c
    if n == 0:
        return 0.0, 1.0
    statistic = max(abs(b - c) - 1, 0) ** 2 / n
    # Survival function of chi-square with one degree of freedom.
    return float(statistic), float(math.erfc(math.sqrt(statistic / 2.0)))


def mcnemar_test(
    labels: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    exact_below: int = EXACT_BELOW,
) -> McNemarResult:
    """Compares two models' predicted class ids on the same images.

    Args:
        labels: [N] true class ids.
        challenger: [N] the new model's predicted class ids.
        champion: [N] the deployed model's predicted class ids.
        exact_below: use the exact binomial test when b + c is below this.
    """
    labels, challenger, champion = (
        np.asarray(a).reshape(-1) for a in (labels, challenger, champion)
    )
    if not (len(labels) == len(challenger) == len(champion)):
        raise BadInputError(
            f"paired predictions differ in length: {len(labels)} labels, {len(challenger)} challenger, {len(champion)} champion"
        )
    right_new = challenger == labels
    right_old = champion == labels
    b = int((right_new & ~right_old).sum())
    c = int((~right_new & right_old).sum())
    if b + c < exact_below:
        statistic, p_value, method = float(b), exact_binomial_p(b, c), "exact-binomial"
    else:
        statistic, p_value = chi_square_p(b, c)
        method = "chi-square-corrected"
    return McNemarResult(
        challenger_only=b,
        champion_only=c,
        both_correct=int((right_new & right_old).sum()),
        both_wrong=int((~right_new & ~right_old).sum()),
        statistic=statistic,
        p_value=p_value,
        method=method,
    )


def challenger_wins(result: McNemarResult, alpha: float) -> bool:
    """True when the challenger is right more often and the two-sided p-value is under `alpha`.

    Being ahead is required too, so the false-publish rate of an equally good
    challenger is `alpha / 2`: a one-sided test at half the level.
    """
    return result.challenger_only > result.champion_only and result.p_value < alpha
