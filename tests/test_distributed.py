"""lora_edu.distributed: ZeRO's formulas; the experiment, run for real by torchrun."""

import json

import pytest
import torch

from lora_edu import distributed
from lora_edu.distributed import ATTENTION, zero_bytes_per_device
from lora_edu.llama import build_on_meta, llama3_8b_config, memory_table
from lora_edu.lora import inject_lora, lora_parameters

STEPS = 4


@pytest.mark.parametrize("devices", [1, 2, 64])
def test_zero_formulas_are_the_papers(devices):
    psi, n = 7_500_000_000, devices
    papers = [16 * psi, 4 * psi + 12 * psi / n, 2 * psi + 14 * psi / n, 16 * psi / n]
    for stage, expected in enumerate(papers):
        assert zero_bytes_per_device(psi, n, stage) == pytest.approx(expected)


def test_zero_with_a_frozen_base_counts_weights_alone_for_it():
    # fp32 everywhere (4 + 4 + 8 bytes), 100 parameters, 10 trainable, 2 devices.
    sizes = {"weight": 4, "gradient": 4, "optimizer": 8}
    per_stage = [zero_bytes_per_device(100, 2, s, 10, **sizes) for s in range(4)]
    assert per_stage == [400 + 40 + 80, 400 + 40 + 40, 400 + 20 + 40, 260]


@pytest.mark.parametrize(
    "args", [(10, 2, 4), (10, 0, 3), (10, 2, 3, 11), (-1, 2, 3), (10, 2, 3, -1)]
)
def test_zero_rejects_what_has_no_meaning(args):
    with pytest.raises(ValueError):
        zero_bytes_per_device(*args)


def test_fsdp_table_is_the_memory_table_shared_out():
    model = inject_lora(build_on_meta(llama3_8b_config()), ATTENTION, r=4, lora_alpha=4)
    rows, table = memory_table(model), distributed.fsdp_memory_table(model, (2, 8))
    assert [r["method"] for r in rows] == [r["method"] for r in table]
    assert all(t[n] == r["total"] / n for r, t in zip(rows, table) for n in (2, 8))
    # Full fine-tuning there is ZeRO stage 3: 16 bytes a parameter, split 8 ways.
    psi = sum(p.numel() for p in build_on_meta(llama3_8b_config()).parameters())
    assert table[0][8] == zero_bytes_per_device(psi, 8, 3)


def test_70b_config_has_the_published_size():
    model = build_on_meta(distributed.llama3_70b_config())
    assert sum(p.numel() for p in model.parameters()) == 70_553_706_496


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both ranks' results of `python -m lora_edu.distributed` under torchrun."""
    output = tmp_path_factory.mktemp("ddp") / "results.json"
    run = distributed.torchrun(
        ["-m", "lora_edu.distributed", f"--output={output}", f"--steps={STEPS}"],
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().endswith("2 ranks wrote results.json")
    return json.loads(output.read_text())


def test_two_processes_over_half_batches_equal_one_over_the_whole(ranks):
    assert ranks[0]["adapter"] == ranks[1]["adapter"]  # DDP keeps the copies equal
    model = distributed.lora_model()
    losses = distributed.train_steps(model, distributed.corpus_blocks(), STEPS, 8)
    assert losses == pytest.approx(ranks[0]["losses"], abs=1e-5)
    assert losses[-1] != pytest.approx(losses[0], abs=1e-3)  # it trained
    for name, tensor in lora_parameters(model).items():
        alone = torch.tensor(ranks[0]["adapter"][name])
        torch.testing.assert_close(tensor.detach(), alone, rtol=1e-4, atol=1e-5)


def test_all_reduced_bytes_are_trainable_parameters_times_four(ranks):
    for rank in ranks:
        assert rank["lora bytes per step"] == 4 * rank["lora trainable"]
        assert rank["full bytes per step"] == 4 * rank["full trainable"]
        assert (
            rank["full trainable"] == rank["parameters"] > 50 * rank["lora trainable"]
        )


def test_each_rank_holds_its_share_of_the_sharded_model(ranks):
    trainable, total = ranks[0]["lora trainable"], ranks[0]["parameters"]
    whole = {
        "frozen weights": 4 * (total - trainable),
        "trainable weights": 4 * trainable,
        "gradients": 4 * trainable,
        "optimizer states": 8 * trainable,
    }
    for key, size in whole.items():
        assert sum(rank["share"][key] for rank in ranks) == size
        for rank in ranks:  # an odd row count leaves one rank a row more
            assert rank["share"][key] == pytest.approx(size / 2, rel=0.01)
    formula = zero_bytes_per_device(total, 2, 3, trainable, 4, 4, 8)
    for rank in ranks:
        assert sum(rank["share"].values()) == pytest.approx(formula, rel=0.01)
