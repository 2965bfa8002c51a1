"""Tests of lora_edu.cost: the ledger, the activation formula, the FLOP count."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lora_edu import cost
from lora_edu.llama import memory_table


def toy_step(optimizer_class=torch.optim.AdamW, batch=5):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    optimizer = optimizer_class(model.parameters())
    x = torch.randn(batch, 4)
    with cost.SavedActivations(model) as saved:
        loss = model(x).sum()
    activations = saved.bytes
    loss.backward()
    optimizer.step()
    return model, optimizer, activations


def test_ledger_matches_bytes_counted_by_hand():
    model, optimizer, activations = toy_step()
    row = cost.ledger(model, optimizer, activations)
    n = 4 * 3 + 3 + 3 * 2 + 2  # 23 parameters in four tensors
    assert row["weights"] == 4 * n
    assert row["gradients"] == 4 * n
    # AdamW: two float32 moments per parameter, one float32 step count per tensor.
    assert row["optimizer"] == 2 * 4 * n + 4 * 4
    # The first matmul keeps its input x (5×4) for its weight's gradient, ReLU keeps
    # its output (5×3), which the second matmul keeps too: one storage.
    assert activations == 4 * (5 * 4 + 5 * 3)
    assert row["total"] == sum(row[k] for k in cost.LEDGER)


def test_sgd_without_momentum_has_no_optimizer_state():
    model, optimizer, activations = toy_step(lambda p: torch.optim.SGD(p, lr=0.1))
    assert cost.ledger(model, optimizer, activations)["optimizer"] == 0


def test_mixed_precision_adamw_keeps_float32_masters_and_moments():
    torch.manual_seed(0)
    model = nn.Linear(8, 4, bias=False).to(torch.bfloat16)
    reference = model.weight.detach().float().clone().requires_grad_()
    optimizer = cost.MixedPrecisionAdamW(model.parameters(), lr=0.1)
    check = torch.optim.AdamW([reference], lr=0.1)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    model(x).float().square().sum().backward()
    reference.grad = model.weight.grad.float()
    optimizer.step()
    check.step()
    row = cost.ledger(model, optimizer, 0)
    assert row["weights"] == row["gradients"] == 2 * 32
    assert row["optimizer"] == 4 * 32 * 3 + 4  # master, two moments, step count
    # The bf16 weight is the float32 master's step, rounded.
    assert torch.equal(model.weight, reference.detach().to(torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("r", [0, 4])
def test_activation_formula_matches_saved_tensors(dtype, r):
    model = cost.llama_shaped(128, 2, vocab=256, dtype=dtype)
    if r:
        cost.add_lora(model, r)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = (
        cost.MixedPrecisionAdamW(trainable)
        if dtype == torch.bfloat16 and not r
        else torch.optim.AdamW(trainable)
    )
    ids = torch.randint(0, 256, (2, 16))
    row = cost.measured_step(model, optimizer, ids)
    formula = cost.activation_bytes_formula(
        model.config, 2, 16, dtype.itemsize, lora_r=r
    )
    assert formula == pytest.approx(row["activations"], rel=1e-3)


def test_ledger_agrees_with_memory_table_within_one_percent():
    ids = torch.randint(0, 256, (2, 16))
    full = cost.llama_shaped(128, 2, vocab=256, dtype=torch.bfloat16)
    lora = cost.add_lora(cost.llama_shaped(128, 2, vocab=256, dtype=torch.bfloat16), 4)
    table = memory_table(lora)
    measured = [
        cost.measured_step(full, cost.MixedPrecisionAdamW(full.parameters()), ids),
        cost.measured_step(
            lora,
            torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad]),
            ids,
        ),
    ]
    for row, formula in zip(measured, table):
        for key in ("weights", "gradients", "optimizer"):
            assert row[key] == pytest.approx(formula[key], rel=0.01), (row, formula)


def test_training_flops_match_a_flop_counter():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(16, 32, bias=False), nn.Linear(32, 32, bias=False), nn.Linear(32, 8)
    )
    model[2].bias.requires_grad_(False)
    x = torch.randn(10, 16, requires_grad=True)  # the first layer's input gradient too
    for frozen in ([], [1]):
        for i in frozen:
            model[i].weight.requires_grad_(False)
        params = 16 * 32 + 32 * 32 + 32 * 8
        trainable = params - sum(model[i].weight.numel() for i in frozen)
        with FlopCounterMode(display=False) as counter:
            model(x).sum().backward()
        # The counter counts matmuls; the bias adds are not FLOPs it counts.
        assert counter.get_total_flops() == cost.training_flops(params, trainable, 10)


def test_training_flops_rejects_bad_counts():
    with pytest.raises(ValueError, match="trainable"):
        cost.training_flops(10, 11, 1)
    with pytest.raises(ValueError, match="non-negative"):
        cost.training_flops(-1, 0, 1)


def test_fitted_slope_recovers_a_power_law():
    x = [1, 2, 4, 8]
    assert cost.fitted_slope(x, [3 * v**1.5 for v in x]) == pytest.approx(1.5)


def test_command_rejects_a_file_as_output(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        cost.main(["--output", str(target), "--quick"])
    assert exit_info.value.code == 2
    assert "is a file" in capsys.readouterr().err


def test_command_refuses_a_folder_of_other_files_before_measuring(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        cost.main(["--output", str(tmp_path), "--quick"])
    assert exit_info.value.code == 2
    assert "not ours" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"
