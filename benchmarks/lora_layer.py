"""Time lora_edu's LoRALinear against PEFT's, and merged LoRALinear against nn.Linear.

The two sides of each comparison run in turn inside one loop, so that the machine's
noise hits both alike, and the report gives the median of the per-round ratios. Run from
the repository root:

    python benchmarks/lora_layer.py [--repeats 15] \
        [--output benchmarks/results/lora_layer.json]

Targets: a training step at most 1.05× PEFT's, merged inference at most 1.02× the plain
layer's.
"""

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import peft
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from lora_edu.lora import LoRALinear

TOKENS = (8, 128)  # a batch of 8 sequences of 128 tokens


class OneLayer(nn.Module):
    """The smallest model PEFT can wrap: one linear layer named `proj`."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.proj = linear


def peft_layer(linear: nn.Linear, r: int) -> nn.Module:
    """PEFT's LoRA layer around a copy of `linear`, initialised as PEFT's default."""
    model = get_peft_model(
        OneLayer(copy.deepcopy(linear)),
        LoraConfig(r=r, lora_alpha=r, target_modules=["proj"]),
    )
    return model.base_model.model.proj


def training_step(layer: nn.Module, x: torch.Tensor) -> None:
    layer.zero_grad(set_to_none=True)
    layer(x).square().mean().backward()


@torch.no_grad()
def inference(layer: nn.Module, x: torch.Tensor) -> None:
    layer(x)


def seconds(function, layer, x) -> float:
    start = time.perf_counter()
    function(layer, x)
    return time.perf_counter() - start


def median_ratio(
    function, ours: nn.Module, reference: nn.Module, x: torch.Tensor, repeats: int
) -> dict:
    """Time ours and reference alternately; return the median ratio ours ÷ reference.

    The median is over the rounds.
    """
    for _ in range(2):  # warm-up rounds
        function(ours, x), function(reference, x)
    ratios, ours_times, reference_times = [], [], []
    for round_number in range(repeats):
        # Alternate which side goes first, so that
        # neither always runs on a warmer cache.
        if round_number % 2:
            reference_time, ours_time = (
                seconds(function, reference, x),
                seconds(function, ours, x),
            )
        else:
            ours_time, reference_time = (
                seconds(function, ours, x),
                seconds(function, reference, x),
            )
        ratios.append(ours_time / reference_time)
        ours_times.append(ours_time)
        reference_times.append(reference_time)
    return {
        "ratio_median": statistics.median(ratios),
        "ours_ms_median": 1000 * statistics.median(ours_times),
        "reference_ms_median": 1000 * statistics.median(reference_times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats",
        type=int,
        default=15,
        help="timed rounds per measurement (default 15)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("benchmarks/results/lora_layer.json"),
        help="where to write JSON",
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for width in [1024, 4096]:
        linear = nn.Linear(width, width)
        x = torch.randn(*TOKENS, width)
        for r in [4, 16, 64]:
            ours = LoRALinear.from_linear(copy.deepcopy(linear), r=r, lora_alpha=r)
            step = median_ratio(
                training_step, ours, peft_layer(linear, r), x, args.repeats
            )
            rows.append(
                {"measure": "training step vs PEFT", "in=out": width, "r": r, **step}
            )
            ours.merge()
            merged = median_ratio(inference, ours, linear, x, args.repeats)
            rows.append(
                {
                    "measure": "merged inference vs nn.Linear",
                    "in=out": width,
                    "r": r,
                    **merged,
                }
            )
            print(f"measured in=out={width}, r={r}", flush=True)

    print(
        f"\n{'measure':32} {'in=out':>6} {'r':>3} {'ours ms':>9} {'ref ms':>9} "
        f"{'ratio':>7}  target"
    )
    for row in rows:
        target = 1.05 if row["measure"].startswith("training") else 1.02
        verdict = "ok" if row["ratio_median"] <= target else "MISSED"
        print(
            f"{row['measure']:32} {row['in=out']:>6} {row['r']:>3} "
            f"{row['ours_ms_median']:9.2f} {row['reference_ms_median']:9.2f} "
            f"{row['ratio_median']:6.3f}×  ≤{target} {verdict}"
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    environment = {
        "torch": torch.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "tokens": TOKENS,
        "repeats": args.repeats,
    }
    args.output.write_text(
        json.dumps({"environment": environment, "rows": rows}, indent=2) + "\n"
    )
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
