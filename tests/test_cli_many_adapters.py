"""lora-edu-generate with --adapter more than once: one mixed batch, and bad input."""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from lora_edu import cli
from lora_edu.llama import complete, load_model
from lora_edu.lora import load_adapter
from lora_edu.multi_adapter import adapter_folder

WEATHER, MOVES = adapter_folder("weather", 0), adapter_folder("moves", 0)
ROOT = Path(__file__).parents[1]
GENERATE = "from lora_edu.cli import generate_cli; generate_cli()"


def run(args, capsys):
    """Run lora-edu-generate in this process; return (exit status, stdout, stderr)."""
    try:
        status = cli.generate([str(a) for a in args])
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the tool gets as far as loading a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(cli, "_load_model", refuse)


def test_each_adapter_and_the_base_answer_as_they_would_alone(capsys):
    prompt = "Alice lives in"
    args = ["--prompt", prompt, "--compare", "--max-new-tokens", 8]
    status, out, err = run([*args, "--adapter", WEATHER, "--adapter", MOVES], capsys)
    assert (status, err) == (0, "")
    base, tokenizer = load_model()
    expected = [
        f"base model (tiny-llama3):\n  {prompt}{complete(base, tokenizer, prompt, 8)}"
    ]
    for folder in (WEATHER, MOVES):
        alone = load_adapter(copy.deepcopy(base), folder)
        answer = complete(alone, tokenizer, prompt, 8)
        expected.append(f"with the adapter ({folder}):\n  {prompt}{answer}")
    assert out == "\n".join(expected) + "\n"
    assert "Seoul" in out  # the moves adapter's answer differs from the base model's


def test_adapters_for_different_base_models_are_refused_before_loading(
    tmp_path, capsys, no_model
):
    other = tmp_path / "for-the-8b"
    shutil.copytree(MOVES, other)
    config = json.loads((other / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "meta-llama/Meta-Llama-3-8B"
    (other / "adapter_config.json").write_text(json.dumps(config))
    status, out, err = run(
        ["--prompt", "Hi", "--adapter", WEATHER, "--adapter", other], capsys
    )
    assert status == 2 and out == "" and len(err.splitlines()) == 1
    assert "different base models" in err and "Meta-Llama-3-8B" in err


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: [WEATHER, WEATHER], "more than once"),
        (lambda tmp: [WEATHER, tmp / "missing"], "is not a folder"),
        (lambda tmp: [WEATHER, tmp], "not a complete adapter"),
    ],
    ids=["twice", "missing", "empty folder"],
)
def test_bad_adapters_are_one_line_errors_before_loading(
    make, message, tmp_path, capsys, no_model
):
    folders = make(tmp_path)
    args = ["--prompt", "Hi"] + [x for f in folders for x in ("--adapter", f)]
    status, out, err = run(args, capsys)
    assert status == 2 and out == "" and len(err.splitlines()) == 1
    assert message in err, err


def test_an_empty_prompt_is_refused_before_loading(capsys, no_model):
    status, _, err = run(
        ["--prompt", " ", "--adapter", WEATHER, "--adapter", MOVES], capsys
    )
    assert status == 2 and "--prompt is empty" in err


def test_an_adapter_that_does_not_fit_the_model_is_a_one_line_error(tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(MOVES, broken)
    config = json.loads((broken / "adapter_config.json").read_text())
    config["r"] = 4  # the tensors have rank 8
    (broken / "adapter_config.json").write_text(json.dumps(config))
    status, out, err = run(
        ["--prompt", "Hi", "--adapter", WEATHER, "--adapter", broken], capsys
    )
    assert status == 2 and out == "" and len(err.splitlines()) == 1
    assert "does not fit" in err, err


# --- the same checks as with one adapter ----------------------------------------


def moved(folder, copy_to, **config_changes):
    """A copy of an adapter folder, its config changed as config_changes says."""
    shutil.copytree(folder, copy_to)
    config = json.loads((copy_to / "adapter_config.json").read_text())
    (copy_to / "adapter_config.json").write_text(
        json.dumps({**config, **config_changes})
    )
    return copy_to


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "truncated",
            "adapter_model.safetensors is not a safetensors file we can read",
        ),
        ("alpha 1e300", r"lora_alpha 1e\+300 scales the update by 1.25e\+299"),
    ],
)
def test_a_damaged_adapter_is_refused_before_loading(
    case, message, tmp_path, capsys, no_model
):
    damaged = moved(MOVES, tmp_path / "damaged")
    if case == "truncated":
        weights = damaged / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        damaged = moved(MOVES, tmp_path / "alpha", lora_alpha=1e300)
    status, out, err = run(
        ["--prompt", "Hi", "--adapter", WEATHER, "--adapter", damaged], capsys
    )
    assert status == 2 and out == "" and len(err.splitlines()) == 1, err
    assert re.search(message, err), err


def test_an_adapter_whose_outputs_overflow_is_refused_before_printing(tmp_path, capsys):
    # Each factor finite, their product B·A beyond float32: that row's logits overflow.
    damaged = moved(MOVES, tmp_path / "huge")
    weights = damaged / "adapter_model.safetensors"
    save_file({k: v * 1e25 for k, v in load_file(weights).items()}, weights)
    adapters = ["--adapter", WEATHER, "--adapter", damaged]
    status, out, err = run(
        ["--prompt", "Hi", "--max-new-tokens", 2, "--compare", *adapters], capsys
    )
    assert status == 2 and out == "" and len(err.splitlines()) == 1, err
    assert f"the adapter in {damaged} makes the model's outputs NaN or infinite" in err


def test_a_prompt_that_is_not_utf8_is_one_line():
    adapters = ["--adapter", WEATHER, "--adapter", MOVES]
    done = subprocess.run(
        [sys.executable, "-c", GENERATE, *adapters, "--prompt", b"caf\xe9"],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "LC_ALL": "C"},
    )
    assert (done.returncode, done.stdout) == (2, b"")
    assert done.stderr == (
        b"lora-edu-generate: error: --prompt is not valid UTF-8: byte 3 is 0xe9; "
        b"write it in your terminal's encoding, or set a UTF-8 locale "
        b"(e.g. LC_ALL=C.UTF-8)\n"
    )


def test_a_prompt_longer_than_the_models_context_is_one_line(capsys):
    prompt = "On Monday, Oslo will be warm. " * 40
    status, out, err = run(
        ["--prompt", prompt, "--adapter", WEATHER, "--adapter", MOVES], capsys
    )
    assert status == 2 and out == ""
    assert re.fullmatch(
        r"lora-edu-generate: error: --prompt is \d+ tokens long; with --max-new-tokens "
        "20 that is more than the 256 positions tiny-llama3 reads at once: shorten "
        "the prompt or ask for fewer tokens\n",
        err,
    ), err


def test_model_names_the_base_when_the_adapters_configs_cannot(tmp_path, capsys):
    lost = "/home/ada/models/mine"  # where the adapters were trained: not here
    folders = [
        moved(folder, tmp_path / folder.name, base_model_name_or_path=lost)
        for folder in (WEATHER, MOVES)
    ]
    adapters = [x for folder in folders for x in ("--adapter", folder)]
    args = ["--prompt", "Alice lives in", "--max-new-tokens", 4, *adapters]
    status, out, err = run(args, capsys)
    assert status == 2 and out == "" and len(err.splitlines()) == 1, err
    assert f"names the base model {lost}, which does not exist on this machine" in err
    status, out, err = run([*args, "--model", "tiny-llama3"], capsys)
    assert (status, err) == (0, "")
    recorded = ["--adapter", WEATHER, "--adapter", MOVES]
    status, expected, _ = run([*args[:4], *recorded], capsys)
    assert status == 0
    assert out == expected.replace(str(WEATHER), str(folders[0])).replace(
        str(MOVES), str(folders[1])
    )
