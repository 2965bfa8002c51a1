"""Checks that learners call to test their answers to the chapters' exercises.

Each check prints what it found and returns True or False, so it works both in a notebook and in
an instructor's grading script. A wrong answer gets a hint, never the answer itself.
"""

from __future__ import annotations

import numbers

import numpy as np

from lora_edu import linalg


def _report(correct: bool, praise: str, hint: str) -> bool:
    print(f"✅ Correct. {praise}" if correct else f"❌ Not quite. {hint}")
    return correct


def _check_integer(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    return int(value)


def check_rank(A, answer: int) -> bool:
    """Check a claimed rank of A (m×n) against exact elimination. [Ch. 1, Exercise 1.1]"""
    answer = _check_integer(answer, "answer")
    rank = linalg.exact_rank(A)
    if answer > rank:
        direction = "too high: look for a row that is a combination of the others"
    else:
        direction = "too low: count the pivots that survive elimination"
    return _report(answer == rank, f"The rank is {rank}.", f"Your answer {answer} is {direction}.")


def check_has_rank(M, rank: int) -> bool:
    """Check that a learner's matrix M (m×n) has exactly the requested rank. [Ch. 1, Exercise 1.3]"""
    rank = _check_integer(rank, "rank")
    M = linalg.as_matrix(M, name="M")
    actual = linalg.exact_rank(M)
    return _report(
        actual == rank,
        f"Your {M.shape[0]}×{M.shape[1]} matrix has rank {rank}.",
        f"Your matrix has rank {actual}, not {rank}: "
        + ("make more rows combinations of the others." if actual > rank else "add a row that is independent of the rest."),
    )


def check_singular_values(A, answer) -> bool:
    """Check claimed singular values of A (m×n), in any order, to 1e-6. [Ch. 2, Exercise 2.1]"""
    A = linalg.as_matrix(A)
    expected = np.linalg.svd(A, compute_uv=False)
    given = np.sort(np.asarray(answer, dtype=np.float64).ravel())[::-1]
    if given.shape != expected.shape:
        return _report(
            False, "", f"A {A.shape[0]}×{A.shape[1]} matrix has {expected.size} singular values; you gave {given.size}."
        )
    if (given < 0).any():
        return _report(False, "", "Singular values are never negative: they are square roots of eigenvalues of AᵀA.")
    if np.allclose(given, expected**2, atol=1e-6) and not np.allclose(given, expected, atol=1e-6):
        return _report(False, "", "Those are the eigenvalues of AᵀA, that is σ². Take their square roots.")
    return _report(
        np.allclose(given, expected, atol=1e-6),
        "Those are the singular values.",
        "Some values are off. Compute AᵀA, find its eigenvalues λ, and take σ = √λ.",
    )


def check_approximation_error(A, k: int, answer: float) -> bool:
    """Check a claimed Frobenius error of the best rank-k approximation of A (m×n). [Ch. 3, Exercise 3.1]"""
    s = np.linalg.svd(linalg.as_matrix(A), compute_uv=False)
    frobenius, spectral = linalg.eckart_young_errors(s, k)
    if np.isclose(answer, spectral, atol=1e-6) and not np.isclose(answer, frobenius, atol=1e-6):
        return _report(False, "", "That is the spectral-norm error σ_{k+1}. The Frobenius error sums all discarded σᵢ².")
    return _report(
        bool(np.isclose(answer, frobenius, atol=1e-6)),
        f"The error is √(Σ_{{i>{k}}} σᵢ²) = {frobenius:.6g}.",
        "Use Eckart–Young: the error is the square root of the sum of the squared singular values you discard.",
    )


def check_lora_parameter_count(d: int, k: int, r: int, answer: int) -> bool:
    """Check a claimed count of LoRA parameters for a d×k weight at rank r. [Ch. 3, Exercise 3.2]"""
    answer = _check_integer(answer, "answer")
    expected = linalg.factored_size(d, k, r)
    hint = "B is d×r and A is r×k; count the entries of both."
    if answer == d * k:
        hint = "That is the size of the full weight. LoRA stores only B (d×r) and A (r×k)."
    elif answer == r * max(d, k) or answer == r * min(d, k):
        hint = "You counted one factor. Add the other: B is d×r and A is r×k."
    return _report(answer == expected, f"r(d + k) = {expected:,} numbers instead of {d * k:,}.", hint)
