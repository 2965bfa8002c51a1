"""The package's import-time behaviour: bitsandbytes' optional-kernel note is hidden."""

import logging
import subprocess
import sys

import lora_edu


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord(
        lora_edu.BITSANDBYTES_CPU_LOGGER,
        logging.WARNING,
        "ops.py",
        1,
        message,
        (),
        None,
    )


def test_only_the_optional_kernel_note_is_dropped():
    logger = logging.getLogger(lora_edu.BITSANDBYTES_CPU_LOGGER)
    note = record(lora_edu.OPTIONAL_KERNEL_NOTE + ": %s. Please make sure ...")
    other = record("Some other bitsandbytes warning")
    assert not logger.filter(note)
    assert logger.filter(other)


def test_hiding_twice_adds_one_filter():
    logger = logging.getLogger(lora_edu.BITSANDBYTES_CPU_LOGGER)
    lora_edu.hide_bitsandbytes_kernel_note()
    lora_edu.hide_bitsandbytes_kernel_note()
    assert len(logger.filters) == 1


def test_importing_bitsandbytes_after_lora_edu_prints_no_note():
    # In a fresh interpreter, as a chapter imports them; without lora_edu first, the
    # note appears on CPUs with AVX512-BF16 (such as the course's test machines).
    code = "import lora_edu, bitsandbytes"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert lora_edu.OPTIONAL_KERNEL_NOTE not in result.stderr
