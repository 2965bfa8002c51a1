"""lora-edu-generate with --adapter more than once: one mixed batch, and bad input."""

import copy
import json
import shutil

import pytest

from lora_edu import cli
from lora_edu.llama import complete, load_model
from lora_edu.lora import load_adapter
from lora_edu.multi_adapter import adapter_folder

WEATHER, MOVES = adapter_folder("weather", 0), adapter_folder("moves", 0)


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
