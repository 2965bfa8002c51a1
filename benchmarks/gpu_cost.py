"""Chapter 10 on a GPU: peak memory and step time of an 8B-shaped Llama 3.

Random weights, no download. For full fine-tuning (mixed-precision AdamW), LoRA on a
bf16 base and QLoRA (bitsandbytes NF4), it records torch.cuda.max_memory_allocated
beside memory_table's row plus the activation formula, and the LoRA ÷ full step-time
ratio. Writes one JSON file.

    python benchmarks/gpu_cost.py --output gpu.json            # the 8B shape, on CUDA
    python benchmarks/gpu_cost.py --output /tmp/t.json --small # a tiny shape (CPU too)
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from lora_edu import cost
from lora_edu.llama import llama3_8b_config, memory_table


def build(config, device) -> LlamaForCausalLM:
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            return LlamaForCausalLM(config).train()
    finally:
        torch.set_default_dtype(previous)


def to_nf4(model, device):
    """Replace each block linear layer by a bitsandbytes NF4 Linear4bit, in place."""
    import bitsandbytes as bnb

    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear) and "layers" in name:
            layer = bnb.nn.Linear4bit(
                module.in_features,
                module.out_features,
                bias=False,
                compute_dtype=torch.bfloat16,
                compress_statistics=True,
                quant_type="nf4",
                device="meta",
            )
            weight = bnb.nn.Params4bit(
                module.weight.data,
                requires_grad=False,
                compress_statistics=True,
                quant_type="nf4",
            )
            layer.weight = weight.to(device)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, layer)
            del module
    return model


def run(method: str, config, r, ids, device, repeats: int) -> dict:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    model = build(config, device)
    if method == "full":
        optimizer = cost.MixedPrecisionAdamW(model.parameters(), lr=1e-5)
    else:
        if method == "qlora":
            from peft import LoraConfig, get_peft_model

            model = to_nf4(model, device)
            peft_config = LoraConfig(r=r, lora_alpha=r, target_modules=cost.ATTENTION)
            model = get_peft_model(model, peft_config).train()
        else:
            cost.add_lora(model, r)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    gc.collect()
    weights = 0
    if device == "cuda":
        # The peak from here on: quantizing briefly held the bf16 weights too.
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        weights = torch.cuda.memory_allocated()
    row = cost.measured_step(model, optimizer, ids)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        cost.train_step(model, optimizer, ids)
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else 0
    result = {
        "method": method,
        "ledger": row,
        "allocated_after_build": weights,
        "max_memory_allocated": peak,
        "step_seconds_min": min(times),
        "tokens_per_second": ids.numel() / min(times),
    }
    del model, optimizer
    gc.collect()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--small", action="store_true", help="a tiny shape, any device")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = llama3_8b_config()
    if args.small:
        config = cost.llama_shaped(256, 2).config
    r = 16
    rows = memory_table(cost.add_lora(build_meta(config), r))
    table = {row["method"]: row for row in rows}
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), device=device)
    out = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "shape": "Meta-Llama-3-8B" if not args.small else "width 256, 2 layers",
        "batch": args.batch,
        "seq": args.seq,
        "r": r,
        "targets": cost.ATTENTION,
        "memory_table": table,
        "activation_formula": {
            "full": cost.activation_bytes_formula(config, args.batch, args.seq, 2),
            "lora": cost.activation_bytes_formula(config, args.batch, args.seq, 2, r),
        },
        "runs": {},
    }
    for method in ("lora", "qlora", "full"):
        try:
            out["runs"][method] = run(method, config, r, ids, device, args.repeats)
        except torch.OutOfMemoryError as error:
            out["runs"][method] = {"method": method, "error": str(error)[:300]}
            gc.collect()
        except ImportError as error:
            out["runs"][method] = {"method": method, "error": repr(error)[:300]}
        print(method, json.dumps(out["runs"][method])[:400], flush=True)
        args.output.write_text(json.dumps(out, indent=1) + "\n")
    runs = out["runs"]
    if "tokens_per_second" in runs.get("full", {}):
        out["lora_over_full_tokens_per_second"] = (
            runs["lora"]["tokens_per_second"] / runs["full"]["tokens_per_second"]
        )
    args.output.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def build_meta(config):
    with torch.device("meta"):
        return LlamaForCausalLM(config)


if __name__ == "__main__":
    sys.exit(main())
