"""The Hugging Face PEFT workflow end to end, and the command-line tool lora-edu-train (Chapter 6).

lora-edu-train --data my_text.txt --output my-adapter
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from datasets import DatasetDict, load_dataset
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import (
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_callback import ProgressCallback

from lora_edu.files import staged_files
from lora_edu.llama import TINY_LLAMA3, ModelUnavailableError, load_model
from lora_edu.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    linear_layer_names,
    linear_layers_matching,
    matches_target,
)

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


def ensure_pad_token(tokenizer):
    """Give a tokenizer without one (Meta-Llama-3-8B's) a padding token that never occurs in text. [Ch. 6]"""
    if tokenizer.pad_token is None:
        # Not <|end_of_text|>: the collator would then mask every real end-of-text token out of the labels.
        spare = [
            t.content
            for t in tokenizer.added_tokens_decoder.values()
            if t.special and t.content not in (tokenizer.bos_token, tokenizer.eos_token)
        ]
        if not spare:
            raise ValueError(
                "the tokenizer has no padding token and no spare special token to use as one"
            )
        tokenizer.pad_token = spare[-1]
    return tokenizer


def load_text_blocks(data_files: dict, tokenizer, block_size: int) -> DatasetDict:
    """Load plain-text files with datasets, tokenize every line, and pack the tokens into blocks of block_size. [Ch. 6]"""
    for split, path in data_files.items():
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"the {split} data file {path} does not exist")
        if not path.read_text(encoding="utf-8").strip():
            raise ValueError(f"the {split} data file {path} is empty")
    raw = load_dataset(
        "text", data_files={split: str(path) for split, path in data_files.items()}
    )
    raw = raw.filter(lambda row: row["text"].strip() != "")

    def tokenize(batch):
        return tokenizer([text + tokenizer.eos_token for text in batch["text"]])

    def pack(batch):
        # Concatenate every line's tokens, then cut the stream into equal blocks; the remainder is dropped.
        ids = [i for row in batch["input_ids"] for i in row]
        usable = len(ids) // block_size * block_size
        return {
            "input_ids": [ids[i : i + block_size] for i in range(0, usable, block_size)]
        }

    tokenized = raw.map(tokenize, batched=True, remove_columns=["text"])
    blocks = tokenized.map(
        pack,
        batched=True,
        batch_size=None,
        remove_columns=tokenized["train"].column_names,
    )
    for split, dataset in blocks.items():
        if len(dataset) == 0:
            tokens = sum(map(len, tokenized[split]["input_ids"]))
            raise ValueError(
                f"the {split} data holds {tokens} tokens, fewer than one block of block_size={block_size}"
            )
    return blocks


def check_targets(model: nn.Module, targets: list[str]) -> dict[str, nn.Linear]:
    """The linear layers that targets select; a ValueError names each target that selects none. [Ch. 6]"""
    selected = linear_layers_matching(model, targets)
    unknown = [
        t for t in targets if not any(matches_target(name, t) for name in selected)
    ]
    if unknown:
        raise ValueError(
            f"unknown target modules {unknown}; the model's linear layers are named {linear_layer_names(model)}"
        )
    return selected


def training_arguments(
    output_dir,
    epochs: float,
    lr: float,
    batch_size: int,
    accumulation: int,
    use_cpu: bool,
    evaluate: bool = True,
) -> TrainingArguments:
    """Trainer settings: gradient accumulation, a cosine schedule with warmup, gradient clipping. [Ch. 6]"""
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        learning_rate=lr,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,  # one optimizer step per `accumulation` batches
        lr_scheduler_type="cosine",
        warmup_steps=0.1,  # a float below 1 is a share of all steps: warm up over the first 10%
        max_grad_norm=1.0,
        logging_steps=1,
        eval_strategy="epoch"
        if evaluate
        else "no",  # validation loss after every epoch, when there is validation data
        save_strategy="no",  # checkpoints are written by CheckpointAdapter, atomically
        report_to="none",
        use_cpu=use_cpu,
        seed=0,
        data_seed=0,
    )


class LossProgressBar(ProgressCallback):
    """Trainer's tqdm progress bar, showing the latest loss on the bar rather than printing a line per log."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.3f}")


def make_trainer(
    model, tokenizer, blocks: DatasetDict, arguments: TrainingArguments, callbacks=()
) -> Trainer:
    """A Trainer for causal language modelling on packed blocks, with a plain tqdm progress bar. [Ch. 6]"""
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=blocks["train"],
        eval_dataset=blocks.get("validation"),
        data_collator=DataCollatorForLanguageModeling(
            tokenizer, mlm=False
        ),  # labels = inputs; the model shifts them
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    # Replace the default progress display (in a notebook, an HTML table with timings) with LossProgressBar.
    for callback in list(trainer.callback_handler.callbacks):
        if type(callback).__name__ in ("ProgressCallback", "NotebookProgressCallback"):
            trainer.remove_callback(callback)
    trainer.add_callback(LossProgressBar)
    return trainer


def save_peft_adapter(model, directory: Path) -> None:
    """Save a PEFT model's adapter so that both files land together or not at all. [Ch. 6]"""
    with staged_files(directory, [ADAPTER_WEIGHTS, ADAPTER_CONFIG]) as staging:
        model.save_pretrained(staging, safe_serialization=True)


class CheckpointAdapter(TrainerCallback):
    """Save the adapter into the output directory at the end of every epoch."""

    def __init__(self, directory: Path):
        self.directory, self.epochs_saved = directory, 0

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        save_peft_adapter(model, self.directory)
        self.epochs_saved += 1


# --- the command line -------------------------------------------------------------------------


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-edu-train",
        description="Fine-tune a causal language model on a plain-text file with LoRA (Hugging Face PEFT), "
        "and save the adapter in PEFT's format.",
        epilog="example: lora-edu-train --data notes.txt --output notes-adapter --epochs 3 --merge",
    )
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="a UTF-8 text file; each line is one example",
    )
    parser.add_argument(
        "--eval-data",
        type=Path,
        help="an optional text file to report perplexity on, before and after",
    )
    parser.add_argument(
        "--output",
        type=Path,
        required=True,
        help="the directory to write the adapter to",
    )
    parser.add_argument(
        "--model",
        default=TINY_LLAMA3,
        help=f"{TINY_LLAMA3!r} (the course's model, the default) or a hub name",
    )
    parser.add_argument(
        "--r", type=_positive(int), default=8, help="the LoRA rank r (default 8)"
    )
    parser.add_argument(
        "--alpha",
        type=_positive(float),
        default=16.0,
        help="the LoRA scale α; ΔW is scaled by α/r (default 16)",
    )
    parser.add_argument(
        "--targets",
        default=",".join(ATTENTION),
        help="comma-separated names of the linear layers to adapt (default %(default)s)",
    )
    parser.add_argument(
        "--epochs",
        type=_positive(float),
        default=1.0,
        help="passes over the data (default 1)",
    )
    parser.add_argument(
        "--lr",
        type=_positive(float),
        default=2e-3,
        help="peak learning rate (default 2e-3)",
    )
    parser.add_argument(
        "--block-size",
        type=_positive(int),
        default=64,
        help="tokens per training example (default 64)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive(int),
        default=8,
        help="blocks per batch (default 8)",
    )
    parser.add_argument(
        "--accumulation",
        type=_positive(int),
        default=2,
        help="batches per optimizer step (default 2)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="also write the merged model to OUTPUT/merged",
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where to train (default cpu)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an adapter that OUTPUT already holds",
    )
    return parser


def _perplexity(trainer: Trainer) -> float:
    return math.exp(trainer.evaluate()["eval_loss"])


def _describe(directory: Path) -> str:
    return "\n".join(
        f"  {p.relative_to(directory.parent)}  {p.stat().st_size:,} bytes"
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    )


def main(argv: list[str] | None = None) -> int:
    """Run lora-edu-train; return its exit status (0 done, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets:
        parser.error("--targets names no module")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            "--device cuda was asked for, but this machine has no CUDA GPU; use --device cpu"
        )
    if (args.output / ADAPTER_CONFIG).exists() and not args.overwrite:
        parser.error(
            f"{args.output} already holds an adapter; choose another --output, or pass --overwrite to replace it"
        )
    try:
        model, tokenizer = load_model(args.model)
        ensure_pad_token(tokenizer)
        data = {"train": args.data} | (
            {"validation": args.eval_data} if args.eval_data else {}
        )
        blocks = load_text_blocks(data, tokenizer, args.block_size)
        # A rank above a layer's smaller side adds nothing, and PEFT would accept it silently.
        smallest = min(
            min(m.in_features, m.out_features)
            for m in check_targets(model, targets).values()
        )
        if args.r > smallest:
            raise ValueError(
                f"--r {args.r} is larger than {smallest}, the smaller side of the smallest target layer"
            )
    except (ValueError, ModelUnavailableError) as error:
        parser.error(str(error))
    config = LoraConfig(
        r=args.r,
        lora_alpha=args.alpha,
        target_modules=targets,
        lora_dropout=0.05,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(
        0
    )  # PEFT draws each A from PyTorch's global generator; Trainer seeds only later
    model = get_peft_model(model, config)
    model.print_trainable_parameters()
    work = Path(tempfile.mkdtemp(prefix="lora-edu-train-"))
    checkpoint = CheckpointAdapter(args.output)
    arguments = training_arguments(
        work,
        args.epochs,
        args.lr,
        args.batch_size,
        args.accumulation,
        args.device == "cpu",
        evaluate=bool(args.eval_data),
    )
    trainer = make_trainer(model, tokenizer, blocks, arguments, callbacks=[checkpoint])
    try:
        before = _perplexity(trainer) if args.eval_data else None
        trainer.train()
        save_peft_adapter(
            model, args.output
        )  # also covers a run whose last epoch was partial
        after = _perplexity(trainer) if args.eval_data else None
        if args.merge:
            merged = model.merge_and_unload()
            with staged_files(args.output / "merged") as staging:
                merged.save_pretrained(
                    staging
                )  # transformers 5 writes weights only as safetensors
                tokenizer.save_pretrained(staging)
    except KeyboardInterrupt:
        saved = (
            f"the checkpoint from epoch {checkpoint.epochs_saved}"
            if checkpoint.epochs_saved
            else "no new adapter"
        )
        print(
            f"\nInterrupted. {args.output} holds {saved}; no file was left half-written.",
            file=sys.stderr,
        )
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print(
        f"\nTrained {trainer.state.global_step} steps: training loss {losses[0]:.3f} → {losses[-1]:.3f}"
    )
    if args.eval_data:
        print(f"Perplexity on {args.eval_data}: {before:.2f} → {after:.2f}")
    print(f"Wrote:\n{_describe(args.output)}")
    return 0


def cli() -> None:
    """The console entry point of lora-edu-train."""
    try:
        sys.exit(main())
    except (
        KeyboardInterrupt
    ):  # before training began: main() handles Ctrl-C during training itself
        print(
            "\nInterrupted before training began; nothing was written.", file=sys.stderr
        )
        sys.exit(130)
