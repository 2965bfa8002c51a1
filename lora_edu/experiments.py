"""The LoRA paper's experiments in miniature, on the course's tiny Llama 3 (Chapter 7).

Every cell of the grid fine-tunes the tiny model on Chapter 6's weather reports and
measures its loss on held-out reports. The chapter plots the stored results and re-runs
a cell live.

    python -m lora_edu.experiments         # the whole grid; rewrites the stored results
    python -m lora_edu.experiments --list          # the cells' names
    python -m lora_edu.experiments --only 'lora/q8/*' --output /tmp/grid   # a slice

Slices may run at the same time on one --output: each stores its cells under the
folder's lock, adding them to what is there. lora_edu.cli holds the command line.
"""

from __future__ import annotations

if __name__ == "__main__":
    # Before the imports below, so that --help and bad input answer without torch.
    from lora_edu.cli import experiments_cli

    experiments_cli()

import copy
import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from lora_edu.files import clean_leftovers, locked, replaced_folder
from lora_edu.llama import load_model, text_loss
from lora_edu.lora import LoRALinear
from lora_edu.pretrain import pack_blocks, weather_reports

RESULTS_DIR = Path(__file__).parent / "data" / "experiments"
RESULTS, ADAPTERS = "results.json", "adapters.safetensors"
# The paper's names for the attention projections, and the tiny model's module names.
PROJECTIONS = {"Wq": "q_proj", "Wk": "k_proj", "Wv": "v_proj", "Wo": "o_proj"}
TABLE5_WEIGHTS = ["Wq", "Wk", "Wv", "Wo", "Wq,Wk", "Wq,Wv", "Wq,Wk,Wv,Wo"]
TABLE6_WEIGHTS, TABLE6_RANKS = ["Wq", "Wq,Wv", "Wq,Wk,Wv,Wo"], [1, 2, 4, 8, 64]
BUDGET_RANK = 8  # Table 5's budget: rank 8 on one square d×d matrix per layer
SEEDS = [0, 1, 2]
# One fixed setting for every cell; the chapter explains each choice.
SETTINGS = {
    "train_lines": 1500,
    "train_seed": 0,
    "heldout_lines": 200,
    "heldout_seed": 1,
    "block_size": 64,
    "batch_size": 16,
    "steps": 100,
    "lora_alpha": 8,
    "lora_lr": 1e-2,
    "max_grad_norm": 1.0,
}
LR_SWEEP = {
    "lora": [1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
    "full": [1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
}
SWEEP_WEIGHTS = "Wq,Wv"  # the LoRA side of the sweep: rank 8 on Wq and Wv
# The adapters the chapter analyses (§7.2 and §7.3 of the paper) are stored whole.
SAVED_ADAPTERS = [("Wq,Wv", r, seed) for r in (4, 8, 64) for seed in (0, 1)]


# The paper's numbers (arXiv 2106.09685 v2), quoted: (WikiSQL, MultiNLI) accuracy, %.
PAPER_TABLE5 = {
    "Wq": (70.4, 91.0),
    "Wk": (70.0, 90.8),
    "Wv": (73.0, 91.0),
    "Wo": (73.2, 91.3),
    "Wq,Wk": (71.4, 91.3),
    "Wq,Wv": (73.7, 91.3),
    "Wq,Wk,Wv,Wo": (73.7, 91.7),
}
PAPER_TABLE6 = {  # weights → accuracies at r = 1, 2, 4, 8, 64
    "Wq": ([68.8, 69.6, 70.5, 70.4, 70.0], [90.7, 90.9, 91.1, 90.7, 90.7]),
    "Wq,Wv": ([73.4, 73.3, 73.7, 73.8, 73.5], [91.3, 91.4, 91.3, 91.6, 91.4]),
    "Wq,Wk,Wv,Wo": ([74.1, 73.7, 74.0, 74.0, 73.9], [91.2, 91.7, 91.7, 91.5, 91.4]),
}
# Table 7, layer 48: ‖UᵀWqVᵀ‖_F for ΔWq's, Wq's and random directions; ‖ΔWq‖_F.
PAPER_TABLE7 = {4: (0.32, 21.67, 0.02, 6.91), 64: (1.90, 37.71, 0.33, 3.57)}


def lora_budget(layers: int, width: int, r: int, matrices: int = 1) -> int:
    """LoRA parameters on `matrices` square d×d matrices per layer: 2dr each. [Ch. 7]"""
    return 2 * width * r * layers * matrices


def matched_ranks(weights: str, shapes: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Per projection, the rank whose r(d_in + d_out) is nearest its share. [Ch. 7]"""
    names = weights.split(",")
    unknown = [n for n in names if n not in PROJECTIONS]
    if unknown:
        raise ValueError(f"unknown weights {unknown}; choose from {list(PROJECTIONS)}")
    width = shapes["Wq"][0]
    share = lora_budget(1, width, BUDGET_RANK) / len(names)
    return {n: max(1, round(share / sum(shapes[n]))) for n in names}


def projection_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(d_out, d_in) of each attention projection of the model's first layer. [Ch. 7]"""
    attention = model.model.layers[0].self_attn
    return {
        paper: tuple(getattr(attention, name).weight.shape)
        for paper, name in PROJECTIONS.items()
    }


def add_lora(model: nn.Module, ranks: dict[str, int], lora_alpha: float) -> nn.Module:
    """Freeze the model; wrap each projection in ranks ({'Wq': 4}) in LoRA. [Ch. 7]"""
    model.requires_grad_(False)
    for layer in model.model.layers:
        for paper, r in ranks.items():
            name = PROJECTIONS[paper]
            linear = getattr(layer.self_attn, name)
            setattr(
                layer.self_attn, name, LoRALinear.from_linear(linear, r, lora_alpha)
            )
    return model


def fine_tune(
    model: nn.Module,
    blocks: torch.Tensor,
    steps: int,
    lr: float,
    seed: int,
    batch_size: int = 16,
    max_grad_norm: float = 1.0,
    desc: str | None = None,
) -> list[float]:
    """Train on random batches of blocks (n, block_size); return the losses. [Ch. 7]"""
    batches = torch.Generator().manual_seed(seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)  # linear warmup over 10% of the steps, then a cosine
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * s / steps))),
    )
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc=desc, disable=desc is None, leave=False):
        batch = blocks[torch.randint(len(blocks), (batch_size,), generator=batches)]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return losses


def task_data(tokenizer) -> tuple[torch.Tensor, list[str]]:
    """(training blocks (n, block_size), held-out reports) of weather. [Ch. 7]"""
    s = SETTINGS
    train = weather_reports(s["train_lines"], s["train_seed"])
    heldout = weather_reports(s["heldout_lines"], s["heldout_seed"])
    return pack_blocks(tokenizer, train, s["block_size"]), heldout


def cell_name(method: str, lr: float, seed: int, ranks: dict | None = None) -> str:
    """A cell's name, e.g. 'lora/q4+v5/lr0.01/seed0' or 'full/lr0.001/seed0'. [Ch. 7]"""
    if method == "full":
        return f"full/lr{lr:g}/seed{seed}"
    adapted = "+".join(f"{paper[1]}{r}" for paper, r in ranks.items())
    return f"lora/{adapted}/lr{lr:g}/seed{seed}"


def grid(shapes: dict[str, tuple[int, int]]) -> dict[str, dict]:
    """Every cell, by name: Tables 5 and 6 with each seed, and the sweep. [Ch. 7]"""
    lr, cells = SETTINGS["lora_lr"], []
    for weights in TABLE5_WEIGHTS:
        cells += [("lora", lr, s, matched_ranks(weights, shapes)) for s in SEEDS]
    for weights in TABLE6_WEIGHTS:
        for r in TABLE6_RANKS:
            ranks = dict.fromkeys(weights.split(","), r)
            cells += [("lora", lr, s, ranks) for s in SEEDS]
    sweep = dict.fromkeys(SWEEP_WEIGHTS.split(","), BUDGET_RANK)
    cells += [("lora", rate, 0, sweep) for rate in LR_SWEEP["lora"]]
    cells += [("full", rate, 0, None) for rate in LR_SWEEP["full"]]
    return {
        cell_name(*c): dict(zip(["method", "lr", "seed", "ranks"], c)) for c in cells
    }


def run_cell(cell: dict, base: nn.Module, tokenizer, blocks, heldout) -> tuple:
    """Fine-tune a copy of base as the cell says; return (result, model). [Ch. 7]"""
    model = copy.deepcopy(base)
    torch.manual_seed(cell["seed"])  # LoRA draws each A from the global generator
    if cell["method"] == "full":
        model.requires_grad_(True)
    else:
        add_lora(model, cell["ranks"], SETTINGS["lora_alpha"])
    losses = fine_tune(
        model,
        blocks,
        SETTINGS["steps"],
        cell["lr"],
        cell["seed"],
        SETTINGS["batch_size"],
        SETTINGS["max_grad_norm"],
    )
    result = {
        **cell,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_loss": sum(losses[-10:]) / 10,  # the mean of the last ten steps
        "heldout_loss": text_loss(model, tokenizer, heldout),
    }
    if not all(math.isfinite(result[k]) for k in ("train_loss", "heldout_loss")):
        raise FloatingPointError(f"a loss is not finite: {result}")
    return result, model


def adapter_tensors(name: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """A tuned model's lora_A and lora_B, keyed '<cell name>:<parameter>'. [Ch. 7]"""
    return {
        f"{name}:{key}": p.detach().clone()
        for key, p in model.named_parameters()
        if key.endswith(("lora_A", "lora_B"))
    }


def load_results(directory: Path = RESULTS_DIR) -> tuple[dict, dict]:
    """(results, adapters) stored in directory; empty if there are none yet. [Ch. 7]"""
    path = Path(directory)
    if not (path / RESULTS).is_file():
        return {"settings": SETTINGS, "runs": {}}, {}
    try:
        results = json.loads((path / RESULTS).read_text(encoding="utf-8"))
        adapters = load_file(path / ADAPTERS) if (path / ADAPTERS).is_file() else {}
    except (UnicodeDecodeError, json.JSONDecodeError, SafetensorError) as error:
        raise ValueError(f"cannot read the results in {path}: {error}") from None
    if not isinstance(results, dict):
        raise ValueError(
            f"{path / RESULTS} does not hold a grid's results: it holds a "
            f"{type(results).__name__}, not a JSON object"
        )
    return results, adapters


def stored_results(directory: Path) -> tuple[dict, dict]:
    """load_results, refusing results made with other settings than these. [Ch. 7]"""
    results, adapters = load_results(directory)
    if results.get("settings") != SETTINGS:
        raise ValueError(
            f"{directory} holds results made with other settings; "
            "choose an empty --output folder"
        )
    if not isinstance(results.get("runs"), dict):
        raise ValueError(f"{Path(directory) / RESULTS} lacks its runs")
    return results, adapters


def save_results(directory: Path, results: dict, adapters: dict) -> None:
    """Write results.json and adapters.safetensors, both or neither. [Ch. 7]"""
    with replaced_folder(Path(directory), [RESULTS, ADAPTERS]) as staging:
        text = json.dumps(results, indent=1, sort_keys=True) + "\n"
        (staging / RESULTS).write_text(text)
        save_file({k: v.contiguous() for k, v in adapters.items()}, staging / ADAPTERS)


def store_cell(directory: Path, name: str, result: dict, tensors: dict, base: float):
    """Add one cell to the results stored in directory, under its lock. [Ch. 7]

    Other runs may have stored cells there meanwhile: the results are read again.
    """
    with locked(directory, wait=60):
        clean_leftovers(directory)  # a killed save's staging folder
        results, adapters = stored_results(directory)
        results["base_heldout_loss"] = base
        results["runs"][name] = result
        adapters.update(tensors)
        save_results(directory, results, adapters)
    return results


def run_grid(names: list[str], directory: Path) -> Iterator[dict]:
    """Run the named cells; store each when done and yield all stored. [Ch. 7]

    So a Ctrl-C loses one cell at most.
    """
    model, tokenizer = load_model()
    cells = grid(projection_shapes(model))
    blocks, heldout = task_data(tokenizer)
    base = text_loss(model, tokenizer, heldout)
    saved = {
        cell_name("lora", SETTINGS["lora_lr"], s, dict.fromkeys(w.split(","), r))
        for w, r, s in SAVED_ADAPTERS
    }
    for name in tqdm(names, desc="grid"):
        result, tuned = run_cell(cells[name], model, tokenizer, blocks, heldout)
        tensors = adapter_tensors(name, tuned) if name in saved else {}
        yield store_cell(directory, name, result, tensors, base)
