"""Speed and memory of LoRA against full fine-tuning, on the course's tiny Llama 3.

Each measurement runs in a fresh process, so that its peak memory is its own; LoRA and
full fine-tuning alternate, so that the machine's noise hits both alike. The report
gives medians and the ratios LoRA ÷ full. Run from the repository root:

    python benchmarks/llama_finetune.py [--rounds 3] [--steps 30] \
        [--output benchmarks/results/llama_finetune.json]
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

BATCH, BLOCK = 16, 64  # sequences per step, tokens per sequence


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far, in bytes.

    Linux reports kilobytes, macOS bytes.
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def measure(method: str, steps: int) -> dict:
    """Train the tiny model for `steps` with `method`; report steps/s and memory.

    `method` is 'lora' or 'full'.
    """
    # Imported here: only the measuring child processes
    # need them, and their memory is what we measure.
    import torch

    from lora_edu.llama import load_model
    from lora_edu.lora import count_parameters, inject_lora
    from lora_edu.pretrain import DATA_DIR, pack_blocks

    torch.manual_seed(0)
    model, tokenizer = load_model()
    if method == "lora":
        inject_lora(model, ["q_proj", "k_proj", "v_proj", "o_proj"], r=4, lora_alpha=4)
    else:
        model.requires_grad_(True)
    blocks = pack_blocks(
        tokenizer, (DATA_DIR / "corpus.txt").read_text().splitlines(), BLOCK
    )
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-3
    )
    model.train()
    before = peak_rss_bytes()

    def step(i: int) -> None:
        batch = blocks[(torch.arange(BATCH) + i * BATCH) % len(blocks)]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for i in range(3):  # warm-up, which also allocates the optimizer's state
        step(i)
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    elapsed = time.perf_counter() - start
    trainable, total = count_parameters(model)
    return {
        "method": method,
        "steps_per_second": steps / elapsed,
        "training_peak_rss_mb": (peak_rss_bytes() - before) / 2**20,
        "trainable_parameters": trainable,
        "total_parameters": total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=3, help="measurements of each method (default 3)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=30,
        help="timed training steps per measurement (default 30)",
    )
    parser.add_argument(
        "--output", type=Path, default=Path("benchmarks/results/llama_finetune.json")
    )
    parser.add_argument("--child", choices=["lora", "full"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps)))
        return
    runs = {"lora": [], "full": []}
    for round_number in range(args.rounds):
        for method in ("lora", "full") if round_number % 2 == 0 else ("full", "lora"):
            command = [
                sys.executable,
                __file__,
                "--child",
                method,
                "--steps",
                str(args.steps),
            ]
            output = subprocess.run(
                command, check=True, capture_output=True, text=True
            ).stdout
            runs[method].append(json.loads(output.strip().splitlines()[-1]))
            print(f"round {round_number + 1}: {method} done", flush=True)
    summary = {}
    for method, results in runs.items():
        summary[method] = {
            key: statistics.median(r[key] for r in results)
            for key in ("steps_per_second", "training_peak_rss_mb")
        }
        summary[method]["trainable_parameters"] = results[0]["trainable_parameters"]
    ratios = {
        "steps_per_second (LoRA ÷ full)": summary["lora"]["steps_per_second"]
        / summary["full"]["steps_per_second"],
        "training_peak_rss (LoRA ÷ full)": summary["lora"]["training_peak_rss_mb"]
        / summary["full"]["training_peak_rss_mb"],
    }
    print(f"\n{'':8}{'trainable':>12}{'steps/s':>10}{'training peak RSS':>20}")
    for method, row in summary.items():
        print(
            f"{method:8}{row['trainable_parameters']:>12,}"
            f"{row['steps_per_second']:>10.2f}"
            f"{row['training_peak_rss_mb']:>17.1f} MB"
        )
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "batch": [BATCH, BLOCK],
        "steps": args.steps,
        "rounds": runs,
        "medians": summary,
        "ratios": ratios,
    }
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
