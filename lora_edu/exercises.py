"""Checks that learners call to test their answers to the chapters' exercises.

Each check prints what it found and returns True or False, so it works both in a
notebook and in an instructor's grading script. A wrong answer gets a hint, never the
answer itself.
"""

from __future__ import annotations

import contextlib
import io
import math
import numbers

import numpy as np
import torch

from lora_edu import linalg

# An answer rounded correctly to three decimals is off by at most half a unit of the
# third decimal (the solutions write √5 ≈ 2.236); the margin absorbs float rounding.
THREE_DECIMALS = 5e-4 + 1e-12


def _report(correct: bool, praise: str, hint: str) -> bool:
    print(f"✅ Correct. {praise}" if correct else f"❌ Not quite. {hint}")
    return correct


def require(check, *args) -> None:
    """Run a check silently; raise AssertionError with its hint if the answer is wrong.

    For autograders.
    """
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        correct = check(*args)
    if correct is not True:
        raise AssertionError(output.getvalue().strip())


def _check_integer(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be an integer, got {value!r} ({type(value).__name__})"
        )
    return int(value)


def check_rank(A, answer: int) -> bool:
    """Check a claimed rank of A (m×n) against exact elimination.

    [Ch. 1, Exercise 1.1]
    """
    answer = _check_integer(answer, "answer")
    rank = linalg.exact_rank(A)
    if answer > rank:
        direction = "too high: look for a row that is a combination of the others"
    else:
        direction = "too low: count the pivots that survive elimination"
    return _report(
        answer == rank, f"The rank is {rank}.", f"Your answer {answer} is {direction}."
    )


def _integer_entries(M) -> np.ndarray | None:
    """M as an array of Python ints if every entry is an integer, else None.

    An integer means 2, not 2.0.
    """
    array = np.asarray(M, dtype=object)
    flat = array.ravel().tolist()
    if any(isinstance(x, bool) or not isinstance(x, numbers.Integral) for x in flat):
        return None
    # Python ints, not int64: exact elimination must not overflow on large entries.
    return np.array([int(x) for x in flat], dtype=object).reshape(array.shape)


def check_has_rank(M, rank: int, shape=(4, 4)) -> bool:
    """Check an integer matrix of `shape` (m, n), no entry zero, of exact rank.

    [Ch. 1, Exercise 1.3]
    """
    rank = _check_integer(rank, "rank")
    floats = linalg.as_matrix(M, name="M")
    if floats.shape != tuple(shape):
        m, n = shape
        got = "×".join(map(str, floats.shape))
        return _report(
            False, "", f"The exercise asks for a {m}×{n} matrix; yours is {got}."
        )
    integers = _integer_entries(M)
    if integers is None:
        return _report(
            False, "", "Use integer entries, such as 2 rather than 2.0 or 1.5."
        )
    if (integers == 0).any():
        i, j = np.argwhere(integers == 0)[0].tolist()
        return _report(
            False,
            "",
            f"Row {i + 1}, column {j + 1} is zero, "
            "and the exercise allows no zero entry.",
        )
    actual = linalg.exact_rank(integers)
    return _report(
        actual == rank,
        f"Your {shape[0]}×{shape[1]} matrix has rank {rank} and no zero entry.",
        f"Your matrix has rank {actual}, not {rank}: "
        + (
            "make more rows combinations of the others."
            if actual > rank
            else "make a row that depends on the others independent of them."
        ),
    )


def check_singular_values(A, answer) -> bool:
    """Check claimed singular values of A (m×n), in any order, to three decimals.

    [Ch. 2, Exercise 2.1]
    """
    A = linalg.as_matrix(A)
    expected = np.linalg.svd(A, compute_uv=False)
    given = np.sort(np.asarray(answer, dtype=np.float64).ravel())[::-1]
    if given.shape != expected.shape:
        return _report(
            False,
            "",
            f"A {A.shape[0]}×{A.shape[1]} matrix has {expected.size} singular values; "
            f"you gave {given.size}.",
        )
    if (given < 0).any():
        return _report(
            False,
            "",
            "Singular values are never negative: "
            "they are square roots of eigenvalues of AᵀA.",
        )
    if np.allclose(given, expected**2, rtol=0, atol=THREE_DECIMALS) and not np.allclose(
        given, expected, rtol=0, atol=THREE_DECIMALS
    ):
        return _report(
            False,
            "",
            "Those are the eigenvalues of AᵀA, that is σ². Take their square roots.",
        )
    return _report(
        np.allclose(given, expected, rtol=0, atol=THREE_DECIMALS),
        "Those are the singular values.",
        "Some values are off. Compute AᵀA, find its eigenvalues λ, and take σ = √λ.",
    )


def check_approximation_error(A, k: int, answer: float) -> bool:
    """Check a claimed Frobenius error of the best rank-k approximation of A (m×n).

    To three decimals. [Ch. 3, Exercise 3.1]
    """
    s = np.linalg.svd(linalg.as_matrix(A), compute_uv=False)
    frobenius, spectral = linalg.eckart_young_errors(s, k)
    if np.isclose(answer, spectral, rtol=0, atol=THREE_DECIMALS) and not np.isclose(
        answer, frobenius, rtol=0, atol=THREE_DECIMALS
    ):
        return _report(
            False,
            "",
            "That is the spectral-norm error, the first discarded singular value. "
            "The Frobenius error sums the squares of all discarded σᵢ.",
        )
    return _report(
        bool(np.isclose(answer, frobenius, rtol=0, atol=THREE_DECIMALS)),
        f"The error is the square root of the sum of σᵢ² over i > {k}: "
        f"{frobenius:.6g}.",
        "Use Eckart–Young: the error is the square root of the sum of the squared "
        "singular values you discard.",
    )


def check_lora_parameter_count(d_out: int, d_in: int, r: int, answer: int) -> bool:
    """Check a claimed count of LoRA parameters for a d_out×d_in weight at rank r.

    [Ch. 3, Exercise 3.2]
    """
    answer = _check_integer(answer, "answer")
    expected = linalg.factored_size(d_out, d_in, r)
    hint = "B is d_out×r and A is r×d_in; count the entries of both."
    if answer == d_out * d_in:
        hint = "That is the size of the full weight. LoRA stores only B and A."
    elif answer in (r * d_out, r * d_in):
        hint = "You counted one factor. Add the other: B is d_out×r and A is r×d_in."
    return _report(
        answer == expected,
        f"r(d_out + d_in) = {expected:,} numbers instead of {d_out * d_in:,}.",
        hint,
    )


def check_lora_budget(d: int, k: int, share: float, r: int, count: int) -> bool:
    """Check the largest rank r within share·d·k parameters, and its count.

    The weight is d×k. [Ch. 4, Exercise 4.3]
    """
    r, count = _check_integer(r, "r"), _check_integer(count, "count")
    budget = share * d * k
    if not (math.isfinite(budget) and 0 < share < 1):
        raise ValueError(f"share must be a number between 0 and 1, got {share!r}")
    largest = int(budget // (d + k))
    if r < 1:
        return _report(False, "", "A LoRA update needs a rank of at least 1.")
    if linalg.factored_size(d, k, r) > budget:
        hint = (
            f"At r = {r}, B and A hold r(d + k) = {linalg.factored_size(d, k, r):,} "
            f"numbers, over the budget of {budget:,.0f}."
        )
        if r == int(budget // max(d, k)):
            hint += " Count both factors: B is d×r and A is r×k."
        elif r == largest + 1:
            hint += " Round down: the count must stay within the budget."
        return _report(False, "", hint)
    if r < largest:
        return _report(
            False, "", f"r = {r} fits, but so does r = {r + 1}: find the largest."
        )
    return _report(
        count == linalg.factored_size(d, k, r),
        f"r = {r} trains {count:,} parameters, within the budget of {budget:,.0f}.",
        f"r = {r} is right, but it trains r(d + k) parameters, not {count:,}.",
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
    """Check a learner's lora_forward(x, W, b, A, B, scaling) → (batch, out).

    x is (batch, in). [Ch. 4, Exercise 4.1]
    """
    x, W, b, A, B, scaling = _lora_case()
    expected = x @ W.T + b + scaling * (x @ A.T @ B.T)
    try:
        result = lora_forward(x, W, b, A, B, scaling)
    except RuntimeError as error:
        return _report(
            False,
            "",
            f"It raised {error}. "
            "Shapes: x is batch×in, W is out×in, A is r×in and B is out×r.",
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
            f"The result should have shape {tuple(expected.shape)} (batch, out), "
            f"got {shape}.",
        )
    if torch.allclose(result, x @ W.T + b + x @ A.T @ B.T, atol=1e-5):
        return _report(False, "", "You forgot the scaling α/r on the low-rank path.")
    if torch.allclose(result, x @ W.T + scaling * (x @ A.T @ B.T), atol=1e-5):
        return _report(False, "", "You dropped the bias b of the frozen layer.")
    return _report(
        torch.allclose(result, expected, atol=1e-5),
        "Your forward pass matches W₀x + b + (α/r)·BAx.",
        "The values are off. Compute the frozen path and the low-rank path "
        "separately, then add them.",
    )


def check_merged_weight(merged_weight) -> bool:
    """Check a learner's merged_weight(W, A, B, scaling) → (out, in).

    [Ch. 4, Exercise 4.2]
    """
    _, W, _, A, B, scaling = _lora_case(seed=1)
    expected = W + scaling * B @ A
    try:
        result = merged_weight(W.clone(), A, B, scaling)
    except RuntimeError as error:
        return _report(
            False,
            "",
            f"It raised {error}. W is out×in, B is out×r and A is r×in, "
            "so B @ A has the shape of W.",
        )
    if not isinstance(result, torch.Tensor) or result.shape != W.shape:
        return _report(
            False,
            "",
            f"The merged weight has the shape of W, {tuple(W.shape)}. "
            "B is out×r and A is r×in: use B @ A.",
        )
    if torch.allclose(result, W + B @ A, atol=1e-5):
        return _report(False, "", "You forgot the scaling α/r.")
    return _report(
        torch.allclose(result, expected, atol=1e-5),
        "W₀ + (α/r)·BA: one matrix, so inference costs what the base layer costs.",
        "The values are off. ΔW = (α/r)·B @ A has the shape of W; add it to W.",
    )


def check_lora_count_for_config(config, target_modules, r: int, answer: int) -> bool:
    """Check a claimed LoRA parameter count for a transformers model config.

    The model is built on the meta device. [Ch. 5, Exercise 5.1]
    """
    # Imported here, so that the linear-algebra
    # chapters do not pay for loading transformers.
    from transformers import AutoModelForCausalLM

    from lora_edu.lora import count_parameters, inject_lora, lora_layers

    answer = _check_integer(answer, "answer")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    inject_lora(model, list(target_modules), r=r, lora_alpha=r)
    expected, _ = count_parameters(model)
    layers = lora_layers(model).values()
    hint = (
        "Each layer adds r(d_in + d_out): find d_in and d_out of every targeted "
        "projection, then sum over all layers."
    )
    if answer == sum(layer.r * 2 * layer.in_features for layer in layers) != expected:
        hint = (
            "You treated every projection as square. With grouped-query attention, "
            "k_proj and v_proj map to fewer numbers."
        )
    elif answer * config.num_hidden_layers == expected:
        hint = "That is the count for one layer: multiply by the number of layers."
    return _report(answer == expected, f"LoRA trains {expected:,} parameters.", hint)


def check_perplexity(loss: float, answer: float) -> bool:
    """Check a claimed perplexity for a loss in nats per token, to 0.1% or 0.005.

    [Ch. 6, Exercise 6.1]
    """
    expected = math.exp(loss)
    if math.isclose(answer, loss, rel_tol=1e-6) or math.isclose(
        answer, 2**loss, rel_tol=1e-3
    ):
        hint = "Perplexity is e raised to the loss (in nats): exponentiate with base e."
    else:
        hint = "Perplexity is e to the power of the loss per token."
    return _report(
        # 0.1% or two decimals (the solution writes 3.49), whichever is looser.
        math.isclose(answer, expected, rel_tol=1e-3, abs_tol=5e-3 + 1e-12),
        f"e^{loss} = {expected:.4g}.",
        hint,
    )


def check_perplexity_factor(loss_drop: float, answer: float) -> bool:
    """Check the factor by which perplexity changes when the loss falls by loss_drop.

    loss_drop is in nats. [Ch. 6, Exercise 6.1]
    """
    expected = math.exp(-loss_drop)
    if math.isclose(answer, 1 / expected, rel_tol=1e-3):
        hint = "That factor makes perplexity rise. A lower loss lowers the perplexity."
    elif math.isclose(answer, 1 - loss_drop, rel_tol=1e-4):
        hint = "Perplexity is exponential in the loss: a drop in loss divides it."
    else:
        hint = "Write both perplexities as powers of e and divide one by the other."
    return _report(
        math.isclose(answer, expected, rel_tol=1e-3),
        f"e^(−{loss_drop}) = {expected:.4g}, whatever the starting loss.",
        hint,
    )


def check_rslora_alpha(r: int, lora_alpha: float, answer: float) -> bool:
    """Check the α' with α'/r = α/√r at rank r, to 0.1%. [Ch. 8, Exercise 8.1]"""
    r = _check_integer(r, "r")
    expected = lora_alpha * math.sqrt(r)
    if math.isclose(answer, lora_alpha / math.sqrt(r), rel_tol=1e-3):
        hint = "You divided by √r. Set α'/r equal to α/√r and solve for α'."
    elif math.isclose(answer, lora_alpha * r, rel_tol=1e-3):
        hint = "That multiplies by r. rsLoRA divides by √r, not by 1."
    else:
        hint = "Set α'/r equal to α/√r and solve for α'."
    return _report(
        math.isclose(answer, expected, rel_tol=1e-3),
        f"α' = α·√r = {expected:g}: the same scaling, {lora_alpha / math.sqrt(r):g}.",
        hint,
    )


def check_pissa_energy(weight, r: int, answer: float) -> bool:
    """Check the share of ‖W‖²_F in W's top r directions, to 5e-4. [Ch. 8, Ex. 8.2]"""
    r = _check_integer(r, "r")
    s = torch.linalg.svdvals(torch.as_tensor(weight).double())
    expected = float(s[:r].square().sum() / s.square().sum())
    # 5e-4: a share given to three decimals is right (the solution states 67.1%).
    if math.isclose(answer, float(s[:r].sum() / s.sum()), abs_tol=5e-4):
        hint = "You summed singular values. ‖W‖²_F is the sum of their squares."
    elif math.isclose(answer, 1 - expected, abs_tol=5e-4):
        hint = "That is the residual's share. PiSSA trains the top r directions."
    else:
        hint = "‖W‖²_F = σ₁² + σ₂² + …; the adapter holds the first r terms."
    return _report(
        math.isclose(answer, expected, abs_tol=5e-4),
        f"The top {r} directions hold {expected:.2%} of ‖W‖²_F.",
        hint,
    )


def check_dora_parameter_count(config, target_modules, r: int, answer: int) -> bool:
    """Check a DoRA trainable-parameter count for a config. [Ch. 8, Exercise 8.3]"""
    # Imported here, so that the early chapters do not pay for loading transformers.
    from transformers import AutoModelForCausalLM

    from lora_edu.lora import count_parameters
    from lora_edu.variants import inject_dora

    answer = _check_integer(answer, "answer")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    inject_dora(model, list(target_modules), r=r, lora_alpha=r)
    expected, _ = count_parameters(model)
    magnitudes = sum(
        p.numel() for n, p in model.named_parameters() if n.endswith("magnitude")
    )
    hint = "LoRA's r(d_in + d_out) per layer, plus one magnitude per output row."
    if answer == expected - magnitudes:
        hint = "That is LoRA's count. DoRA also trains m: one number per output row."
    elif answer == magnitudes:
        hint = "That is only the magnitudes. Add LoRA's A and B."
    return _report(answer == expected, f"DoRA trains {expected:,} parameters.", hint)


def check_pissa_to_lora(convert) -> bool:
    """Check convert(A, B, A0, B0) → (A', B') with B'A' = BA − B₀A₀. [Ch. 8, Ex. 8.4]"""
    generator = torch.Generator().manual_seed(0)
    A, A0 = (torch.randn(3, 7, generator=generator) for _ in range(2))
    B, B0 = (torch.randn(5, 3, generator=generator) for _ in range(2))
    try:
        A2, B2 = convert(A, B, A0, B0)
    except (RuntimeError, TypeError, ValueError) as error:
        return _report(
            False, "", f"It raised {error}. Stack A over A₀ and B beside B₀."
        )
    if tuple(A2.shape) != (6, 7) or tuple(B2.shape) != (5, 6):
        return _report(
            False,
            "",
            f"A' should be 2r×in = (6, 7) and B' out×2r = (5, 6); got "
            f"{tuple(A2.shape)} and {tuple(B2.shape)}.",
        )
    product = B2 @ A2
    if torch.allclose(product, B @ A + B0 @ A0, atol=1e-5):
        hint = "B'A' = BA + B₀A₀: the sign of the starting point must be minus."
    else:
        hint = "A product of block matrices is a sum of products: use that."
    return _report(
        torch.allclose(product, B @ A - B0 @ A0, atol=1e-5),
        "B'A' = BA − B₀A₀: a plain LoRA of rank 2r on the original W.",
        hint,
    )


def check_nf4_codes(block, answer) -> bool:
    """Check hand-computed NF4 codes (0…15) of one block. [Ch. 9, Exercise 9.1]"""
    from lora_edu.quant import NF4_CODE, quantize_nf4

    values = torch.as_tensor(block, dtype=torch.float32).flatten()
    answer = [_check_integer(code, "each code") for code in answer]
    if len(answer) != len(values):
        raise ValueError(f"give one code per number: {len(values)}, got {len(answer)}")
    if any(not 0 <= code <= 15 for code in answer):
        raise ValueError(f"NF4 codes run from 0 to 15, got {answer}")
    codes = quantize_nf4(values, block_size=len(values)).codes.tolist()
    # The codes of the numbers as they are, not divided by the absmax first.
    midpoints = (NF4_CODE[1:] + NF4_CODE[:-1]) / 2
    unscaled = torch.bucketize(values.clamp(-1, 1), midpoints)
    wrong = sum(a != c for a, c in zip(answer, codes))
    if answer == unscaled.tolist() and answer != codes:
        hint = "Divide the block by its largest absolute value first."
    else:
        hint = (
            f"{wrong} of your {len(codes)} codes differ. Divide the block by its "
            "largest absolute value, then take the nearest level (code 0 is −1)."
        )
    return _report(answer == codes, f"The codes are {codes}.", hint)


def check_nf4_bits(block_size: int, answer: float) -> bool:
    """Check the bits a weight of NF4 with double quantization. [Ch. 9, Exercise 9.2]"""
    from lora_edu.quant import NESTED_BLOCK_SIZE, nf4_storage_bytes

    block_size = _check_integer(block_size, "block_size")
    # A tensor so large that the one float32 mean adds nothing visible.
    n = block_size * NESTED_BLOCK_SIZE * 2**12
    bits = 8 * nf4_storage_bytes(n, block_size, double_quant=True) / n
    if math.isclose(answer, 4 + 32 / block_size, abs_tol=5e-4):
        hint = "That is without double quantization: the scales are stored in 8 bits."
    elif math.isclose(answer, 4 + 8 / block_size, abs_tol=5e-4):
        hint = "Each block of 256 scales also keeps one float32 scale of its own."
    else:
        hint = "Add the 4 bits of the code, the 8-bit scale per block, and its share."
    return _report(
        math.isclose(answer, bits, abs_tol=5e-4), f"{bits:.4f} bits a weight.", hint
    )


def check_kbit_cast_count(config, answer: int) -> bool:
    """Check the count prepare_model_for_kbit_training casts. [Ch. 9, Exercise 9.3]"""
    from lora_edu.llama import build_on_meta, quantized_weights

    answer = _check_integer(answer, "answer")
    model = build_on_meta(config)
    total = sum(p.numel() for p in model.parameters())
    cast = total - sum(w.numel() for w in quantized_weights(model))
    embedding = config.vocab_size * config.hidden_size
    norms = cast - 2 * embedding
    if answer in (embedding, embedding + norms) and answer != cast:
        hint = "The output head is not tied to the embeddings: it is cast too."
    elif answer == 2 * embedding and answer != cast:
        hint = "Every RMSNorm weight is 16-bit and not 4-bit, so it is cast too."
    else:
        hint = "Count what a 4-bit load leaves in 16 bits: all but the blocks' linears."
    return _report(answer == cast, f"{cast:,} parameters.", hint)


def check_square_lora_budget(
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
    """Check a claimed mean φ for random subspaces of R^d, to 1%. [Ch. 7, Ex. 7.2]"""
    expected = max(i, j) / d
    # 1%: the solution's two-figure 0.0052 for 64/12288 is right; min/max is 8× off.
    if math.isclose(answer, min(i, j) / d, rel_tol=1e-2) and i != j:
        hint = "E‖U₁ᵀU₂‖²_F = i·j/d; φ then divides by min(i, j), not by max(i, j)."
    else:
        hint = "Each of the i·j entries of U₁ᵀU₂ has mean square 1/d; sum, then divide."
    return _report(
        math.isclose(answer, expected, rel_tol=1e-2),
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


# --- Chapter 10 -------------------------------------------------------------------


def check_full_finetune_gigabytes(params: int, answer: float) -> bool:
    """Check claimed GB of weights, gradients, AdamW states, to 1%. [Ch. 10, Ex. 10.1]

    Mixed precision: bf16 weights and gradients, float32 master and two moments.
    """
    params = _check_integer(params, "params")
    expected = 16 * params / 1e9
    if math.isclose(answer, 12 * params / 1e9, rel_tol=1e-2):
        hint = "Adam keeps two moments, and mixed precision a float32 master copy too."
    elif math.isclose(answer, 16 * params / 2**30, rel_tol=1e-2):
        hint = "That is GiB (2³⁰ bytes); the question asks for GB (10⁹ bytes)."
    else:
        hint = "Add 2 (bf16 weight) + 2 (bf16 gradient) + 3 × 4 (float32) bytes each."
    return _report(
        math.isclose(answer, expected, rel_tol=1e-2),
        f"16 bytes a parameter: {expected:.2f} GB before any activation.",
        hint,
    )


def check_lora_flop_ratio(params: int, adapter: int, answer: float) -> bool:
    """Check a claimed LoRA ÷ full training FLOPs, to 0.5%. [Ch. 10, Exercise 10.2]

    params frozen matmul weights, adapter trainable LoRA weights beside them.
    """
    params = _check_integer(params, "params")
    adapter = _check_integer(adapter, "adapter")
    # Forward 2, input gradient 2 for every weight; weight gradient 2 for the trained.
    expected = (4 * (params + adapter) + 2 * adapter) / (6 * params)
    if math.isclose(answer, adapter / params, rel_tol=5e-3):
        hint = "The frozen weights still run forward and pass gradients back."
    elif math.isclose(answer, 0.5, rel_tol=5e-3):
        hint = "The backward pass costs twice the forward: 2 for the input gradient, "
        hint += "2 for the weight gradient, per weight and token."
    elif math.isclose(answer, 2 / 3, rel_tol=2e-3) and adapter:
        hint = "Two thirds is the frozen weights alone; the adapter's weights also run "
        hint += "forward and back and compute their own gradient: 4(N + N_a) + 2N_a."
    else:
        hint = "Per weight and token: 2 forward, 2 input gradient, 2 weight gradient."
    return _report(
        math.isclose(answer, expected, rel_tol=5e-3),
        f"The count predicts {expected:.4f} of a full step.",
        hint,
    )


def check_adapter_file_bytes(
    layers: int, width: int, r: int, matrices: int, bytes_per_value: int, answer: int
) -> bool:
    """Check claimed bytes of a LoRA checkpoint on square matrices. [Ch. 10, 10.3]"""
    answer = _check_integer(answer, "answer")
    expected = 2 * width * r * matrices * layers * bytes_per_value
    if answer * 2 == expected:
        # With 2 bytes per value, "forgot the bytes" and "one factor only" coincide.
        hint = "That is half: either the count of values (multiply by the bytes each "
        hint += "takes) or one factor only (each adapted matrix stores A, r×d, and B, "
        hint += "d×r)."
    elif answer * bytes_per_value == expected:
        hint = "That is the number of values: multiply by the bytes each one takes."
    else:
        hint = "2·d·r values per adapted matrix per layer, times bytes per value."
    return _report(
        answer == expected, f"{expected:,} bytes ({expected / 1e6:.1f} MB).", hint
    )


# --- Chapter 11 -------------------------------------------------------------------


def _check_real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def check_lora_share(d: int, k: int, r: int, answer: float) -> bool:
    """Check a claimed r(d + k)/(d·k), LoRA's share of a d×k matmul. [Ex. 11.1]"""
    d, k, r = (_check_integer(v, n) for v, n in ((d, "d"), (k, "k"), (r, "r")))
    answer = _check_real(answer, "answer")
    expected = r * (d + k) / (d * k)
    if math.isclose(answer, 100 * expected, rel_tol=1e-2):
        hint = "That is a percentage: give the share as a fraction."
    elif math.isclose(answer, 2 * expected, rel_tol=1e-2):
        hint = "The base matmul costs 2dk too: the factors of 2 cancel."
    else:
        hint = "A costs 2rk and B 2dr per token, against 2dk for the base matmul."
    return _report(
        math.isclose(answer, expected, rel_tol=1e-2),
        f"LoRA adds {expected:.3%} of the projection's work.",
        hint,
    )


def check_adapter_gigabytes(
    r: int,
    layers: int,
    shapes: list,
    adapters: int,
    bytes_per_number: int,
    answer: float,
) -> bool:
    """Check claimed GB (1e9 bytes) of `adapters` adapters, to 1%. [Ex. 11.2]

    shapes lists each adapted weight's (d_out, d_in) in one layer.
    """
    r, layers, adapters, bytes_per_number = (
        _check_integer(value, name)
        for value, name in (
            (r, "r"),
            (layers, "layers"),
            (adapters, "adapters"),
            (bytes_per_number, "bytes_per_number"),
        )
    )
    answer = _check_real(answer, "answer")
    per_adapter = layers * sum(r * (d + k) for d, k in shapes)
    expected = adapters * bytes_per_number * per_adapter / 1e9
    if math.isclose(answer, expected / adapters, rel_tol=1e-2):
        hint = "That is one adapter: multiply by the number of adapters."
    elif math.isclose(answer, expected * 2**30 / 1e9, rel_tol=1e-2) or math.isclose(
        answer, expected * 1e9 / 2**30, rel_tol=1e-2
    ):
        hint = "Use GB = 10⁹ bytes, not GiB = 2³⁰ bytes."
    else:
        hint = "Each d×k weight adds r(d + k) numbers; sum over weights and layers."
    return _report(
        math.isclose(answer, expected, rel_tol=1e-2),
        f"{adapters:,} adapters take {expected:.2f} GB.",
        hint,
    )


def check_cross_term_norm(answer: float) -> bool:
    """Check ‖(B₁+B₂)(A₁+A₂) − (B₁A₁+B₂A₂)‖_F for Exercise 11.3, to 3 decimals."""
    answer = _check_real(answer, "answer")
    B1, A1 = torch.tensor([[1.0], [0.0]]), torch.tensor([[1.0, 0.0]])
    B2, A2 = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0, 1.0]])
    expected = ((B1 + B2) @ (A1 + A2) - (B1 @ A1 + B2 @ A2)).norm().item()
    if math.isclose(answer, 0.0, abs_tol=1e-3):
        hint = "(B₁+B₂)(A₁+A₂) also holds B₁A₂ and B₂A₁: a product of sums."
    elif math.isclose(answer, 2.0, abs_tol=1e-3):
        hint = "That is the squared norm: take the square root."
    else:
        hint = "Write out both 2×2 matrices and the Frobenius norm of their difference."
    return _report(
        math.isclose(answer, expected, abs_tol=1e-3),
        f"The cross terms have norm √2 ≈ {expected:.3f}, as large as ΔW₁ + ΔW₂'s.",
        hint,
    )


# --- Chapter 12 -------------------------------------------------------------------


def check_allreduce_bytes(answer: int) -> bool:
    """Check the bytes DDP all-reduces a step for Exercise 12.1's adapter. [Ch. 12]

    Llama-3-8B, LoRA r = 8 on q_proj and v_proj, float32 gradients.
    """
    answer = _check_integer(answer, "answer")
    layers, width, kv_width, r = 32, 4096, 1024, 8
    count = layers * r * ((width + width) + (width + kv_width))
    expected = 4 * count
    if answer == count:
        hint = "That is the number of gradients: each float32 gradient is 4 bytes."
    elif answer == 2 * count:
        hint = "The adapter trains in float32, so its gradients take 4 bytes, not 2."
    elif answer == 4 * layers * r * 2 * (width + width):
        hint = "v_proj maps 4096 to 8 key/value heads of 128, 1024 numbers, not 4096."
    else:
        hint = "Count r·(d_in + d_out) for each adapted layer, times 32 layers, × 4."
    return _report(answer == expected, f"{expected:,} bytes a step.", hint)


def check_zero_stage2_gb(answer: float) -> bool:
    """Check Exercise 12.2: GB a GPU for Llama-3-8B under ZeRO stage 2 on 4. [Ch. 12]"""
    from lora_edu.distributed import zero_bytes_per_device

    psi = 8_030_261_248
    expected = zero_bytes_per_device(psi, 4, 2) / 1e9
    stages = {s: zero_bytes_per_device(psi, 4, s) / 1e9 for s in (0, 1, 3)}
    wrong = [s for s, gb in stages.items() if math.isclose(answer, gb, abs_tol=0.01)]
    if wrong:
        hint = (
            f"That is stage {wrong[0]}; stage 2 shards gradients and optimizer states."
        )
    elif math.isclose(answer, expected * 1e9 / 2**30, abs_tol=0.01):
        hint = "That is in GiB (2³⁰ bytes); give GB, 10⁹ bytes."
    else:
        hint = "Stage 2 keeps the 2-byte weights whole: 2Ψ + (2 + 12)Ψ / N_d."
    return _report(
        math.isclose(answer, expected, abs_tol=0.01), f"{expected:.2f} GB a GPU.", hint
    )


def check_rank_loss_scale(tokens: list[int], rank: int, answer: float) -> bool:
    """Check the factor a rank's mean loss needs before DDP averages. [Ch. 12, Ex. 12.3]

    tokens: each rank's count of scored tokens this step.
    """
    world, total = len(tokens), sum(tokens)
    expected = world * tokens[rank] / total
    if math.isclose(answer, tokens[rank] / total, rel_tol=1e-3):
        hint = "DDP divides the summed gradients by the number of ranks: undo that too."
    elif math.isclose(answer, 1 / expected, rel_tol=1e-3):
        hint = "A rank with more tokens must weigh more in the mean, not less."
    else:
        hint = "The whole batch's mean weighs each rank's mean by its share of tokens."
    return _report(
        math.isclose(answer, expected, rel_tol=1e-3),
        f"The factor is {expected:.4g}.",
        hint,
    )
