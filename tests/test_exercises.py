"""The learners' checks: right answers pass, wrong ones get a hint that does not give the answer away."""

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
    assert verdict(capsys, exercises.check_has_rank, [[1, 2], [2, 4]], 1)[0]
    result, out = verdict(capsys, exercises.check_has_rank, np.ones((4, 4)), 2)
    assert not result and "has rank 1, not 2" in out and "independent" in out
    result, out = verdict(capsys, exercises.check_has_rank, np.eye(4), 2)
    assert not result and "has rank 4, not 2" in out and "combinations" in out


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
    assert not result and "spectral-norm error" in out
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
