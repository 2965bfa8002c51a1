"""lora_edu.stats: Welch's comparison of two sets of runs, checked by hand."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lora_edu.stats import LARGER, WITHIN, compare_runs


def test_a_clear_difference_is_larger_than_the_noise():
    comparison = compare_runs([1.00, 1.01, 0.99], [2.00, 2.02, 1.98], ("low", "high"))
    assert comparison.significant and comparison.verdict == LARGER
    assert comparison.difference == pytest.approx(-1.0)
    assert comparison.p_value < 1e-4


def test_overlapping_runs_are_within_the_noise():
    comparison = compare_runs([2.31, 2.33, 2.29], [2.32, 2.28, 2.34])
    assert not comparison.significant and comparison.verdict == WITHIN


def test_welch_statistic_by_hand():
    # t = (m_a - m_b) / sqrt(s_a²/n_a + s_b²/n_b), with Welch–Satterthwaite's degrees
    # of freedom; for these runs s_a² = 1, s_b² = 4, n = 3, so t = -3 / sqrt(5/3) and
    # df = (5/3)² / ((1/3)²/2 + (4/3)²/2) = 50 / 17.
    comparison = compare_runs([1.0, 2.0, 3.0], [3.0, 5.0, 7.0])
    t, df = -3 / math.sqrt(5 / 3), 50 / 17
    # The two-sided p-value of Student's t with df degrees of freedom, as an integral
    # of its density, evaluated with the trapezoid rule far enough into the tail.
    density = lambda x: (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    steps = 200_000
    upper = 2000.0
    grid = [abs(t) + (upper - abs(t)) * i / steps for i in range(steps + 1)]
    tail = sum(density(x) for x in grid) - (density(grid[0]) + density(grid[-1])) / 2
    tail *= (upper - abs(t)) / steps
    norm = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    assert comparison.p_value == pytest.approx(2 * norm * tail, rel=1e-3)


def test_report_prints_means_spreads_difference_and_verdict():
    text = compare_runs([1.0, 2.0, 3.0], [3.0, 5.0, 7.0], ("Wq", "Wk")).report(2)
    assert text.splitlines() == [
        "Wq  2.00 ± 1.00  (3 runs)",
        "Wk  5.00 ± 2.00  (3 runs)",
        "difference Wq − Wk = -3.00; Welch's t-test p = 0.10: within the seed noise",
    ]


@pytest.mark.parametrize(
    "runs_a, runs_b, message",
    [
        ([1.0], [1.0, 2.0], "at least 2 runs"),
        ([1.0, float("nan")], [1.0, 2.0], "not finite"),
        ([1.0, 2.0], [1.0, float("inf")], "not finite"),
        ([1.0, 1.0], [2.0, 2.0], "no spread"),
    ],
)
def test_bad_runs_are_refused(runs_a, runs_b, message):
    with pytest.raises(ValueError, match=message):
        compare_runs(runs_a, runs_b)


def test_level_must_be_a_probability():
    with pytest.raises(ValueError, match="level"):
        compare_runs([1.0, 2.0], [1.0, 2.0], level=1.5)


# Losses to three decimals, as the chapters print them; at least two distinct values.
runs = st.lists(
    st.integers(min_value=-(10**6), max_value=10**6).map(lambda i: i / 1000),
    min_size=2,
    max_size=6,
).filter(lambda values: len(set(values)) > 1)


@given(runs, runs)
def test_swapping_the_sets_flips_the_difference_not_the_verdict(runs_a, runs_b):
    forward, backward = compare_runs(runs_a, runs_b), compare_runs(runs_b, runs_a)
    assert forward.difference == pytest.approx(-backward.difference, abs=1e-9)
    assert forward.p_value == pytest.approx(backward.p_value)
    assert forward.verdict == backward.verdict


@given(runs, st.floats(min_value=-1e3, max_value=1e3))
def test_a_shift_of_both_sets_changes_nothing(runs_a, shift):
    base = compare_runs(runs_a, [value * 0.5 for value in runs_a])
    shifted = compare_runs(
        [value + shift for value in runs_a], [value * 0.5 + shift for value in runs_a]
    )
    assert shifted.p_value == pytest.approx(base.p_value, abs=1e-6)
