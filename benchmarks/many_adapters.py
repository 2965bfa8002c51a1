"""Throughput of B requests over N adapters on the tiny model (Chapter 11).

Six ways to answer the same requests take turns inside each round, so that the
machine's noise hits them alike; the table gives tokens per second (median over the
rounds) and each way's time as a median of per-round ratios to a single-adapter batch.
Run from the repository root:

    python benchmarks/many_adapters.py [--rounds 15] [--batches 1 4 16] \
        [--adapters 1 2 8] [--tokens 32] [--r 8]

Targets at B = 16, N = 8, one thread: our mixed batch at most 1.15× a single-adapter
batch, no slower than PEFT's mixed batch, and at least 3× faster than one request at a
time.
"""

import argparse
import copy
import statistics
import tempfile

import peft
import torch

from lora_edu.llama import load_model
from lora_edu.lora import load_adapter
from lora_edu.multi_adapter import random_adapters, serving_strategies, time_strategies

REFERENCE = "single-adapter batch (PEFT)"
STRICT = "single-adapter batch (lora_edu)"


def measure(base, folders, batch: int, tokens: int, rounds: int) -> dict:
    """{strategy: (tokens/s, median ratio of its time to REFERENCE's)}."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(base.config.vocab_size, (batch, tokens), generator=generator)
    names = [list(folders)[b % len(folders)] for b in range(batch)]
    strategies = serving_strategies(base, folders, ids, names)
    # A stricter reference than PEFT's: the course's own LoRALinear, one adapter, whose
    # forward pass has less Python per layer than PEFT's.
    single = load_adapter(copy.deepcopy(base), next(iter(folders.values())))
    strategies[STRICT] = lambda: single(ids)
    times = time_strategies(strategies, rounds)
    reference = times[REFERENCE]
    return {
        name: (
            batch * tokens / statistics.median(seconds),
            statistics.median(t / r for t, r in zip(seconds, reference)),
        )
        for name, seconds in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--r", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base, _ = load_model()
    print(f"torch {torch.__version__}, peft {peft.__version__}, one thread")
    print(f"requests of {args.tokens} tokens, r = {args.r} on q, k, v, o")
    with tempfile.TemporaryDirectory() as directory:
        every = random_adapters(base, max(args.adapters), args.r, directory)
        for n in args.adapters:
            folders = dict(list(every.items())[:n])
            for batch in args.batches:
                if batch < n:
                    continue  # fewer requests than adapters: some would go unused
                rows = measure(base, folders, batch, args.tokens, args.rounds)
                print(f"\nB = {batch} requests over N = {n} adapters")
                print(f"  {'strategy':30} {'tokens/s':>9} {'time ÷ single':>14}")
                for name, (speed, ratio) in rows.items():
                    print(f"  {name:30} {speed:9.0f} {ratio:13.2f}×")
                if (batch, n) == (16, 8):
                    report_targets(rows)


def report_targets(rows: dict) -> None:
    """Print the issue's three targets at B = 16, N = 8 with their verdicts."""
    ours = rows["mixed batch (ours)"][1]
    checks = [
        ("ours ÷ single-adapter batch", ours, "≤ 1.15", ours <= 1.15),
        (
            "ours ÷ PEFT's mixed batch",
            ours / rows["mixed batch (PEFT)"][1],
            "≤ 1.00",
            ours <= rows["mixed batch (PEFT)"][1],
        ),
        (
            "one at a time ÷ ours",
            rows["one request at a time"][1] / ours,
            "≥ 3",
            rows["one request at a time"][1] / ours >= 3,
        ),
    ]
    strict = ours / rows[STRICT][1]
    print(f"  (ours ÷ lora_edu's single-adapter batch: {strict:.2f}, not a target)")
    print("  targets:")
    for label, value, target, met in checks:
        print(f"    {label:30} {value:6.2f}  {target:7} {'met' if met else 'MISSED'}")


if __name__ == "__main__":
    main()
