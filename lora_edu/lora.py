"""LoRA from scratch: the layer, its injection into a model, and adapters (Chapter 4).

Adapters are saved and loaded in PEFT's format.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from lora_edu.files import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    ADAPTER_WEIGHTS,
    holds_adapter,
    replaced_folder,
)

# PEFT saves each tensor under this prefix plus the module's path
PEFT_PREFIX = "base_model.model."


def check_lora_arguments(
    in_features: int,
    out_features: int,
    r,
    lora_alpha,
    lora_dropout=0.0,
    init="kaiming",
    use_rslora=False,
) -> None:
    """Raise a ValueError naming the first bad LoRA argument for a layer. [Ch. 4]"""
    if isinstance(r, bool) or not isinstance(r, numbers.Integral) or r <= 0:
        raise ValueError(f"r must be a positive integer, got {r!r}")
    if r > min(in_features, out_features):
        raise ValueError(
            "r must be at most min(in_features, out_features) = "
            f"{min(in_features, out_features)} for a {out_features}×{in_features} "
            f"layer, got r={r}: a larger rank cannot add anything"
        )
    if (
        isinstance(lora_alpha, bool)
        or not isinstance(lora_alpha, numbers.Real)
        or not 0 < lora_alpha < math.inf
    ):
        raise ValueError(f"lora_alpha must be a finite number > 0, got {lora_alpha!r}")
    if not isinstance(lora_dropout, numbers.Real) or not 0 <= lora_dropout < 1:
        raise ValueError(f"lora_dropout must be in [0, 1), got {lora_dropout!r}")
    if init not in ("kaiming", "gaussian"):
        raise ValueError(f"init must be 'kaiming' or 'gaussian', got {init!r}")
    if not isinstance(use_rslora, bool):
        raise ValueError(f"use_rslora must be True or False, got {use_rslora!r}")


class LoRALinear(nn.Linear):
    """A frozen linear layer plus a trainable rank-r update. [Ch. 4]

    h = W₀x + b + (α/r)·B A x.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        r: int,
        lora_alpha: float,
        bias: bool = True,
        lora_dropout: float = 0.0,
        use_rslora: bool = False,
        init: str = "kaiming",
        device=None,
        dtype=None,
        adapter_dtype=None,
    ):
        check_lora_arguments(
            in_features, out_features, r, lora_alpha, lora_dropout, init, use_rslora
        )
        super().__init__(
            in_features, out_features, bias=bias, device=device, dtype=dtype
        )
        self.r, self.lora_alpha, self.use_rslora, self.init = (
            r,
            lora_alpha,
            use_rslora,
            init,
        )
        # rsLoRA divides by √r instead of r,
        # so that the update does not shrink as r grows.
        self.scaling = lora_alpha / math.sqrt(r) if use_rslora else lora_alpha / r
        # A and B may be wider than W₀: a bfloat16 base can train float32 updates.
        adapter_dtype = adapter_dtype or dtype
        self.lora_A = nn.Parameter(
            torch.empty(r, in_features, device=device, dtype=adapter_dtype)
        )
        self.lora_B = nn.Parameter(
            torch.empty(out_features, r, device=device, dtype=adapter_dtype)
        )
        self.lora_dropout = (
            nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        )
        self.merged = False
        self.merged_factors = None  # the (A, B) merged into the weight, for unmerge
        self.freeze_base_layer()
        self.reset_lora_parameters()

    def freeze_base_layer(self) -> None:
        """Stop gradients to W₀ and b: LoRA trains only A and B."""
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    def reset_lora_parameters(self) -> None:
        """Draw A at random and set B to zero, so that the layer starts as W₀.

        ΔW = BA = 0 at the start.
        """
        if self.init == "gaussian":
            # The paper's choice, with PEFT's standard deviation.
            nn.init.normal_(self.lora_A, std=1 / self.r)
        else:
            # loralib's and PEFT's default.
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        """The update ΔW = (α/r)·B A, shape (out_features, in_features)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) → (..., out_features)."""
        result = F.linear(x, self.weight, self.bias)
        if self.merged:
            return result  # ΔW is already inside the weight
        x = self.lora_dropout(x.to(self.lora_A.dtype))
        update = F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling
        return (result + update).to(result.dtype)  # added in the wider dtype, as PEFT

    @torch.no_grad()
    def merge(self) -> None:
        """Add ΔW into the weight, so inference costs one matmul.

        Does nothing if already merged.
        """
        if self.merged:
            return
        delta = self.delta_weight()
        if not torch.isfinite(delta).all():
            # As PEFT's safe_merge: a NaN in ΔW would spread into W₀ for good.
            raise ValueError("ΔW holds NaN or infinity; the weight is unchanged")
        self.weight += delta.to(self.weight.dtype)
        self.merged_factors = (self.lora_A.clone(), self.lora_B.clone())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the ΔW that merge added, even if A or B changed since."""
        if self.merged:
            A, B = self.merged_factors
            self.weight -= ((B @ A) * self.scaling).to(self.weight.dtype)
            self.merged, self.merged_factors = False, None

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # A merged weight holds ΔW: a fresh layer loading it would add ΔW twice.
        if self.merged:
            raise RuntimeError(f"{prefix or 'the layer'} is merged: unmerge it first")
        nn.Linear._save_to_state_dict(self, destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Loading W₀ into a merged layer would make unmerge subtract ΔW from it.
        if self.merged:
            raise RuntimeError(f"{prefix or 'the layer'} is merged: unmerge it first")
        nn.Linear._load_from_state_dict(self, state_dict, prefix, *args, **kwargs)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, r: int, lora_alpha: float, **options
    ) -> LoRALinear:
        """Wrap an nn.Linear, sharing weight and bias; 16-bit bases get fp32 A and B."""
        if not isinstance(linear, nn.Linear) or isinstance(linear, LoRALinear):
            raise TypeError(
                f"linear must be a plain nn.Linear, got {type(linear).__name__}"
            )
        if not linear.weight.dtype.is_floating_point:
            raise TypeError(
                f"linear has a quantized {linear.weight.dtype} weight; "
                "wrap a floating-point nn.Linear"
            )
        device, dtype = linear.weight.device, linear.weight.dtype
        # As PEFT: updates in 16 bits would lose most small steps to rounding.
        if dtype in (torch.float16, torch.bfloat16):
            options.setdefault("adapter_dtype", torch.float32)
        # Build on the meta device,
        # so that no throwaway weight is allocated or initialised.
        layer = cls(
            linear.in_features,
            linear.out_features,
            r,
            lora_alpha,
            linear.bias is not None,
            device="meta",
            dtype=dtype,
            **options,
        )
        layer.weight, layer.bias = linear.weight, linear.bias
        layer.freeze_base_layer()
        A, B = layer.lora_A, layer.lora_B
        layer.lora_A = nn.Parameter(torch.empty_like(A, device=device))
        layer.lora_B = nn.Parameter(torch.empty_like(B, device=device))
        layer.reset_lora_parameters()
        return layer

    def extra_repr(self) -> str:
        # nn.Linear.extra_repr by name rather than super(), so that the method also
        # works outside the class body.
        settings = f"r={self.r}, lora_alpha={self.lora_alpha}, merged={self.merged}"
        return f"{nn.Linear.extra_repr(self)}, {settings}"


# --- Whole models ---------------------------------------------------------------


def matches_target(name: str, target: str) -> bool:
    """Whether module path `name` is selected by `target`, as in PEFT. [Ch. 4]

    Selected means equal to it, or ending in '.' + target.
    """
    return name == target or name.endswith("." + target)


def linear_layers_matching(
    model: nn.Module, targets: Iterable[str]
) -> dict[str, nn.Linear]:
    """The plain nn.Linear layers that any of `targets` selects, by path. [Ch. 4]"""
    targets = list(targets)
    return {
        name: module
        for name, module in model.named_modules()
        if type(module) is nn.Linear and any(matches_target(name, t) for t in targets)
    }


def linear_layer_names(model: nn.Module) -> list[str]:
    """The distinct short names of the nn.Linear layers in a model. [Ch. 4]

    For example ['k_proj', 'lm_head', …].
    """
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear)
        }
    )


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's LoRALinear layers, by module path. [Ch. 4]"""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, LoRALinear)
    }


def inject_lora(
    model: nn.Module,
    target_modules: Iterable[str],
    r: int,
    lora_alpha: float,
    **options,
) -> nn.Module:
    """Freeze the model and swap its target nn.Linear layers for LoRALinear. [Ch. 4]

    Every parameter is frozen; the nn.Linear layers named in target_modules are
    replaced by LoRALinear.
    """
    if isinstance(target_modules, str):
        raise TypeError(
            "target_modules must be a list of names, got the string "
            f"{target_modules!r}; write [{target_modules!r}]"
        )
    targets = list(target_modules)
    if lora_layers(model):
        raise ValueError(
            "the model already has LoRA layers: inject_lora must be called once "
            "(load_adapter reuses them)"
        )
    matched = {
        t: [n for n, _ in model.named_modules() if n and matches_target(n, t)]
        for t in targets
    }
    missing = [t for t, names in matched.items() if not names]
    if not targets or missing:
        raise ValueError(
            f"target_modules {missing or targets} match no module; "
            f"the model's nn.Linear layers are named {linear_layer_names(model)}"
        )
    names = sorted({n for ns in matched.values() for n in ns})
    # Check every target before changing anything: an error leaves the model as it was.
    for name in names:
        module = model.get_submodule(name)
        if type(module) is not nn.Linear:
            raise TypeError(
                f"target module {name!r} is a {type(module).__name__}, not an nn.Linear"
            )
        if not module.weight.dtype.is_floating_point:
            raise TypeError(f"target module {name!r} has a quantized weight")
        try:
            check_lora_arguments(module.in_features, module.out_features, r, lora_alpha)
        except ValueError as error:
            raise ValueError(f"target module {name!r}: {error}") from None
    layers = {
        n: LoRALinear.from_linear(model.get_submodule(n), r, lora_alpha, **options)
        for n in names
    }
    model.requires_grad_(False)
    for name, layer in layers.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer)
    return model


def _require_lora(model: nn.Module) -> dict[str, LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers: call inject_lora first")
    return layers


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA layer's update into its weight, or none. [Ch. 4]"""
    layers = _require_lora(model)
    owners = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(name)
    for name, layer in layers.items():
        shared = sorted(owners[id(layer.weight)] - {name})
        if shared:
            # Merging would change the other module too, e.g. tied input embeddings.
            raise ValueError(f"{name}'s weight is shared with {shared}: cannot merge")
        if not layer.merged and not torch.isfinite(layer.delta_weight()).all():
            raise ValueError(f"{name}'s ΔW holds NaN or infinite values: not merged")
    for layer in layers.values():
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Take every LoRA layer's update out of its weight again. [Ch. 4]"""
    for layer in _require_lora(model).values():
        layer.unmerge()
    return model


def lora_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The lora_A and lora_B parameters, by name. [Ch. 4]

    For example 'model.layers.0.self_attn.q_proj.lora_A'.
    """
    return {
        name: p
        for name, p in model.named_parameters()
        if name.rsplit(".", 1)[-1] in ("lora_A", "lora_B")
    }


def mark_only_lora_as_trainable(model: nn.Module) -> nn.Module:
    """Freeze every parameter except lora_A and lora_B. [Ch. 4]"""
    _require_lora(model)
    model.requires_grad_(False)
    for parameter in lora_parameters(model).values():
        parameter.requires_grad_(True)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; works on the meta device. [Ch. 4]"""
    parameters = list(model.parameters())  # shared (tied) parameters are listed once
    return sum(p.numel() for p in parameters if p.requires_grad), sum(
        p.numel() for p in parameters
    )


# --- Adapters on disk, in PEFT's format -----------------------------------------


def _plain(number):
    """A Python int or float for JSON, also from a NumPy or PyTorch scalar."""
    return int(number) if isinstance(number, numbers.Integral) else float(number)


def _adapter_settings(layers: dict[str, LoRALinear]) -> dict:
    settings = {
        (_plain(layer.r), _plain(layer.lora_alpha), layer.use_rslora)
        for layer in layers.values()
    }
    if len(settings) != 1:
        raise ValueError(
            "all LoRA layers must share r, lora_alpha and use_rslora to be saved as "
            f"one adapter, got {settings}"
        )
    ((r, lora_alpha, use_rslora),) = settings
    return {"r": r, "lora_alpha": lora_alpha, "use_rslora": use_rslora}


def _target_modules(model: nn.Module, layers: dict[str, LoRALinear]) -> list[str]:
    """Short names ('q_proj') if they select exactly these layers, else full paths."""
    short = sorted({name.rsplit(".", 1)[-1] for name in layers})
    selected = {
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(matches_target(name, t) for t in short)
    }
    return short if selected == set(layers) else sorted(layers)


def save_adapter(
    model: nn.Module,
    directory,
    base_model_name_or_path: str | None = None,
    task_type: str = "CAUSAL_LM",
    overwrite: bool = False,
) -> Path:
    """Write the LoRA weights in PEFT's format. [Ch. 4]

    As PEFT does: adapter_model.safetensors plus adapter_config.json.
    """
    layers = _require_lora(model)
    directory = Path(directory)
    if holds_adapter(directory) and not overwrite:
        raise FileExistsError(
            f"{directory} already holds an adapter; pass overwrite=True to replace it"
        )
    config = {
        "peft_type": "LORA",
        "task_type": task_type,
        **_adapter_settings(layers),
        "target_modules": _target_modules(model, layers),
        "base_model_name_or_path": base_model_name_or_path,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    tensors = {}
    for name, layer in layers.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = (
            layer.lora_A.detach().cpu().contiguous()
        )
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = (
            layer.lora_B.detach().cpu().contiguous()
        )
    check_finite(tensors, "the adapter to save")
    # A complete new folder replaces the old one in one step: a crash leaves old or new.
    with replaced_folder(directory, ADAPTER_FILES) as staging:
        save_file(tensors, staging / ADAPTER_WEIGHTS, metadata={"format": "pt"})
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return directory


class NonFiniteError(ValueError):
    """A tensor or a loss holds NaN or an infinity."""


def check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise a NonFiniteError naming the first tensor holding NaN or an infinity."""
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise NonFiniteError(
                f"{what} is broken: {name} holds NaN or infinite values"
            )


def read_adapter_config(directory) -> dict:
    """Read and check an adapter's adapter_config.json. [Ch. 4]

    Raises if a file or a needed key is missing.
    """
    directory = Path(directory)
    missing = [
        name
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
        if not (directory / name).is_file()
    ]
    if missing:
        raise FileNotFoundError(
            f"{directory} is not a complete adapter: missing {', '.join(missing)}"
        )
    path = directory / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a {type(config).__name__}, not a JSON object")
    if config.get("peft_type") != "LORA":
        raise ValueError(
            f"{path} has peft_type {config.get('peft_type')!r}, expected 'LORA'"
        )
    absent = [key for key in ("r", "lora_alpha", "target_modules") if key not in config]
    if absent:
        # PEFT would silently fall back to r = 8, lora_alpha = 8;
        # guessing would give wrong outputs.
        raise ValueError(f"{path} lacks {', '.join(absent)}")
    targets = config["target_modules"]
    if isinstance(targets, list) and not (
        targets and all(isinstance(t, str) and t for t in targets)
    ):
        raise ValueError(
            f"{path}: target_modules must be non-empty names, got {targets}"
        )
    if isinstance(config["r"], float) and config["r"].is_integer():
        config["r"] = int(config["r"])  # JSON writers may write 8 as 8.0
    try:
        # No layer is known here: r stands in for its sides, so r and α are checked.
        check_lora_arguments(
            config["r"],
            config["r"],
            config["r"],
            config["lora_alpha"],
            use_rslora=config.get("use_rslora", False),
        )
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    # Features of PEFT that this from-scratch layer does not implement: loading such
    # an adapter anyway would give a model that silently computes something else.
    unsupported = {
        "target_modules as a regular expression": isinstance(
            config["target_modules"], str
        ),
        "use_dora": config.get("use_dora"),
        "rank_pattern": config.get("rank_pattern"),
        "alpha_pattern": config.get("alpha_pattern"),
        "layers_to_transform": config.get("layers_to_transform"),
        "modules_to_save": config.get("modules_to_save"),
        "fan_in_fan_out": config.get("fan_in_fan_out"),
        "bias other than 'none'": config.get("bias", "none") != "none",
    }
    used = [feature for feature, value in unsupported.items() if value]
    if used:
        raise ValueError(
            f"the adapter in {directory} uses {', '.join(used)}, which lora_edu does "
            "not support; load it with PEFT"
        )
    return config


def load_adapter(model: nn.Module, directory) -> nn.Module:
    """Load an adapter saved by save_adapter or by PEFT. [Ch. 4]

    Injects LoRA layers first if the model has none.
    """
    config = read_adapter_config(directory)
    r, alpha, rslora = (
        config["r"],
        config["lora_alpha"],
        config.get("use_rslora", False),
    )
    layers = lora_layers(model)
    for name, layer in layers.items():
        if (layer.r, layer.lora_alpha, layer.use_rslora) != (r, alpha, rslora):
            raise ValueError(
                f"the adapter in {directory} was saved with r={r}, lora_alpha={alpha}, "
                f"use_rslora={rslora}, but LoRA layer {name!r} has r={layer.r}, "
                f"lora_alpha={layer.lora_alpha}, use_rslora={layer.use_rslora}"
            )
        if layer.merged:
            raise ValueError(
                f"LoRA layer {name!r} is merged: unmerge the model before loading an "
                "adapter into it"
            )
    # Check every tensor against the layer it belongs to,
    # before changing the model at all.
    targets = layers or linear_layers_matching(model, config["target_modules"])
    tensors = load_file(Path(directory) / ADAPTER_WEIGHTS)
    expected = {}
    for name, module in targets.items():
        expected[f"{PEFT_PREFIX}{name}.lora_A.weight"] = (
            name,
            "lora_A",
            (r, module.in_features),
        )
        expected[f"{PEFT_PREFIX}{name}.lora_B.weight"] = (
            name,
            "lora_B",
            (module.out_features, r),
        )
    unexpected, absent = (
        sorted(set(tensors) - set(expected)),
        sorted(set(expected) - set(tensors)),
    )
    if unexpected or absent:
        raise ValueError(
            f"the adapter in {directory} does not fit this model: {len(unexpected)} "
            f"tensors for no LoRA layer {unexpected[:3]}, {len(absent)} LoRA weights "
            f"missing from the adapter {absent[:3]}"
        )
    for key, (name, part, shape) in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(
                f"the adapter's {part} for {name!r} has shape "
                f"{tuple(tensors[key].shape)}, but the model needs {shape}"
            )
    check_finite(tensors, f"the adapter in {directory}")
    if not layers:
        inject_lora(model, config["target_modules"], r, alpha, use_rslora=rslora)
        layers = lora_layers(model)
    with torch.no_grad():
        for key, (name, part, _) in expected.items():
            getattr(layers[name], part).copy_(tensors[key])
    return model
