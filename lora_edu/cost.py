"""What one training step costs: memory ledger, FLOP count, step time (Chapter 10).

The ledger counts the bytes of real tensors after one step: weights, gradients,
optimizer states and the activations autograd saves for the backward pass. The FLOP
count predicts the step time; both sit beside Chapter 5's memory_table.

    python -m lora_edu.cost                 # the larger CPU grid; rewrites the results
    python -m lora_edu.cost --output /tmp/cost --quick     # a small grid, elsewhere
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from lora_edu.files import foreign_names, replaced_folder
from lora_edu.lora import inject_lora

RESULTS_DIR = Path(__file__).parent / "data" / "cost"
RESULTS = "cpu_grid.json"
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
LEDGER = ("weights", "gradients", "optimizer", "activations")


def storage_key(t: torch.Tensor) -> int:
    """The address of a tensor's storage: views of one storage count once."""
    return t.untyped_storage().data_ptr()


def unique_bytes(tensors) -> int:
    """Bytes of the distinct storages behind tensors: views count once. [Ch. 10]"""
    seen = {}
    for t in tensors:
        if t.device.type != "meta" and t.untyped_storage().nbytes():
            seen[storage_key(t)] = t.untyped_storage().nbytes()
    return sum(seen.values())


class SavedActivations:
    """Record the tensors autograd saves for backward, parameters excluded. [Ch. 10]

    with SavedActivations(model) as saved: loss = ...; saved.bytes is their total.
    """

    def __init__(self, model: nn.Module):
        self.weights = {storage_key(p) for p in model.parameters()}
        self.tensors: list[torch.Tensor] = []

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        # A weight saved for the input gradient is already in the ledger's weights.
        if isinstance(t, torch.Tensor) and storage_key(t) not in self.weights:
            self.tensors.append(t)
        return t

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return unique_bytes(self.tensors)


def quant_state_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The tensors of a bitsandbytes 4-bit weight's quantization state, if any."""
    state = getattr(getattr(module, "weight", None), "quant_state", None)
    if state is None:
        return []
    found = [state.absmax, state.code]
    if state.nested:
        found += [state.offset, state.state2.absmax, state.state2.code]
    return [t for t in found if isinstance(t, torch.Tensor)]


def ledger(model: nn.Module, optimizer: torch.optim.Optimizer, saved: int) -> dict:
    """Bytes of weights, gradients, optimizer states and saved activations. [Ch. 10]

    Call it after one step, before the gradients are cleared; saved is
    SavedActivations.bytes. The optimizer's entry counts every tensor in
    optimizer.state plus any parameter it steps that is not the model's (a float32
    master copy).
    """
    params = list(model.parameters())
    own = {storage_key(p) for p in params}
    states = [
        t
        for state in optimizer.state.values()
        for t in state.values()
        if isinstance(t, torch.Tensor)
    ]
    masters = [
        p
        for group in optimizer.param_groups
        for p in group["params"]
        if storage_key(p) not in own
    ]
    quant = [t for m in model.modules() for t in quant_state_tensors(m)]
    row = {
        "weights": unique_bytes(params + quant),
        "gradients": unique_bytes([p.grad for p in params if p.grad is not None]),
        "optimizer": unique_bytes(states + masters),
        "activations": saved,
    }
    row["total"] = sum(row.values())
    return row


class MixedPrecisionAdamW:
    """AdamW on float32 master copies of 16-bit parameters. [Ch. 10]

    The model computes in bf16; its bf16 gradients are cast into the masters, AdamW
    steps the masters, and the result is copied back: memory_table's full
    fine-tuning row (2 + 2 + 12 bytes a parameter).
    """

    def __init__(self, params, lr: float = 1e-4):
        self.params = [p for p in params if p.requires_grad]
        masters = [p.detach().float().clone().requires_grad_() for p in self.params]
        self.inner = torch.optim.AdamW(masters, lr=lr)
        self.state, self.param_groups = self.inner.state, self.inner.param_groups

    def step(self) -> None:
        masters = self.param_groups[0]["params"]
        # One parameter at a time (AdamW skips those without a gradient), so that
        # only one float32 copy of a gradient exists at any moment.
        for p, m in zip(self.params, masters):
            m.grad = p.grad.float()
            self.inner.step()
            m.grad = None
            with torch.no_grad():
                p.copy_(m)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None


def llama_shaped(
    width: int,
    layers: int,
    vocab: int = 1024,
    heads: int | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> LlamaForCausalLM:
    """A random-weight Llama 3 shape: MLP 3.5×width, 4 query heads per KV head. [Ch. 10]

    Heads of 64 (32 below width 256).
    """
    if width % 64:
        raise ValueError(f"width must be a multiple of 64, got {width}")
    heads = heads or (width // 64 if width >= 256 else width // 32)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=int(3.5 * width),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 4),
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype).train()


def activation_bytes_formula(
    config, batch: int, seq: int, dtype_bytes: int, lora_r: int = 0
) -> int:
    """Bytes a Llama step saves for backward, full fine-tuning or LoRA. [Ch. 10]

    Per token and layer, in bytes: the two RMSNorms, attention's saved tensors and
    the SwiGLU feed-forward's; plus the loss's float32 log-probabilities. lora_r > 0
    means LoRA on q, k, v, o with float32 A and B and everything else frozen.
    """
    d, f, e = config.hidden_size, config.intermediate_size, dtype_bytes
    h = config.num_attention_heads
    hd = d // h
    kv = config.num_key_value_heads * hd
    # RMSNorm keeps its float32 input and 1/rms for the input's gradient; a trainable
    # norm weight also keeps the normalised input, and its output feeds the matmuls.
    norm_input = 4 * d + 4
    # Attention (SDPA): q, k, v after rotation, its output, a float32 log-sum-exp.
    attention = e * (2 * d + 2 * kv) + 4 * h
    if not lora_r:
        norm = norm_input + 2 * e * d
        # SwiGLU: gate and up outputs, SiLU(gate), their product (down's input).
        layer = 2 * norm + attention + 4 * e * f
        first_layer = layer
        # The token ids (int64) and the final norm, whose output feeds the head.
        outside = 8 + norm
    else:
        # Frozen matmuls keep no input. Each adapter keeps its float32 input (one
        # copy per adapter when the base is 16-bit, shared when it is float32) and
        # its r-wide A·x.
        adapter_inputs = 4 * d if e == 4 else 4 * 4 * d
        layer = 2 * norm_input + attention + adapter_inputs + 4 * 4 * lora_r
        layer += 3 * e * f  # gate and up outputs, SiLU(gate)
        # The first norm's input comes from the frozen embedding: nothing to keep.
        first_layer = layer - norm_input
        outside = norm_input
    per_token = first_layer + (config.num_hidden_layers - 1) * layer + outside
    # Rotary cos and sin, one row per position; the loss's float32 log-softmax and
    # int64 targets over the seq − 1 predicted positions.
    rotary = 2 * seq * hd * e
    loss = batch * (seq - 1) * (4 * config.vocab_size + 8)
    return batch * seq * per_token + rotary + loss


def linear_params(model: nn.Module) -> tuple[int, int]:
    """(all, trainable) weights of the matmuls that run per token, embeddings out."""
    total = trainable = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            for p in (module.weight, module.bias):
                if p is not None:
                    total += p.numel()
                    trainable += p.numel() if p.requires_grad else 0
        for name in ("lora_A", "lora_B"):
            p = getattr(module, name, None)
            if isinstance(p, nn.Parameter):
                total += p.numel()
                trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def training_flops(params: int, trainable: int, tokens: int) -> int:
    """Matmul FLOPs of a training step: forward 2N, backward 2N + 2N_train. [Ch. 10]

    Per token, each weight costs 2 FLOPs forward, 2 for the gradient of its input,
    and 2 for its own gradient, which a frozen weight skips.
    """
    for name, value in (("params", params), ("trainable", trainable)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if trainable > params:
        raise ValueError(f"trainable ({trainable}) cannot exceed params ({params})")
    return 2 * tokens * params + 2 * tokens * params + 2 * tokens * trainable


def add_lora(model: nn.Module, r: int, targets=ATTENTION) -> nn.Module:
    """Freeze the model; LoRA of rank r (α = r) on targets, float32 A and B. [Ch. 10]"""
    return inject_lora(model, targets, r, lora_alpha=r, adapter_dtype=torch.float32)


def qlora_shaped(model: nn.Module, r: int, targets=ATTENTION) -> nn.Module:
    """model's weights in bitsandbytes NF4, PEFT LoRA on top: QLoRA. [Ch. 10]

    Saved and reloaded through transformers, as load_model(load_in_4bit=True) does.
    """
    import tempfile

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lora_edu.llama import keep_4bit_layers_trainable, nf4_config

    with tempfile.TemporaryDirectory() as folder:
        model.to(torch.bfloat16).save_pretrained(folder)
        quantized = AutoModelForCausalLM.from_pretrained(
            folder,
            dtype=torch.bfloat16,
            device_map="cuda" if torch.cuda.is_available() else "cpu",
            quantization_config=nf4_config(compute_dtype=torch.bfloat16),
        )
    keep_4bit_layers_trainable(quantized)
    config = LoraConfig(r=r, lora_alpha=r, target_modules=list(targets))
    return get_peft_model(quantized, config).train()


def train_step(model: nn.Module, optimizer, ids: torch.Tensor) -> torch.Tensor:
    """One step of next-token training on ids (batch × seq); returns the loss."""
    logits = model(input_ids=ids).logits
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def measured_step(model: nn.Module, optimizer, ids: torch.Tensor) -> dict:
    """One step with the ledger taken before the gradients are cleared. [Ch. 10]"""
    with SavedActivations(model) as saved:
        logits = model(input_ids=ids).logits
        loss = F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten()
        )
    activations = saved.bytes
    del saved, logits
    loss.backward()
    optimizer.step()
    row = ledger(model, optimizer, activations)
    optimizer.zero_grad(set_to_none=True)
    return row


def interleaved_times(steps: dict, repeats: int = 5) -> dict[str, float]:
    """Minimum seconds of each callable, run in turn (A B A B …) after a warm-up."""
    best = dict.fromkeys(steps, math.inf)
    for fn in steps.values():
        fn()
    for _ in range(repeats):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def step_closure(model: nn.Module, ids: torch.Tensor, lr: float = 1e-5):
    """A callable running one AdamW training step of model on ids."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr)
    return lambda: train_step(model, optimizer, ids)


def lora_vs_full(
    width: int, layers: int, batch: int, seq: int, r: int = 8, repeats: int = 5
) -> dict:
    """Min step seconds of full fine-tuning and LoRA (float32, AdamW). [Ch. 10]"""
    full = llama_shaped(width, layers)
    lora = add_lora(llama_shaped(width, layers), r)
    ids = torch.randint(0, full.config.vocab_size, (batch, seq))
    times = interleaved_times(
        {"full": step_closure(full, ids), "lora": step_closure(lora, ids)}, repeats
    )
    n, _ = linear_params(full)
    m, t = linear_params(lora)
    return {
        "width": width,
        "layers": layers,
        "batch": batch,
        "seq": seq,
        "r": r,
        "full_s": times["full"],
        "lora_s": times["lora"],
        "ratio": times["lora"] / times["full"],
        "flop_ratio": training_flops(m, t, batch * seq)
        / training_flops(n, n, batch * seq),
    }


def scaling_point(
    width: int, layers: int, batch: int, seq: int, r: int, repeats: int = 3
) -> dict:
    """LoRA step seconds and saved-activation bytes at one setting. [Ch. 10]"""
    model = add_lora(llama_shaped(width, layers), r)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    row = measured_step(model, optimizer, ids)
    step = lambda: train_step(model, optimizer, ids)  # noqa: E731
    seconds = interleaved_times({"s": step}, repeats)
    return {
        "width": width,
        "batch": batch,
        "seq": seq,
        "r": r,
        "seconds": seconds["s"],
        "activations": row["activations"],
    }


def fitted_slope(x, y) -> float:
    """Least-squares slope of log y against log x."""
    lx = torch.tensor([math.log(v) for v in x], dtype=torch.float64)
    ly = torch.tensor([math.log(v) for v in y], dtype=torch.float64)
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float((lx * ly).sum() / (lx * lx).sum())


# The grids: one setting varies, the others stay at BASE.
BASE = {"width": 256, "batch": 4, "seq": 128, "r": 8}
SWEEPS = {
    "r": [1, 4, 16, 64],
    "seq": [64, 128, 256, 512],
    "batch": [1, 2, 4, 8],
    "width": [128, 256, 512, 1024],
}
RATIO_WIDTHS = [256, 512, 1024, 2048]
QUICK = {"r": [2, 16], "seq": [64, 256], "batch": [1, 4], "width": [128, 512]}


def run_grid(sweeps: dict, widths: list[int], layers: int = 2) -> dict:
    """The scaling sweeps and the LoRA ÷ full ratios at each width. [Ch. 10]"""
    results = {"base": BASE, "layers": layers, "sweeps": {}, "ratios": []}
    for knob, values in sweeps.items():
        results["sweeps"][knob] = [
            scaling_point(**{**BASE, knob: v, "layers": layers}) for v in values
        ]
        print(f"{knob}: done", flush=True)
    for width in widths:
        row = lora_vs_full(width, layers, batch=2, seq=128, repeats=3)
        results["ratios"].append(row)
        print(f"width {width}: LoRA/full {row['ratio']:.3f}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the CPU grid and store it; errors are one line and exit status 2."""
    parser = argparse.ArgumentParser(
        prog="python -m lora_edu.cost",
        description="Measure step time and saved activations against r, sequence "
        "length, batch size and width, and the LoRA ÷ full step-time ratio.",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS_DIR,
        help=f"the folder for {RESULTS} (default {RESULTS_DIR})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small grid, for trying the command"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1)"
    )
    args = parser.parse_args(argv)
    if args.output.exists() and not args.output.is_dir():
        parser.error(f"--output {args.output} is a file, not a folder")
    foreign = foreign_names(args.output, [RESULTS])
    if foreign:
        parser.error(f"--output {args.output} holds files that are not ours: {foreign}")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    sweeps, widths = (QUICK, [256, 512]) if args.quick else (SWEEPS, RATIO_WIDTHS)
    results = run_grid(sweeps, widths)
    results["machine"] = {
        "processor": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
    }
    with replaced_folder(args.output, [RESULTS]) as staging:
        (staging / RESULTS).write_text(json.dumps(results, indent=1) + "\n")
    print(f"stored in {args.output / RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
