"""The memory ledger of one training step against memory_table (Chapter 10).

For full fine-tuning (mixed-precision AdamW), LoRA (bf16 base) and QLoRA (bitsandbytes
NF4), counts the bytes of weights, gradients, optimizer states and saved activations
after one step of a random-weight Llama-shaped model, and prints them beside
memory_table's rows and the activation formula. Run from the repository root:

    python benchmarks/memory.py [--widths 256 1024] [--layers 2] [--batch 2] [--seq 128]
"""

import argparse

import torch

from lora_edu import cost
from lora_edu.llama import memory_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--r", type=int, default=8)
    args = parser.parse_args()
    for width in args.widths:
        ids = torch.randint(0, 1024, (args.batch, args.seq))
        full = cost.llama_shaped(width, args.layers, dtype=torch.bfloat16)
        lora = cost.add_lora(
            cost.llama_shaped(width, args.layers, dtype=torch.bfloat16), args.r
        )
        qlora = cost.qlora_shaped(cost.llama_shaped(width, args.layers), args.r)
        table = memory_table(lora)
        runs = {
            "full": (full, cost.MixedPrecisionAdamW(full.parameters()), 0),
            "LoRA": (lora, None, args.r),
            "QLoRA": (qlora, None, args.r),
        }
        print(f"\nwidth {width}, {args.layers} layers, batch {args.batch} × {args.seq}")
        print(f"{'':6}{'':12}{'measured':>15}{'formula':>15}{'ratio':>8}")
        for (method, (model, optimizer, r)), row in zip(runs.items(), table):
            trainable = [p for p in model.parameters() if p.requires_grad]
            optimizer = optimizer or torch.optim.AdamW(trainable)
            measured = cost.measured_step(model, optimizer, ids)
            formula = dict(row)
            formula["activations"] = cost.activation_bytes_formula(
                model.config, args.batch, args.seq, 2, lora_r=r
            )
            for key in cost.LEDGER:
                ratio = measured[key] / formula[key]
                print(
                    f"{method:6}{key:12}{measured[key]:15,}{formula[key]:15,}{ratio:8.4f}"
                )


if __name__ == "__main__":
    main()
