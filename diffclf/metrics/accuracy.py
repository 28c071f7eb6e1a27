"""Exact binomial intervals for accuracies.

A test accuracy is ``k`` successes in ``n`` independent trials; the Clopper-Pearson interval is
exact (never below its nominal coverage), which matters at the extremes the paper reports
(ResNet-50 at 0.0% on ImageNet-A) where normal approximations collapse to a point.
"""

from __future__ import annotations

from scipy.stats import binomtest


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Two-sided exact Clopper-Pearson interval for ``k`` correct out of ``n`` at ``level``.

    ``k = 0`` gives a lower bound of exactly 0 and ``k = n`` an upper bound of exactly 1.
    """
    k, n = int(k), int(n)
    if n <= 0:
        raise ValueError(f"Clopper-Pearson interval needs n >= 1 images, got n={n} (was the test set empty?)")
    if not 0 <= k <= n:
        raise ValueError(f"Clopper-Pearson interval needs 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    low = 0.0 if k == 0 else float(ci.low)
    high = 1.0 if k == n else float(ci.high)
    return low, high
