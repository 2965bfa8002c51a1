"""The learners' checks: right answers pass, wrong ones get a hint, not the answer."""

import numpy as np
import pytest

from lora_edu import exercises


def verdict(capsys, check, *args):
    result = check(*args)
    return result, capsys.readouterr().out


def test_check_rank(capsys):
    M = [[1, 2, 1], [2, 4, 0], [3, 6, 1]]
    assert verdict(capsys, exercises.check_rank, M, 2) == (
        True,
        "✅ Correct. The rank is 2.\n",
    )
    result, out = verdict(capsys, exercises.check_rank, M, 3)
    assert not result and "too high" in out and "2" not in out.replace("3", "")
    result, out = verdict(capsys, exercises.check_rank, M, 1)
    assert not result and "too low" in out
    with pytest.raises(
        TypeError, match=r"answer must be an integer, got 2.0 \(float\)"
    ):
        exercises.check_rank(M, 2.0)


def test_check_has_rank(capsys):
    reference = [[1, 2, 3, 4], [2, 1, 1, 1], [3, 3, 4, 5], [4, 5, 7, 9]]
    assert verdict(capsys, exercises.check_has_rank, reference, 2) == (
        True,
        "✅ Correct. Your 4×4 matrix has rank 2 and no zero entry.\n",
    )
    assert verdict(capsys, exercises.check_has_rank, np.array(reference), 2)[0]
    assert verdict(capsys, exercises.check_has_rank, [[1, 2], [2, 4]], 1, (2, 2))[0]
    with_zero = [[1, 2, 3, 4], [2, 1, 1, 3], [3, 3, 4, 7], [-3, 0, 1, -2]]
    for wrong, hint in [
        (
            np.ones((4, 4), dtype=int),
            "has rank 1, not 2: add a row that is independent",
        ),
        (np.eye(4, dtype=int) + 1, "has rank 4, not 2: make more rows combinations"),
        (with_zero, "Row 4, column 2 is zero"),
        (np.ones((4, 4)), "Use integer entries"),
        ([[1.5, 2, 3, 4]] * 4, "Use integer entries"),
        (np.ones((3, 3), dtype=int), "asks for a 4×4 matrix; yours is 3×3"),
    ]:
        result, out = verdict(capsys, exercises.check_has_rank, wrong, 2)
        assert not result and hint in out, out


def test_check_singular_values(capsys):
    A = [[3, 0], [4, 5]]
    assert verdict(
        capsys, exercises.check_singular_values, A, [np.sqrt(5), 3 * np.sqrt(5)]
    )[0]
    result, out = verdict(capsys, exercises.check_singular_values, A, [45, 5])
    assert not result and "square roots" in out
    result, out = verdict(capsys, exercises.check_singular_values, A, [6.0])
    assert not result and "has 2 singular values; you gave 1" in out
    result, out = verdict(capsys, exercises.check_singular_values, A, [-6.7, 2.2])
    assert not result and "never negative" in out
    result, out = verdict(capsys, exercises.check_singular_values, A, [6.0, 2.0])
    assert not result and "AᵀA" in out


def test_check_approximation_error(capsys):
    D = np.diag([3.0, 2.0, 1.0])
    assert verdict(capsys, exercises.check_approximation_error, D, 1, np.sqrt(5))[0]
    result, out = verdict(capsys, exercises.check_approximation_error, D, 1, 2.0)
    assert not result and "spectral-norm error" in out and "_{" not in out
    result, out = verdict(capsys, exercises.check_approximation_error, D, 1, 1.0)
    assert not result and "Eckart–Young" in out


def test_check_lora_parameter_count(capsys):
    assert verdict(capsys, exercises.check_lora_parameter_count, 4096, 4096, 8, 65_536)[
        0
    ]
    for wrong, hint in [
        (4096 * 4096, "size of the full weight"),
        (32_768, "one factor"),
        (12, "count the entries"),
    ]:
        result, out = verdict(
            capsys, exercises.check_lora_parameter_count, 4096, 4096, 8, wrong
        )
        assert not result and hint in out


def test_check_lora_budget(capsys):
    assert verdict(capsys, exercises.check_lora_budget, 4096, 4096, 0.005, 10, 81_920)[
        0
    ]
    for r, count, hint in [
        (11, 90_112, "over the budget of 83,886. Round down"),
        (20, 163_840, "Count both factors"),
        (9, 73_728, "so does r = 10: find the largest"),
        (0, 0, "at least 1"),
        (10, 81_921, "r = 10 is right, but it trains r(d + k) parameters"),
    ]:
        result, out = verdict(
            capsys, exercises.check_lora_budget, 4096, 4096, 0.005, r, count
        )
        assert not result and hint in out, out
    with pytest.raises(ValueError, match="share must be a number between 0 and 1"):
        exercises.check_lora_budget(4096, 4096, float("nan"), 10, 81_920)


def test_check_perplexity_factor(capsys):
    assert verdict(capsys, exercises.check_perplexity_factor, 0.1, np.exp(-0.1))[0]
    for wrong, hint in [
        (np.exp(0.1), "makes perplexity rise"),
        (0.9, "exponential in the loss"),
        (0.5, "powers of e"),
    ]:
        result, out = verdict(capsys, exercises.check_perplexity_factor, 0.1, wrong)
        assert not result and hint in out, out


def test_check_lora_forward(capsys):
    def reference(x, W, b, A, B, scaling):
        return x @ W.T + b + scaling * (x @ A.T @ B.T)

    assert verdict(capsys, exercises.check_lora_forward, reference)[0]
    for wrong, hint in [
        (lambda x, W, b, A, B, s: x @ W.T + b + x @ A.T @ B.T, "forgot the scaling"),
        (lambda x, W, b, A, B, s: x @ W.T + s * (x @ A.T @ B.T), "dropped the bias"),
        (lambda x, W, b, A, B, s: x @ W.T + b + s * (x @ B @ A), "It raised"),
        (lambda x, W, b, A, B, s: (x @ W.T + b).T, "should have shape (5, 4)"),
        (lambda x, W, b, A, B, s: x @ W.T + b + s * (x @ A.T @ B.T) + 1, "values"),
    ]:
        result, out = verdict(capsys, exercises.check_lora_forward, wrong)
        assert not result and hint in out, out


def test_check_merged_weight(capsys):
    assert verdict(
        capsys, exercises.check_merged_weight, lambda W, A, B, s: W + s * B @ A
    )[0]
    for wrong, hint in [
        (lambda W, A, B, s: W + B @ A, "forgot the scaling"),
        (lambda W, A, B, s: W + s * A @ B, "It raised"),
        (lambda W, A, B, s: s * B @ A, "values are off"),
        (lambda W, A, B, s: (W + s * B @ A).T, "shape of W"),
    ]:
        result, out = verdict(capsys, exercises.check_merged_weight, wrong)
        assert not result and hint in out, out


def test_check_lora_count_for_config(capsys):
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    # q_proj: 64 → 64; v_proj: 64 → 2 heads × 16 = 32. Per layer 4(64+64) + 4(64+32).
    per_layer = 4 * (64 + 64) + 4 * (64 + 32)
    check = exercises.check_lora_count_for_config
    assert verdict(capsys, check, config, ["q_proj", "v_proj"], 4, 3 * per_layer)[0]
    for wrong, hint in [
        (3 * 2 * 4 * (64 + 64), "treated every projection as square"),
        (per_layer, "count for one layer"),
        (7, "find d_in and d_out"),
    ]:
        result, out = verdict(capsys, check, config, ["q_proj", "v_proj"], 4, wrong)
        assert not result and hint in out, out


def test_check_perplexity(capsys):
    assert verdict(capsys, exercises.check_perplexity, 1.25, np.exp(1.25))[0]
    for wrong, hint in [
        (1.25, "exponentiate with base e"),
        (2**1.25, "exponentiate with base e"),
        (10**1.25, "e to the power of the loss"),
    ]:
        result, out = verdict(capsys, exercises.check_perplexity, 1.25, wrong)
        assert not result and hint in out, out


def test_require_is_silent_on_a_right_answer_and_raises_the_hint_on_a_wrong_one(capsys):
    M = [[1, 2, 1], [2, 4, 0], [3, 6, 1]]
    exercises.require(exercises.check_rank, M, 2)
    assert capsys.readouterr().out == ""
    with pytest.raises(AssertionError, match="too high"):
        exercises.require(exercises.check_rank, M, 3)
    assert capsys.readouterr().out == ""


def test_check_full_finetune_gigabytes(capsys):
    n = 8_030_261_248
    assert verdict(capsys, exercises.check_full_finetune_gigabytes, n, 128.48)[0]
    for wrong, hint in [
        (12 * n / 1e9, "master copy"),
        (16 * n / 2**30, "GiB"),
        (2 * n / 1e9, "3 × 4"),
    ]:
        result, out = verdict(capsys, exercises.check_full_finetune_gigabytes, n, wrong)
        assert not result and hint in out, out


def test_check_lora_flop_ratio(capsys):
    args = (1_000_000_000, 4_000_000)
    assert verdict(capsys, exercises.check_lora_flop_ratio, *args, 0.6707)[0]
    for wrong, hint in [
        (0.004, "still run forward"),
        (0.5, "twice the forward"),
        (2 / 3 * 1.1, "Per weight and token"),
    ]:
        result, out = verdict(capsys, exercises.check_lora_flop_ratio, *args, wrong)
        assert not result and hint in out, out


def test_check_adapter_file_bytes(capsys):
    args = (96, 12288, 4, 2, 2)
    assert verdict(capsys, exercises.check_adapter_file_bytes, *args, 37_748_736)[0]
    for wrong, hint in [
        (18_874_368, "bytes each one takes"),
        (35_000_000, "2·d·r values"),
    ]:
        result, out = verdict(capsys, exercises.check_adapter_file_bytes, *args, wrong)
        assert not result and hint in out, out
    with pytest.raises(TypeError):
        exercises.check_adapter_file_bytes(*args, 37.7e6)
