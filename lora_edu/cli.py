"""The command-line tools lora-edu-train and lora-edu-generate (Chapter 6), and the
command line of Chapter 7's grid, python -m lora_edu.experiments.

    lora-edu-train --data my_text.txt --output my-adapter
    lora-edu-generate --adapter my-adapter --prompt "On Monday, Oslo" --compare
    python -m lora_edu.experiments --only 'lora/q4+v4/*' --output my-grid

Each parses and checks its arguments, and the files those name, before it imports
torch, transformers or peft: --help and mistakes answer at once, and nothing expensive
starts on input that would fail later. An error is one line and exit status 2; an
interrupt (Ctrl-C or SIGTERM) is one line and exit status 130 or 143.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import fnmatch
import importlib.util
import math
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from lora_edu.files import (
    ADAPTER_CONFIG,
    ADAPTER_FILES,
    ADAPTER_WEIGHTS,
    FolderInUseError,
    clean_leftovers,
    deferred_interrupts,
    foreign_names,
    holds_adapter,
    locked,
    read_text,
    staging_prefix,
)

# Spelt out so that --help needs no torch: llama.TINY_LLAMA3, pretrain.DATA_DIR, and
# experiments.RESULTS_DIR, RESULTS and ADAPTERS (a test checks that they agree).
TINY = "tiny-llama3"
TINY_DIR = Path(__file__).parent / "data" / "tiny-llama3"
GRID_DIR = Path(__file__).parent / "data" / "experiments"
GRID_FILES = ("results.json", "adapters.safetensors")
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
# The files that make the tiny model what it is: a folder holding copies is the model.
TINY_FILES = ("config.json", "model.safetensors", "tokenizer.json")
HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?")  # "meta-llama/Meta-Llama-3-8B"
FLOAT32_MAX = 3.4028234663852886e38


class UsageError(ValueError):
    """Bad input: reported as one line and exit status 2."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: no usage text before them."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind, minimum):
    """An argparse type: a finite number of `kind`, >= minimum (> 0 if minimum is 0)."""

    def parse(text: str):
        # int("inf") and float("x") raise ValueError, which argparse reports.
        value = kind(text)
        if not math.isfinite(value) or not (
            value > 0 if minimum == 0 else value >= minimum
        ):
            bound = "> 0" if minimum == 0 else f">= {minimum}"
            raise argparse.ArgumentTypeError(
                f"must be a finite number {bound}, got {text}"
            )
        return value

    parse.__name__ = kind.__name__
    return parse


def _probability(text: str) -> float:
    """An argparse type: a probability p with 0 <= p < 1."""
    value = float(text)
    if not 0 <= value < 1:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def train_parser() -> Parser:
    """The arguments of lora-edu-train."""
    parser = Parser(
        prog="lora-edu-train",
        description="Fine-tune a causal language model on a plain-text file with LoRA "
        "(Hugging Face PEFT), and save the adapter in PEFT's format.",
        epilog="example: lora-edu-train --data notes.txt --output notes-adapter",
    )
    add, count, number = parser.add_argument, _number(int, 0), _number(float, 0)
    add(
        "--data",
        type=Path,
        required=True,
        help="a UTF-8 text file to train on, packed into blocks of --block-size tokens",
    )
    add(
        "--eval-data",
        type=Path,
        help="a text file to report perplexity on, before and after",
    )
    add(
        "--output",
        type=Path,
        required=True,
        help="the directory to write the adapter to",
    )
    add(
        "--model",
        default=TINY,
        help=f"{TINY!r} (the course's model, the default), a hub name, or a folder",
    )
    add("--r", type=count, default=8, help="the LoRA rank r (default 8)")
    add(
        "--alpha",
        type=number,
        default=16.0,
        help="the LoRA scale α; ΔW is scaled by α/r (default 16)",
    )
    add(
        "--targets",
        default=",".join(ATTENTION),
        help="comma-separated linear layers to adapt (default %(default)s)",
    )
    add(
        "--dropout",
        type=_probability,
        default=0.05,
        help="LoRA's dropout probability, in [0, 1) (default 0.05)",
    )
    add("--epochs", type=number, default=1.0, help="passes over the data (default 1)")
    add("--lr", type=number, default=2e-3, help="peak learning rate (default 2e-3)")
    add(
        "--block-size",
        type=_number(int, 2),
        default=64,
        help="tokens per training example, at least 2 (default 64)",
    )
    add(
        "--batch-size",
        type=count,
        default=8,
        help="blocks per batch, in each process under torchrun (default 8)",
    )
    add(
        "--accumulation",
        type=count,
        default=2,
        help="batches per optimizer step (default 2)",
    )
    add(
        "--merge",
        action="store_true",
        help="also write the merged model to OUTPUT/merged",
    )
    add(
        "--load-in-4bit",
        action="store_true",
        help="QLoRA: train on a 4-bit NF4 copy of the model (needs bitsandbytes)",
    )
    add(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where to train (default cpu)",
    )
    add(
        "--overwrite",
        action="store_true",
        help="replace an adapter that OUTPUT already holds",
    )
    add(
        "--verbose",
        action="store_true",
        help="also show the libraries' warnings and progress bars",
    )
    return parser


def generate_parser() -> Parser:
    """The arguments of lora-edu-generate."""
    parser = Parser(
        prog="lora-edu-generate",
        description="Continue a prompt with a LoRA adapter, on the base model that the "
        "adapter's config names.",
        epilog='example: lora-edu-generate --adapter my-adapter --prompt "On Monday"',
    )
    add = parser.add_argument
    add(
        "--adapter",
        type=Path,
        action="append",
        required=True,
        help="a folder written by lora-edu-train or PEFT; give it more than once to "
        "answer with each adapter, in one mixed batch (Chapter 11)",
    )
    add("--prompt", required=True, help="the text to continue")
    add(
        "--model",
        help="the base model, if not the one the adapter's config names: "
        f"{TINY!r}, a hub name, or a folder",
    )
    add(
        "--max-new-tokens",
        type=_number(int, 0),
        default=20,
        help="tokens to generate (default 20)",
    )
    add(
        "--compare", action="store_true", help="also show the base model's continuation"
    )
    add(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where to run (default cpu)",
    )
    add(
        "--verbose",
        action="store_true",
        help="also show the libraries' warnings and progress bars",
    )
    return parser


def experiments_parser() -> Parser:
    """The arguments of python -m lora_edu.experiments."""
    parser = Parser(
        prog="python -m lora_edu.experiments",
        description="Re-run the LoRA paper's experiments in miniature on the tiny "
        "Llama 3 (Chapter 7) and store the results.",
        epilog="example: python -m lora_edu.experiments --only 'lora/q4+v4/*' "
        "--output my-grid",
    )
    add = parser.add_argument
    add(
        "--output",
        type=Path,
        default=GRID_DIR,
        help=f"the folder for {' and '.join(GRID_FILES)} (default {GRID_DIR})",
    )
    add(
        "--only",
        nargs="+",
        metavar="PATTERN",
        help="run only the cells whose names match a shell pattern; "
        "the others already stored in --output are kept",
    )
    add("--list", action="store_true", help="print the cells' names")
    return parser


def _quiet_imports(verbose: bool) -> None:
    """Keep the libraries' warnings, logs and progress bars out of the tool's output."""
    if verbose:
        return
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    # Also Python logging, e.g. bitsandbytes' note about optional CPU kernels.
    logging.disable(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            "--device cuda was asked for, but this machine has no CUDA GPU; "
            "use --device cpu"
        )


def _holds_tiny_model(folder: Path) -> bool:
    """Whether a folder holds the course's tiny model: the same files as ours."""
    return all(
        (folder / name).is_file()
        and filecmp.cmp(folder / name, TINY_DIR / name, shallow=False)
        for name in TINY_FILES
    )


def base_model(name: str, what: str, fix: str) -> str:
    """TINY for the course's model, a folder's absolute path, or a hub name.

    The course's model is recognised wherever an adapter travels: by its name, by a
    folder holding the same files, or by a path ending in lora_edu/data/tiny-llama3
    (another checkout's or machine's copy); the installed copy is used. A name that is
    no folder here is a hub name if it can be one; a path that does not exist is an
    error, which says `what` named it and how to `fix` it.
    """
    path = Path(name).expanduser()
    if name == TINY or path.parts[-3:] == TINY_DIR.parts[-3:]:
        return TINY
    if path.is_dir():
        return TINY if _holds_tiny_model(path) else str(path.resolve())
    if path.exists():
        raise UsageError(f"{what} {name}, which is a file, not a model folder; {fix}")
    if HUB_NAME.fullmatch(name) and not name.startswith("."):
        return name
    raise UsageError(f"{what} {name}, which does not exist on this machine; {fix}")


def _load_model(name: str, device: str, hint: str, load_in_4bit: bool = False):
    """(model, tokenizer); a model that cannot load here is a one-line UsageError."""
    from lora_edu.llama import ModelUnavailableError, load_model

    try:
        if load_in_4bit:
            from lora_edu.peft_workflow import load_model_4bit

            return load_model_4bit(name, device)
        model, tokenizer = load_model(name)
    except ModelUnavailableError as error:
        reason = str(error).splitlines()[0]
        if name != TINY and not Path(name).is_dir():
            reason += f" ({name} is no folder here, so it names a model on the Hub.)"
        raise UsageError(f"{reason} {hint}") from None
    return model.to(device), tokenizer


def _check_train_arguments(args) -> tuple[list[str], str]:
    """Check all that needs no model; return the target names and the --data text."""
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets:
        raise UsageError("--targets names no module")
    if not args.model.strip():
        raise UsageError(f"--model is empty; name a model, e.g. --model {TINY}")
    args.model = base_model(
        args.model, "--model names", f"name {TINY}, a hub name, or a model's folder"
    )
    if args.load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError(
            "--load-in-4bit needs the bitsandbytes package: pip install bitsandbytes"
        )
    if args.load_in_4bit and args.merge:
        raise UsageError(
            "--merge cannot merge into 4-bit weights; "
            "merge the adapter into the full-precision model"
        )
    try:
        text = read_text(args.data, "--data file")
        if args.eval_data is not None:
            read_text(args.eval_data, "--eval-data file")
    except ValueError as error:
        raise UsageError(str(error)) from None
    _check_output(args.output, args.overwrite)
    return targets, text


def _check_output(output: Path, overwrite: bool) -> None:
    """Refuse an --output that is a file, under one, or holds what is not to replace."""
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file; name a folder for the adapter")
    above = next(p for p in output.absolute().parents if p.exists())
    if not above.is_dir():
        raise UsageError(f"--output {output} lies under {above}, which is a file")
    if holds_adapter(output) and not overwrite:
        raise UsageError(
            f"{output} already holds an adapter; choose another --output, "
            "or pass --overwrite to replace it"
        )
    foreign = foreign_names(output, ADAPTER_FILES)
    if foreign:
        raise UsageError(
            f"--output {output} holds files that are not an adapter "
            f"({', '.join(foreign)}); choose an empty folder"
        )


def _report_coverage(tokenizer, text: str, model_name: str) -> None:
    """Print how well the tokenizer knows the text, and what that means for training."""
    from lora_edu.peft_workflow import tokenizer_coverage

    words, tokens, single_bytes = tokenizer_coverage(tokenizer, text)
    per_word = tokens / max(words, 1)
    print(
        f"Your text: {words:,} words, {tokens:,} tokens ({per_word:.1f} a word; "
        f"{single_bytes / tokens:.0%} of them single bytes)."
    )
    print(
        f"Guessing uniformly among the model's {len(tokenizer):,} tokens gives "
        f"loss {math.log(len(tokenizer)):.2f}."
    )
    if per_word > 2:
        print(
            f"{model_name}'s tokenizer knows few of your words, so a short run barely "
            "lowers the loss: train for more epochs (e.g. --epochs 20), or on a GPU "
            "use a model that knows your "
            "language (--model meta-llama/Meta-Llama-3-8B --device cuda)."
        )


def _launch_rank() -> tuple[int, int]:
    """(rank, number of processes) that torchrun gave this process; (0, 1) alone."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _interrupted(signum: int, where: str) -> int:
    print(f"\nInterrupted. {where}", file=sys.stderr)
    return 128 + signum


def _train(args, parser, targets: list[str], text: str, work: Path) -> int:
    """lora-edu-train, once the arguments are checked and the output is locked."""
    output = args.output
    before_run = (
        f"{output} still holds the adapter it held before"
        if holds_adapter(output)
        else "no adapter was written"
    )
    state = {"wrote": before_run}
    _quiet_imports(args.verbose)
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import PrinterCallback

    from lora_edu.lora import NonFiniteError
    from lora_edu.peft_workflow import (
        CheckpointAdapter,
        LossProgressBar,
        StopOnNonFiniteLoss,
        TrainingBar,
        check_targets,
        ensure_pad_token,
        load_text_blocks,
        make_trainer,
        save_peft_adapter,
        training_arguments,
    )

    _check_device(args.device)
    rank, world = _launch_rank()
    if args.device == "cuda" and world > 1:  # under torchrun: local rank k on GPU k
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if rank:  # under torchrun: rank 0 reports, and only rank 0 writes
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the process's life)
    model, tokenizer = _load_model(
        args.model,
        args.device,
        f"Use --model {TINY}, or run on a CUDA GPU with --device cuda",
        args.load_in_4bit,
    )
    ensure_pad_token(tokenizer)
    try:
        layers = check_targets(model, targets)
    except ValueError as error:
        raise UsageError(str(error)) from None
    smallest = min(min(m.in_features, m.out_features) for m in layers.values())
    if args.r > smallest:
        # A rank above a layer's smaller side adds nothing; PEFT would accept it.
        raise UsageError(
            f"--r {args.r} is larger than {smallest}, "
            "the smaller side of the smallest target layer"
        )
    data = {"train": args.data} | (
        {"validation": args.eval_data} if args.eval_data else {}
    )
    try:
        blocks = load_text_blocks(data, tokenizer, args.block_size)
    except ValueError as error:
        raise UsageError(str(error).replace("block_size=", "--block-size ")) from None
    _report_coverage(tokenizer, text, args.model)
    config = LoraConfig(
        r=args.r,
        lora_alpha=args.alpha,
        target_modules=targets,
        lora_dropout=args.dropout,
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(0)  # PEFT draws each A now; Trainer seeds only later
    model = get_peft_model(model, config)
    # PEFT would record where this checkout keeps the model; the name travels.
    model.peft_config["default"].base_model_name_or_path = args.model
    trainable, total = model.get_nb_trainable_parameters()
    print(f"Training {trainable:,} of {total:,} parameters ({trainable / total:.2%}).")
    arguments = training_arguments(
        work,
        args.epochs,
        args.lr,
        args.batch_size,
        args.accumulation,
        args.device == "cpu",
        evaluate=bool(args.eval_data),
    )
    arguments.logging_nan_inf_filter = False  # a NaN loss must be seen, not hidden
    arguments.ddp_find_unused_parameters = False  # under torchrun: every factor is used
    checkpoint = CheckpointAdapter(output)
    trainer = make_trainer(
        model,
        tokenizer,
        blocks,
        arguments,
        callbacks=[checkpoint, StopOnNonFiniteLoss()],
    )
    # With transformers' logs quiet, Trainer prints every log as a dict: keep one bar.
    for callback in (LossProgressBar, PrinterCallback):
        trainer.remove_callback(callback)
    trainer.add_callback(TrainingBar)

    def saved() -> str:
        n = checkpoint.epochs_saved
        return f"{output} holds the checkpoint from epoch {n}" if n else state["wrote"]

    try:
        before = math.exp(trainer.evaluate()["eval_loss"]) if args.eval_data else None
        trainer.train()
        if rank == 0:
            with deferred_interrupts():
                save_peft_adapter(model, output, tokenizer if args.merge else None)
                state["wrote"] = f"{output} holds the finished adapter"
                checkpoint.epochs_saved = 0
        trainer.accelerator.wait_for_everyone()  # the other ranks wait for the save
        after = math.exp(trainer.evaluate()["eval_loss"]) if args.eval_data else None
    except KeyboardInterrupt:
        signum = signal.SIGTERM if _terminated else signal.SIGINT
        return _interrupted(signum, f"{saved()}; no file was left half-written.")
    except NonFiniteError as error:
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, TrainingBar) and callback.training_bar is not None:
                callback.training_bar.close()  # the message then starts a line
        print(
            f"{parser.prog}: training failed: {error}. "
            f"Try a smaller --lr (now {args.lr:g}). {saved()}.",
            file=sys.stderr,
        )
        return 1
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print(
        f"Trained {trainer.state.global_step} steps: "
        f"training loss {losses[0]:.3f} → {losses[-1]:.3f}"
    )
    if args.eval_data:
        print(f"Perplexity on {args.eval_data}: {before:.2f} → {after:.2f}")
    files = sorted(p for p in output.rglob("*") if p.is_file())
    print(
        "Wrote:",
        *(
            f"  {p.relative_to(output.parent)}  {p.stat().st_size:,} bytes"
            for p in files
        ),
        sep="\n",
    )
    return 0


def train(argv: list[str] | None = None) -> int:
    """Run lora-edu-train; return its exit status (0 done, 1 training failed)."""
    parser = train_parser()
    args = parser.parse_args(argv)
    try:
        targets, text = _check_train_arguments(args)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        real = args.output.resolve()  # a symbolic link stays; its folder is written
        # Under torchrun only rank 0 locks (the real folder's lock), cleans and writes.
        writer = _launch_rank()[0] == 0
        with locked(args.output) if writer else contextlib.nullcontext():
            if writer:
                # What killed runs left: staging folders, or an adapter set aside, which
                # is put back and then, as any adapter, replaced only with --overwrite.
                clean_leftovers(real)
                _check_output(args.output, args.overwrite)
            # The trainer's scratch folder, beside the output: proves it writable first.
            work = Path(
                tempfile.mkdtemp(
                    prefix=staging_prefix(real) if writer else "lora-edu-rank-",
                    dir=real.parent if writer else None,
                )
            )
            try:
                return _train(args, parser, targets, text, work)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    except (UsageError, FolderInUseError) as error:
        parser.error(str(error))
    except OSError as error:  # e.g. a read-only folder, or --output under a file
        parser.error(
            f"cannot write --output {args.output}: {error.strerror} ({error.filename})"
        )


def _check_prompt(prompt: str) -> None:
    """Refuse an empty prompt, or one whose bytes are not text in the locale."""
    if not prompt.strip():
        raise UsageError("--prompt is empty")
    # Python keeps undecodable bytes of a command line as lone surrogates.
    raw = os.fsencode(prompt)
    try:
        raw.decode(sys.getfilesystemencoding())
    except UnicodeDecodeError as error:
        raise UsageError(
            f"--prompt is not valid {error.encoding.upper()}: byte {error.start} is "
            f"{raw[error.start]:#x}; write it in your terminal's encoding, or set a "
            "UTF-8 locale (e.g. LC_ALL=C.UTF-8)"
        ) from None


def _check_adapter(directory: Path) -> dict:
    """Read and check an adapter's config and weights; return the config."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from lora_edu.lora import check_finite, read_adapter_config

    try:
        config = read_adapter_config(directory)
        check_finite(
            load_file(directory / ADAPTER_WEIGHTS), f"the adapter in {directory}"
        )
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from None
    except SafetensorError as error:
        raise UsageError(
            f"{directory / ADAPTER_WEIGHTS} is not a safetensors file we can read "
            f"({error})"
        ) from None
    r, alpha = config["r"], config["lora_alpha"]
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    if scaling > FLOAT32_MAX:
        raise UsageError(
            f"{directory / ADAPTER_CONFIG}: lora_alpha {alpha:g} scales the update by "
            f"{scaling:.3g}, beyond float32's range: every output would be infinite"
        )
    return config


def _finite_outputs(model, tokenizer, text: str) -> bool:
    """Whether the model's logits over text are all finite."""
    import torch

    ids = tokenizer(text, return_tensors="pt").input_ids.to(model.device)
    with torch.no_grad():
        return bool(torch.isfinite(model(ids).logits).all())


def _check_adapter_folders(folders: list[Path]) -> None:
    """Refuse an --adapter that is no folder, or the same folder given twice."""
    seen = set()
    for folder in folders:
        if not folder.is_dir():
            raise UsageError(f"--adapter {folder} is not a folder")
        if folder.resolve() in seen:
            raise UsageError(f"--adapter {folder} is given more than once")
        seen.add(folder.resolve())


def _generate_base(model: str | None, configs: dict[Path, dict]) -> str:
    """The one base model for --model or for every adapter's config (see base_model)."""
    fix = f"name the base model with --model ({TINY}, a hub name, or a folder)"
    if model is not None:
        return base_model(model, "--model names", fix)
    bases = {}
    for folder, config in configs.items():
        recorded = config.get("base_model_name_or_path")
        if not isinstance(recorded, str) or not recorded:
            raise UsageError(
                f"{folder / ADAPTER_CONFIG} names no base model "
                f"(base_model_name_or_path); {fix}"
            )
        what = f"{folder / ADAPTER_CONFIG} names the base model"
        bases[folder] = base_model(recorded, what, fix)
    if len(set(bases.values())) > 1:
        named = "; ".join(f"{folder} is for {base}" for folder, base in bases.items())
        raise UsageError(
            f"the adapters are for different base models ({named}); "
            "one batch runs on one base model"
        )
    return next(iter(bases.values()))


def _broken(folder: Path, config: dict) -> UsageError:
    """The error for an adapter whose outputs are not finite."""
    return UsageError(
        f"the adapter in {folder} makes the model's outputs NaN or infinite "
        f"(lora_alpha {config['lora_alpha']:g}, r {config['r']}): it is broken"
    )


def generate(argv: list[str] | None = None) -> int:
    """Run lora-edu-generate; return its exit status (0 done, 2 bad input)."""
    parser = generate_parser()
    args = parser.parse_args(argv)
    try:
        _check_prompt(args.prompt)
        if args.model is not None and not args.model.strip():
            raise UsageError(f"--model is empty; name a model, e.g. --model {TINY}")
        _check_adapter_folders(args.adapter)
        _quiet_imports(args.verbose)
        configs = {folder: _check_adapter(folder) for folder in args.adapter}
        base = _generate_base(args.model, configs)
        _check_device(args.device)
        model, tokenizer = _load_model(
            base,
            args.device,
            "Run on a machine with a CUDA GPU, with --device cuda, "
            "or name another base model with --model",
        )
        context = getattr(model.config, "max_position_embeddings", None)
        length = len(tokenizer(args.prompt).input_ids)
        if context is not None and length + args.max_new_tokens > context:
            raise UsageError(
                f"--prompt is {length} tokens long; with --max-new-tokens "
                f"{args.max_new_tokens} that is more than the {context} positions "
                f"{base} reads at once: shorten the prompt or ask for fewer tokens"
            )
        if len(args.adapter) > 1:
            rows = _generate_rows(args, model, tokenizer, configs)
        else:
            rows = _generate_one(args, model, tokenizer, configs)
    except UsageError as error:
        parser.error(str(error))
    if len(rows) == 1:
        print(f"{args.prompt}{rows[0][1]}")
        return 0
    for folder, answer in rows:
        title = (
            f"base model ({base})" if folder is None else f"with the adapter ({folder})"
        )
        print(f"{title}:\n  {args.prompt}{answer}")
    return 0


def _generate_one(args, model, tokenizer, configs: dict[Path, dict]) -> list:
    """[(None, base answer) under --compare, (folder, answer)] of one adapter."""
    from lora_edu.llama import complete
    from lora_edu.lora import load_adapter

    [(folder, config)] = configs.items()
    rows = []
    if args.compare:
        rows.append(
            (None, complete(model, tokenizer, args.prompt, args.max_new_tokens))
        )
    try:
        load_adapter(model, folder)
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from None
    answer = complete(model.eval(), tokenizer, args.prompt, args.max_new_tokens)
    if not _finite_outputs(model, tokenizer, args.prompt + answer):
        raise _broken(folder, config)
    return [*rows, (folder, answer)]


def _generate_rows(args, model, tokenizer, configs: dict[Path, dict]) -> list:
    """[(folder or None for the base, answer)], all in one mixed batch (Chapter 11)."""
    from lora_edu.multi_adapter import adapter_rows
    from lora_edu.multi_adapter_cli import generate_many

    rows = generate_many(
        model, tokenizer, list(configs), args.prompt, args.max_new_tokens, args.compare
    )
    for folder, answer in rows:
        with adapter_rows(model, [None if folder is None else str(folder)]):
            if _finite_outputs(model, tokenizer, args.prompt + answer):
                continue
        if folder is None:
            raise UsageError(
                "the base model's outputs are NaN or infinite: it is broken"
            )
        raise _broken(folder, configs[folder])
    return rows


def _check_grid_output(output: Path) -> None:
    """Refuse an --output that is a file, under one, or holds other files."""
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file, not a folder")
    above = next(p for p in output.absolute().parents if p.exists())
    if not above.is_dir():
        raise UsageError(f"--output {output} lies under {above}, which is a file")
    foreign = foreign_names(output, GRID_FILES)
    if foreign:
        raise UsageError(
            f"--output {output} holds files that are not the grid's results "
            f"({', '.join(foreign)}); choose an empty folder"
        )
    for name in GRID_FILES:
        if (output / name).is_dir():
            raise UsageError(f"{output / name} is a folder, not the grid's file")


def _cells(count: int) -> str:
    return f"{count} cell" + "s" * (count != 1)


def experiments_command(argv: list[str] | None = None) -> int:
    """Run python -m lora_edu.experiments; return its exit status."""
    parser = experiments_parser()
    args = parser.parse_args(argv)
    output, stored, held = args.output, 0, 0
    try:
        _check_grid_output(output)
        _quiet_imports(verbose=False)
        import torch

        from lora_edu import experiments
        from lora_edu.llama import load_model

        names = list(experiments.grid(experiments.projection_shapes(load_model()[0])))
        if args.list:
            print("\n".join(names))
            return 0
        if args.only:
            unmatched = [p for p in args.only if not fnmatch.filter(names, p)]
            if unmatched:
                raise UsageError(f"--only {unmatched} match no cell; see --list")
            names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in args.only)]
        output.parent.mkdir(parents=True, exist_ok=True)
        try:
            with locked(output, wait=60):
                clean_leftovers(output)  # what a killed save left
                _check_grid_output(output)
                experiments.stored_results(output)
        except ValueError as error:
            raise UsageError(str(error)) from None
        print(f"Running {_cells(len(names))}; each is stored in {output} when done.")
        # The stored results were made with one thread: the count changes float sums.
        torch.set_num_threads(1)
        for results in experiments.run_grid(names, output):
            stored, held = stored + 1, len(results["runs"])
    except (UsageError, FolderInUseError, ValueError) as error:
        parser.error(str(error))
    except OSError as error:
        parser.error(
            f"cannot write --output {output}: {error.strerror} ({error.filename})"
        )
    except FloatingPointError as error:
        print(f"\n{parser.prog}: a cell failed: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        signum = signal.SIGTERM if _terminated else signal.SIGINT
        return _interrupted(
            signum,
            f"{_cells(stored)} of this run stored in {output}; "
            "no file was left half-written.",
        )
    print(f"Ran {_cells(stored)}; {output} holds {_cells(held)}.")
    return 0


_terminated = False


def _on_sigterm(signum, frame):
    global _terminated
    _terminated = True
    raise KeyboardInterrupt  # SIGTERM takes the same careful path as Ctrl-C


def _run(main) -> None:
    """Run a tool with SIGTERM handled like Ctrl-C, also during the slow imports."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # before training: train() reports those during it
        signum = signal.SIGTERM if _terminated else signal.SIGINT
        sys.exit(_interrupted(signum, "Nothing was written."))


def train_cli() -> None:
    """The console entry point of lora-edu-train."""
    _run(train)


def generate_cli() -> None:
    """The console entry point of lora-edu-generate."""
    _run(generate)


def experiments_cli() -> None:
    """What python -m lora_edu.experiments runs."""
    _run(experiments_command)


if __name__ == "__main__":  # torchrun -m lora_edu.cli: lora-edu-train on each rank
    train_cli()
