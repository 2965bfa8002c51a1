"""LoRA ÷ full fine-tuning step time on the CPU, beside the FLOP count (Chapter 10).

Each round times one AdamW step of full fine-tuning and one of LoRA (r = 8 on the
attention projections) of a random-weight Llama-shaped model, one after the other, so
that the machine's noise hits both alike; the table gives the median of the per-round
ratios and the ratio of the minimum times. Run from the repository root:

    python benchmarks/step_time.py [--widths 256 512 1024] [--rounds 7] [--layers 2]
"""

import argparse
import statistics
import time

import torch

from lora_edu import cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'width':>6}{'median ratio':>14}{'min ratio':>11}{'FLOP count':>12}")
    for width in args.widths:
        full = cost.llama_shaped(width, args.layers)
        lora = cost.add_lora(cost.llama_shaped(width, args.layers), 8)
        ids = torch.randint(0, full.config.vocab_size, (args.batch, args.seq))
        steps = {
            "full": cost.step_closure(full, ids),
            "lora": cost.step_closure(lora, ids),
        }
        for step in steps.values():
            step()  # warm-up
        seconds = {name: [] for name in steps}
        for _ in range(args.rounds):
            for name, step in steps.items():
                start = time.perf_counter()
                step()
                seconds[name].append(time.perf_counter() - start)
        ratios = [lo / fu for lo, fu in zip(seconds["lora"], seconds["full"])]
        tokens = args.batch * args.seq
        flops = cost.training_flops(*cost.linear_params(lora), tokens)
        flops /= cost.training_flops(*cost.linear_params(full), tokens)
        best = min(seconds["lora"]) / min(seconds["full"])
        print(f"{width:6}{statistics.median(ratios):14.3f}{best:11.3f}{flops:12.3f}")


if __name__ == "__main__":
    main()
