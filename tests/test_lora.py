"""lora_edu.lora: the layer, injection, merging and adapters, checked against PEFT."""

import copy
import json
import math
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from lora_edu import lora
from lora_edu.lora import LoRALinear, inject_lora, load_adapter, save_adapter

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def tiny_llama(hidden_size=64, seed=0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        # grouped-query attention, as in Llama 3: k_proj and v_proj are narrower
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def base():
    return tiny_llama()


@pytest.fixture
def tokens():
    return torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))


def logits(model, tokens):
    with torch.no_grad():
        return model(tokens).logits


def randomize_lora(model, seed=2):
    """Give every B a non-zero value, so that the adapters change the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_B.copy_(
                torch.randn(layer.lora_B.shape, generator=generator) * 0.1
            )
    return model


def peft_twin(base, ours, r=4, lora_alpha=8, **config):
    """A PEFT model of the same base with our A and B copied in."""
    twin = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(
            r=r,
            lora_alpha=lora_alpha,
            target_modules=TARGETS,
            lora_dropout=0.0,
            **config,
        ),
    ).eval()
    with torch.no_grad():
        for name, layer in lora.lora_layers(ours).items():
            module = twin.get_submodule(f"base_model.model.{name}")
            module.lora_A["default"].weight.copy_(layer.lora_A)
            module.lora_B["default"].weight.copy_(layer.lora_B)
    return twin


# --- the layer ------------------------------------------------------------------------


def test_shapes_follow_loralib():
    layer = LoRALinear(in_features=10, out_features=6, r=3, lora_alpha=6)
    assert layer.lora_A.shape == (3, 10) and layer.lora_B.shape == (6, 3)
    assert (
        layer.scaling == 2.0
        and layer.delta_weight().shape == layer.weight.shape == (6, 10)
    )
    assert layer(torch.randn(4, 5, 10)).shape == (4, 5, 6)


def test_at_initialisation_the_layer_is_exactly_the_base_layer():
    torch.manual_seed(0)
    linear = nn.Linear(10, 6)
    layer = LoRALinear.from_linear(linear, r=3, lora_alpha=6)
    x = torch.randn(8, 10)
    assert torch.equal(layer.lora_B, torch.zeros(6, 3)) and layer.lora_A.abs().sum() > 0
    assert torch.equal(layer(x), linear(x))


def test_only_a_and_b_are_trainable():
    layer = LoRALinear(10, 6, r=2, lora_alpha=2)
    assert {name for name, p in layer.named_parameters() if p.requires_grad} == {
        "lora_A",
        "lora_B",
    }


def test_rslora_scales_by_the_square_root_of_r():
    assert LoRALinear(64, 64, r=16, lora_alpha=8).scaling == 0.5
    assert LoRALinear(64, 64, r=16, lora_alpha=8, use_rslora=True).scaling == 2.0


def test_gaussian_and_kaiming_initialisations():
    torch.manual_seed(0)
    gaussian = LoRALinear(4096, 8, r=4, lora_alpha=4, init="gaussian")
    kaiming = LoRALinear(4096, 8, r=4, lora_alpha=4)
    assert gaussian.lora_A.std().item() == pytest.approx(1 / 4, rel=0.05)
    assert kaiming.lora_A.abs().max().item() <= 1 / math.sqrt(4096)
    assert kaiming.lora_A.std().item() == pytest.approx(
        1 / math.sqrt(3 * 4096), rel=0.05
    )


def test_merge_and_unmerge_are_idempotent_and_restore_the_weight():
    torch.manual_seed(0)
    layer = LoRALinear(32, 16, r=4, lora_alpha=8)
    nn.init.normal_(layer.lora_B)
    original, x = layer.weight.clone(), torch.randn(5, 32)
    unmerged_output = layer(x)
    layer.merge()
    merged_weight = layer.weight.clone()
    layer.merge()
    assert layer.merged and torch.equal(layer.weight, merged_weight)
    torch.testing.assert_close(layer(x), unmerged_output, atol=1e-5, rtol=0)
    layer.unmerge()
    layer.unmerge()
    assert not layer.merged
    assert (layer.weight - original).abs().max().item() <= 1e-6


def test_from_linear_shares_weights_and_keeps_dtype_and_device():
    linear = nn.Linear(12, 8, dtype=torch.bfloat16)
    layer = LoRALinear.from_linear(linear, r=2, lora_alpha=4)
    assert layer.weight is linear.weight and layer.bias is linear.bias
    # As PEFT: a 16-bit base gets float32 adapters, unless asked otherwise.
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
    assert layer(torch.ones(3, 12, dtype=torch.bfloat16)).dtype == torch.bfloat16
    same = LoRALinear.from_linear(linear, r=2, lora_alpha=4, adapter_dtype=None)
    assert same.lora_A.dtype == same.lora_B.dtype == torch.bfloat16
    wide = LoRALinear.from_linear(nn.Linear(12, 8), 2, 4, adapter_dtype=torch.float64)
    assert wide.lora_A.dtype == torch.float64 and wide.weight.dtype == torch.float32
    assert not layer.weight.requires_grad and layer.lora_A.requires_grad
    no_bias = LoRALinear.from_linear(nn.Linear(12, 8, bias=False), r=2, lora_alpha=4)
    assert no_bias.bias is None


def test_from_linear_works_on_the_meta_device():
    layer = LoRALinear.from_linear(
        nn.Linear(4096, 1024, device="meta"), r=4, lora_alpha=4
    )
    assert (
        layer.weight.is_meta
        and layer.lora_A.is_meta
        and layer.lora_A.shape == (4, 4096)
    )


def test_dropout_applies_only_to_the_lora_path_in_training():
    torch.manual_seed(0)
    layer = LoRALinear(16, 16, r=4, lora_alpha=4, lora_dropout=0.5)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(3, 16)
    layer.train()
    assert not torch.equal(layer(x), layer(x))
    layer.eval()
    assert torch.equal(layer(x), layer(x))


# --- bad input: every case raises a clear error ---------------------------------------


@pytest.mark.parametrize("r", [0, -2, 2.5, True, "4"])
def test_r_must_be_a_positive_integer(r):
    with pytest.raises(ValueError, match=rf"r must be a positive integer, got {r!r}"):
        LoRALinear(16, 16, r=r, lora_alpha=4)


def test_r_cannot_exceed_the_smaller_dimension():
    with pytest.raises(
        ValueError,
        match=r"r must be at most min\(in_features, out_features\) = 8 "
        r"for a 8×32 layer, got r=9",
    ):
        LoRALinear(32, 8, r=9, lora_alpha=4)


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), True, math.inf, -math.inf])
def test_lora_alpha_must_be_positive_and_finite(alpha):
    with pytest.raises(ValueError, match=r"lora_alpha must be a finite number > 0"):
        LoRALinear(16, 16, r=4, lora_alpha=alpha)


@pytest.mark.parametrize("dropout", [float("nan"), math.inf])
def test_non_finite_dropout_is_rejected(dropout):
    with pytest.raises(ValueError, match="lora_dropout must be in"):
        lora.check_lora_arguments(16, 16, 4, 8, lora_dropout=dropout)


@pytest.mark.parametrize("flag", ["false", 0, None])
def test_use_rslora_must_be_a_bool(flag):
    with pytest.raises(ValueError, match="use_rslora must be True or False"):
        LoRALinear(16, 16, r=4, lora_alpha=8, use_rslora=flag)


def test_bad_dropout_and_init_are_rejected():
    with pytest.raises(ValueError, match=r"lora_dropout must be in \[0, 1\), got 1.0"):
        LoRALinear(16, 16, r=4, lora_alpha=4, lora_dropout=1.0)
    with pytest.raises(
        ValueError, match=r"init must be 'kaiming' or 'gaussian', got 'zeros'"
    ):
        LoRALinear(16, 16, r=4, lora_alpha=4, init="zeros")


def test_target_modules_that_match_nothing_list_the_linear_layers(base):
    with pytest.raises(ValueError, match=r"\['query'\] match no module") as error:
        inject_lora(base, ["q_proj", "query"], r=4, lora_alpha=4)
    for name in [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "lm_head",
    ]:
        assert name in str(error.value)
    assert not lora.lora_layers(base), (
        "a failed injection must leave the model untouched"
    )


def test_a_target_module_must_be_a_linear_layer(base):
    with pytest.raises(
        TypeError,
        match=r"target module 'model.layers.0.input_layernorm' is a LlamaRMSNorm, "
        r"not an nn.Linear",
    ):
        inject_lora(base, ["input_layernorm"], r=4, lora_alpha=4)
    assert all(p.requires_grad for p in base.parameters()), (
        "a failed injection must not freeze the model"
    )


def test_target_modules_must_be_a_list_not_a_string(base):
    with pytest.raises(
        TypeError,
        match=r"target_modules must be a list of names, got the string 'q_proj'",
    ):
        inject_lora(base, "q_proj", r=4, lora_alpha=4)


def test_injecting_twice_is_an_error(base):
    inject_lora(base, TARGETS, r=4, lora_alpha=4)
    with pytest.raises(
        ValueError, match="already has LoRA layers: inject_lora must be called once"
    ):
        inject_lora(base, ["gate_proj"], r=4, lora_alpha=4)


def test_a_quantized_layer_is_refused():
    linear = nn.Linear(8, 8)
    linear.weight = nn.Parameter(
        torch.zeros(8, 8, dtype=torch.int8), requires_grad=False
    )
    with pytest.raises(TypeError, match=r"quantized torch\.int8 weight"):
        LoRALinear.from_linear(linear, r=2, lora_alpha=2)
    with pytest.raises(
        TypeError, match=r"linear must be a plain nn\.Linear, got LoRALinear"
    ):
        LoRALinear.from_linear(LoRALinear(8, 8, r=2, lora_alpha=2), r=2, lora_alpha=2)


@pytest.mark.parametrize(
    "missing", ["adapter_config.json", "adapter_model.safetensors"]
)
def test_an_adapter_directory_with_a_missing_file(base, tmp_path, missing):
    save_adapter(
        inject_lora(copy.deepcopy(base), TARGETS, r=4, lora_alpha=4),
        tmp_path / "adapter",
    )
    (tmp_path / "adapter" / missing).unlink()
    with pytest.raises(
        FileNotFoundError, match=rf"is not a complete adapter: missing {missing}"
    ):
        load_adapter(base, tmp_path / "adapter")
    with pytest.raises(
        FileNotFoundError,
        match=r"missing adapter_config\.json, adapter_model\.safetensors",
    ):
        load_adapter(base, tmp_path / "nowhere")


def test_an_adapter_whose_shapes_do_not_fit_names_the_module_and_both_shapes(tmp_path):
    save_adapter(
        inject_lora(tiny_llama(hidden_size=64), TARGETS, r=4, lora_alpha=4),
        tmp_path / "adapter",
    )
    smaller = tiny_llama(hidden_size=32)
    with pytest.raises(
        ValueError,
        match=r"lora_A for 'model.layers.0.self_attn.q_proj' has shape \(4, 64\), "
        r"but the model needs \(4, 32\)",
    ):
        load_adapter(smaller, tmp_path / "adapter")
    assert not lora.lora_layers(smaller), "a failed load must leave the model untouched"


def test_an_adapter_saved_with_a_different_r(base, tmp_path):
    save_adapter(
        inject_lora(copy.deepcopy(base), TARGETS, r=8, lora_alpha=8),
        tmp_path / "adapter",
    )
    inject_lora(base, TARGETS, r=4, lora_alpha=8)
    with pytest.raises(
        ValueError,
        match=r"saved with r=8, lora_alpha=8, use_rslora=False, "
        r"but LoRA layer '.*' has r=4",
    ):
        load_adapter(base, tmp_path / "adapter")


def test_an_adapter_for_other_modules(base, tmp_path):
    save_adapter(
        inject_lora(copy.deepcopy(base), ["q_proj"], r=4, lora_alpha=4),
        tmp_path / "adapter",
    )
    inject_lora(base, TARGETS, r=4, lora_alpha=4)
    with pytest.raises(
        ValueError,
        match=r"does not fit this model: 0 tensors for no LoRA layer \[\], "
        r"12 LoRA weights missing",
    ):
        load_adapter(base, tmp_path / "adapter")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"r": None}, "lacks r"),
        ({"lora_alpha": None}, "lacks lora_alpha"),
        ({"peft_type": "IA3"}, "has peft_type 'IA3', expected 'LORA'"),
        ({"use_dora": True}, "uses use_dora"),
        ({"target_modules": ".*proj"}, "uses target_modules as a regular expression"),
        ({"rank_pattern": {"q_proj": 8}}, "uses rank_pattern"),
    ],
)
def test_an_adapter_config_that_cannot_be_loaded_faithfully(
    base, tmp_path, change, message
):
    directory = save_adapter(
        inject_lora(copy.deepcopy(base), TARGETS, r=4, lora_alpha=4),
        tmp_path / "adapter",
    )
    config = json.loads((directory / "adapter_config.json").read_text())
    config.update({k: v for k, v in change.items() if v is not None})
    for key in [k for k, v in change.items() if v is None]:
        del config[key]
    (directory / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        load_adapter(base, directory)


def test_merge_and_save_need_lora_layers(base, tmp_path):
    for function in (
        lora.merge_lora,
        lora.unmerge_lora,
        lora.mark_only_lora_as_trainable,
    ):
        with pytest.raises(
            ValueError, match="has no LoRA layers: call inject_lora first"
        ):
            function(base)
    with pytest.raises(ValueError, match="has no LoRA layers"):
        save_adapter(base, tmp_path / "adapter")


def test_loading_into_a_merged_model_is_refused(base, tmp_path):
    model = inject_lora(base, TARGETS, r=4, lora_alpha=4)
    directory = save_adapter(model, tmp_path / "adapter")
    lora.merge_lora(model)
    with pytest.raises(ValueError, match="is merged: unmerge the model before loading"):
        load_adapter(model, directory)


# --- whole models ---------------------------------------------------------------------


def test_injection_freezes_everything_but_lora_and_counts_parameters(base):
    total_before = sum(p.numel() for p in base.parameters())
    model = inject_lora(base, TARGETS, r=4, lora_alpha=4)
    trainable, total = lora.count_parameters(model)
    # q and o are 64→64; k and v are 64→32 because of grouped-query attention.
    per_layer = 4 * (64 + 64) * 2 + 4 * (64 + 32) * 2
    assert trainable == 2 * per_layer and total == total_before + trainable
    names = list(lora.lora_parameters(model))
    assert names[:2] == [
        "model.layers.0.self_attn.q_proj.lora_A",
        "model.layers.0.self_attn.q_proj.lora_B",
    ]
    assert len(names) == 2 * 4 * 2


def test_mark_only_lora_as_trainable_undoes_unfreezing(base):
    model = inject_lora(base, TARGETS, r=4, lora_alpha=4)
    model.requires_grad_(True)
    lora.mark_only_lora_as_trainable(model)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(
        lora.lora_parameters(model)
    )


def test_save_adapter_never_overwrites_without_being_asked(base, tmp_path):
    model = inject_lora(base, TARGETS, r=4, lora_alpha=4)
    directory = save_adapter(model, tmp_path / "adapter")
    before = (directory / "adapter_model.safetensors").read_bytes()
    randomize_lora(model)
    with pytest.raises(
        FileExistsError, match="already holds an adapter; pass overwrite=True"
    ):
        save_adapter(model, directory)
    assert (directory / "adapter_model.safetensors").read_bytes() == before
    save_adapter(model, directory, overwrite=True)
    assert (directory / "adapter_model.safetensors").read_bytes() != before


def test_an_interrupted_save_leaves_no_partial_adapter(base, tmp_path, monkeypatch):
    model = inject_lora(base, TARGETS, r=4, lora_alpha=4)

    def interrupted(tensors, path, metadata=None):
        path.write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(lora, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_adapter(model, tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []


def test_saved_adapter_format(base, tmp_path):
    model = randomize_lora(
        inject_lora(base, TARGETS, r=4, lora_alpha=8, use_rslora=True)
    )
    directory = save_adapter(
        model, tmp_path / "adapter", base_model_name_or_path="tiny-llama"
    )
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (4, 8, True)
    assert (
        config["target_modules"] == sorted(TARGETS)
        and config["base_model_name_or_path"] == "tiny-llama"
    )
    tensors = load_file(directory / "adapter_model.safetensors")
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    assert torch.equal(tensors[key], model.model.layers[1].self_attn.v_proj.lora_B)
    assert len(tensors) == 16


# --- checked against PEFT -------------------------------------------------------------


def test_logits_equal_peft_unmerged_and_merged(base, tokens):
    ours = randomize_lora(inject_lora(copy.deepcopy(base), TARGETS, r=4, lora_alpha=8))
    twin = peft_twin(base, ours)
    assert lora.count_parameters(ours) == twin.get_nb_trainable_parameters()
    expected = logits(twin, tokens)
    assert (logits(ours, tokens) - expected).abs().max().item() <= 1e-5
    assert (logits(ours, tokens) - logits(base, tokens)).abs().max().item() > 1e-3, (
        "the adapter must matter"
    )
    lora.merge_lora(ours)
    merged_twin = twin.merge_and_unload()
    assert (logits(ours, tokens) - expected).abs().max().item() <= 1e-5
    assert (
        logits(ours, tokens) - logits(merged_twin, tokens)
    ).abs().max().item() <= 1e-5


def test_rslora_logits_equal_peft(base, tokens):
    ours = randomize_lora(
        inject_lora(copy.deepcopy(base), TARGETS, r=4, lora_alpha=8, use_rslora=True)
    )
    twin = peft_twin(base, ours, use_rslora=True)
    assert (logits(ours, tokens) - logits(twin, tokens)).abs().max().item() <= 1e-5


def test_our_adapter_loads_in_peft_without_warnings(base, tokens, tmp_path):
    ours = randomize_lora(inject_lora(copy.deepcopy(base), TARGETS, r=4, lora_alpha=8))
    directory = save_adapter(
        ours, tmp_path / "adapter", base_model_name_or_path="tiny-llama"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PeftModel.from_pretrained(copy.deepcopy(base), directory).eval()
    assert not [w for w in caught if "key" in str(w.message).lower()], [
        str(w.message) for w in caught
    ]
    assert (logits(loaded, tokens) - logits(ours, tokens)).abs().max().item() <= 1e-5


def test_a_peft_adapter_loads_with_load_adapter(base, tokens, tmp_path):
    ours = randomize_lora(inject_lora(copy.deepcopy(base), TARGETS, r=4, lora_alpha=8))
    twin = peft_twin(base, ours)
    twin.save_pretrained(tmp_path / "peft")
    loaded = load_adapter(copy.deepcopy(base), tmp_path / "peft")
    assert (logits(loaded, tokens) - logits(twin, tokens)).abs().max().item() <= 1e-5
    # Loading into a model that already has matching LoRA layers replaces their weights.
    fresh = inject_lora(copy.deepcopy(base), TARGETS, r=4, lora_alpha=8)
    assert (
        logits(load_adapter(fresh, tmp_path / "peft"), tokens) - logits(twin, tokens)
    ).abs().max().item() <= 1e-5


def test_save_then_load_round_trips_exactly(base, tokens, tmp_path):
    ours = randomize_lora(inject_lora(copy.deepcopy(base), TARGETS, r=4, lora_alpha=8))
    directory = save_adapter(ours, tmp_path / "adapter")
    assert torch.equal(
        logits(load_adapter(copy.deepcopy(base), directory), tokens),
        logits(ours, tokens),
    )


def test_merge_then_unmerge_restores_every_weight(base):
    ours = randomize_lora(inject_lora(copy.deepcopy(base), TARGETS, r=4, lora_alpha=8))
    before = {name: p.clone() for name, p in ours.named_parameters()}
    lora.unmerge_lora(lora.merge_lora(ours))
    worst = max(
        (p - before[name]).abs().max().item() for name, p in ours.named_parameters()
    )
    assert worst <= 1e-6


def test_unexpected_tensors_are_reported(base, tmp_path):
    directory = save_adapter(
        inject_lora(copy.deepcopy(base), TARGETS, r=4, lora_alpha=4),
        tmp_path / "adapter",
    )
    tensors = load_file(directory / "adapter_model.safetensors")
    tensors["base_model.model.lm_head.lora_A.weight"] = torch.zeros(4, 64)
    save_file(tensors, directory / "adapter_model.safetensors")
    with pytest.raises(
        ValueError,
        match=r"1 tensors for no LoRA layer "
        r"\['base_model.model.lm_head.lora_A.weight'\]",
    ):
        load_adapter(base, directory)


# --- issue 9: all or nothing, non-finite numbers, merge safety ------------------


def state(model):
    """What a failed call must leave untouched: the modules' types and requires_grad."""
    return [(n, type(m).__name__) for n, m in model.named_modules()], [
        (n, p.requires_grad) for n, p in model.named_parameters()
    ]


def test_a_refused_injection_changes_nothing_and_a_retry_works(base):
    before = state(base)
    # r = 40 fits q_proj (64 × 64), not v_proj (32 × 64): refused before any change.
    with pytest.raises(
        ValueError, match=r"target module '.*v_proj': r must be at most"
    ):
        inject_lora(base, ["q_proj", "v_proj"], r=40, lora_alpha=8)
    assert state(base) == before
    inject_lora(base, ["q_proj", "v_proj"], r=4, lora_alpha=8)
    assert len(lora.lora_layers(base)) == 4


def test_merging_a_non_finite_update_is_refused_and_changes_nothing(base):
    model = randomize_lora(inject_lora(base, TARGETS, r=4, lora_alpha=8))
    layers = lora.lora_layers(model)
    last = list(layers.values())[-1]
    with torch.no_grad():
        last.lora_B[0, 0] = float("nan")
    weights = {name: layer.weight.clone() for name, layer in layers.items()}
    with pytest.raises(ValueError, match="NaN or infinit"):
        lora.merge_lora(model)
    with pytest.raises(ValueError, match="NaN or infinit"):
        last.merge()
    for name, layer in layers.items():
        assert not layer.merged and torch.equal(layer.weight, weights[name]), name


def test_a_merged_layer_refuses_state_dict_so_delta_w_is_never_applied_twice():
    layer = LoRALinear(8, 8, r=2, lora_alpha=4)
    with torch.no_grad():
        layer.lora_B.fill_(0.5)
    x = torch.randn(3, 8)
    expected = layer(x)
    layer.merge()
    with pytest.raises(RuntimeError, match="is merged: unmerge it first"):
        layer.state_dict()
    fresh = LoRALinear(8, 8, r=2, lora_alpha=4)
    fresh.merge()
    with pytest.raises(RuntimeError, match="is merged: unmerge it first"):
        fresh.load_state_dict(LoRALinear(8, 8, r=2, lora_alpha=4).state_dict())
    layer.unmerge()
    fresh.unmerge()
    fresh.load_state_dict(layer.state_dict())
    assert torch.allclose(fresh(x), expected, atol=1e-6)


def test_editing_b_while_merged_does_not_corrupt_the_weight_on_unmerge():
    layer = LoRALinear(8, 8, r=2, lora_alpha=4)
    with torch.no_grad():
        layer.lora_B.fill_(0.5)
    original = layer.weight.clone()
    layer.merge()
    with torch.no_grad():
        layer.lora_B.fill_(3.0)  # e.g. an adapter loaded or trained while merged
    layer.unmerge()
    assert (layer.weight - original).abs().max() <= 1e-6


def test_merging_into_a_weight_tied_to_the_embeddings_is_refused():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    embeddings = model.model.embed_tokens.weight.clone()
    randomize_lora(inject_lora(model, ["lm_head"], r=2, lora_alpha=4))
    with pytest.raises(
        ValueError, match=r"lm_head's weight is shared with \['model.embed_tokens'\]"
    ):
        lora.merge_lora(model)
    assert torch.equal(model.model.embed_tokens.weight, embeddings)


def test_adapter_dtype_float32_on_a_bfloat16_base_matches_peft(tokens):
    bf16 = tiny_llama().to(torch.bfloat16)
    ours = randomize_lora(inject_lora(copy.deepcopy(bf16), TARGETS, r=4, lora_alpha=8))
    layer = next(iter(lora.lora_layers(ours).values()))
    assert layer.weight.dtype == torch.bfloat16 and layer.lora_A.dtype == torch.float32
    twin = peft_twin(bf16, ours)
    module = twin.get_submodule("base_model.model.model.layers.0.self_attn.q_proj")
    assert module.lora_A["default"].weight.dtype == torch.float32  # PEFT's choice too
    assert torch.equal(logits(ours, tokens), logits(twin, tokens))


# --- issue 9: adapters on disk always load, with both loaders -------------------


def test_full_path_targets_and_numpy_numbers_round_trip_with_both_loaders(
    base, tokens, tmp_path
):
    import numpy as np

    targets = ["layers.0.self_attn.q_proj", "layers.1.self_attn.v_proj"]
    model = inject_lora(
        copy.deepcopy(base), targets, r=np.int64(4), lora_alpha=np.float32(8)
    )
    randomize_lora(model)
    save_adapter(model, tmp_path / "adapter", base_model_name_or_path="tiny")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["model." + t for t in targets]
    assert (config["r"], config["lora_alpha"]) == (4, 8.0)
    ours = load_adapter(copy.deepcopy(base), tmp_path / "adapter")
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter")
    assert torch.equal(logits(ours, tokens), logits(model, tokens))
    assert torch.allclose(logits(theirs, tokens), logits(model, tokens), atol=1e-5)


def test_short_target_names_are_written_sorted_and_bytes_repeat(base, tmp_path):
    model = randomize_lora(inject_lora(base, ["v_proj", "q_proj", "o_proj"], 4, 8))
    save_adapter(model, tmp_path / "one")
    save_adapter(model, tmp_path / "two")
    config = json.loads((tmp_path / "one" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["o_proj", "q_proj", "v_proj"]
    for name in ["adapter_config.json", "adapter_model.safetensors"]:
        assert (tmp_path / "one" / name).read_bytes() == (
            tmp_path / "two" / name
        ).read_bytes()


def test_a_non_finite_adapter_is_neither_saved_nor_loaded(base, tmp_path):
    model = randomize_lora(inject_lora(copy.deepcopy(base), TARGETS, 4, 8))
    save_adapter(model, tmp_path / "adapter")
    before = (tmp_path / "adapter" / "adapter_model.safetensors").read_bytes()
    with torch.no_grad():
        next(iter(lora.lora_layers(model).values())).lora_A[0, 0] = float("inf")
    with pytest.raises(ValueError, match="holds NaN or infinite values"):
        save_adapter(model, tmp_path / "adapter", overwrite=True)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").read_bytes() == before
    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    key = next(iter(tensors))
    tensors[key][0, 0] = float("nan")
    save_file(tensors, tmp_path / "adapter" / "adapter_model.safetensors")
    fresh = copy.deepcopy(base)
    before_state = state(fresh)
    with pytest.raises(ValueError, match=rf"{key} holds NaN"):
        load_adapter(fresh, tmp_path / "adapter")
    assert state(fresh) == before_state


@pytest.mark.parametrize(
    "present", ["adapter_config.json", "adapter_model.safetensors"]
)
def test_half_an_adapter_is_still_an_adapter(base, tmp_path, present):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / present).write_text("someone's file")
    with pytest.raises(FileExistsError, match="already holds an adapter"):
        save_adapter(inject_lora(base, TARGETS, 4, 8), tmp_path / "adapter")
    assert (tmp_path / "adapter" / present).read_text() == "someone's file"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: [c], "holds a list, not a JSON object"),
        (lambda c: {**c, "lora_alpha": math.inf}, "lora_alpha must be a finite number"),
        (lambda c: {**c, "lora_alpha": math.nan}, "lora_alpha must be a finite number"),
        (lambda c: {**c, "r": True}, "r must be a positive integer"),
        (lambda c: {**c, "use_rslora": "false"}, "use_rslora must be True or False"),
        (lambda c: {**c, "target_modules": ["q_proj", 3]}, "target_modules must be"),
        (lambda c: {**c, "target_modules": []}, "target_modules must be"),
    ],
)
def test_a_malformed_config_is_refused_and_leaves_the_model_as_it_was(
    base, tmp_path, edit, message
):
    save_adapter(inject_lora(copy.deepcopy(base), TARGETS, 4, 8), tmp_path / "adapter")
    path = tmp_path / "adapter" / "adapter_config.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    before = state(base)
    with pytest.raises(ValueError, match=message):
        load_adapter(base, tmp_path / "adapter")
    assert state(base) == before


def test_a_config_that_is_not_json_names_the_file(base, tmp_path):
    save_adapter(inject_lora(copy.deepcopy(base), TARGETS, 4, 8), tmp_path / "adapter")
    (tmp_path / "adapter" / "adapter_config.json").write_bytes(b"{\xff")
    with pytest.raises(ValueError, match=r"adapter_config\.json is not valid JSON"):
        load_adapter(base, tmp_path / "adapter")
