"""Unit and property tests for lora_edu.linalg (Chapters 1-3)."""

from fractions import Fraction

import numpy as np
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lora_edu import linalg

MULTIPLES = [[1, 2, 3], [2, 4, 6], [3, 6, 9]]

small_matrices = st.tuples(st.integers(1, 7), st.integers(1, 7)).flatmap(
    lambda shape: arrays(
        np.float64, shape, elements=st.floats(-10, 10, allow_nan=False, width=32)
    )
)


# --- input validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        (
            np.ones(3),
            ValueError,
            r"A must be 2-D \(m×n\), got an array with shape \(3,\)",
        ),
        (np.ones((2, 2, 2)), ValueError, r"shape \(2, 2, 2\)"),
        ([[1.0, np.nan]], ValueError, r"finite numbers, got NaN or inf at \[0, 1\]"),
        ([[np.inf, 1.0]], ValueError, r"finite numbers, got NaN or inf at \[0, 0\]"),
        ([["a", "b"]], TypeError, r"A must be a 2-D array of numbers, got list"),
    ],
)
def test_as_matrix_rejects_bad_input_naming_the_argument(bad, error, message):
    with pytest.raises(error, match=message):
        linalg.as_matrix(bad)


@pytest.mark.parametrize(
    "function",
    [
        linalg.exact_rank,
        linalg.numerical_rank,
        linalg.worked_svd,
        lambda A: linalg.low_rank_approximation(A, 1),
    ],
)
def test_every_entry_point_validates_its_matrix(function):
    with pytest.raises(ValueError, match="must be 2-D"):
        function([1, 2, 3])
    with pytest.raises(ValueError, match="finite"):
        function([[1.0, float("nan")], [0.0, 1.0]])


@pytest.mark.parametrize(
    ("k", "error", "message"),
    [
        (-1, ValueError, "between 0 and min"),
        (4, ValueError, r"= 3, got 4"),
        (1.5, TypeError, "integer"),
        (True, TypeError, "integer"),
    ],
)
def test_k_outside_zero_to_min_m_n_is_rejected(k, error, message):
    with pytest.raises(error, match=message):
        linalg.low_rank_approximation(np.ones((3, 5)), k)
    with pytest.raises(error, match=message):
        linalg.eckart_young_errors([3.0, 2.0, 1.0], k)


@pytest.mark.parametrize("tol", [-1e-3, float("nan"), float("inf"), "0.1"])
def test_numerical_rank_rejects_a_bad_tolerance(tol):
    with pytest.raises(ValueError, match=r"tol must be a finite number ≥ 0, got"):
        linalg.numerical_rank(np.eye(2), tol=tol)


def test_worked_svd_needs_exact_entries():
    with pytest.raises(
        TypeError, match=r"integer or Fraction entries .* got 0\.5 \(float\)"
    ):
        linalg.worked_svd([[1, 0.5], [0, 1]])


def test_factored_size_rejects_bad_sizes():
    with pytest.raises(ValueError, match="m must be a non-negative integer, got -1"):
        linalg.factored_size(-1, 3, 1)
    with pytest.raises(ValueError, match=r"k must be at most min\(m, n\) = 3, got 4"):
        linalg.factored_size(3, 5, 4)


def test_energy_and_rank_for_energy_reject_bad_input():
    with pytest.raises(ValueError, match="non-negative"):
        linalg.energy_captured([1.0, -1.0])
    with pytest.raises(ValueError, match="all zero"):
        linalg.energy_captured([0.0, 0.0])
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 1.5"):
        linalg.rank_for_energy([1.0], 1.5)


# --- Chapter 1: rank ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("A", "rank"),
    [(np.eye(3, dtype=int), 3), (MULTIPLES, 1), (np.zeros((2, 2), dtype=int), 0)],
)
def test_the_chapter_examples_have_the_ranks_the_chapter_states(A, rank):
    assert linalg.exact_rank(A) == rank
    assert linalg.numerical_rank(A) == rank


def test_elimination_records_exact_steps_and_pivots():
    elimination = linalg.gaussian_elimination(
        [[0, 2, 4, 2], [2, 1, 0, 1], [3, 2, 1, 2]]
    )
    assert [step for step, _ in elimination.steps] == [
        "R1 ↔ R2",
        "R3 ← R3 − 3/2·R1",
        "R3 ← R3 − 1/4·R2",
    ]
    # Chapter 1 says this example needs a row swap and produces fractions.
    assert elimination.steps[1][1][2] == [0, Fraction(1, 2), 1, Fraction(1, 2)]
    assert elimination.pivot_columns == [0, 1] and elimination.rank == 2
    halves = linalg.gaussian_elimination([[2, 1], [1, 3]])
    assert halves.echelon == [[2, 1], [0, Fraction(5, 2)]]
    assert halves.steps[0][0] == "R2 ← R2 − 1/2·R1"


def test_elimination_writes_plus_for_a_negative_factor():
    assert (
        linalg.gaussian_elimination([[1, 1], [-2, 0]]).steps[0][0] == "R2 ← R2 + 2·R1"
    )


def test_format_matrix_aligns_columns():
    assert (
        linalg.format_matrix([[1, Fraction(-1, 2)], [10, 0]])
        == "[    1  -1/2 ]\n[   10     0 ]"
    )


@settings(max_examples=60, deadline=None)
@given(
    r=st.integers(0, 5),
    m=st.integers(5, 9),
    n=st.integers(5, 9),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_sum_of_r_random_outer_products_has_rank_r(r, m, n, seed):
    rng = np.random.default_rng(seed)
    A = sum(
        (np.outer(rng.standard_normal(m), rng.standard_normal(n)) for _ in range(r)),
        np.zeros((m, n)),
    )
    assert linalg.numerical_rank(A) == r


@settings(max_examples=60, deadline=None)
@given(
    entries=arrays(
        np.int64,
        st.tuples(st.integers(1, 5), st.integers(1, 5)),
        elements=st.integers(-4, 4),
    )
)
def test_exact_rank_agrees_with_sympy(entries):
    assert linalg.exact_rank(entries) == sympy.Matrix(entries.tolist()).rank()


def test_the_default_tolerance_separates_rounding_from_noise():
    rng = np.random.default_rng(0)
    rounded = np.outer(rng.standard_normal(3), rng.standard_normal(3))
    noisy = np.array(MULTIPLES) + 1e-12 * rng.standard_normal((3, 3))
    assert linalg.numerical_rank(rounded) == 1
    assert linalg.numerical_rank(noisy) == 3 == linalg.numerical_rank(noisy, tol=0.0)
    assert linalg.numerical_rank(noisy, tol=1e-9) == 1
    assert linalg.default_tolerance(noisy) == pytest.approx(
        14 * 3 * np.finfo(float).eps, rel=1e-9
    )


# --- Chapter 2: the SVD ---------------------------------------------------------------


def test_worked_svd_of_the_chapter_example():
    svd = linalg.worked_svd(MULTIPLES)
    lam = sympy.Symbol("lambda")
    assert svd.AtA == 14 * sympy.Matrix(MULTIPLES)
    assert sympy.expand(svd.characteristic_polynomial - (lam**3 - 196 * lam**2)) == 0
    assert svd.eigenvalues == [196, 0, 0]
    assert svd.singular_values == [14, 0, 0]
    assert svd.V[:, 0] == sympy.Matrix([1, 2, 3]) / sympy.sqrt(14)
    assert svd.V[:, 1] == sympy.Matrix([-2, 1, 0]) / sympy.sqrt(5)
    assert svd.V[:, 2] == sympy.Matrix([-3, -6, 5]) / sympy.sqrt(70)
    assert all(svd.checks().values())


@pytest.mark.parametrize(
    "A",
    [
        [[3, 0], [4, 5]],
        [[1, 0, 0], [0, 1, 0]],
        [[1, 2], [2, 4], [0, 0]],
        [[0, 0], [0, 0]],
        [[Fraction(1, 2), 1], [1, 2]],
        [[2, 0], [0, 2]],
    ],
)
def test_worked_svd_is_a_valid_svd_for_several_shapes(A):
    svd = linalg.worked_svd(A)
    assert all(svd.checks().values()), svd.checks()
    numeric = np.linalg.svd(np.array(A, dtype=float), compute_uv=False)
    assert np.allclose([float(s) for s in svd.singular_values], numeric)


def test_checks_detect_a_broken_factor():
    svd = linalg.worked_svd([[3, 0], [4, 5]])
    svd.U = svd.U * 2
    assert svd.checks() == {"UᵀU = I": False, "VᵀV = I": True, "UΣVᵀ = A": False}


def test_align_signs_flips_pairs_together():
    A = np.random.default_rng(3).standard_normal((4, 3))
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    flipped_U, flipped_Vt = U * [-1, 1, -1], Vt * np.array([-1, 1, -1])[:, None]
    aligned_U, aligned_Vt = linalg.align_signs(flipped_U, flipped_Vt, U)
    assert np.allclose(aligned_U, U) and np.allclose(aligned_Vt, Vt)
    assert np.allclose((aligned_U * s) @ aligned_Vt, A)


# --- Chapter 3: low-rank approximation ------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(A=small_matrices, data=st.data())
def test_eckart_young_error_equals_the_tail_norm(A, data):
    k = data.draw(st.integers(0, min(A.shape)))
    s = np.linalg.svd(A, compute_uv=False)
    predicted = linalg.eckart_young_errors(s, k)
    measured = linalg.approximation_errors(A, linalg.low_rank_approximation(A, k))
    scale = max(1.0, s.max(initial=0.0))
    assert np.allclose(predicted, measured, atol=1e-9 * scale)


@settings(max_examples=80, deadline=None)
@given(A=small_matrices)
def test_the_full_svd_reconstructs_exactly(A):
    assert np.allclose(
        linalg.low_rank_approximation(A, min(A.shape)),
        A,
        atol=1e-9 * max(1.0, np.abs(A).max()),
    )


@settings(max_examples=40, deadline=None)
@given(A=small_matrices, data=st.data())
def test_a_rank_k_approximation_has_rank_at_most_k(A, data):
    k = data.draw(st.integers(0, min(A.shape)))
    assert linalg.numerical_rank(linalg.low_rank_approximation(A, k)) <= k


def test_no_perturbed_competitor_beats_the_truncated_svd():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((8, 6))
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    best = linalg.approximation_errors(A, linalg.low_rank_approximation(A, 2))[0]
    for _ in range(200):
        competitor = (U[:, :2] * s[:2] + 0.05 * rng.standard_normal((8, 2))) @ Vt[:2]
        assert linalg.approximation_errors(A, competitor)[0] >= best


def test_approximation_errors_needs_matching_shapes():
    with pytest.raises(
        ValueError, match=r"A_k must have the shape of A, \(2, 2\), got \(2, 3\)"
    ):
        linalg.approximation_errors(np.eye(2), np.ones((2, 3)))


def test_the_lora_parameter_count_from_the_chapter():
    assert linalg.factored_size(1000, 1000, 64) == 128_000
    assert linalg.factored_size(4096, 4096, 8) == 65_536
    assert linalg.factored_size(1000, 1000, 500) == 1000 * 1000


def test_energy_captured_and_rank_for_energy():
    s = np.array([3.0, 2.0, 1.0])
    assert np.allclose(linalg.energy_captured(s), [9 / 14, 13 / 14, 1.0])
    assert linalg.rank_for_energy(s, 0.5) == 1
    assert linalg.rank_for_energy(s, 13 / 14) == 2
    assert linalg.rank_for_energy(s, 1.0) == 3


def test_grace_hopper_loads_from_matplotlib_as_grayscale():
    photo = linalg.load_grace_hopper()
    assert photo.shape == (600, 512) and photo.dtype == np.float64
    assert 0.0 <= photo.min() < 0.1 and 0.9 < photo.max() <= 1.0
