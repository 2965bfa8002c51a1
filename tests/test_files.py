"""lora_edu.files: a folder is replaced whole or not at all, by one writer at a time."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from lora_edu import files

ALLOWED = ["a", "b", "sub"]


def make(folder, **contents):
    folder.mkdir()
    for name, text in contents.items():
        (folder / name).write_text(text)
    return folder


def test_deferred_interrupts_holds_sigint_and_sigterm_until_the_block_ends():
    finished = []
    with pytest.raises(KeyboardInterrupt), files.deferred_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        finished.append("the rest of the block ran")
    assert finished == ["the rest of the block ran"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # SIGTERM keeps its own default: after the block, the process ends as it would have.
    script = (
        "import os, signal\nfrom lora_edu import files\n"
        "with files.deferred_interrupts():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    print('block finished', flush=True)\n"
        "print('never reached')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == -signal.SIGTERM
    assert done.stdout == "block finished\n"


def test_a_new_folder_replaces_the_old_one_whole(tmp_path):
    target = make(tmp_path / "out", a="old a", b="old b")
    with files.replaced_folder(target, ALLOWED) as staging:
        (staging / "a").write_text("new a")
    assert [p.name for p in target.iterdir()] == ["a"], "b was not in the new folder"
    assert (target / "a").read_text() == "new a"
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "no staging folder is left"


def test_a_folder_that_does_not_exist_yet_is_created(tmp_path):
    with files.replaced_folder(tmp_path / "deep" / "out", ALLOWED) as staging:
        (staging / "a").write_text("new a")
    assert (tmp_path / "deep" / "out" / "a").read_text() == "new a"


def test_a_failure_before_the_swap_changes_nothing(tmp_path):
    target = make(tmp_path / "out", a="old a")
    with pytest.raises(RuntimeError), files.replaced_folder(target, ALLOWED) as staging:
        (staging / "a").write_text("new a")
        raise RuntimeError("the save failed half way")
    assert (target / "a").read_text() == "old a"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_folder_with_other_files_is_not_replaced(tmp_path):
    target = make(tmp_path / "out", a="old a", notes="the user's own file")
    with (
        pytest.raises(FileExistsError, match=r"not ours: \['notes'\]"),
        files.replaced_folder(target, ALLOWED),
    ):
        pass
    assert (target / "notes").exists()


def test_without_an_atomic_exchange_the_fallback_still_swaps(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    target = make(tmp_path / "out", a="old a")
    with files.replaced_folder(target, ALLOWED) as staging:
        (staging / "b").write_text("new b")
    assert [p.name for p in target.iterdir()] == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_clean_leftovers_restores_a_folder_set_aside_and_removes_staging(tmp_path):
    target = tmp_path / "out"
    # Killed between the fallback's renames.
    make(tmp_path / ".out.new-x1-old", a="old a")
    make(tmp_path / ".out.new-x1", a="new a")
    make(tmp_path / ".other.new-x2")  # another output's: not ours to touch
    files.clean_leftovers(target)
    assert (target / "a").read_text() == "old a"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.new-x2", "out"]


def test_a_locked_folder_names_the_process_holding_it(tmp_path):
    target = tmp_path / "out"
    with (
        files.locked(target),
        pytest.raises(files.FolderInUseError, match=f"PID {os.getpid()}"),
        files.locked(target),
    ):
        pass
    with files.locked(target):  # released when the block ends
        pass


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("folder", "is a folder, not a text file"),
        (b"\0\0\0\0", "is not a text file: it holds NUL bytes"),
        ("caf\xe9".encode("latin-1"), "is not UTF-8: byte 3 is 0xe9"),
        (b"\n  \n", "is empty"),
    ],
)
def test_read_text_names_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "data [1].txt"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=r"the data file .*data \[1\]\.txt " + message):
        files.read_text(path, "the data file")


def test_a_link_to_a_folder_is_followed_and_the_link_kept(tmp_path):
    real = make(tmp_path / "real", a="old a")
    link = tmp_path / "link"
    link.symlink_to(real)
    make(tmp_path / ".real.new-killed")  # a killed save's staging, beside the real one
    files.clean_leftovers(link)
    with files.replaced_folder(link, ALLOWED) as staging:
        (staging / "a").write_text("new a")
    assert link.is_symlink() and link.resolve() == real
    assert (real / "a").read_text() == "new a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_the_lock_belongs_to_the_real_folder_whatever_names_it(tmp_path):
    real = make(tmp_path / "real")
    (tmp_path / "link").symlink_to(real)
    for other in [tmp_path / "link", tmp_path / "real" / ".." / "real"]:
        with (
            files.locked(real),
            pytest.raises(files.FolderInUseError, match="in use by another process"),
            files.locked(other),
        ):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [".real.lock", "link", "real"]


def test_waiting_for_a_lock_gives_up_after_the_time_given(tmp_path):
    target = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(target)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with (
            pytest.raises(files.FolderInUseError, match=f"PID {holder.pid}"),
            files.locked(target, wait=0.3),
        ):
            pass
        holder.send_signal(signal.SIGTERM)  # the lock goes with the process
        holder.wait(timeout=60)
        with files.locked(target, wait=5):
            pass
    finally:
        holder.kill()
        holder.wait(timeout=60)


LOCK_HOLDER = """
import sys, time
from lora_edu import files
with files.locked(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def mode(path):
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_new_folder_and_its_files_get_the_permissions_the_umask_gives(
    tmp_path, umask
):
    from safetensors.numpy import save_file

    previous = os.umask(umask)
    try:
        with files.replaced_folder(tmp_path / "out", ALLOWED) as staging:
            (staging / "a").write_text("new a")
            # safetensors writes through a private temporary file: 0600 whatever umask.
            save_file({"x": np.ones(2, dtype=np.float32)}, staging / "b")
            (staging / "sub").mkdir()
    finally:
        os.umask(previous)
    out = tmp_path / "out"
    assert [mode(p) for p in (out, out / "sub")] == [0o777 & ~umask] * 2
    assert [mode(p) for p in (out / "a", out / "b")] == [0o666 & ~umask] * 2


def test_a_replaced_folder_keeps_its_own_permissions(tmp_path):
    target = make(tmp_path / "out", a="old a")
    target.chmod(0o750)
    with files.replaced_folder(target, ALLOWED) as staging:
        (staging / "a").write_text("new a")
    assert mode(target) == 0o750
