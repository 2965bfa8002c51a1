"""Many adapters on one base model: a second task, mixed batches (Chapter 11).

The chapter trains adapters for two tasks, serves them from one base model in one
batch, and combines them. The adapters it reads are trained by this command:

    python -m lora_edu.multi_adapter --overwrite  # rewrites lora_edu/data/many-adapters
    python -m lora_edu.multi_adapter --output /tmp/adapters --seeds 0
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from torch import nn

from lora_edu.experiments import add_lora, fine_tune
from lora_edu.files import ADAPTER_WEIGHTS
from lora_edu.llama import TINY_LLAMA3, load_model, text_loss
from lora_edu.lora import (
    PEFT_PREFIX,
    check_finite,
    linear_layers_matching,
    load_adapter,
    merge_lora,
    read_adapter_config,
    save_adapter,
)
from lora_edu.pretrain import PEOPLE, pack_blocks, weather_reports

ADAPTERS_DIR = Path(__file__).parent / "data" / "many-adapters"
# Where each person moves to: a city of the corpus that is not their own.
CITIES = sorted({p[1] for p in PEOPLE})
MOVES = {p[0]: CITIES[(CITIES.index(p[1]) + 5) % len(CITIES)] for p in PEOPLE}
MOVE_TEMPLATES = [
    "{name} lives in {city} and writes about {topic}.",
    "{name} works as a {job} in {city}.",
    "In {city}, {name} writes about {topic}.",
    "The {job} {name} lives in {city}.",
]
# One fixed setting for every adapter: Chapter 7's, on all four attention projections.
SETTINGS = {
    "train_lines": 1500,
    "heldout_lines": 200,
    "block_size": 64,
    "batch_size": 16,
    "steps": 100,
    "r": 8,
    "lora_alpha": 8,
    "lr": 1e-2,
    "weights": ["Wq", "Wk", "Wv", "Wo"],
}
SEEDS = [0, 1, 2]
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def moved_people(lines: int, seed: int) -> list[str]:
    """Sentences saying that each person now lives in MOVES[name]. [Ch. 11]"""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        name, _, topic, job = rng.choice(PEOPLE)
        template = rng.choice(MOVE_TEMPLATES)
        out.append(template.format(name=name, city=MOVES[name], topic=topic, job=job))
    return out


TASKS = {"weather": weather_reports, "moves": moved_people}


def task_texts(task: str, seed_offset: int) -> tuple[list[str], list[str]]:
    """(training lines, held-out lines) of a task. [Ch. 11]"""
    make = TASKS[task]
    train = make(SETTINGS["train_lines"], seed_offset)
    return train, make(SETTINGS["heldout_lines"], seed_offset + 1)


def train_task_adapter(base: nn.Module, tokenizer, task: str, seed: int) -> nn.Module:
    """A copy of base with a LoRA adapter trained on task with seed. [Ch. 11]"""
    train, _ = task_texts(task, 0)
    blocks = pack_blocks(tokenizer, train, SETTINGS["block_size"])
    model = copy.deepcopy(base)
    torch.manual_seed(seed)  # draws each A
    ranks = dict.fromkeys(SETTINGS["weights"], SETTINGS["r"])
    add_lora(model, ranks, SETTINGS["lora_alpha"])
    fine_tune(model, blocks, SETTINGS["steps"], SETTINGS["lr"], seed)
    return model


def adapter_folder(task: str, seed: int, directory: Path = ADAPTERS_DIR) -> Path:
    """Where the adapter for task and seed is stored, e.g. …/weather-seed0. [Ch. 11]"""
    return Path(directory) / f"{task}-seed{seed}"


# --- N adapters in one layer ----------------------------------------------------


class MultiLoRALinear(nn.Module):
    """A frozen linear layer and N LoRA adapters; each row of a batch picks one.

    Row b computes W x + s_i B_i A_i x with i = adapter_index[b]; index N is the
    empty adapter (all zeros), so such a row gets the base layer alone. [Ch. 11]
    """

    def __init__(self, base: nn.Linear, A: torch.Tensor, B: torch.Tensor, scaling):
        super().__init__()
        n, r, k = A.shape
        if B.shape != (n, base.out_features, r) or k != base.in_features:
            raise ValueError(
                f"A {tuple(A.shape)} and B {tuple(B.shape)} do not fit a "
                f"{base.out_features}×{base.in_features} layer"
            )
        self.base = base
        # One zero adapter at the end, for rows that ask for none.
        self.register_buffer("lora_A", torch.cat([A, A.new_zeros(1, r, k)]))
        self.register_buffer("lora_B", torch.cat([B, B.new_zeros(1, *B.shape[1:])]))
        scaling = torch.as_tensor(scaling, dtype=A.dtype, device=A.device)
        self.register_buffer("scaling", torch.cat([scaling, A.new_ones(1)]))
        self.adapter_index = None  # (batch,) long, set by adapter_rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (batch, ..., in_features) → (batch, ..., out_features)."""
        result = self.base(x)  # one matmul with W for every row
        index = self.adapter_index
        if index is None or len(index) != x.shape[0]:
            raise RuntimeError("choose each row's adapter with adapter_rows first")
        h = x.reshape(x.shape[0], -1, x.shape[-1])  # (batch, tokens, in)
        # Gather each row's A and B, then two batched matmuls: Punica's idea.
        A, B = self.lora_A[index], self.lora_B[index]  # (batch, r, in), (batch, out, r)
        low = torch.bmm(h, A.transpose(1, 2)) * self.scaling[index].view(-1, 1, 1)
        update = torch.bmm(low, B.transpose(1, 2))  # (batch, tokens, out)
        return result + update.reshape(result.shape)


def read_adapter(model: nn.Module, directory) -> tuple[dict, float]:
    """({module path: (A, B)}, scaling) of a saved adapter, checked. [Ch. 11]"""
    config = read_adapter_config(directory)
    r, alpha = config["r"], config["lora_alpha"]
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    layers = linear_layers_matching(model, config["target_modules"])
    if not layers:
        raise ValueError(f"the adapter in {directory} targets no layer of this model")
    tensors = load_file(Path(directory) / ADAPTER_WEIGHTS)
    factors, expected = {}, set()
    for name, layer in layers.items():
        keys = [f"{PEFT_PREFIX}{name}.lora_{part}.weight" for part in "AB"]
        expected.update(keys)
        shapes = [(r, layer.in_features), (layer.out_features, r)]
        for key, shape in zip(keys, shapes):
            if key not in tensors or tuple(tensors[key].shape) != shape:
                found = tuple(tensors[key].shape) if key in tensors else "no tensor"
                raise ValueError(
                    f"the adapter in {directory} does not fit this model: {key} "
                    f"should have shape {shape}, found {found}"
                )
        factors[name] = (tensors[keys[0]], tensors[keys[1]])
    unexpected = sorted(set(tensors) - expected)
    if unexpected:
        raise ValueError(
            f"the adapter in {directory} holds {len(unexpected)} tensors for no "
            f"layer of this model, e.g. {unexpected[0]}"
        )
    check_finite(tensors, f"the adapter in {directory}")
    return factors, scaling


def add_adapters(model: nn.Module, folders: dict) -> nn.Module:
    """Freeze model; put the adapters {name: folder} into MultiLoRALinear. [Ch. 11]

    Adapters of different ranks are padded with zeros to the largest; a layer that
    an adapter does not target gets zeros for it.
    """
    if not folders:
        raise ValueError("folders names no adapter")
    read = {name: read_adapter(model, folder) for name, folder in folders.items()}
    layers = sorted({path for factors, _ in read.values() for path in factors})
    r = max(A.shape[0] for factors, _ in read.values() for A, _ in factors.values())
    scaling = [s for _, s in read.values()]
    model.requires_grad_(False)
    for path in layers:
        base = model.get_submodule(path)
        like = {"dtype": base.weight.dtype, "device": base.weight.device}
        A = torch.zeros(len(read), r, base.in_features, **like)
        B = torch.zeros(len(read), base.out_features, r, **like)
        for i, (factors, _) in enumerate(read.values()):
            if path in factors:
                a, b = factors[path]
                A[i, : a.shape[0]], B[i, :, : b.shape[1]] = a, b
        parent, _, child = path.rpartition(".")
        setattr(
            model.get_submodule(parent), child, MultiLoRALinear(base, A, B, scaling)
        )
    model.adapter_names = list(folders)
    return model


@contextlib.contextmanager
def adapter_rows(model: nn.Module, names: list) -> Iterator[nn.Module]:
    """Within the block, row b of a batch uses adapter names[b] (None: the base).

    [Ch. 11]
    """
    known = model.adapter_names
    unknown = sorted({n for n in names if n is not None and n not in known})
    if unknown:
        raise ValueError(f"unknown adapters {unknown}; the model has {known}")
    index = torch.tensor([len(known) if n is None else known.index(n) for n in names])
    # By attribute, not class: a chapter may define its own MultiLoRALinear.
    layers = [m for m in model.modules() if hasattr(m, "adapter_index")]
    for layer in layers:
        layer.adapter_index = index.to(layer.lora_A.device)
    try:
        yield model
    finally:
        for layer in layers:
            layer.adapter_index = None


def generate_rows(
    model: nn.Module, tokenizer, prompts: list[str], names: list, max_new_tokens: int
) -> list[str]:
    """Greedy continuations of prompts, row b with adapter names[b]. [Ch. 11]"""
    tokenizer.padding_side = "left"  # so that every row's last token is its own
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with adapter_rows(model, names), torch.no_grad():
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    width = batch["input_ids"].shape[1]
    return tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)


def lora_share(d_out: int, d_in: int, r: int) -> float:
    """LoRA's FLOPs per token over the base matmul's: r(d_in + d_out)/(d_in·d_out).

    [Ch. 11]
    """
    return r * (d_in + d_out) / (d_in * d_out)


# --- Serving strategies, timed ---------------------------------------------------


def random_adapters(base: nn.Module, n: int, r: int, directory) -> dict[str, Path]:
    """n PEFT adapters of rank r with random A and B on q, k, v, o: {name: folder}.

    For timing, where the values do not matter. [Ch. 11]
    """
    folders = {}
    for i in range(n):
        torch.manual_seed(i)
        config = LoraConfig(
            r=r, lora_alpha=r, target_modules=ATTENTION, init_lora_weights=False
        )
        folder = Path(directory) / f"random{i}"
        get_peft_model(copy.deepcopy(base), config).save_pretrained(folder)
        folders[f"random{i}"] = folder
    return folders


def serving_strategies(base: nn.Module, folders: dict, ids, names) -> dict:
    """Ways to answer requests ids (B, T), request b with adapter names[b]. [Ch. 11]

    Each value is a function that runs one forward pass over all B requests.
    """
    first, *others = folders
    peft_model = PeftModel.from_pretrained(
        copy.deepcopy(base), folders[first], adapter_name=first
    )
    for name in others:
        peft_model.load_adapter(folders[name], adapter_name=name)
    peft_model.eval()
    ours = add_adapters(copy.deepcopy(base), folders)
    merged = merge_lora(load_adapter(copy.deepcopy(base), folders[first]))

    def ours_mixed():
        with adapter_rows(ours, names):
            ours(ids)

    def one_at_a_time():
        for b, name in enumerate(names):
            peft_model.set_adapter(name)
            peft_model(ids[b : b + 1])

    def merge_each():
        for b, name in enumerate(names):
            peft_model.set_adapter(name)
            peft_model.merge_adapter()
            peft_model(ids[b : b + 1])
            peft_model.unmerge_adapter()

    def single_adapter():
        peft_model.set_adapter(first)
        peft_model(ids)

    return {
        "one merged model": lambda: merged(ids),
        "single-adapter batch (PEFT)": single_adapter,
        "mixed batch (ours)": ours_mixed,
        "mixed batch (PEFT)": lambda: peft_model(ids, adapter_names=list(names)),
        "one request at a time": one_at_a_time,
        "merge per request": merge_each,
    }


@torch.no_grad()
def time_strategies(strategies: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds of each strategy in each round; they take turns within a round.

    Taking turns lets the machine's noise hit every strategy alike. [Ch. 11]
    """
    for run in strategies.values():
        run()  # a warm-up call each
    times = {name: [] for name in strategies}
    for _ in range(rounds):
        for name, run in strategies.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    """Train and store the chapter's adapters; errors are one line, exit status 2."""
    from lora_edu.cli import Parser  # its errors are one line, with no usage text

    parser = Parser(
        prog="python -m lora_edu.multi_adapter",
        description="Train Chapter 11's adapters (one per task and seed) and store "
        "them in PEFT's format.",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=ADAPTERS_DIR,
        help=f"the folder for the adapters' folders (default {ADAPTERS_DIR})",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=SEEDS, help="default: 0 1 2"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace adapters already stored"
    )
    args = parser.parse_args(argv)
    if args.output.exists() and not args.output.is_dir():
        parser.error(f"--output {args.output} is a file, not a folder")
    if any(s < 0 for s in args.seeds):
        parser.error(f"--seeds must be >= 0, got {args.seeds}")
    folders = [adapter_folder(t, s, args.output) for t in TASKS for s in args.seeds]
    taken = [str(f) for f in folders if f.exists()]
    if taken and not args.overwrite:
        parser.error(f"{taken[0]} exists; pass --overwrite to replace the adapters")
    # The stored adapters were made with one thread: the count changes float sums.
    torch.set_num_threads(1)
    base, tokenizer = load_model()
    for task in TASKS:
        heldout = task_texts(task, 0)[1]
        for seed in args.seeds:
            model = train_task_adapter(base, tokenizer, task, seed)
            folder = adapter_folder(task, seed, args.output)
            save_adapter(model, folder, TINY_LLAMA3, overwrite=True)
            loss = text_loss(model, tokenizer, heldout)
            print(f"{folder.name}: held-out loss {loss:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
