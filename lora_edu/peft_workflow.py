"""The Hugging Face PEFT workflow end to end (Chapter 6); lora_edu.cli runs it."""

from __future__ import annotations

import glob
import json
import math
from pathlib import Path

import torch
from datasets import DatasetDict, load_dataset
from peft import get_peft_model_state_dict
from torch import nn
from transformers import (
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_callback import ProgressCallback

from lora_edu.files import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    deferred_interrupts,
    read_text,
    replaced_folder,
)
from lora_edu.llama import (
    TINY_LLAMA3,
    keep_4bit_layers_trainable,
    load_model,
    nf4_config,
)
from lora_edu.lora import (
    NonFiniteError,
    check_finite,
    linear_layer_names,
    matches_target,
)
from lora_edu.pretrain import DATA_DIR


def ensure_pad_token(tokenizer):
    """Give a tokenizer without one a padding token that never occurs in text. [Ch. 6]

    Meta-Llama-3-8B's tokenizer has none.
    """
    if tokenizer.pad_token is None:
        # Not <|end_of_text|>: the collator would then mask
        # every real end-of-text token out of the labels.
        spare = [
            t.content
            for t in tokenizer.added_tokens_decoder.values()
            if t.special and t.content not in (tokenizer.bos_token, tokenizer.eos_token)
        ]
        if not spare:
            raise ValueError(
                "the tokenizer has no padding token "
                "and no spare special token to use as one"
            )
        tokenizer.pad_token = spare[-1]
    return tokenizer


def load_text_blocks(data_files: dict, tokenizer, block_size: int) -> DatasetDict:
    """Load plain-text files with datasets and pack their tokens into blocks. [Ch. 6]

    Every line is tokenized, and the tokens are packed into blocks of block_size.
    """
    if (
        isinstance(block_size, bool)
        or not isinstance(block_size, int)
        or block_size < 2
    ):
        raise ValueError(
            f"block_size must hold an input and a target: >= 2, got {block_size!r}"
        )
    # One clear error for a missing, binary or empty file.
    for split, path in data_files.items():
        read_text(path, f"the {split} data file")
    # datasets reads data_files as glob patterns: escape a name holding [ or *.
    raw = load_dataset(
        "text",
        data_files={
            split: glob.escape(str(path)) for split, path in data_files.items()
        },
    )
    raw = raw.filter(lambda row: row["text"].strip() != "")

    def tokenize(batch):
        return tokenizer([text + tokenizer.eos_token for text in batch["text"]])

    def pack(batch):
        # Concatenate every line's tokens, then cut the stream into equal blocks; the
        # remainder is dropped.
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
                f"the {split} data holds {tokens} tokens, "
                f"fewer than one block of block_size={block_size}"
            )
    return blocks


def check_targets(model: nn.Module, targets: list[str]) -> dict[str, nn.Linear]:
    """The linear layers that targets select. [Ch. 6]

    A ValueError names each target that selects none.
    """
    # isinstance, not linear_layers_matching: PEFT also adapts 4-bit Linear4bit layers.
    selected = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and any(matches_target(name, t) for t in targets)
    }
    unknown = [
        t for t in targets if not any(matches_target(name, t) for name in selected)
    ]
    if unknown:
        raise ValueError(
            f"unknown target modules {unknown}; "
            f"the model's linear layers are named {linear_layer_names(model)}"
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
    """Trainer settings. [Ch. 6]

    Gradient accumulation, a cosine schedule with warmup, gradient clipping.
    """
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        learning_rate=lr,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        # one optimizer step per `accumulation` batches
        gradient_accumulation_steps=accumulation,
        lr_scheduler_type="cosine",
        # a float below 1 is a share of all steps: warm up over the first 10%
        warmup_steps=0.1,
        max_grad_norm=1.0,
        logging_steps=1,
        # The validation loss after every epoch, when there is validation data.
        eval_strategy="epoch" if evaluate else "no",
        save_strategy="no",  # checkpoints are written by CheckpointAdapter, atomically
        report_to="none",
        use_cpu=use_cpu,
        seed=0,
        data_seed=0,
    )


class LossProgressBar(ProgressCallback):
    """Trainer's tqdm progress bar, showing the latest loss on the bar.

    The bar replaces printing a line per log.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{logs['loss']:.3f}")


def make_trainer(
    model, tokenizer, blocks: DatasetDict, arguments: TrainingArguments, callbacks=()
) -> Trainer:
    """A Trainer for causal language modelling on packed blocks. [Ch. 6]

    With a plain tqdm progress bar.
    """
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=blocks["train"],
        eval_dataset=blocks.get("validation"),
        # labels = inputs; the model shifts them.
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    # Replace the default progress display (in a notebook, an HTML table with timings)
    # with LossProgressBar.
    for callback in list(trainer.callback_handler.callbacks):
        if type(callback).__name__ in ("ProgressCallback", "NotebookProgressCallback"):
            trainer.remove_callback(callback)
    trainer.add_callback(LossProgressBar)
    return trainer


def save_peft_adapter(model, directory: Path, merged_tokenizer=None) -> None:
    """Save a PEFT adapter (and, given a tokenizer, the merged model) as one folder."""
    check_finite(get_peft_model_state_dict(model), "the adapter")
    with replaced_folder(directory, ADAPTER_FILES) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        (staging / "README.md").unlink(missing_ok=True)  # PEFT's empty model card
        # PEFT writes target_modules in set order; sorted, equal runs give equal bytes.
        config = json.loads((staging / ADAPTER_CONFIG).read_text())
        if isinstance(config["target_modules"], list):
            config["target_modules"] = sorted(config["target_modules"])
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        if merged_tokenizer is not None:
            # safe_merge: PEFT checks the merged weights for NaN before keeping them.
            merged = model.merge_and_unload(safe_merge=True)
            merged.save_pretrained(staging / "merged")  # safetensors only
            merged_tokenizer.save_pretrained(staging / "merged")


class CheckpointAdapter(TrainerCallback):
    """Save the adapter into the output directory at the end of every epoch."""

    def __init__(self, directory: Path):
        self.directory, self.epochs_saved = directory, 0

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return  # under torchrun, rank 0 alone writes the output folder
        # The save and its count happen together, so an interrupt's report is true.
        with deferred_interrupts():
            save_peft_adapter(model, self.directory)
            self.epochs_saved += 1


class NonFiniteLossError(NonFiniteError):
    """Training produced a NaN or infinite loss."""


class StopOnNonFiniteLoss(TrainerCallback):
    """Raise NonFiniteLossError as soon as a logged training loss is NaN or infinite."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss became {loss} at step {state.global_step}"
            )


class TrainingBar(LossProgressBar):
    """LossProgressBar without the evaluation bars: one bar for the whole run."""

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        pass


def load_model_4bit(name: str, device: str = "cpu"):
    """(model, tokenizer) with 4-bit NF4 linear layers, ready for QLoRA. [Ch. 6]"""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name != TINY_LLAMA3:
        model, tokenizer = load_model(name, load_in_4bit=True)  # a hub model: a GPU
    else:
        # The rest in float32, unlike load_model's bfloat16: the CLI trains in float32.
        model = AutoModelForCausalLM.from_pretrained(
            DATA_DIR,
            dtype=torch.float32,
            quantization_config=nf4_config(compute_dtype=torch.float32),
            # The current GPU: under torchrun, lora-edu-train sets rank k on GPU k.
            device_map={"": torch.cuda.current_device()} if device == "cuda" else "cpu",
        )
        tokenizer = AutoTokenizer.from_pretrained(DATA_DIR)
    # Trainer evaluates between epochs: without this, bitsandbytes' CPU path would
    # repack the layers at the first evaluation and train on with no gradients.
    model = keep_4bit_layers_trainable(model)
    return prepare_model_for_kbit_training(model), tokenizer


def tokenizer_coverage(tokenizer, text: str) -> tuple[int, int, int]:
    """(words, tokens, single-byte tokens) of text: how well the tokenizer knows it."""
    ids = tokenizer(text.splitlines(), add_special_tokens=False)["input_ids"]
    pieces = [piece for row in ids for piece in tokenizer.convert_ids_to_tokens(row)]
    # A byte-level BPE shows a lone byte as one character; SentencePiece as <0x41>.
    single = sum(len(p) == 1 or (p.startswith("<0x") and len(p) == 6) for p in pieces)
    return len(text.split()), len(pieces), single
