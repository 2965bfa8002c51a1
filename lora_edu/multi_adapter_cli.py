"""lora-edu-generate with --adapter given more than once (Chapter 11).

lora_edu.cli.generate checks the arguments, the adapters and the base model, and loads
it, as for one adapter; this module answers the prompt with each adapter, and with the
base model under --compare, in one mixed batch.
"""

from __future__ import annotations

from pathlib import Path


def generate_many(
    model, tokenizer, folders: list[Path], prompt: str, max_new_tokens: int, compare
) -> list[tuple[Path | None, str]]:
    """[(folder, continuation)] for each adapter, after (None, the base's) if compare.

    The adapters go into model as MultiLoRALinear layers, named str(folder).
    """
    from lora_edu.cli import UsageError
    from lora_edu.multi_adapter import add_adapters, generate_rows
    from lora_edu.peft_workflow import ensure_pad_token

    try:
        add_adapters(model, {str(folder): folder for folder in folders})
    except (OSError, ValueError) as error:
        raise UsageError(str(error)) from None
    rows = [None] * compare + list(folders)
    names = [None if row is None else str(row) for row in rows]
    answers = generate_rows(
        model.eval(),
        ensure_pad_token(tokenizer),
        [prompt] * len(rows),
        names,
        max_new_tokens,
    )
    return list(zip(rows, answers))
