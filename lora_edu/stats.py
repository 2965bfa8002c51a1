"""Reading results with their spread: two sets of runs compared by Welch's t-test.

A training run is one sample: another seed gives another loss. Chapters 4 to 12 rank
one setting above another only where `compare_runs` says that the difference is larger
than the seed noise, and print its comparison right above the sentence that ranks.

Why Welch's t-test: with 3 to 5 seeds per setting there are too few runs for a bootstrap
(three runs have only ten distinct resamples, so its interval is coarse and too narrow),
while the t distribution widens its tails for small samples exactly as much as the
spread of a few runs is uncertain. Welch's form does not assume that both settings
spread equally, which two different methods or learning rates need not do.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats

# The words a comparison ends with; the chapters' prose repeats them, and
# tests/test_prose_verdicts.py checks that a ranking sentence sits below "LARGER".
LARGER = "larger than the seed noise"
WITHIN = "within the seed noise"


@dataclass(frozen=True)
class Comparison:
    """Two sets of runs: means, sample standard deviations, Welch's p-value."""

    name_a: str
    name_b: str
    runs_a: tuple[float, ...]
    runs_b: tuple[float, ...]
    p_value: float
    level: float

    @property
    def mean_a(self) -> float:
        return _mean(self.runs_a)

    @property
    def mean_b(self) -> float:
        return _mean(self.runs_b)

    @property
    def difference(self) -> float:
        """mean_a - mean_b."""
        return self.mean_a - self.mean_b

    @property
    def significant(self) -> bool:
        """True when the difference is larger than the seed noise at `level`."""
        return self.p_value < self.level

    @property
    def verdict(self) -> str:
        return LARGER if self.significant else WITHIN

    def report(self, digits: int = 3) -> str:
        """Both means ± their sample standard deviation, the difference, the verdict."""
        width = max(len(self.name_a), len(self.name_b))
        lines = [
            f"{name:<{width}}  {_mean(runs):.{digits}f} ± {_spread(runs):.{digits}f}"
            f"  ({len(runs)} runs)"
            for name, runs in ((self.name_a, self.runs_a), (self.name_b, self.runs_b))
        ]
        lines.append(
            f"difference {self.name_a} − {self.name_b} = {self.difference:+.{digits}f};"
            f" Welch's t-test p = {self.p_value:.2f}: {self.verdict}"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.report()


def compare_runs(
    runs_a: Sequence[float],
    runs_b: Sequence[float],
    names: tuple[str, str] = ("A", "B"),
    level: float = 0.05,
) -> Comparison:
    """Welch's two-sided t-test that mean(runs_a) = mean(runs_b); (n_a,), (n_b,)."""
    runs_a, runs_b = _checked(runs_a, names[0]), _checked(runs_b, names[1])
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    if _spread(runs_a) == 0 and _spread(runs_b) == 0:
        raise ValueError(
            f"{names[0]} and {names[1]} have no spread at all: runs that differ only "
            "in their seed are needed to measure the seed noise"
        )
    p_value = float(stats.ttest_ind(runs_a, runs_b, equal_var=False).pvalue)
    return Comparison(names[0], names[1], runs_a, runs_b, p_value, level)


def _checked(runs: Sequence[float], name: str) -> tuple[float, ...]:
    values = tuple(float(value) for value in runs)
    if len(values) < 2:
        raise ValueError(f"{name} needs at least 2 runs to show a spread, got {values}")
    if not all(math.isfinite(value) for value in values):
        raise ValueError(f"{name} has a run that is not finite: {values}")
    return values


def _mean(runs: tuple[float, ...]) -> float:
    return sum(runs) / len(runs)


def _spread(runs: tuple[float, ...]) -> float:
    """The sample standard deviation (n - 1 in the denominator)."""
    mean = _mean(runs)
    return math.sqrt(sum((value - mean) ** 2 for value in runs) / (len(runs) - 1))
