"""Crash-safe folders: a new version replaces the old in one step; one writer at a time.

A save writes a complete new folder beside the target, flushes it to disk (fsync), and
swaps it with the target by Linux's renameat2(RENAME_EXCHANGE): one atomic step, so a
reader, a crash or a power cut finds the old folder or the new one, never a mixture and
never none. Where the file system cannot exchange, the old folder is renamed aside
first; a kill between the two renames leaves it aside, and `clean_leftovers` (run by the
next writer) puts it back.

A folder given as a symbolic link is resolved first: the real folder is locked and
replaced, and the link stays. The new folder and its files get the permissions that the
umask gives new files (as `cp` and PEFT's `save_pretrained` do), not the private 0700
of a temporary folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

INTERRUPTS = (signal.SIGINT, signal.SIGTERM)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# What an adapter folder may hold; a save replaces these and refuses to delete more.
ADAPTER_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS, "README.md", "merged")
_libc = ctypes.CDLL(None, use_errno=True)
_RENAME_EXCHANGE, _AT_FDCWD = 2, -100  # from <linux/fs.h> and <fcntl.h>


class FolderInUseError(RuntimeError):
    """Another process holds the lock on a folder."""


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold back SIGINT and SIGTERM until the block ends, then deliver them."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals only reach the main thread, so there is nothing to defer here
        return
    received = []
    previous = {
        number: signal.signal(number, lambda n, frame: received.append(n))
        for number in INTERRUPTS
    }
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    for number in received[:1]:
        signal.raise_signal(number)  # now handled as it would have been: raise or exit


def holds_adapter(directory) -> bool:
    """Whether a folder holds an adapter, or part of one (the weights or the config)."""
    return any((Path(directory) / name).exists() for name in ADAPTER_FILES[:2])


def read_text(path, what: str) -> str:
    """The text of a UTF-8 file; a ValueError names the file and what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder, not a text file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise ValueError(f"{what} {path} cannot be read: {error.strerror}") from None
    if b"\0" in data:
        raise ValueError(f"{what} {path} is not a text file: it holds NUL bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{what} {path} is not UTF-8: byte {error.start} is {data[error.start]:#x}"
        ) from None
    if not text.strip():
        raise ValueError(f"{what} {path} is empty")
    return text


def staging_prefix(directory: Path) -> str:
    """The name prefix of the staging and set-aside folders of `directory`."""
    return f".{directory.name}.new-"


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the system or file system cannot."""
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(
        _AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE
    ):
        number = ctypes.get_errno()
        if number in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            return False
        raise OSError(number, os.strerror(number), str(b))
    return True


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore, the only portable way
    os.umask(mask)
    return mask


def follow_umask(folder: Path, mode: int | None = None) -> None:
    """Give `folder` `mode` (default: as umask gives), and all under it the umask's."""
    mask = _umask()
    for root, folders, names in os.walk(folder):
        for name in folders:
            os.chmod(Path(root, name), 0o777 & ~mask)
        for name in names:
            # Libraries write through private temporary files (safetensors: 0600).
            os.chmod(Path(root, name), 0o666 & ~mask)
    os.chmod(folder, 0o777 & ~mask if mode is None else mode)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, then the folders themselves, to disk."""
    for root, _, names in os.walk(folder, topdown=False):
        for name in names:
            _fsync(Path(root, name))
        _fsync(Path(root))


def foreign_names(directory, allowed: Iterable[str]) -> list[str]:
    """The names in a folder that `allowed` does not list; none if it is no folder."""
    directory, allowed = Path(directory), set(allowed)
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name not in allowed)


@contextlib.contextmanager
def replaced_folder(directory, allowed: Iterable[str]) -> Iterator[Path]:
    """Yield an empty staging folder; when the block succeeds, it replaces `directory`.

    `directory` may hold only the names in `allowed`: anything else is refused first.
    A symbolic link is followed: the folder it points to is replaced, the link kept.
    """
    directory = Path(directory).resolve()
    foreign = foreign_names(directory, allowed)
    if foreign:
        raise FileExistsError(f"{directory} holds files that are not ours: {foreign}")
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} is a file, not a folder")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=staging_prefix(directory), dir=directory.parent)
    )
    try:
        yield staging
        # A replaced folder keeps its permissions; a new one gets the umask's.
        old_mode = directory.stat().st_mode & 0o7777 if directory.is_dir() else None
        follow_umask(staging, old_mode)
        fsync_tree(staging)
        with deferred_interrupts():
            if not directory.exists():
                os.rename(staging, directory)
            elif not _exchange(staging, directory):
                aside = staging.with_name(staging.name + "-old")
                os.rename(directory, aside)  # a kill here: clean_leftovers restores it
                os.rename(staging, directory)
                staging = aside
            _fsync(directory.parent)
    finally:
        # After a swap this is the old folder; after a failure, the unfinished new one.
        shutil.rmtree(staging, ignore_errors=True)


def clean_leftovers(directory) -> list[Path]:
    """Restore a folder a killed save set aside; remove killed saves' staging.

    Call it holding the lock: another writer's staging is then never in progress.
    """
    directory = Path(directory).resolve()
    if not directory.parent.is_dir():
        return []
    leftovers = sorted(directory.parent.glob(staging_prefix(directory) + "*"))
    aside = [p for p in leftovers if p.name.endswith("-old")]
    if not directory.exists() and aside:
        os.rename(aside[0], directory)
        leftovers.remove(aside[0])
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers


@contextlib.contextmanager
def locked(directory, wait: float = 0) -> Iterator[Path]:
    """Hold an exclusive lock on `directory` (a file beside it), waiting up to `wait` s.

    The lock belongs to the real folder: a symbolic link to it, or another spelling of
    its path, takes the same lock.
    """
    real = Path(directory).resolve()
    lock = real.parent / f".{real.name}.lock"
    descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    deadline = time.monotonic() + wait
    try:
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
                raise FolderInUseError(
                    f"{directory} is in use by another process "
                    f"(PID {holder or 'unknown'})"
                ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield lock
    finally:
        os.close(descriptor)  # closing releases the lock, even after a crash
