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
            "has rank 1, not 2: make a row that depends on the others independent",
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
    # Three decimals, rounded correctly, are right; off by one in the third are not.
    assert verdict(capsys, exercises.check_singular_values, A, [6.708, 2.236])[0]
    result, out = verdict(capsys, exercises.check_singular_values, A, [6.708, 2.237])
    assert not result and "Some values are off" in out
    result, out = verdict(capsys, exercises.check_singular_values, A, [45.0, 5.0])
    assert not result and "square roots" in out


def test_check_approximation_error(capsys):
    D = np.diag([3.0, 2.0, 1.0])
    assert verdict(capsys, exercises.check_approximation_error, D, 1, np.sqrt(5))[0]
    result, out = verdict(capsys, exercises.check_approximation_error, D, 1, 2.0)
    assert not result and "spectral-norm error" in out and "_{" not in out
    result, out = verdict(capsys, exercises.check_approximation_error, D, 1, 1.0)
    assert not result and "Eckart–Young" in out
    # The solution's √5 ≈ 2.236 is right; 2.237 is off in the third decimal.
    assert verdict(capsys, exercises.check_approximation_error, D, 1, 2.236)[0]
    result, out = verdict(capsys, exercises.check_approximation_error, D, 1, 2.237)
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


def test_check_lora_share(capsys):
    check = exercises.check_lora_share
    assert verdict(capsys, check, 1024, 4096, 16, 0.0195)[0]  # the rounded answer
    for wrong, hint in [
        (1.95, "percentage"),
        (0.039, "factors of 2 cancel"),
        (0.0078, "A costs 2rk"),
    ]:
        result, out = verdict(capsys, check, 1024, 4096, 16, wrong)
        assert not result and hint in out, out
    with pytest.raises(TypeError):
        check(1024, 4096, 16.0, 0.0195)


def test_check_adapter_gigabytes(capsys):
    check = exercises.check_adapter_gigabytes
    shapes = [(4096, 4096), (1024, 4096)]
    assert verdict(capsys, check, 8, 32, shapes, 1000, 2, 6.82)[0]
    for wrong, hint in [
        (0.00682, "one adapter"),
        (6.82 * 1e9 / 2**30, "10⁹ bytes"),
        (13.64, "r(d + k) numbers"),
    ]:
        result, out = verdict(capsys, check, 8, 32, shapes, 1000, 2, wrong)
        assert not result and hint in out, out


def test_check_cross_term_norm(capsys):
    check = exercises.check_cross_term_norm
    assert verdict(capsys, check, 1.414)[0]
    for wrong, hint in [(0.0, "product of sums"), (2.0, "square root"), (1.0, "Write")]:
        result, out = verdict(capsys, check, wrong)
        assert not result and hint in out, out
    with pytest.raises(ValueError):
        check(float("nan"))


# Every check whose answer is a real number, with the right answer as its exercise's
# solution rounds it. Integer answers, matrices and functions are checked exactly.
ROUNDED_RIGHT_ANSWERS = {
    "check_singular_values": ([[3, 0], [4, 5]], [6.708, 2.236]),
    "check_approximation_error": (np.diag([3.0, 2.0, 1.0]), 1, 2.236),
    "check_perplexity": (1.25, 3.49),
    "check_perplexity_factor": (0.1, 0.905),
    "check_rslora_alpha": (64, 16, 128),
    "check_pissa_energy": (np.diag([3.0, 2.0, 1.0]), 1, 0.643),
    "check_nf4_bits": (128, 4.0635),
    "check_random_subspace_similarity": (12288, 8, 64, 0.0052),
    "check_amplification_factor": (3.57, 1.90, 1.88),
    "check_lora_share": (1024, 4096, 16, 0.0195),
    "check_adapter_gigabytes": (8, 32, [(4096, 4096), (1024, 4096)], 1000, 2, 6.82),
    "check_cross_term_norm": (1.414,),
    "check_zero_stage2_gb": (44.17,),
    "check_rank_loss_scale": ([3000, 1000], 0, 1.5),
    "check_full_finetune_gigabytes": (8_030_261_248, 128.48),
    "check_lora_flop_ratio": (1_000_000_000, 4_000_000, 0.6707),
}
EXACT_ANSWERS = {
    "check_rank",
    "check_has_rank",
    "check_lora_parameter_count",
    "check_lora_budget",
    "check_lora_forward",
    "check_merged_weight",
    "check_lora_count_for_config",
    "check_dora_parameter_count",
    "check_pissa_to_lora",
    "check_nf4_codes",
    "check_kbit_cast_count",
    "check_square_lora_budget",
    "check_allreduce_bytes",
    "check_adapter_file_bytes",
}


@pytest.mark.parametrize("name", sorted(ROUNDED_RIGHT_ANSWERS))
def test_a_correctly_rounded_answer_is_right(name, capsys):
    result, out = verdict(
        capsys, getattr(exercises, name), *ROUNDED_RIGHT_ANSWERS[name]
    )
    assert result is True, out


def test_every_check_is_listed_as_rounded_or_exact():
    checks = {name for name in dir(exercises) if name.startswith("check_")}
    listed = set(ROUNDED_RIGHT_ANSWERS) | EXACT_ANSWERS
    assert checks == listed, (
        "list each new check in ROUNDED_RIGHT_ANSWERS (with its solution's rounded "
        f"answer) or EXACT_ANSWERS: {sorted(checks ^ listed)}"
    )


def test_check_allreduce_bytes(capsys):
    check = exercises.check_allreduce_bytes
    assert verdict(capsys, check, 13_631_488)[0]
    with pytest.raises(TypeError):
        check(13.6e6)
    for wrong, hint in [
        (3_407_872, "number of gradients"),
        (6_815_744, "not 2"),
        (16_777_216, "1024 numbers"),
        (7, "Count r·(d_in + d_out)"),
    ]:
        result, out = verdict(capsys, check, wrong)
        assert not result and hint in out, out


def test_check_zero_stage2_gb(capsys):
    check = exercises.check_zero_stage2_gb
    assert verdict(capsys, check, 44.17)[0]  # the solution's rounding
    assert verdict(capsys, check, 44.166436864)[0]
    for wrong, hint in [
        (32.12, "stage 3"),
        (56.21, "stage 1"),
        (41.13, "GiB"),
        (44.2, "2Ψ + (2 + 12)Ψ / N_d"),
    ]:
        result, out = verdict(capsys, check, wrong)
        assert not result and hint in out, out


def test_check_rank_loss_scale(capsys):
    check = exercises.check_rank_loss_scale
    assert verdict(capsys, check, [3000, 1000], 0, 1.5)[0]
    assert verdict(capsys, check, [3000, 1000], 1, 0.5)[0]
    assert verdict(capsys, check, [100, 100, 200], 2, 1.5)[0]
    for wrong, hint in [
        (0.75, "number of ranks"),
        (1 / 1.5, "weigh more"),
        (1.0, "share of tokens"),
    ]:
        result, out = verdict(capsys, check, [3000, 1000], 0, wrong)
        assert not result and hint in out, out


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
        (2 / 3, "frozen weights alone"),
        (2 / 3 * 1.1, "Per weight and token"),
    ]:
        result, out = verdict(capsys, exercises.check_lora_flop_ratio, *args, wrong)
        assert not result and hint in out, out


def test_check_adapter_file_bytes(capsys):
    args = (96, 12288, 4, 2, 2)
    assert verdict(capsys, exercises.check_adapter_file_bytes, *args, 37_748_736)[0]
    for wrong, hint in [
        (18_874_368, "either the count of values"),
        (18_874_368, "one factor only"),
        (35_000_000, "2·d·r values"),
    ]:
        result, out = verdict(capsys, exercises.check_adapter_file_bytes, *args, wrong)
        assert not result and hint in out, out
    # With 4 bytes per value the count of values is a quarter, not a half.
    fp32 = (96, 12288, 4, 2, 4)
    result, out = verdict(capsys, exercises.check_adapter_file_bytes, *fp32, 18_874_368)
    assert not result and "bytes each one takes" in out, out
    with pytest.raises(TypeError):
        exercises.check_adapter_file_bytes(*args, 37.7e6)
