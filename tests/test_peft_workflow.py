"""lora-edu-train and Chapter 6's pipeline: end to end, bad input, interruptions."""

import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, Trainer

from lora_edu import cli, llama, peft_workflow
from lora_edu.llama import load_model
from lora_edu.lora import load_adapter
from lora_edu.pretrain import weather_reports


@pytest.fixture(scope="module")
def weather(tmp_path_factory):
    directory = tmp_path_factory.mktemp("weather")
    (directory / "train.txt").write_text("\n".join(weather_reports(200, seed=0)) + "\n")
    (directory / "validation.txt").write_text(
        "\n".join(weather_reports(30, seed=1)) + "\n"
    )
    return directory


def run(args, capsys):
    """Run lora-edu-train in this process; return (exit status, stdout, stderr)."""
    try:
        status = cli.train([str(a) for a in args])
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def quick(weather, output, *more):
    return [
        "--data",
        weather / "train.txt",
        "--output",
        output,
        "--block-size",
        "32",
        "--r",
        "4",
        *more,
    ]


def real_token_logits(model, tokenizer, texts):
    tokens = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**tokens).logits[tokens.attention_mask.bool()]


# --- end to end -----------------------------------------------------------------------


def test_the_cli_trains_saves_and_merges(weather, tmp_path, capsys):
    output = tmp_path / "adapter"
    status, out, err = run(
        quick(weather, output, "--eval-data", weather / "validation.txt", "--merge"),
        capsys,
    )
    assert status == 0, err
    assert (
        "Training 14,336 of" in out
        and "Trained" in out
        and "Perplexity on" in out
        and "Wrote:" in out
    )
    assert {p.name for p in output.iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "merged",
    }
    merged_files = {p.name for p in (output / "merged").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= merged_files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in merged_files)
    config = json.loads((output / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["task_type"]) == (
        4,
        16.0,
        "CAUSAL_LM",
    )
    before, after = map(
        float, re.search(r"Perplexity on .*: ([\d.]+) → ([\d.]+)", out).groups()
    )
    assert after < before

    base, tokenizer = load_model()
    peft_model = PeftModel.from_pretrained(base, output).eval()
    merged = AutoModelForCausalLM.from_pretrained(output / "merged").eval()
    texts = ["On Monday, Oslo will be snowy", "The forecast for Rome on"]
    difference = (
        (
            real_token_logits(merged, tokenizer, texts)
            - real_token_logits(peft_model, tokenizer, texts)
        )
        .abs()
        .max()
    )
    assert difference <= 1e-5
    # The adapter also loads into the from-scratch
    # layers of Chapter 4, with the same logits.
    ours = load_adapter(load_model()[0], output).eval()
    assert (
        real_token_logits(ours, tokenizer, texts)
        - real_token_logits(peft_model, tokenizer, texts)
    ).abs().max() <= 1e-5


def test_help_lists_every_option():
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "from lora_edu.cli import train_cli; train_cli()",
            "--help",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    for option in [
        "--model",
        "--data",
        "--r",
        "--alpha",
        "--targets",
        "--epochs",
        "--lr",
        "--block-size",
        "--output",
        "--merge",
        "--device",
        "--overwrite",
        "--eval-data",
        "--batch-size",
        "--accumulation",
        "--load-in-4bit",
        "--verbose",
    ]:
        assert f"{option} " in completed.stdout or f"{option}\n" in completed.stdout, (
            option
        )
    assert "example: lora-edu-train --data" in completed.stdout


# --- bad input: a clear message, exit status 2, no traceback --------------------------


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (
            lambda w, t: ["--data", t / "missing.txt", "--output", t / "out"],
            "--data file .*missing.txt does not exist",
        ),
        (
            lambda w, t: ["--data", t / "empty.txt", "--output", t / "out"],
            "--data file .*empty.txt is empty",
        ),
        (
            lambda w, t: ["--data", t / "short.txt", "--output", t / "out"],
            "fewer than one block of --block-size 64",
        ),
        (
            lambda w, t: quick(w, t / "out", "--targets", "q_proj,attention"),
            r"unknown target modules \['attention'\]; .*'q_proj'",
        ),
        (
            lambda w, t: ["--data", w / "train.txt", "--output", t / "out", "--r", "0"],
            "argument --r: must be a finite number > 0, got 0",
        ),
        (
            lambda w, t: [
                "--data",
                w / "train.txt",
                "--output",
                t / "out",
                "--r",
                "-3",
            ],
            "argument --r: must be a finite number > 0, got -3",
        ),
        (lambda w, t: quick(w, t / "out", "--r", "65"), "--r 65 is larger than 64"),
        (
            lambda w, t: [
                "--data",
                w / "train.txt",
                "--output",
                t / "out",
                "--alpha",
                "0",
            ],
            "argument --alpha: must be a finite number > 0",
        ),
        (
            lambda w, t: [
                "--data",
                w / "train.txt",
                "--output",
                t / "out",
                "--targets",
                ",",
            ],
            "--targets names no module",
        ),
        (
            lambda w, t: quick(w, t / "out", "--model", "meta-llama/Meta-Llama-3-8B"),
            "needs a CUDA GPU.*Use --model tiny-llama3",
        ),
    ],
)
def test_bad_input_gets_a_clear_message(
    weather, tmp_path, capsys, monkeypatch, make_args, message
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "short.txt").write_text("On Monday, Oslo will be snowy.\n")
    status, _, err = run(make_args(weather, tmp_path), capsys)
    assert status == 2
    assert "Traceback" not in err
    assert re.search(message, err), err
    assert not (tmp_path / "out" / "adapter_config.json").exists()


def test_cuda_without_a_gpu_is_refused(weather, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status, _, err = run(quick(weather, tmp_path / "out", "--device", "cuda"), capsys)
    assert status == 2 and "no CUDA GPU; use --device cpu" in err


def test_an_existing_adapter_is_never_overwritten_without_overwrite(
    weather, tmp_path, capsys
):
    output = tmp_path / "adapter"
    output.mkdir()
    (output / "adapter_config.json").write_text('{"someone": "else\'s adapter"}')
    (output / "adapter_model.safetensors").write_bytes(b"their weights")
    status, _, err = run(quick(weather, output), capsys)
    assert status == 2 and "already holds an adapter" in err and "--overwrite" in err
    assert (output / "adapter_model.safetensors").read_bytes() == b"their weights"
    status, _, err = run(quick(weather, output, "--overwrite"), capsys)
    assert status == 0, err
    assert json.loads((output / "adapter_config.json").read_text())["r"] == 4


# --- interruptions --------------------------------------------------------------------


def interrupt_at_step(monkeypatch, step):
    """Send a real SIGINT (Ctrl-C) to this process during the given training step."""
    original, calls = Trainer.training_step, []

    def training_step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", training_step)


def test_ctrl_c_in_the_first_epoch_leaves_no_adapter(
    weather, tmp_path, capsys, monkeypatch
):
    interrupt_at_step(monkeypatch, 3)
    status, _, err = run(quick(weather, tmp_path / "adapter", "--epochs", "2"), capsys)
    assert status == 130
    assert "Interrupted" in err and "no adapter was written" in err
    assert "Traceback" not in err
    assert not (tmp_path / "adapter" / "adapter_config.json").exists()
    assert not (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir() if ".new-" in p.name] == [], (
        "no staging folder may be left"
    )


def test_ctrl_c_after_the_first_epoch_leaves_its_checkpoint(
    weather, tmp_path, capsys, monkeypatch
):
    original = peft_workflow.CheckpointAdapter.on_epoch_end

    def on_epoch_end(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.epochs_saved == 1:
            # Ctrl-C just after the first checkpoint.
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(peft_workflow.CheckpointAdapter, "on_epoch_end", on_epoch_end)
    output = tmp_path / "adapter"
    status, _, err = run(quick(weather, output, "--epochs", "3"), capsys)
    assert status == 130, err
    assert "holds the checkpoint from epoch 1" in err
    assert {p.name for p in output.iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
    }
    model = load_adapter(load_model()[0], output)  # complete and consistent: it loads
    assert (
        sum(
            layer.lora_B.abs().sum()
            for layer in model.modules()
            if hasattr(layer, "lora_B")
        )
        > 0
    )


def test_ctrl_c_before_training_exits_130_without_a_traceback(
    weather, tmp_path, monkeypatch
):
    def interrupted_load(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(llama, "load_model", interrupted_load)
    monkeypatch.setattr(
        sys, "argv", ["lora-edu-train", *map(str, quick(weather, tmp_path / "adapter"))]
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.train_cli()
    assert exit_info.value.code == 130
    assert not (tmp_path / "adapter").exists()
