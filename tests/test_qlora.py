"""QLoRA on the tiny model (Chapter 6): 4-bit NF4 loading, training, and adapters."""

import copy

import pytest
import torch
from bitsandbytes.nn import Linear4bit, Params4bit
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

from lora_edu import llama
from lora_edu.llama import ModelUnavailableError, load_model
from lora_edu.lora import load_adapter
from lora_edu.pretrain import weather_reports

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def full():
    return load_model()


@pytest.fixture(scope="module")
def quantized():
    return load_model(load_in_4bit=True)[0]


@pytest.fixture(scope="module")
def texts():
    return weather_reports(16, seed=3)


def logits(model, tokenizer, texts):
    """Logits at the real (non-padding) tokens of texts: (tokens, vocabulary), fp32."""
    tokens = tokenizer(texts, return_tensors="pt", padding=True).to(model.device)
    with torch.no_grad():
        out = model(**tokens).logits[tokens.attention_mask.bool()]
    return out.float().cpu()


def qlora(quantized, seed=0):
    """PEFT LoRA on a copy of the 4-bit model, prepared as QLoRA prepares it."""
    model = prepare_model_for_kbit_training(
        copy.deepcopy(quantized),
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    torch.manual_seed(seed)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS)
    return get_peft_model(model, config)


def batch(tokenizer, texts, device):
    tokens = tokenizer(texts, return_tensors="pt", padding=True).to(device)
    labels = tokens.input_ids.masked_fill(tokens.attention_mask == 0, -100)
    return {**tokens, "labels": labels}


def test_the_tiny_model_loads_in_4bit_nf4_with_double_quantization(quantized):
    assert quantized.device.type == DEVICE
    layers = {
        name: module
        for name, module in quantized.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    four_bit = {
        name for name, module in layers.items() if isinstance(module, Linear4bit)
    }
    # bitsandbytes quantizes every linear layer but the output head.
    assert four_bit == set(layers) - {"lm_head"} and len(four_bit) == 7 * 4
    for name in four_bit:
        weight = layers[name].weight
        assert isinstance(weight, Params4bit) and weight.dtype == torch.uint8
        # two 4-bit codes per byte
        assert (
            2 * weight.numel() == layers[name].in_features * layers[name].out_features
        )
        state = weight.quant_state
        assert (state.quant_type, state.blocksize, state.nested) == ("nf4", 64, True)
        assert state.absmax.dtype == torch.uint8  # the block scales, quantized again
    rest = {p.dtype for p in quantized.parameters() if not isinstance(p, Params4bit)}
    assert rest == {torch.bfloat16}
    settings = quantized.config.quantization_config
    assert settings.bnb_4bit_compute_dtype == torch.float32
    assert settings.bnb_4bit_use_double_quant and settings.bnb_4bit_quant_type == "nf4"


def test_without_bitsandbytes_the_4bit_tiny_model_says_what_to_install(monkeypatch):
    monkeypatch.setattr(llama.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelUnavailableError, match="pip install bitsandbytes"):
        load_model(load_in_4bit=True)


def test_an_evaluation_before_training_leaves_the_4bit_layers_trainable(full, texts):
    _, tokenizer = full
    model = load_model(load_in_4bit=True)[
        0
    ]  # in eval mode, as from_pretrained leaves it
    with torch.no_grad():
        model(**tokenizer(texts, return_tensors="pt", padding=True).to(model.device))
    state = model.model.layers[0].self_attn.q_proj.weight.quant_state
    assert state.nested and not getattr(state, "packing_format_for_cpu", False)
    trained = qlora(model).train()
    trained(**batch(tokenizer, texts, trained.device)).loss.backward()
    b_grads = [p.grad for n, p in trained.named_parameters() if "lora_B" in n]
    assert b_grads and all(g is not None and g.abs().sum() > 0 for g in b_grads)


def test_4bit_logits_are_close_to_the_full_precision_models(full, quantized, texts):
    model, tokenizer = full
    exact = logits(model, tokenizer, texts)
    approximate = logits(quantized, tokenizer, texts)
    difference = (approximate - exact).abs()
    # NF4 rounds each weight to one of 16 levels per block (about 9% relative error on
    # Gaussian weights), and bfloat16 rounds the embeddings and head: the logits move,
    # but little. Measured on these texts: max 9.8% of the largest logit, mean 2.5% of
    # the mean, 96% the same top token.
    assert difference.max() > 0  # the weights really are quantized
    assert difference.max() < 0.15 * exact.abs().max()
    assert difference.mean() < 0.05 * exact.abs().mean()
    agreement = (approximate.argmax(-1) == exact.argmax(-1)).float().mean()
    assert agreement >= 0.9  # the most likely next token is nearly always the same


def test_prepare_casts_everything_but_the_4bit_weights_to_float32_and_freezes_it(
    quantized,
):
    model = prepare_model_for_kbit_training(
        copy.deepcopy(quantized), gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    for name, parameter in model.named_parameters():
        assert not parameter.requires_grad, name
        expected = torch.uint8 if isinstance(parameter, Params4bit) else torch.float32
        assert parameter.dtype == expected, name
    assert model.get_input_embeddings().weight.dtype == torch.float32
    assert model.get_output_embeddings().weight.dtype == torch.float32
    assert model.model.layers[0].gradient_checkpointing


def test_one_qlora_step_lowers_the_loss_and_leaves_the_4bit_weights_alone(
    full, quantized, texts
):
    _, tokenizer = full
    model = qlora(quantized).train()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    codes = {
        name: p.detach().clone()
        for name, p in model.named_parameters()
        if isinstance(p, Params4bit)
    }
    inputs = batch(tokenizer, texts, model.device)
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    loss = model(**inputs).loss
    loss.backward()
    # B starts at zero, so the first gradient reaches B (A's is zero until B moves).
    b_grads = [p.grad for n, p in trainable.items() if "lora_B" in n]
    assert b_grads and all(g is not None and g.abs().sum() > 0 for g in b_grads)
    optimizer.step()
    with torch.no_grad():
        assert model(**inputs).loss < loss.detach()
    for name, p in model.named_parameters():
        if name in codes:
            assert torch.equal(p, codes[name]), name


def test_an_adapter_trained_on_the_4bit_base_loads_onto_the_full_precision_base(
    full, quantized, texts, tmp_path
):
    model, tokenizer = full
    trained = qlora(quantized).train()
    optimizer = torch.optim.AdamW(
        [p for p in trained.parameters() if p.requires_grad], lr=1e-2
    )
    inputs = batch(tokenizer, texts, trained.device)
    for _ in range(5):
        optimizer.zero_grad()
        trained(**inputs).loss.backward()
        optimizer.step()
    trained.save_pretrained(tmp_path)

    with_peft = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path).eval()
    ours = load_adapter(copy.deepcopy(model), tmp_path).eval()
    base_logits = logits(model, tokenizer, texts)
    peft_logits = logits(with_peft, tokenizer, texts)
    assert (logits(ours, tokenizer, texts) - peft_logits).abs().max() <= 1e-5
    # The adapter changes the full-precision model as it changed the 4-bit one.
    assert (peft_logits - base_logits).abs().max() > 0.5
    qlora_logits = logits(trained.eval(), tokenizer, texts)
    assert (peft_logits - qlora_logits).abs().max() < 0.15 * base_logits.abs().max()


def test_the_clis_4bit_model_keeps_its_gradients_after_an_evaluation(texts):
    from lora_edu.peft_workflow import load_model_4bit

    model, tokenizer = load_model_4bit(llama.TINY_LLAMA3)
    model.eval()
    with torch.no_grad():  # what Trainer's evaluation between epochs does
        model(**tokenizer(texts, return_tensors="pt", padding=True).to(model.device))
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    trained = get_peft_model(model, config).train()
    trained(**batch(tokenizer, texts, trained.device)).loss.backward()
    b_grads = [p.grad for n, p in trained.named_parameters() if "lora_B" in n]
    assert b_grads and all(g is not None and g.abs().sum() > 0 for g in b_grads)
