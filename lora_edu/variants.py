"""LoRA's variants: PiSSA's SVD initialisation and DoRA's magnitude (Chapter 8).

rsLoRA needs no code of its own: it is `use_rslora=True` on Chapter 4's LoRALinear.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lora_edu.lora import (
    LoRALinear,
    check_lora_arguments,
    linear_layer_names,
    linear_layers_matching,
)


@torch.no_grad()
def pissa_init(layer: LoRALinear) -> LoRALinear:
    """Set A (r×in), B (out×r) from W's top-r SVD; keep W − s·BA frozen. [Ch. 8]"""
    if not isinstance(layer, LoRALinear):
        raise TypeError(f"layer must be a LoRALinear, got {type(layer).__name__}")
    if layer.merged:
        raise ValueError("the layer is merged: unmerge it before initialising PiSSA")
    weight = layer.weight.float()  # the SVD in float32 whatever the weight's dtype
    if not torch.isfinite(weight).all():
        raise ValueError("the layer's weight holds NaN or infinity; PiSSA needs an SVD")
    U, S, Vh = torch.linalg.svd(weight, full_matrices=False)
    # Like PEFT, divide Σ_r by the scaling s, so that s·BA is exactly W's best rank-r
    # approximation U_r Σ_r V_rᵀ (Chapter 3) whatever α and r are.
    root = torch.sqrt(S[: layer.r] / layer.scaling)
    B, A = U[:, : layer.r] * root, root[:, None] * Vh[: layer.r]
    layer.lora_B.copy_(B)
    layer.lora_A.copy_(A)
    layer.weight.copy_(weight - layer.scaling * B @ A)
    return layer


class DoRALinear(nn.Linear):
    """DoRA: h = m ⊙ (W₀ + s·BA)x / ‖W₀ + s·BA‖_row + b, W₀ and b frozen. [Ch. 8]"""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        r: int,
        lora_alpha: float,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        check_lora_arguments(in_features, out_features, r, lora_alpha)
        super().__init__(
            in_features, out_features, bias=bias, device=device, dtype=dtype
        )
        self.r, self.lora_alpha, self.scaling = r, lora_alpha, lora_alpha / r
        options = {"device": device, "dtype": dtype}
        self.lora_A = nn.Parameter(torch.empty(r, in_features, **options))
        self.lora_B = nn.Parameter(torch.empty(out_features, r, **options))
        self.magnitude = nn.Parameter(torch.empty(out_features, **options))
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.reset_dora_parameters()

    @torch.no_grad()
    def reset_dora_parameters(self) -> None:
        """A at random, B = 0, and m = ‖W₀‖_row, so that the layer starts as W₀."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)
        self.magnitude.copy_(self.weight_norm())

    def weight_norm(self) -> torch.Tensor:
        """‖W₀ + s·BA‖ of each output row, as PEFT and the paper take it, (out,)."""
        return torch.linalg.norm(
            self.weight + self.scaling * self.lora_B @ self.lora_A, dim=1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) → (..., out_features)."""
        # DoRA §4.3: treat the norm as a constant, so that no gradient flows through it.
        scale = self.magnitude / self.weight_norm().detach()
        lora = F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling
        result = scale * (F.linear(x, self.weight) + lora)
        return result if self.bias is None else result + self.bias

    def merged_weight(self) -> torch.Tensor:
        """The single weight W' = m ⊙ (W₀ + s·BA) / ‖W₀ + s·BA‖_row, (out, in)."""
        direction = self.weight + self.scaling * self.lora_B @ self.lora_A
        return self.magnitude[:, None] * direction / self.weight_norm()[:, None]

    @classmethod
    def from_linear(cls, linear: nn.Linear, r: int, lora_alpha: float) -> DoRALinear:
        """Wrap an existing nn.Linear, sharing its weight and bias."""
        if type(linear) is not nn.Linear:
            raise TypeError(
                f"linear must be a plain nn.Linear, got {type(linear).__name__}"
            )
        layer = cls(
            linear.in_features,
            linear.out_features,
            r,
            lora_alpha,
            linear.bias is not None,
            device="meta",
        )
        layer.weight, layer.bias = linear.weight, linear.bias
        options = {"device": linear.weight.device, "dtype": linear.weight.dtype}
        for name in ("lora_A", "lora_B", "magnitude"):
            shape = getattr(layer, name).shape
            setattr(layer, name, nn.Parameter(torch.empty(shape, **options)))
        layer.reset_dora_parameters()
        return layer

    def extra_repr(self) -> str:
        # nn.Linear.extra_repr by name, as LoRALinear does.
        return f"{nn.Linear.extra_repr(self)}, r={self.r}, lora_alpha={self.lora_alpha}"


def inject_dora(model: nn.Module, target_modules, r: int, lora_alpha: float):
    """Freeze the model; put DoRALinear in place of the targeted nn.Linear. [Ch. 8]"""
    if isinstance(target_modules, str):
        raise TypeError(
            f"target_modules must be a list of names, got the string {target_modules!r}"
        )
    targets = list(target_modules)
    missing = [t for t in targets if not linear_layers_matching(model, [t])]
    if not targets or missing:
        raise ValueError(
            f"target_modules {missing or targets} match no nn.Linear; "
            f"the model's nn.Linear layers are named {linear_layer_names(model)}"
        )
    layers = linear_layers_matching(model, targets)
    for layer in layers.values():  # check every layer before changing any
        check_lora_arguments(layer.in_features, layer.out_features, r, lora_alpha)
    model.requires_grad_(False)
    for name in sorted(layers):  # in inject_lora's order, so a seed draws the same A
        parent, _, child = name.rpartition(".")
        dora = DoRALinear.from_linear(layers[name], r, lora_alpha)
        setattr(model.get_submodule(parent), child, dora)
    return model


def adapted_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's LoRALinear and DoRALinear layers, by module path. [Ch. 8]"""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (LoRALinear, DoRALinear))
    }


@torch.no_grad()
def copy_adapter_from_peft(model: nn.Module, peft_model, adapter: str = "default"):
    """Copy A, B (and DoRA's m) of each adapted layer from a PEFT model. [Ch. 8]"""
    ours = adapted_layers(model)
    theirs = {
        name.removeprefix("base_model.model."): module
        for name, module in peft_model.named_modules()
        if isinstance(getattr(module, "lora_A", None), nn.ModuleDict)
        and adapter in module.lora_A
    }
    if not ours or set(ours) != set(theirs):
        raise ValueError(
            f"the adapted layers differ: {sorted(set(ours) ^ set(theirs))[:3]} "
            f"are adapted in only one model ({len(ours)} ours, {len(theirs)} PEFT's)"
        )
    pairs = []
    for name, layer in ours.items():
        peft_layer = theirs[name]
        if not math.isclose(layer.scaling, peft_layer.scaling[adapter]):
            raise ValueError(f"{name}: scaling {layer.scaling} here, PEFT's differs")
        pairs += [
            (layer.lora_A, peft_layer.lora_A[adapter].weight),
            (layer.lora_B, peft_layer.lora_B[adapter].weight),
        ]
        dora = peft_layer.lora_magnitude_vector
        if isinstance(layer, DoRALinear) != (adapter in dora):
            raise ValueError(f"{name}: DoRA in only one of the two models")
        if isinstance(layer, DoRALinear):
            pairs.append((layer.magnitude, dora[adapter].weight))
    for mine, peft_tensor in pairs:  # shapes first, so that a mismatch changes nothing
        if mine.shape != peft_tensor.shape:
            raise ValueError(f"shape {tuple(peft_tensor.shape)} vs {tuple(mine.shape)}")
    for mine, peft_tensor in pairs:
        mine.copy_(peft_tensor)
    return model


def train(model: nn.Module, blocks: torch.Tensor, steps: int, lr: float, seed: int):
    """Adam on the trainable parameters, 16 of blocks (n, T) a step; losses. [Ch. 8]"""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters: inject an adapter")
    optimizer = torch.optim.Adam(trainable, lr=lr)
    batches = torch.Generator().manual_seed(seed)  # the same batches for every run
    losses = []
    model.train()
    for _ in range(steps):
        batch = blocks[torch.randint(len(blocks), (16,), generator=batches)]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses
