"""The statistics the gate and the deployment watch decide with.

Two adapters answering the same held-out prompts are a *paired* comparison: what
matters is the prompts on which they disagree. Whether the candidate fixed more loops
than it caused is an exact McNemar test (a one-sided binomial test on the discordant
prompts), which needs no large-sample approximation, so a small held-out set gets an
honest answer ("not significant") instead of a lucky promotion. Quality metrics get a
paired bootstrap interval (scipy), resampling prompts, not answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import binomtest, bootstrap, fisher_exact

Statistic = Callable[..., np.ndarray]  # (*samples, axis) -> one value per resample


def improvement_p_value(improved: int, worsened: int) -> float:
    """One-sided exact McNemar: how likely this many fixes (or more) are by chance alone.

    ``improved`` counts prompts only the live adapter loops on, ``worsened`` prompts only
    the candidate loops on; under "no difference" each discordant prompt is a fair coin.

    >>> round(improvement_p_value(5, 0), 5)
    0.03125
    >>> improvement_p_value(0, 0)
    1.0
    """
    discordant = improved + worsened
    if discordant == 0:
        return 1.0
    return float(binomtest(improved, discordant, 0.5, alternative="greater").pvalue)


def format_p(p_value: float) -> str:
    """``0.0312``, or ``6.0e-08`` for the small ones a fixed four decimals shows as 0.

    >>> format_p(0.03125), format_p(5.96e-08)
    ('0.0312', '6.0e-08')
    """
    return f"{p_value:.4f}" if p_value >= 1e-4 else f"{p_value:.1e}"


def discordant_needed(significance: float) -> int:
    """Fewest fixed prompts that can reach ``significance`` (all fixed, none broken).

    With ``n`` fixes and no breaks the exact p-value is 0.5**n, so a held-out set on which
    the live adapter loops fewer times than this can never show an improvement.

    >>> discordant_needed(0.05), discordant_needed(0.01)
    (5, 7)
    """
    needed = 1
    while 0.5**needed > significance:
        needed += 1
    return needed


def rate_rise_p_value(after: tuple[int, int], before: tuple[int, int]) -> float:
    """One-sided Fisher exact test that the loop rate *after* a deploy is higher.

    Each argument is ``(degenerate, samples)``. Samples before and after a deploy answer
    different prompts, so they are two independent groups, not pairs.
    """
    table = [[after[0], after[1] - after[0]], [before[0], before[1] - before[0]]]
    return float(fisher_exact(table, alternative="greater").pvalue)


def paired_interval(
    statistic: Statistic,
    samples: Sequence[Sequence[float]],
    *,
    confidence: float,
    resamples: int,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic`` over prompts (None below 2 prompts).

    ``samples`` are aligned per prompt (candidate's, live's, …) and resampled together.
    Seeded: the same two reports always get the same interval.
    """
    arrays = tuple(np.asarray(s, dtype=float) for s in samples)
    if len(arrays[0]) < 2:
        return None
    result = bootstrap(
        arrays,
        statistic,
        paired=True,
        vectorized=True,
        confidence_level=confidence,
        n_resamples=resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return float(low), float(high)


def ratio_of_sums(top: np.ndarray, bottom: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.sum(top, axis=axis) / np.maximum(np.sum(bottom, axis=axis), 1e-12)


def mean_difference(first: np.ndarray, second: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(first, axis=axis) - np.mean(second, axis=axis)
