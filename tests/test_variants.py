"""lora_edu.variants and rsLoRA, each checked against PEFT, number for number."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from lora_edu import exercises
from lora_edu.llama import load_model
from lora_edu.lora import LoRALinear, inject_lora, lora_layers, save_adapter
from lora_edu.pretrain import pack_blocks, weather_reports
from lora_edu.variants import (
    DoRALinear,
    adapted_layers,
    copy_adapter_from_peft,
    inject_dora,
    pissa_init,
    train,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def random_llama(dtype=torch.float32) -> LlamaForCausalLM:
    """A small random Llama 3-shaped model (grouped-query attention)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).to(dtype).eval()


@pytest.fixture(scope="module")
def shipped():
    """The course's tiny Llama 3 and packed weather reports (Chapter 6's task)."""
    model, tokenizer = load_model()
    return model, pack_blocks(tokenizer, weather_reports(200, 0), 64)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def peft_model(base, **config):
    torch.manual_seed(1)
    options = {"r": 8, "lora_alpha": 16, "target_modules": TARGETS, **config}
    return get_peft_model(copy.deepcopy(base), LoraConfig(**options)).eval()


@torch.no_grad()
def randomize_b(peft, seed=2):
    """PEFT starts B at zero; give every B a value, so that adapters matter."""
    generator = torch.Generator().manual_seed(seed)
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.05)
    return peft


# --- rsLoRA: use_rslora=True on Chapter 4's layer -------------------------------------


@pytest.mark.parametrize("make", ["random", "shipped"])
def test_rslora_logits_equal_peft_at_the_same_weights(make, shipped):
    base = random_llama() if make == "random" else shipped[0]
    ids = shipped[1][:2, :32] % base.config.vocab_size
    theirs = randomize_b(peft_model(base, r=16, use_rslora=True))
    ours = inject_lora(copy.deepcopy(base), TARGETS, 16, 16, use_rslora=True)
    copy_adapter_from_peft(ours, theirs)
    assert next(iter(lora_layers(ours).values())).scaling == 16 / 4
    difference = (logits(ours, ids) - logits(theirs, ids)).abs().max().item()
    assert difference <= 1e-5
    # The check can fail: the same weights under α/r give other logits.
    for layer in lora_layers(ours).values():
        layer.scaling = layer.lora_alpha / layer.r
    assert (logits(ours, ids) - logits(theirs, ids)).abs().max().item() > 1e-3


# --- PiSSA ----------------------------------------------------------------------------


@pytest.mark.parametrize("use_rslora", [False, True])
def test_pissa_matches_peft_up_to_the_signs_of_singular_vectors(use_rslora, shipped):
    base, ids = shipped[0], shipped[1][:2]
    theirs = peft_model(base, init_lora_weights="pissa", use_rslora=use_rslora)
    ours = inject_lora(copy.deepcopy(base), TARGETS, 8, 16, use_rslora=use_rslora)
    for layer in lora_layers(ours).values():
        pissa_init(layer)
    for name, layer in lora_layers(ours).items():
        peft_layer = theirs.get_submodule(f"base_model.model.{name}")
        residual = peft_layer.base_layer.weight
        product = peft_layer.get_delta_weight("default")  # (α/r)·BA, PEFT's scaling
        assert (layer.weight - residual).abs().max() <= 1e-5
        assert (layer.delta_weight() - product).abs().max() <= 1e-5
        # Each singular pair (u, v) is fixed only up to a common sign (Chapter 2).
        B, A = peft_layer.lora_B["default"].weight, peft_layer.lora_A["default"].weight
        signs = torch.sign((layer.lora_B * B).sum(0))
        assert (layer.lora_B - B * signs).abs().max() <= 1e-5
        assert (layer.lora_A - A * signs[:, None]).abs().max() <= 1e-5
        assert layer.lora_B.norm() > 0.1  # not a zero initialisation
    assert (logits(ours, ids) - logits(theirs, ids)).abs().max() <= 1e-5


def test_pissa_leaves_the_output_unchanged_at_initialisation(shipped):
    base, ids = random_llama(), shipped[1][:2, :32] % 128
    model = inject_lora(copy.deepcopy(base), TARGETS, 8, 16)
    original = {n: layer.weight.clone() for n, layer in lora_layers(model).items()}
    for layer in lora_layers(model).values():
        pissa_init(layer)
    assert (logits(model, ids) - logits(base, ids)).abs().max() <= 1e-5
    for name, layer in lora_layers(model).items():
        assert (layer.weight - original[name]).norm() > 0.1  # the base really changed
        # s·BA is the best rank-r approximation; the residual is the tail (Ch. 3).
        tail = torch.linalg.svdvals(original[name])[8:]
        assert torch.isclose(layer.weight.norm(), tail.norm(), rtol=1e-4)


def test_pissa_refuses_bad_layers_and_changes_nothing():
    with pytest.raises(TypeError, match="must be a LoRALinear, got Linear"):
        pissa_init(nn.Linear(4, 4))
    layer = LoRALinear(8, 8, r=2, lora_alpha=2)
    layer.merge()
    with pytest.raises(ValueError, match="unmerge"):
        pissa_init(layer)
    layer = LoRALinear(8, 8, r=2, lora_alpha=2)
    with torch.no_grad():
        layer.weight[0, 0] = float("nan")
    before = [p.clone() for p in (layer.lora_A, layer.lora_B)]
    with pytest.raises(ValueError, match="NaN or infinity"):
        pissa_init(layer)
    assert all(torch.equal(a, b) for a, b in zip(before, (layer.lora_A, layer.lora_B)))


# --- DoRA -----------------------------------------------------------------------------


def dora_pair(base):
    theirs = randomize_b(peft_model(base, use_dora=True))
    ours = inject_dora(copy.deepcopy(base), TARGETS, 8, 16)
    copy_adapter_from_peft(ours, theirs)
    return ours, theirs


@pytest.mark.parametrize(
    ("make", "dtype", "tolerance"),
    [("random", torch.float32, 1e-5), ("shipped", torch.float64, 1e-10)],
)
def test_dora_logits_equal_peft_before_and_after_training(
    make, dtype, tolerance, shipped
):
    base = random_llama() if make == "random" else shipped[0]
    base = copy.deepcopy(base).to(dtype)
    blocks = shipped[1] % base.config.vocab_size
    ours, theirs = dora_pair(base)
    assert (logits(ours, blocks[:4]) - logits(base, blocks[:4])).abs().max() > 0.1
    before = (logits(ours, blocks[:4]) - logits(theirs, blocks[:4])).abs().max()
    assert before <= tolerance
    magnitudes = [layer.magnitude.clone() for layer in adapted_layers(ours).values()]
    ours_losses = train(ours, blocks, steps=5, lr=1e-3, seed=0)
    theirs_losses = train(theirs, blocks, steps=5, lr=1e-3, seed=0)
    assert ours_losses == pytest.approx(theirs_losses, abs=tolerance)
    after = (logits(ours, blocks[:4]) - logits(theirs, blocks[:4])).abs().max()
    assert after <= tolerance
    # Training moved the magnitudes too, so the comparison covers m's gradient.
    moved = [
        (layer.magnitude - m).abs().max()
        for layer, m in zip(adapted_layers(ours).values(), magnitudes)
    ]
    assert min(moved) > 1e-4


def test_dora_starts_as_the_base_layer_and_merges_into_one_weight():
    torch.manual_seed(0)
    linear = nn.Linear(12, 6)
    layer = DoRALinear.from_linear(linear, r=2, lora_alpha=4)
    x = torch.randn(5, 12)
    assert torch.allclose(layer(x), linear(x), atol=1e-6)
    assert torch.allclose(layer.magnitude, linear.weight.norm(dim=1))
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.magnitude.mul_(torch.linspace(0.5, 2, 6))
    merged = nn.functional.linear(x, layer.merged_weight(), layer.bias)
    assert torch.allclose(layer(x), merged, atol=1e-5)
    assert torch.allclose(layer.merged_weight().norm(dim=1), layer.magnitude)


def test_dora_trains_magnitude_a_and_b_and_detaches_the_norm():
    torch.manual_seed(0)
    layer = DoRALinear(8, 4, r=2, lora_alpha=2)
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {
        "lora_A",
        "lora_B",
        "magnitude",
    }
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 8)
    layer(x).square().sum().backward()

    def gradients(detach):
        m, A, B = (
            p.detach().clone().requires_grad_()
            for p in (layer.magnitude, layer.lora_A, layer.lora_B)
        )
        V = layer.weight + layer.scaling * B @ A
        norm = V.norm(dim=1).detach() if detach else V.norm(dim=1)
        h = m * nn.functional.linear(x, V) / norm + layer.bias
        h.square().sum().backward()
        return m.grad, A.grad, B.grad

    ours = (layer.magnitude.grad, layer.lora_A.grad, layer.lora_B.grad)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, gradients(True)))
    # Without the detach, A and B would get other gradients (DoRA §4.3).
    assert not torch.allclose(ours[2], gradients(False)[2], atol=1e-3)


def test_inject_dora_checks_before_changing_anything():
    model = random_llama()
    with pytest.raises(TypeError, match="list of names"):
        inject_dora(model, "q_proj", 4, 4)
    with pytest.raises(ValueError, match=r"\['q_prj'\] match no nn.Linear.*q_proj"):
        inject_dora(model, ["q_proj", "q_prj"], 4, 4)
    with pytest.raises(
        ValueError, match=r"r must be at most min\(in_features, out_features\) = 32"
    ):
        inject_dora(model, ["q_proj", "k_proj"], 48, 4)
    assert not adapted_layers(model)
    assert all(p.requires_grad for p in model.parameters())


def test_a_dora_model_is_not_saved_as_a_plain_lora_adapter(tmp_path):
    model = inject_dora(random_llama(), TARGETS, 4, 4)
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_adapter(model, tmp_path)


# --- the shared pieces ----------------------------------------------------------------


def test_copy_adapter_from_peft_refuses_models_that_do_not_correspond():
    base = random_llama()
    theirs = peft_model(base)
    with pytest.raises(ValueError, match="adapted in only one model"):
        copy_adapter_from_peft(
            inject_lora(copy.deepcopy(base), ["q_proj"], 8, 16), theirs
        )
    with pytest.raises(ValueError, match="scaling"):
        copy_adapter_from_peft(inject_lora(copy.deepcopy(base), TARGETS, 8, 8), theirs)
    with pytest.raises(ValueError, match="DoRA in only one"):
        copy_adapter_from_peft(inject_dora(copy.deepcopy(base), TARGETS, 8, 16), theirs)


@pytest.mark.parametrize(
    ("steps", "lr", "message"),
    [(0, 1e-3, "steps"), (2.0, 1e-3, "steps"), (2, float("nan"), "lr"), (2, -1, "lr")],
)
def test_train_rejects_bad_settings(steps, lr, message):
    model = inject_lora(random_llama(), ["q_proj"], 2, 2)
    with pytest.raises(ValueError, match=message):
        train(model, torch.zeros(4, 8, dtype=torch.long), steps, lr, seed=0)


def test_train_needs_something_to_train():
    model = random_llama().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(model, torch.zeros(4, 8, dtype=torch.long), 1, 1e-3, seed=0)


# --- the learners' checks for Chapter 8's exercises (in lora_edu.exercises) -----------


def verdict(capsys, check, *args):
    result = check(*args)
    return result, capsys.readouterr().out


def test_check_rslora_alpha(capsys):
    assert verdict(capsys, exercises.check_rslora_alpha, 64, 16, 128.0)[0]
    for wrong, hint in [
        (2.0, "divided by √r"),
        (1024, "multiplies by r"),
        (100, "solve"),
    ]:
        result, out = verdict(capsys, exercises.check_rslora_alpha, 64, 16, wrong)
        assert not result and hint in out and "128" not in out


def test_check_pissa_energy(capsys):
    weight = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    assert verdict(capsys, exercises.check_pissa_energy, weight, 1, 9 / 14)[0]
    # 9/14 = 0.642857...: three decimals are right, a share 0.002 off is not.
    assert verdict(capsys, exercises.check_pissa_energy, weight, 1, 0.643)[0]
    assert not verdict(capsys, exercises.check_pissa_energy, weight, 1, 0.645)[0]
    for wrong, hint in [(3 / 6, "summed singular values"), (5 / 14, "residual")]:
        result, out = verdict(capsys, exercises.check_pissa_energy, weight, 1, wrong)
        assert not result and hint in out


def test_check_dora_parameter_count(capsys):
    config = random_llama().config
    # q/o: 64→64, k/v: 64→32 (grouped-query attention); 2 layers; r = 4.
    lora = 2 * 4 * (2 * (64 + 64) + 2 * (64 + 32))
    magnitudes = 2 * (64 + 32 + 32 + 64)
    check = exercises.check_dora_parameter_count
    assert verdict(capsys, check, config, TARGETS, 4, lora + magnitudes)[0]
    result, out = verdict(capsys, check, config, TARGETS, 4, lora)
    assert not result and "LoRA's count" in out
    result, out = verdict(capsys, check, config, TARGETS, 4, magnitudes)
    assert not result and "only the magnitudes" in out


def test_check_pissa_to_lora(capsys):
    def right(A, B, A0, B0):
        return torch.cat([A, A0]), torch.cat([B, -B0], dim=1)

    def wrong_sign(A, B, A0, B0):
        return torch.cat([A, A0]), torch.cat([B, B0], dim=1)

    def wrong_shape(A, B, A0, B0):
        return A - A0, B

    assert verdict(capsys, exercises.check_pissa_to_lora, right)[0]
    result, out = verdict(capsys, exercises.check_pissa_to_lora, wrong_sign)
    assert not result and "minus" in out
    result, out = verdict(capsys, exercises.check_pissa_to_lora, wrong_shape)
    assert not result and "(6, 7)" in out
