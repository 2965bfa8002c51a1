"""Writing a set of files so that an interruption (Ctrl-C) never leaves a mixture of old and new ones."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold back Ctrl-C until the block ends, then raise it: the block runs whole or not at all."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals only reach the main thread, so there is nothing to defer here
        return
    received = []
    previous = signal.signal(
        signal.SIGINT, lambda number, frame: received.append(number)
    )
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def staged_files(directory: Path, names: list[str] | None = None) -> Iterator[Path]:
    """Yield a staging folder beside `directory`; when the block succeeds, move `names` (default: every file) in together."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        yield staging
        if names is None:
            names = sorted(p.name for p in staging.iterdir() if p.is_file())
        missing = [name for name in names if not (staging / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"staging {directory} did not produce {', '.join(missing)}"
            )
        with deferred_interrupts():
            directory.mkdir(exist_ok=True)
            for name in names:
                os.replace(staging / name, directory / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
