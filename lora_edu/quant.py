"""QLoRA from first principles: NF4, double quantization, LoRA on a 4-bit base (Ch. 9).

NF4 is built as the QLoRA paper (Dettmers et al. 2023, arXiv 2305.14314) describes it
and bitsandbytes implements it; tests/test_quant.py checks it against bitsandbytes.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lora_edu.lora import check_lora_arguments, linear_layer_names, matches_target

# bitsandbytes' outermost probability: to seven digits, 1 − ½(1/30 + 1/32) = 929/960.
NF4_OFFSET = 0.9677083
# Double quantization: the scales are quantized in blocks of 256.
NESTED_BLOCK_SIZE = 256
WEIGHT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def normal_float_levels(offset: float = NF4_OFFSET) -> torch.Tensor:
    """NF4's levels (16,) in [−1, 1]: quantiles of N(0, 1), and an exact 0. [Ch. 9]"""
    # 8 positive and 7 negative quantiles at evenly spaced probabilities from `offset`
    # down to ½, whose quantile is the zero. The probabilities are float32, as
    # bitsandbytes' torch.linspace makes them; the quantiles are float64.
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9).double())[:-1]
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8).double())[:-1]
    zero = torch.zeros(1, dtype=torch.float64)
    levels = torch.cat([negative, zero, positive]).float().sort().values
    return levels / levels.max()


def dynamic_levels() -> torch.Tensor:
    """bitsandbytes' signed dynamic 8-bit map (256,) in [−1, 1]. [Ch. 9]"""
    # For e = 0…6: the midpoints of 2^e equal steps of [0.1, 1], times ±10^(e−6).
    levels = [0.0, 1.0]
    for e in range(7):
        edges = torch.linspace(0.1, 1, 2**e + 1)
        means = (10.0 ** (e - 6)) * ((edges[:-1] + edges[1:]) / 2)
        levels += means.tolist() + (-means).tolist()
    return torch.tensor(sorted(levels))


NF4_CODE = normal_float_levels()
DYNAMIC_CODE = dynamic_levels()
# Symmetric absmax int4, for comparison: the 15 levels k/7.
INT4_CODE = torch.arange(-7, 8) / 7


def quantize_blockwise(
    x: torch.Tensor, levels: torch.Tensor, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (n,) of the levels nearest to x (n,) / block absmax, and absmax. [Ch. 9]"""
    blocks = F.pad(x, (0, -len(x) % block_size)).view(-1, block_size)
    absmax = blocks.abs().amax(dim=1)
    # Multiply by the reciprocal, as bitsandbytes does; its clamp keeps an all-zero
    # block from dividing by zero (and scales a block of subnormal weights by 1e38).
    scaled = (blocks * (1 / absmax.clamp(min=1e-38))[:, None]).clamp(-1, 1)
    # The midpoints between neighbouring levels are the boundaries; a tie rounds down.
    codes = torch.bucketize(scaled, (levels[1:] + levels[:-1]) / 2)
    return codes.flatten()[: len(x)].to(torch.uint8), absmax


def dequantize_blockwise(
    codes: torch.Tensor, absmax: torch.Tensor, levels: torch.Tensor, block_size: int
) -> torch.Tensor:
    """The values (n,) codes (n,) stand for: level times block absmax. [Ch. 9]"""
    values = F.pad(levels[codes.long()], (0, -len(codes) % block_size))
    return (values.view(-1, block_size) * absmax[:, None]).flatten()[: len(codes)]


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """Codes (n,) → bytes (⌈n/2⌉,): the first of each pair in the high half. [Ch. 9]"""
    codes = F.pad(codes, (0, len(codes) % 2))
    return (codes[0::2] << 4) | codes[1::2]


def unpack_codes(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The n 4-bit codes (n,) in packed bytes (⌈n/2⌉,). [Ch. 9]"""
    return torch.stack([packed >> 4, packed & 15], dim=1).flatten()[:n]


@dataclass(frozen=True)
class NF4Weight:
    """A tensor in NF4: packed 4-bit codes and a scale per block. [Ch. 9]"""

    packed: torch.Tensor  # uint8 (⌈n/2⌉,): two codes into NF4_CODE per byte
    # float32 per block; with double quantization, uint8 codes into DYNAMIC_CODE
    absmax: torch.Tensor
    shape: tuple[int, ...]
    dtype: torch.dtype  # of the original tensor, which dequantization returns
    block_size: int
    absmax_scale: torch.Tensor | None = None  # double quantization: per 256 scales
    absmax_offset: torch.Tensor | None = None  # double quantization: their float32 mean

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def codes(self) -> torch.Tensor:
        """The 4-bit codes, one per weight, in the tensor's shape."""
        return unpack_codes(self.packed, self.numel).view(self.shape)

    def storage_bytes(self) -> int:
        """Bytes of the tensors stored; the lookup tables are shared constants."""
        parts = [self.packed, self.absmax, self.absmax_scale, self.absmax_offset]
        return sum(t.nbytes for t in parts if t is not None)

    def bits_per_parameter(self) -> float:
        return 8 * self.storage_bytes() / self.numel


def check_block_size(block_size) -> None:
    """Raise a ValueError unless block_size is a positive integer. [Ch. 9]"""
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, numbers.Integral)
        or block_size <= 0
    ):
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")


def quantize_nf4(
    w: torch.Tensor, block_size: int = 64, double_quant: bool = False
) -> NF4Weight:
    """w (any shape) in NF4; double_quant stores the scales in 8 bits. [Ch. 9]"""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in WEIGHT_DTYPES:
        raise TypeError(
            f"w must be float32, bfloat16 or float16 (as for bitsandbytes), got "
            f"{w.dtype}"
        )
    check_block_size(block_size)
    if w.numel() == 0:
        raise ValueError("w is empty: there is nothing to quantize")
    bad = int((~torch.isfinite(w)).sum())
    if bad:
        raise ValueError(
            f"w has {bad} non-finite values (nan or inf), which NF4 cannot represent"
        )
    codes, absmax = quantize_blockwise(
        w.detach().reshape(-1).float(), NF4_CODE, block_size
    )
    nested = {}
    if double_quant:
        # Centre the scales (all positive), so that the signed 8-bit map covers them.
        offset = absmax.mean()
        absmax, scale = quantize_blockwise(
            absmax - offset, DYNAMIC_CODE, NESTED_BLOCK_SIZE
        )
        nested = {"absmax_scale": scale, "absmax_offset": offset}
    return NF4Weight(
        pack_codes(codes), absmax, tuple(w.shape), w.dtype, block_size, **nested
    )


def dequantize_nf4(q: NF4Weight) -> torch.Tensor:
    """The tensor an NF4Weight stands for, in its original shape and dtype. [Ch. 9]"""
    if not isinstance(q, NF4Weight):
        raise TypeError(f"q must be an NF4Weight, got {type(q).__name__}")
    absmax = q.absmax
    if q.absmax_scale is not None:
        absmax = dequantize_blockwise(
            absmax, q.absmax_scale, DYNAMIC_CODE, NESTED_BLOCK_SIZE
        )
        absmax = absmax + q.absmax_offset
    codes = unpack_codes(q.packed, q.numel)
    values = dequantize_blockwise(codes, absmax, NF4_CODE, q.block_size)
    return values.view(q.shape).to(q.dtype)


def nf4_storage_bytes(
    numel: int, block_size: int = 64, double_quant: bool = True
) -> int:
    """Bytes quantize_nf4 stores for numel weights, computed without them. [Ch. 9]"""
    check_block_size(block_size)
    blocks = math.ceil(numel / block_size)
    if not double_quant:
        return math.ceil(numel / 2) + 4 * blocks
    return math.ceil(numel / 2) + blocks + 4 * math.ceil(blocks / NESTED_BLOCK_SIZE) + 4


class NF4Linear(nn.Module):
    """A frozen linear layer with an NF4 weight, dequantized in forward. [Ch. 9]"""

    def __init__(self, weight: NF4Weight, bias: torch.Tensor | None = None):
        super().__init__()
        if not isinstance(weight, NF4Weight) or len(weight.shape) != 2:
            raise TypeError("weight must be the NF4Weight of a 2-D (out × in) matrix")
        self.out_features, self.in_features = weight.shape
        self.weight_dtype, self.block_size = weight.dtype, weight.block_size
        # Buffers, not parameters: they move with the model, and nothing trains them.
        for name in ("packed", "absmax", "absmax_scale", "absmax_offset"):
            self.register_buffer(name, getattr(weight, name))
        self.bias = None if bias is None else nn.Parameter(bias.detach(), False)

    @property
    def weight(self) -> NF4Weight:
        return NF4Weight(
            self.packed,
            self.absmax,
            (self.out_features, self.in_features),
            self.weight_dtype,
            self.block_size,
            self.absmax_scale,
            self.absmax_offset,
        )

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, block_size: int = 64, double_quant: bool = True
    ) -> NF4Linear:
        """Quantize an nn.Linear's weight to NF4; its bias stays in floating point."""
        if type(linear) is not nn.Linear:
            raise TypeError(
                f"linear must be a plain nn.Linear, got {type(linear).__name__}"
            )
        weight = quantize_nf4(linear.weight, block_size, double_quant)
        return cls(weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) → (..., out_features), with the dequantized weight."""
        return F.linear(x, dequantize_nf4(self.weight).to(x.dtype), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"NF4 in blocks of {self.block_size}"
        )


class QLoRALinear(nn.Module):
    """QLoRA's layer: frozen NF4 Ŵ₀ plus LoRA, h = Ŵ₀x + b + (α/r)·BAx. [Ch. 9]"""

    def __init__(
        self,
        base: NF4Linear,
        r: int,
        lora_alpha: float,
        adapter_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if not isinstance(base, NF4Linear):
            raise TypeError(f"base must be an NF4Linear, got {type(base).__name__}")
        check_lora_arguments(base.in_features, base.out_features, r, lora_alpha)
        self.base, self.r, self.lora_alpha = base.requires_grad_(False), r, lora_alpha
        self.scaling = lora_alpha / r
        device = base.packed.device
        self.lora_A = nn.Parameter(
            torch.empty(r, base.in_features, device=device, dtype=adapter_dtype)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(base.out_features, r, device=device, dtype=adapter_dtype)
        )
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as LoRALinear and PEFT

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) → (..., out_features); the adapter runs in its dtype."""
        update = F.linear(F.linear(x.to(self.lora_A.dtype), self.lora_A), self.lora_B)
        return self.base(x) + (update * self.scaling).to(x.dtype)


def quantize_model(
    model: nn.Module,
    block_size: int = 64,
    double_quant: bool = True,
    skip: Iterable[str] = ("lm_head",),
) -> nn.Module:
    """Freeze the model; make each nn.Linear not in skip an NF4Linear. [Ch. 9]"""
    if isinstance(skip, str):
        raise TypeError(f"skip must be a list of names, got the string {skip!r}")
    check_block_size(block_size)
    skip = list(skip)
    names = [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear and not any(matches_target(name, s) for s in skip)
    ]
    if not names:
        raise ValueError(
            f"the model has no nn.Linear layer to quantize outside skip={skip}; "
            f"its linear layers are named {linear_layer_names(model)}"
        )
    model.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child)
        setattr(parent, child, NF4Linear.from_linear(linear, block_size, double_quant))
    return model


def inject_qlora(
    model: nn.Module, target_modules: Iterable[str], r: int, lora_alpha: float
) -> nn.Module:
    """Wrap the NF4Linear layers named in target_modules with QLoRALinear. [Ch. 9]"""
    if isinstance(target_modules, str):
        raise TypeError(
            f"target_modules must be a list of names, got the string {target_modules!r}"
        )
    targets = list(target_modules)
    layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, NF4Linear)
        and any(matches_target(name, t) for t in targets)
    }
    missing = [t for t in targets if not any(matches_target(n, t) for n in layers)]
    if not targets or missing:
        raise ValueError(
            f"target_modules {missing or targets} match no NF4Linear layer: "
            "call quantize_model first, and name its quantized layers"
        )
    model.requires_grad_(False)
    # Sorted by name, as in inject_lora, so that one seed draws the same A matrices.
    for name in sorted(layers):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, QLoRALinear(layers[name], r, lora_alpha))
    return model
