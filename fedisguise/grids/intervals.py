"""95 % confidence intervals over a few seeds (Student's t), for the tables' figures and for
the gap between a defence and its reference."""

from __future__ import annotations

import math

# Student's t, two-sided 95 % (the 0.975 quantile), for 1..30 degrees of freedom.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z975 = 1.960


def t975(df: float) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (rounded down: the
    wider interval), the normal's beyond 30."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return T975[int(df) - 1] if df < 31 else Z975


def mean_halfwidth(std: float | None, n: int) -> float | None:
    """Half-width of the 95 % interval of a mean of `n` values with sample std `std`; None
    for fewer than two values."""
    if std is None or n < 2:
        return None
    return t975(n - 1) * std / math.sqrt(n)


def difference_halfwidth(std_a: float | None, n_a: int, std_b: float | None, n_b: int
                         ) -> float | None:
    """Half-width of the 95 % interval of a difference of two means (Welch), or None where
    either has fewer than two values."""
    if std_a is None or std_b is None or n_a < 2 or n_b < 2:
        return None
    va, vb = std_a ** 2 / n_a, std_b ** 2 / n_b
    if va + vb == 0:
        return 0.0
    df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))
    return t975(df) * math.sqrt(va + vb)
