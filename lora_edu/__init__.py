"""The tested helper package of the course "LoRA from First Principles".

Each module holds the code of one part of the course, in the form the chapters develop
it: `linalg` (Chapters 1-3), `lora` (Chapter 4) and `exercises` (the learners' checks).
"""

import logging

# bitsandbytes (imported by peft and transformers) logs this warning on import on a CPU
# with AVX512-BF16 when the optional `kernels` package is missing; it then falls back to
# its own CPU code, which the course uses. Readers in Jupyter and Colab would see it.
BITSANDBYTES_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
OPTIONAL_KERNEL_NOTE = "Failed to load CPU gemm_4bit_forward from kernels-community"


class _DropOptionalKernelNote(logging.Filter):
    """Drop bitsandbytes' note on its optional CPU kernel; keep every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(OPTIONAL_KERNEL_NOTE)


def hide_bitsandbytes_kernel_note() -> None:
    """Silence only bitsandbytes' import-time note that an optional kernel is missing.

    Called when lora_edu is imported, so that it acts before bitsandbytes is; repeat
    calls add nothing.
    """
    logger = logging.getLogger(BITSANDBYTES_CPU_LOGGER)
    if not any(isinstance(f, _DropOptionalKernelNote) for f in logger.filters):
        logger.addFilter(_DropOptionalKernelNote())


hide_bitsandbytes_kernel_note()


def add_to_class(cls):
    """Attach the decorated function to `cls` as a method.

    This lets a chapter build a class cell by cell.
    """

    def attach(function):
        name = (
            function.__func__.__name__
            if isinstance(function, classmethod)
            else function.__name__
        )
        setattr(cls, name, function)
        return function

    return attach
