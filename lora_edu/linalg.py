"""Rank, the singular value decomposition and low-rank approximation (Chapters 1-3)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import sympy


def as_matrix(A, name: str = "A") -> np.ndarray:
    """Return A as a finite float64 array of shape (m, n), or raise naming `name`.

    [Ch. 1]
    """
    try:
        array = np.asarray(A, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} must be a 2-D array of numbers, got {type(A).__name__}: {error}"
        ) from None
    if array.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (m×n), got an array with shape {array.shape}"
        )
    if not np.isfinite(array).all():
        where = np.argwhere(~np.isfinite(array))[0].tolist()
        raise ValueError(
            f"{name} must contain only finite numbers, got NaN or inf at {where}"
        )
    return array


def check_truncation_rank(k, limit: int) -> int:
    """Return k as an int if 0 ≤ k ≤ limit, else raise naming k. [Ch. 3]

    The limit is min(m, n).
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer, got {k!r} ({type(k).__name__})")
    if not 0 <= k <= limit:
        raise ValueError(f"k must be between 0 and min(m, n) = {limit}, got {k}")
    return int(k)


# --- Chapter 1: rank -------------------------------------------------------------


@dataclass
class Elimination:
    """The steps of Gaussian elimination. [Ch. 1]

    Each row operation, and the matrix after it.
    """

    steps: list[tuple[str, list[list[Fraction]]]]
    echelon: list[list[Fraction]]
    pivot_columns: list[int]

    @property
    def rank(self) -> int:
        """The number of pivots, which is the rank."""
        return len(self.pivot_columns)


def gaussian_elimination(A) -> Elimination:
    """Reduce A (m×n) to row echelon form with exact fractions. [Ch. 1]

    Each row operation is recorded.
    """
    as_matrix(A)  # validates shape and finiteness; the exact work below uses Fractions
    rows = [[Fraction(x) for x in row] for row in np.asarray(A, dtype=object).tolist()]
    m, n = len(rows), len(rows[0])
    steps, pivots = [], []
    for col in range(n):
        r = len(pivots)
        if r == m:
            break
        below = [i for i in range(r, m) if rows[i][col] != 0]
        if not below:
            continue  # no pivot here: this column depends on the ones before it
        if below[0] != r:
            rows[r], rows[below[0]] = rows[below[0]], rows[r]
            steps.append((f"R{r + 1} ↔ R{below[0] + 1}", [row[:] for row in rows]))
        for i in range(r + 1, m):
            factor = rows[i][col] / rows[r][col]
            if factor != 0:
                rows[i] = [a - factor * b for a, b in zip(rows[i], rows[r])]
                sign = "−" if factor > 0 else "+"
                steps.append(
                    (
                        f"R{i + 1} ← R{i + 1} {sign} {abs(factor)}·R{r + 1}",
                        [row[:] for row in rows],
                    )
                )
        pivots.append(col)
    return Elimination(steps=steps, echelon=rows, pivot_columns=pivots)


def format_matrix(rows) -> str:
    """Format a matrix (m×n) of numbers or fractions as aligned text. [Ch. 1]"""
    cells = [[str(x) for x in row] for row in rows]
    width = max(len(c) for row in cells for c in row)
    return "\n".join(
        "[ " + "  ".join(c.rjust(width) for c in row) + " ]" for row in cells
    )


def exact_rank(A) -> int:
    """Rank of A (m×n), exactly, by Gaussian elimination on fractions. [Ch. 1]"""
    return gaussian_elimination(A).rank


def default_tolerance(A) -> float:
    """The tolerance below which a singular value of A (m×n) counts as zero. [Ch. 1]

    It is σ_max · max(m, n) · ε.
    """
    A = as_matrix(A)
    sigma_max = np.linalg.svd(A, compute_uv=False).max(initial=0.0)
    return float(sigma_max * max(A.shape) * np.finfo(A.dtype).eps)


def numerical_rank(A, tol: float | None = None) -> int:
    """Rank of A (m×n): the number of singular values greater than `tol`. [Ch. 1]"""
    A = as_matrix(A)
    if tol is None:
        tol = default_tolerance(A)
    elif (
        not isinstance(tol, numbers.Real)
        or isinstance(tol, bool)
        or not np.isfinite(tol)
        or tol < 0
    ):
        raise ValueError(f"tol must be a finite number ≥ 0, got {tol!r}")
    return int((np.linalg.svd(A, compute_uv=False) > tol).sum())


# --- Chapter 2: the singular value decomposition --------------------------------


@dataclass
class WorkedSVD:
    """Every step of an exact SVD A = UΣVᵀ, as sympy objects. [Ch. 2]"""

    A: sympy.Matrix
    AtA: sympy.Matrix
    characteristic_polynomial: sympy.Expr
    eigenvalues: list[sympy.Expr]
    singular_values: list[sympy.Expr]
    V: sympy.Matrix
    U: sympy.Matrix
    Sigma: sympy.Matrix

    def checks(self) -> dict[str, bool]:
        """Exact checks that U and V are orthogonal and that UΣVᵀ reproduces A."""
        n, m = self.V.shape[0], self.U.shape[0]
        return {
            "UᵀU = I": sympy.simplify(self.U.T * self.U - sympy.eye(m))
            == sympy.zeros(m),
            "VᵀV = I": sympy.simplify(self.V.T * self.V - sympy.eye(n))
            == sympy.zeros(n),
            "UΣVᵀ = A": sympy.simplify(self.U * self.Sigma * self.V.T - self.A)
            == sympy.zeros(*self.A.shape),
        }


def _orthonormal_basis(vectors: list[sympy.Matrix]) -> list[sympy.Matrix]:
    return (
        [sympy.simplify(v) for v in sympy.GramSchmidt(vectors, orthonormal=True)]
        if vectors
        else []
    )


def worked_svd(A) -> WorkedSVD:
    """The exact SVD, step by step, of an integer or fraction matrix A (m×n). [Ch. 2]"""
    as_matrix(A)
    entries = np.asarray(A, dtype=object)
    bad = [
        x
        for x in entries.ravel()
        if not isinstance(x, numbers.Rational) or isinstance(x, bool)
    ]
    if bad:
        raise TypeError(
            "worked_svd needs A with integer or Fraction entries for exact arithmetic, "
            f"got {bad[0]!r} ({type(bad[0]).__name__})"
        )
    A = sympy.Matrix(entries.tolist()).applyfunc(sympy.nsimplify)
    m, n = A.shape
    AtA = A.T * A
    lam = sympy.Symbol("lambda")
    polynomial = AtA.charpoly(lam).as_expr()
    eigenvalues = sorted(
        (
            value
            for value, multiplicity in sympy.roots(polynomial, lam).items()
            for _ in range(multiplicity)
        ),
        key=lambda value: -float(value),
    )
    # Orthonormal eigenvectors of AᵀA, one eigenspace
    # at a time, in the order of the eigenvalues.
    V_columns = []
    for value in dict.fromkeys(eigenvalues):
        V_columns += _orthonormal_basis((AtA - value * sympy.eye(n)).nullspace())
    singular_values = [sympy.sqrt(value) for value in eigenvalues]
    rank = sum(1 for s in singular_values if s != 0)
    U_columns = [
        sympy.simplify(A * V_columns[i] / singular_values[i]) for i in range(rank)
    ]
    # The columns of U for zero singular values: an
    # orthonormal basis of the left null space of A.
    U_columns += _orthonormal_basis(A.T.nullspace())
    Sigma = sympy.zeros(m, n)
    for i, s in enumerate(singular_values[: min(m, n)]):
        Sigma[i, i] = s
    return WorkedSVD(
        A=A,
        AtA=AtA,
        characteristic_polynomial=sympy.factor(polynomial),
        eigenvalues=eigenvalues,
        singular_values=singular_values[: min(m, n)],
        V=sympy.Matrix.hstack(*V_columns),
        U=sympy.Matrix.hstack(*U_columns),
        Sigma=Sigma,
    )


def align_signs(
    U: np.ndarray, Vt: np.ndarray, reference_U: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Flip pairs (uᵢ, vᵢ) of U (m×k) and Vᵀ (k×n) to follow reference_U. [Ch. 2]

    After the flip, each uᵢ points the same way as reference_U's.
    """
    signs = np.sign(np.sum(U * reference_U, axis=0))
    signs[signs == 0] = 1
    return U * signs, Vt * signs[:, None]


# --- Chapter 3: low-rank approximation ------------------------------------------


def low_rank_approximation(A, k: int) -> np.ndarray:
    """The best rank-k approximation A_k of A (m×n), shape (m, n). [Ch. 3]

    A_k = Σ_{i≤k} σᵢuᵢvᵢᵀ.
    """
    A = as_matrix(A)
    k = check_truncation_rank(k, min(A.shape))
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    return (U[:, :k] * s[:k]) @ Vt[:k]


def eckart_young_errors(singular_values, k: int) -> tuple[float, float]:
    """The (Frobenius, spectral) error of the best rank-k approximation. [Ch. 3]

    Computed from the singular values (p,).
    """
    s = np.asarray(singular_values, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"singular_values must be 1-D, got shape {s.shape}")
    k = check_truncation_rank(k, s.size)
    tail = np.sort(s)[::-1][k:]
    return float(np.sqrt(np.sum(tail**2))), float(tail[0]) if tail.size else 0.0


def approximation_errors(A, A_k) -> tuple[float, float]:
    """The measured (Frobenius, spectral) norms of A − A_k, both (m×n). [Ch. 3]"""
    A, A_k = as_matrix(A), as_matrix(A_k, name="A_k")
    if A.shape != A_k.shape:
        raise ValueError(f"A_k must have the shape of A, {A.shape}, got {A_k.shape}")
    return float(np.linalg.norm(A - A_k, "fro")), float(np.linalg.norm(A - A_k, 2))


def factored_size(m: int, n: int, k: int) -> int:
    """How many numbers store a rank-k factorisation of an m×n matrix. [Ch. 3]

    The factors are (m×k)(k×n): k(m + n) numbers.
    """
    for name, value in (("m", m), ("n", n), ("k", k)):
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Integral)
            or value < 0
        ):
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if k > min(m, n):
        raise ValueError(f"k must be at most min(m, n) = {min(m, n)}, got {k}")
    return k * (m + n)


def energy_captured(singular_values) -> np.ndarray:
    """Fraction of ‖A‖_F² kept by the best rank-k approximation. [Ch. 3]

    For k = 1…p, shape (p,).
    """
    s = np.asarray(singular_values, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(
            f"singular_values must be a non-empty 1-D array, got shape {s.shape}"
        )
    if (s < 0).any() or not np.isfinite(s).all():
        raise ValueError("singular_values must be finite and non-negative")
    energy = np.cumsum(np.sort(s)[::-1] ** 2)
    if energy[-1] == 0:
        raise ValueError(
            "singular_values are all zero: a zero matrix has no energy to capture"
        )
    return energy / energy[-1]


def rank_for_energy(singular_values, fraction: float) -> int:
    """The smallest k whose best rank-k approximation keeps `fraction` of ‖A‖_F².

    [Ch. 3]
    """
    if not isinstance(fraction, numbers.Real) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    # A tiny allowance so that fraction = 1 is reached despite rounding in the
    # cumulative sum.
    return int(np.searchsorted(energy_captured(singular_values), fraction - 1e-12) + 1)


def load_grace_hopper() -> np.ndarray:
    """The Grace Hopper photograph shipped with matplotlib. [Ch. 3]

    As grayscale floats in [0, 1], shape (600, 512).
    """
    import matplotlib.cbook
    import matplotlib.image

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as file:
        rgb = matplotlib.image.imread(file, format="jpg").astype(np.float64) / 255.0
    # ITU-R BT.601 luma weights, the usual conversion from RGB to gray.
    return rgb @ np.array([0.299, 0.587, 0.114])


# --- Chapter 7: comparing the subspaces that two adapters learned ---------------


def subspace_similarity(A1, A2, i: int, j: int) -> float:
    """φ = ‖U₁ⁱᵀU₂ʲ‖²_F / min(i, j), U right-singular vectors of A (r×d). [Ch. 7]"""
    A1, A2 = as_matrix(A1, name="A1"), as_matrix(A2, name="A2")
    if A1.shape[1] != A2.shape[1]:
        raise ValueError(
            f"A1 and A2 must have as many columns (d), got {A1.shape} and {A2.shape}"
        )
    for name, value, A in (("i", i, A1), ("j", j, A2)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {value!r}")
        if not 1 <= value <= min(A.shape):
            raise ValueError(
                f"{name} must be between 1 and {min(A.shape)} for a {A.shape} matrix, "
                f"got {value}"
            )
    # The rows of Vt are the right-singular vectors: directions in the input space R^d.
    U1 = np.linalg.svd(A1, full_matrices=False)[2][:i].T
    U2 = np.linalg.svd(A2, full_matrices=False)[2][:j].T
    return float(np.linalg.norm(U1.T @ U2, "fro") ** 2 / min(i, j))
