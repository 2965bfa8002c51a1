"""lora_edu.quant: NF4 checked against the published table and against bitsandbytes."""

import math

import bitsandbytes.functional as bnb
import pytest
import torch
from bitsandbytes.backends.utils import CODE as BNB_CODES
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from lora_edu import exercises, quant
from lora_edu.lora import inject_lora
from lora_edu.pretrain import DATA_DIR
from lora_edu.quant import (
    DYNAMIC_CODE,
    INT4_CODE,
    NF4_CODE,
    NF4Linear,
    NF4Weight,
    QLoRALinear,
    dequantize_nf4,
    inject_qlora,
    nf4_storage_bytes,
    quantize_nf4,
)

# QLoRA's NF4 levels as bitsandbytes ships them: the published table.
PUBLISHED_NF4 = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
]


def tiny_weights() -> dict[str, torch.Tensor]:
    """The shipped tiny model's 2-D weights: real trained matrices, not random ones."""
    tensors = load_file(DATA_DIR / "model.safetensors")
    return {name: t for name, t in tensors.items() if t.dim() == 2}


# --- the levels -----------------------------------------------------------------------


def test_nf4_levels_are_the_published_table():
    published = torch.tensor(PUBLISHED_NF4, dtype=torch.float64)
    assert (NF4_CODE.double() - published).abs().max() < 1e-6
    # Built as bitsandbytes builds them, they are its float32 constants bit for bit.
    assert torch.equal(NF4_CODE, BNB_CODES["nf4"].cpu())
    assert torch.equal(NF4_CODE, bnb.get_4bit_type("nf4", device="cpu"))


def test_nf4_levels_have_the_papers_shape():
    assert NF4_CODE.dtype == torch.float32 and NF4_CODE.shape == (16,)
    assert (NF4_CODE.diff() > 0).all()
    assert NF4_CODE[0] == -1 and NF4_CODE[-1] == 1 and NF4_CODE[7] == 0
    # Asymmetric: 7 negative levels, an exact zero and 8 positive ones.
    assert (NF4_CODE < 0).sum() == 7 and (NF4_CODE > 0).sum() == 8
    # bitsandbytes' offset is 929/960 = 1 − ½(1/30 + 1/32) to the seven digits it has.
    assert (
        quant.NF4_OFFSET == round(1 - (1 / 30 + 1 / 32) / 2, 7) == round(929 / 960, 7)
    )


def test_the_dynamic_map_is_bitsandbytes_and_int4_is_symmetric():
    assert torch.equal(DYNAMIC_CODE, bnb.create_dynamic_map())
    assert DYNAMIC_CODE.shape == (256,) and (DYNAMIC_CODE.diff() > 0).all()
    assert DYNAMIC_CODE[0] > -1 and DYNAMIC_CODE[-1] == 1 and 0 in DYNAMIC_CODE
    assert torch.equal(INT4_CODE, -INT4_CODE.flip(0)) and len(INT4_CODE) == 15


# --- quantize and dequantize ----------------------------------------------------------


def test_a_block_quantized_by_hand():
    block = torch.tensor([0.5, -1.2, 0.1, 0.9])
    q = quantize_nf4(block, block_size=4)
    # absmax 1.2; scaled 0.4167, −1, 0.0833, 0.75 → levels 0.4407, −1, 0.0796, 0.7230.
    assert q.codes.tolist() == [12, 0, 8, 14]
    assert q.absmax.tolist() == [pytest.approx(1.2)]
    expected = NF4_CODE[[12, 0, 8, 14]] * q.absmax
    assert torch.equal(dequantize_nf4(q), expected)


def test_round_trip_keeps_shape_dtype_and_the_block_maxima():
    torch.manual_seed(0)
    for dtype in quant.WEIGHT_DTYPES:
        w = torch.randn(37, 29).to(dtype)  # 1073 weights: the last block is partial
        q = quantize_nf4(w)
        back = dequantize_nf4(q)
        assert back.shape == w.shape and back.dtype == dtype
        # Each block's largest weight is level ±1 times the scale: it comes back.
        flat, back_flat = w.float().flatten(), back.float().flatten()
        for start in range(0, len(flat), 64):
            i = start + flat[start : start + 64].abs().argmax()
            assert back_flat[i] == flat[i]


def test_gaussian_round_trip_error_and_storage():
    torch.manual_seed(0)
    w = torch.randn(4096, 256)
    plain, double = quantize_nf4(w), quantize_nf4(w, double_quant=True)
    for q in (plain, double):
        relative = ((dequantize_nf4(q) - w).norm() / w.norm()).item()
        assert 0.08 < relative < 0.1, relative
    assert plain.bits_per_parameter() == 4.5
    # 4 + 8/64 + 32/(64·256) + the 32-bit mean, over 2^20 weights.
    assert double.bits_per_parameter() == 4 + 8 / 64 + 32 / (64 * 256) + 32 / 2**20
    assert round(double.bits_per_parameter(), 3) == 4.127
    assert plain.storage_bytes() == nf4_storage_bytes(w.numel(), 64, False)
    assert double.storage_bytes() == nf4_storage_bytes(w.numel(), 64, True)


def test_nf4_beats_int4_on_gaussian_and_on_real_weights():
    def error(w, levels):
        codes, absmax = quant.quantize_blockwise(w.flatten(), levels, 64)
        back = quant.dequantize_blockwise(codes, absmax, levels, 64)
        return ((back - w.flatten()).norm() / w.norm()).item()

    torch.manual_seed(0)
    # The layers bitsandbytes quantizes: every linear layer of the blocks, not the head.
    layers = [w for name, w in tiny_weights().items() if ".layers." in name]
    assert len(layers) == 4 * 7
    for w in [torch.randn(1024, 1024), *layers]:
        assert error(w, NF4_CODE) < error(w, INT4_CODE)
    # NF4 is built for bell-shaped weights: on uniform ones, evenly spaced levels win.
    uniform = torch.rand(1024, 1024) * 2 - 1
    assert error(uniform, INT4_CODE) < error(uniform, NF4_CODE)


def test_quantize_nf4_rejects_bad_input_clearly():
    w = torch.randn(8, 8)
    with pytest.raises(
        TypeError, match=r"w must be float32, bfloat16 or float16.*int64"
    ):
        quantize_nf4(torch.ones(8, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"got torch\.float64"):
        quantize_nf4(w.double())
    with pytest.raises(TypeError, match=r"w must be a torch\.Tensor, got list"):
        quantize_nf4([[1.0]])
    for size in (0, -64, 64.0, True, "64"):
        with pytest.raises(ValueError, match="block_size must be a positive integer"):
            quantize_nf4(w, block_size=size)
    for value in (math.nan, math.inf, -math.inf):
        bad = w.clone()
        bad[3, 4] = value
        with pytest.raises(ValueError, match="w has 1 non-finite values"):
            quantize_nf4(bad)
    with pytest.raises(ValueError, match="w is empty"):
        quantize_nf4(torch.empty(0, 8))
    with pytest.raises(TypeError, match="q must be an NF4Weight, got Tensor"):
        dequantize_nf4(w)


def test_an_all_zero_block_stays_zero_and_a_subnormal_block_is_as_in_bitsandbytes():
    w = torch.zeros(3, 64)
    w[1] = torch.linspace(-1, 1, 64)
    w[2] = torch.linspace(-1e-39, 1e-39, 64)  # subnormal: below float32's normal range
    for double_quant in (False, True):
        back = dequantize_nf4(quantize_nf4(w, double_quant=double_quant))
        assert torch.equal(back[0], torch.zeros(64))
    # The clamp scales the subnormal block by 1e38, not 1/absmax: coarse, as in bnb.
    back = dequantize_nf4(quantize_nf4(w))
    packed, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4")
    assert torch.equal(back, bnb.dequantize_4bit(packed, state))
    assert back[2].abs().max() < w[2].abs().max()


floats = st.floats(-1e4, 1e4, width=32, allow_subnormal=False)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(floats, min_size=1, max_size=300),
    st.sampled_from([1, 2, 7, 32, 64, 256]),
)
def test_properties_of_the_round_trip(values, block_size):
    w = torch.tensor(values)
    q = quantize_nf4(w, block_size=block_size)
    back = dequantize_nf4(q)
    # Every weight lands within half the widest gap between levels, times its scale.
    scale = quant.dequantize_blockwise(
        torch.zeros(len(w), dtype=torch.uint8), q.absmax, torch.ones(16), block_size
    )
    half_gap = NF4_CODE.diff().max() / 2
    assert ((back - w).abs() <= half_gap * scale * (1 + 1e-6)).all()
    # Quantizing what came back gives the same codes and the same scales.
    again = quantize_nf4(back, block_size=block_size)
    assert torch.equal(again.packed, q.packed) and torch.equal(again.absmax, q.absmax)
    # Scaling by a power of two changes the scales only.
    doubled = quantize_nf4(w * 4, block_size=block_size)
    assert torch.equal(doubled.packed, q.packed)
    assert q.storage_bytes() == nf4_storage_bytes(len(w), block_size, False)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5000), st.sampled_from([32, 64, 128]), st.booleans())
def test_storage_formula_matches_what_is_stored(n, block_size, double_quant):
    w = torch.linspace(-1, 1, n)
    q = quantize_nf4(w, block_size, double_quant)
    assert q.storage_bytes() == nf4_storage_bytes(n, block_size, double_quant)
    assert q.bits_per_parameter() == 8 * q.storage_bytes() / n


# --- bit for bit against bitsandbytes -------------------------------------------------


def comparison_weights():
    torch.manual_seed(0)
    yield "gaussian 256x192", torch.randn(256, 192)
    yield "gaussian 1000x37 (partial last block)", torch.randn(1000, 37)
    yield "gaussian bf16", torch.randn(300, 300).to(torch.bfloat16)
    yield "gaussian fp16", torch.randn(256, 256).half()
    yield from tiny_weights().items()


def bnb_codes(packed: torch.Tensor, n: int) -> torch.Tensor:
    """bitsandbytes' packed (⌈n/2⌉, 1) uint8: a pair's first code in the high bits."""
    packed = packed.flatten()
    return torch.stack([packed >> 4, packed & 0xF], dim=1).flatten()[:n]


@pytest.mark.parametrize(("name", "w"), list(comparison_weights()), ids=lambda x: x)
def test_codes_and_scales_equal_bitsandbytes(name, w):
    ours = quantize_nf4(w, block_size=64)
    packed, state = bnb.quantize_4bit(w, blocksize=64, quant_type="nf4")
    assert torch.equal(ours.codes.flatten(), bnb_codes(packed, w.numel()))
    assert torch.equal(ours.packed, packed.flatten())
    assert torch.equal(ours.absmax, state.absmax)
    assert torch.equal(dequantize_nf4(ours), bnb.dequantize_4bit(packed, state))


def from_bnb(packed, state) -> NF4Weight:
    """bitsandbytes' double-quantized state read into our NF4Weight, field for field."""
    return NF4Weight(
        packed.flatten(),
        state.absmax,
        tuple(state.shape),
        state.dtype,
        state.blocksize,
        state.state2.absmax,
        state.offset,
    )


@pytest.mark.parametrize(("name", "w"), list(comparison_weights()), ids=lambda x: x)
def test_double_quantization_against_bitsandbytes(name, w):
    ours = quantize_nf4(w, block_size=64, double_quant=True)
    packed, state = bnb.quantize_4bit(
        w, blocksize=64, quant_type="nf4", compress_statistics=True
    )
    assert state.nested and state.state2.blocksize == quant.NESTED_BLOCK_SIZE
    assert torch.equal(state.state2.code, DYNAMIC_CODE)
    assert torch.equal(ours.packed, packed.flatten())
    assert torch.equal(ours.absmax_offset, state.offset)
    assert torch.equal(ours.absmax_scale, state.state2.absmax)
    # Given bitsandbytes' nested codes, our dequantization is theirs, bit for bit.
    mirrored = from_bnb(packed, state)
    assert torch.equal(dequantize_nf4(mirrored), bnb.dequantize_4bit(packed, state))
    assert mirrored.storage_bytes() == ours.storage_bytes()

    # The 8-bit codes of the scales: ours is the nearest level of the dynamic map, to
    # float32 rounding. bitsandbytes' CPU kernel (csrc/common.cpp) finds a level with an
    # approximate search and checks one neighbour only, so it sometimes keeps a farther
    # level: where the codes differ, it is always that.
    scales = quant.quantize_blockwise(w.flatten().float(), NF4_CODE, 64)[1]
    centred = scales.double() - ours.absmax_offset.double()
    exact = centred / ours.absmax_scale.double().repeat_interleave(256)[: len(centred)]
    distance = (exact[:, None] - DYNAMIC_CODE.double()).abs()
    ours_d = distance.gather(1, ours.absmax.long()[:, None]).squeeze(1)
    theirs_d = distance.gather(1, state.absmax.long()[:, None]).squeeze(1)
    assert (ours_d <= distance.min(dim=1).values + 2**-23).all()
    differ = ours.absmax != state.absmax
    assert (theirs_d[differ] > ours_d[differ]).all()
    assert differ.float().mean() < 0.01


def test_the_exact_places_where_bitsandbytes_nested_codes_differ():
    torch.manual_seed(0)
    w = torch.randn(512, 512) * 0.02
    ours = quantize_nf4(w, double_quant=True)
    packed, state = bnb.quantize_4bit(
        w, blocksize=64, quant_type="nf4", compress_statistics=True
    )
    differ = (ours.absmax != state.absmax).nonzero().flatten().tolist()
    assert differ == [971, 1468, 1627, 4043]  # of 4096 scales
    # Each is one level off, for a scale within a tenth of a step of the midpoint.
    steps = ours.absmax[differ].int() - state.absmax[differ].int()
    assert steps.abs().tolist() == [1, 1, 1, 1]
    scales = quant.quantize_blockwise(w.flatten(), NF4_CODE, 64)[1][differ].double()
    block_scale = ours.absmax_scale.double()[[i // 256 for i in differ]]
    exact = (scales - ours.absmax_offset.double()) / block_scale
    a = DYNAMIC_CODE[ours.absmax[differ].long()].double()
    b = DYNAMIC_CODE[state.absmax[differ].long()].double()
    assert ((exact - (a + b) / 2).abs() < 0.1 * (a - b).abs()).all()
    # And the 4-bit codes never differ: a nested scale off by one level changes no code.
    assert torch.equal(ours.packed, packed.flatten())


# --- layers ---------------------------------------------------------------------------


def test_nf4_linear_computes_with_the_dequantized_weight():
    torch.manual_seed(0)
    linear = nn.Linear(128, 64)
    layer = NF4Linear.from_linear(linear)
    x = torch.randn(3, 5, 128)
    expected = x @ dequantize_nf4(layer.weight).T + linear.bias
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert not layer.bias.requires_grad
    assert {n for n, _ in layer.named_buffers()} == {
        "packed",
        "absmax",
        "absmax_scale",
        "absmax_offset",
    }
    assert sum(b.nbytes for b in layer.buffers()) == layer.weight.storage_bytes()
    with pytest.raises(TypeError, match=r"linear must be a plain nn\.Linear"):
        NF4Linear.from_linear(layer)
    with pytest.raises(TypeError, match="2-D"):
        NF4Linear(quantize_nf4(torch.randn(64)))


def test_qlora_linear_starts_as_its_base_and_trains_only_the_adapter():
    torch.manual_seed(0)
    base = NF4Linear.from_linear(nn.Linear(64, 32))
    layer = QLoRALinear(base, r=4, lora_alpha=8)
    x = torch.randn(10, 64)
    assert torch.equal(layer(x), base(x))  # B = 0
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
    trainable = [n for n, p in layer.named_parameters() if p.requires_grad]
    assert trainable == ["lora_A", "lora_B"]
    layer(x).pow(2).sum().backward()
    assert layer.lora_B.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="r must be a positive integer"):
        QLoRALinear(base, r=0, lora_alpha=8)
    with pytest.raises(TypeError, match="base must be an NF4Linear"):
        QLoRALinear(nn.Linear(4, 4), r=1, lora_alpha=1)


def test_qlora_on_a_model_equals_lora_on_the_dequantized_model():
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    quantized = quant.quantize_model(model)
    # The output head stays, as transformers leaves it in a 4-bit load.
    assert type(quantized.lm_head) is nn.Linear
    assert not any(p.requires_grad for p in quantized.parameters())
    # The same model with each NF4 weight dequantized into an nn.Linear; LoRA on both.
    reference = LlamaForCausalLM(config).eval()
    state = {
        k: v for k, v in quantized.state_dict().items() if k in reference.state_dict()
    }
    for name, module in quantized.named_modules():
        if isinstance(module, NF4Linear):
            state[f"{name}.weight"] = dequantize_nf4(module.weight)
    reference.load_state_dict(state)
    torch.manual_seed(1)
    inject_qlora(quantized, ["q_proj", "v_proj"], r=2, lora_alpha=4)
    torch.manual_seed(1)
    inject_lora(reference, ["q_proj", "v_proj"], r=2, lora_alpha=4)
    pairs = [
        (q, r)
        for q, r in zip(quantized.modules(), reference.modules())
        if isinstance(q, QLoRALinear)
    ]
    assert len(pairs) == 4
    with torch.no_grad():
        for q, r in pairs:
            assert torch.equal(q.lora_A, r.lora_A)  # the same seed draws the same A
            q.lora_B.normal_()
            r.lora_B.copy_(q.lora_B)
    ids = torch.randint(64, (2, 9))
    with torch.no_grad():
        assert torch.allclose(quantized(ids).logits, reference(ids).logits, atol=1e-5)
    with pytest.raises(ValueError, match=r"\['up'\] match no NF4Linear layer"):
        inject_qlora(quantized, ["up"], r=2, lora_alpha=4)
    with pytest.raises(TypeError, match="got the string"):
        inject_qlora(quantized, "q_proj", r=2, lora_alpha=4)
    with pytest.raises(ValueError, match=r"no nn\.Linear layer to quantize"):
        quant.quantize_model(quantized)


# --- the chapter's exercise checks ----------------------------------------------------


def test_check_nf4_codes(capsys):
    block = [0.5, -1.2, 0.1, 0.9]
    assert exercises.check_nf4_codes(block, [12, 0, 8, 14])
    assert "The codes are [12, 0, 8, 14]" in capsys.readouterr().out
    # The codes of the numbers as they are (0.9 → 1 instead of 0.723): divide first.
    assert not exercises.check_nf4_codes(block, [12, 0, 8, 15])
    out = capsys.readouterr().out
    assert "Divide the block by its largest absolute value first." in out
    assert "codes differ" not in out
    assert not exercises.check_nf4_codes(block, [12, 0, 8, 13])
    assert "1 of your 4 codes differ" in capsys.readouterr().out
    with pytest.raises(ValueError, match="one code per number"):
        exercises.check_nf4_codes(block, [12, 0, 8])
    with pytest.raises(ValueError, match="from 0 to 15"):
        exercises.check_nf4_codes(block, [12, 0, 8, 16])


def test_check_nf4_bits(capsys):
    assert exercises.check_nf4_bits(64, 4.127)
    assert exercises.check_nf4_bits(128, 4 + 8 / 128 + 32 / (128 * 256))
    assert not exercises.check_nf4_bits(128, 4.5)
    assert not exercises.check_nf4_bits(128, 4 + 32 / 128)
    assert "without double quantization" in capsys.readouterr().out.splitlines()[-1]
    assert not exercises.check_nf4_bits(128, 4 + 8 / 128)
    assert "float32 scale of its own" in capsys.readouterr().out


def test_check_kbit_cast_count(capsys):
    config = LlamaConfig(
        vocab_size=128256,
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
    )
    embedding = 128256 * 8192
    assert exercises.check_kbit_cast_count(config, 2 * embedding + 161 * 8192)
    assert not exercises.check_kbit_cast_count(config, embedding + 161 * 8192)
    assert "output head is not tied" in capsys.readouterr().out.splitlines()[-1]
    assert not exercises.check_kbit_cast_count(config, 2 * embedding)
    assert "RMSNorm" in capsys.readouterr().out
