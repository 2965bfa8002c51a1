"""lora-edu-generate with --adapter given more than once (Chapter 11).

The prompt is answered with each adapter, and with the base model under --compare, in
one mixed batch. As the rest of lora_edu.cli, this module checks the arguments and the
adapters' configs before it loads a model: an error is one line and exit status 2.
"""

from __future__ import annotations

from pathlib import Path

from lora_edu.files import ADAPTER_CONFIG


def _base_model(folder: Path) -> str:
    """The base model an adapter's config names; 'tiny-llama3' for the shipped one."""
    from lora_edu.cli import TINY, UsageError
    from lora_edu.lora import read_adapter_config
    from lora_edu.pretrain import DATA_DIR

    try:
        config = read_adapter_config(folder)
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from None
    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise UsageError(
            f"{folder / ADAPTER_CONFIG} names no base model (base_model_name_or_path)"
        )
    return TINY if base == TINY or Path(base) == DATA_DIR else base


def _check_folders(folders: list[Path]) -> None:
    from lora_edu.cli import UsageError

    seen = set()
    for folder in folders:
        if not folder.is_dir():
            raise UsageError(f"--adapter {folder} is not a folder")
        if folder.resolve() in seen:
            raise UsageError(f"--adapter {folder} is given more than once")
        seen.add(folder.resolve())


def generate_many(args, parser) -> int:
    """Answer args.prompt with each of args.adapter in one mixed batch; exit status."""
    from lora_edu.cli import (
        UsageError,
        _check_device,
        _load_model,
        _quiet_imports,
    )

    try:
        if not args.prompt.strip():
            raise UsageError("--prompt is empty")
        _check_folders(args.adapter)
        _quiet_imports(args.verbose)
        bases = {folder: _base_model(folder) for folder in args.adapter}
        if len(set(bases.values())) > 1:
            named = "; ".join(f"{folder} is for {b}" for folder, b in bases.items())
            raise UsageError(
                f"the adapters are for different base models ({named}); "
                "one batch runs on one base model"
            )
        base = bases[args.adapter[0]]
        _check_device(args.device)
        model, tokenizer = _load_model(base, args.device)
        from lora_edu.multi_adapter import add_adapters, generate_rows
        from lora_edu.peft_workflow import ensure_pad_token

        labels = {str(folder): folder for folder in args.adapter}
        try:
            add_adapters(model, labels)
        except (OSError, ValueError) as error:
            raise UsageError(str(error)) from None
        names = [None] * args.compare + list(labels)
        prompts = [args.prompt] * len(names)
        answers = generate_rows(
            model.eval(),
            ensure_pad_token(tokenizer),
            prompts,
            names,
            args.max_new_tokens,
        )
    except UsageError as error:
        parser.error(str(error))
    for name, answer in zip(names, answers):
        title = f"base model ({base})" if name is None else f"with the adapter ({name})"
        print(f"{title}:\n  {args.prompt}{answer}")
    return 0
