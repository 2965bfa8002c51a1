"""Checks that learners call to test their answers to the chapters' exercises.

Each check prints what it found and returns True or False, so it works both in a notebook and in
an instructor's grading script. A wrong answer gets a hint, never the answer itself.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

from lora_edu import linalg


def _report(correct: bool, praise: str, hint: str) -> bool:
    print(f"✅ Correct. {praise}" if correct else f"❌ Not quite. {hint}")
    return correct


def _check_integer(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be an integer, got {value!r} ({type(value).__name__})"
        )
    return int(value)


def check_rank(A, answer: int) -> bool:
    """Check a claimed rank of A (m×n) against exact elimination. [Ch. 1, Exercise 1.1]"""
    answer = _check_integer(answer, "answer")
    rank = linalg.exact_rank(A)
    if answer > rank:
        direction = "too high: look for a row that is a combination of the others"
    else:
        direction = "too low: count the pivots that survive elimination"
    return _report(
        answer == rank, f"The rank is {rank}.", f"Your answer {answer} is {direction}."
    )


def check_has_rank(M, rank: int) -> bool:
    """Check that a learner's matrix M (m×n) has exactly the requested rank. [Ch. 1, Exercise 1.3]"""
    rank = _check_integer(rank, "rank")
    M = linalg.as_matrix(M, name="M")
    actual = linalg.exact_rank(M)
    return _report(
        actual == rank,
        f"Your {M.shape[0]}×{M.shape[1]} matrix has rank {rank}.",
        f"Your matrix has rank {actual}, not {rank}: "
        + (
            "make more rows combinations of the others."
            if actual > rank
            else "add a row that is independent of the rest."
        ),
    )


def check_singular_values(A, answer) -> bool:
    """Check claimed singular values of A (m×n), in any order, to 1e-6. [Ch. 2, Exercise 2.1]"""
    A = linalg.as_matrix(A)
    expected = np.linalg.svd(A, compute_uv=False)
    given = np.sort(np.asarray(answer, dtype=np.float64).ravel())[::-1]
    if given.shape != expected.shape:
        return _report(
            False,
            "",
            f"A {A.shape[0]}×{A.shape[1]} matrix has {expected.size} singular values; you gave {given.size}.",
        )
    if (given < 0).any():
        return _report(
            False,
            "",
            "Singular values are never negative: they are square roots of eigenvalues of AᵀA.",
        )
    if np.allclose(given, expected**2, atol=1e-6) and not np.allclose(
        given, expected, atol=1e-6
    ):
        return _report(
            False,
            "",
            "Those are the eigenvalues of AᵀA, that is σ². Take their square roots.",
        )
    return _report(
        np.allclose(given, expected, atol=1e-6),
        "Those are the singular values.",
        "Some values are off. Compute AᵀA, find its eigenvalues λ, and take σ = √λ.",
    )


def check_approximation_error(A, k: int, answer: float) -> bool:
    """Check a claimed Frobenius error of the best rank-k approximation of A (m×n). [Ch. 3, Exercise 3.1]"""
    s = np.linalg.svd(linalg.as_matrix(A), compute_uv=False)
    frobenius, spectral = linalg.eckart_young_errors(s, k)
    if np.isclose(answer, spectral, atol=1e-6) and not np.isclose(
        answer, frobenius, atol=1e-6
    ):
        return _report(
            False,
            "",
            "That is the spectral-norm error σ_{k+1}. The Frobenius error sums all discarded σᵢ².",
        )
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
        hint = (
            "That is the size of the full weight. LoRA stores only B (d×r) and A (r×k)."
        )
    elif answer == r * max(d, k) or answer == r * min(d, k):
        hint = "You counted one factor. Add the other: B is d×r and A is r×k."
    return _report(
        answer == expected,
        f"r(d + k) = {expected:,} numbers instead of {d * k:,}.",
        hint,
    )


def _lora_case(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x, W, b = (
        torch.randn(5, 7, generator=generator),
        torch.randn(4, 7, generator=generator),
        torch.randn(4, generator=generator),
    )
    A, B = (
        torch.randn(3, 7, generator=generator),
        torch.randn(4, 3, generator=generator),
    )
    return x, W, b, A, B, 2.0


def check_lora_forward(lora_forward) -> bool:
    """Check a learner's lora_forward(x, W, b, A, B, scaling) → (batch, out) for x (batch, in). [Ch. 4, Exercise 4.1]"""
    x, W, b, A, B, scaling = _lora_case()
    expected = x @ W.T + b + scaling * (x @ A.T @ B.T)
    try:
        result = lora_forward(x, W, b, A, B, scaling)
    except RuntimeError as error:
        return _report(
            False,
            "",
            f"It raised {error}. Shapes: x is batch×in, W is out×in, A is r×in and B is out×r.",
        )
    if not isinstance(result, torch.Tensor) or result.shape != expected.shape:
        shape = (
            tuple(result.shape)
            if isinstance(result, torch.Tensor)
            else type(result).__name__
        )
        return _report(
            False,
            "",
            f"The result should have shape {tuple(expected.shape)} (batch, out), got {shape}.",
        )
    if torch.allclose(result, x @ W.T + b + x @ A.T @ B.T, atol=1e-5):
        return _report(False, "", "You forgot the scaling α/r on the low-rank path.")
    if torch.allclose(result, x @ W.T + scaling * (x @ A.T @ B.T), atol=1e-5):
        return _report(False, "", "You dropped the bias b of the frozen layer.")
    return _report(
        torch.allclose(result, expected, atol=1e-5),
        "Your forward pass matches W₀x + b + (α/r)·BAx.",
        "The values are off. Compute the frozen path and the low-rank path separately, then add them.",
    )


def check_merged_weight(merged_weight) -> bool:
    """Check a learner's merged_weight(W, A, B, scaling) → (out, in). [Ch. 4, Exercise 4.2]"""
    _, W, _, A, B, scaling = _lora_case(seed=1)
    expected = W + scaling * B @ A
    try:
        result = merged_weight(W.clone(), A, B, scaling)
    except RuntimeError as error:
        return _report(
            False,
            "",
            f"It raised {error}. W is out×in, B is out×r and A is r×in, so B @ A has the shape of W.",
        )
    if not isinstance(result, torch.Tensor) or result.shape != W.shape:
        return _report(
            False,
            "",
            f"The merged weight has the shape of W, {tuple(W.shape)}. B is out×r and A is r×in: use B @ A.",
        )
    if torch.allclose(result, W + B @ A, atol=1e-5):
        return _report(False, "", "You forgot the scaling α/r.")
    return _report(
        torch.allclose(result, expected, atol=1e-5),
        "W₀ + (α/r)·BA: one matrix, so inference costs what the base layer costs.",
        "The values are off. ΔW = (α/r)·B @ A has the shape of W; add it to W.",
    )


def check_lora_count_for_config(config, target_modules, r: int, answer: int) -> bool:
    """Check a claimed LoRA parameter count for a transformers model config, built on the meta device. [Ch. 5, Exercise 5.1]"""
    # Imported here, so that the linear-algebra chapters do not pay for loading transformers.
    from transformers import AutoModelForCausalLM

    from lora_edu.lora import count_parameters, inject_lora, lora_layers

    answer = _check_integer(answer, "answer")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    inject_lora(model, list(target_modules), r=r, lora_alpha=r)
    expected, _ = count_parameters(model)
    layers = lora_layers(model).values()
    hint = "Each layer adds r(d_in + d_out): find d_in and d_out of every targeted projection, then sum over all layers."
    if answer == sum(layer.r * 2 * layer.in_features for layer in layers) != expected:
        hint = "You treated every projection as square. With grouped-query attention, k_proj and v_proj map to fewer numbers."
    elif answer * config.num_hidden_layers == expected:
        hint = "That is the count for one layer: multiply by the number of layers."
    return _report(answer == expected, f"LoRA trains {expected:,} parameters.", hint)


def check_perplexity(loss: float, answer: float) -> bool:
    """Check a claimed perplexity for a loss in nats per token, to 0.1%. [Ch. 6, Exercise 6.1]"""
    expected = math.exp(loss)
    if math.isclose(answer, loss, rel_tol=1e-6) or math.isclose(
        answer, 2**loss, rel_tol=1e-3
    ):
        hint = "Perplexity is e raised to the loss (in nats): exponentiate with base e."
    else:
        hint = "Perplexity is e to the power of the loss per token."
    return _report(
        math.isclose(answer, expected, rel_tol=1e-3),
        f"e^{loss} = {expected:.4g}.",
        hint,
    )


def check_lora_budget(
    layers: int, width: int, r: int, matrices: int, answer: int
) -> bool:
    """Check a claimed LoRA budget on square width×width matrices. [Ch. 7, Ex. 7.1]"""
    answer = _check_integer(answer, "answer")
    expected = 2 * width * r * layers * matrices
    if answer * 2 == expected:
        hint = "LoRA trains two factors per matrix, A (r×d) and B (d×r): count both."
    elif answer * layers == expected:
        hint = "That is one layer's count: multiply by the number of layers."
    else:
        hint = "Each adapted d×d matrix adds r·d (for A) + d·r (for B) per layer."
    return _report(answer == expected, f"The budget is {expected:,} parameters.", hint)


def check_random_subspace_similarity(d: int, i: int, j: int, answer: float) -> bool:
    """Check a claimed mean φ for random subspaces of R^d. [Ch. 7, Exercise 7.2]"""
    expected = max(i, j) / d
    if math.isclose(answer, min(i, j) / d, rel_tol=1e-3) and i != j:
        hint = "E‖U₁ᵀU₂‖²_F = i·j/d; φ then divides by min(i, j), not by max(i, j)."
    else:
        hint = "Each of the i·j entries of U₁ᵀU₂ has mean square 1/d; sum, then divide."
    return _report(
        math.isclose(answer, expected, rel_tol=1e-3),
        f"On average φ = max(i, j)/d = {expected:.4g} for random subspaces.",
        hint,
    )


def check_amplification_factor(
    delta_norm: float, projected_norm: float, answer: float
) -> bool:
    """Check a claimed ‖ΔW‖_F / ‖UᵀWVᵀ‖_F, to 1%. [Ch. 7, Exercise 7.3]"""
    expected = delta_norm / projected_norm
    hint = "Divide ‖ΔW‖_F by the norm of W projected onto ΔW's top-r directions."
    if math.isclose(answer, 1 / expected, rel_tol=1e-2):
        hint = "You divided the other way round: the factor is larger than 1."
    return _report(
        math.isclose(answer, expected, rel_tol=1e-2),
        f"ΔW amplifies those directions by a factor of {expected:.3g}.",
        hint,
    )
