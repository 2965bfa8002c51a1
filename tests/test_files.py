"""lora_edu.files: a set of files lands together, or not at all, even when Ctrl-C arrives."""

import os
import signal

import pytest

from lora_edu import files


def test_deferred_interrupts_holds_ctrl_c_until_the_block_ends():
    finished = []
    with pytest.raises(KeyboardInterrupt), files.deferred_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        finished.append("the rest of the block ran")
    assert finished == ["the rest of the block ran"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_staged_files_move_in_together(tmp_path):
    target = tmp_path / "out"
    with files.staged_files(target, ["a", "b"]) as staging:
        (staging / "a").write_text("new a")
        (staging / "b").write_text("new b")
    assert sorted(p.name for p in target.iterdir()) == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"], (
        "the staging folder must be gone"
    )


def test_a_failure_before_the_move_changes_nothing(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "a").write_text("old a")
    (target / "notes.txt").write_text("the user's own file")
    with pytest.raises(RuntimeError), files.staged_files(target, ["a", "b"]) as staging:
        (staging / "a").write_text("new a")
        raise RuntimeError("the save failed half way")
    assert (target / "a").read_text() == "old a" and (target / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_missing_staged_file_is_an_error_and_moves_nothing(tmp_path):
    with (
        pytest.raises(FileNotFoundError, match="did not produce b"),
        files.staged_files(tmp_path / "out", ["a", "b"]) as staging,
    ):
        (staging / "a").write_text("new a")
    assert not (tmp_path / "out").exists()


def test_ctrl_c_during_the_move_still_moves_every_file(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    for name in "ab":
        (target / name).write_text(f"old {name}")
    real_replace = os.replace

    def replace_then_interrupt(source, destination):
        real_replace(source, destination)
        os.kill(
            os.getpid(), signal.SIGINT
        )  # Ctrl-C right after the first file has moved

    monkeypatch.setattr(files.os, "replace", replace_then_interrupt)
    with (
        pytest.raises(KeyboardInterrupt),
        files.staged_files(target, ["a", "b"]) as staging,
    ):
        for name in "ab":
            (staging / name).write_text(f"new {name}")
    assert [(target / n).read_text() for n in "ab"] == ["new a", "new b"]
