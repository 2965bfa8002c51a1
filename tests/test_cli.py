"""lora-edu-train and lora-edu-generate: bad input, signals, crashes, parallel runs."""

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from lora_edu import cli, experiments, files, llama, lora, peft_workflow, pretrain
from lora_edu.llama import load_model
from lora_edu.pretrain import weather_reports

TRAIN = "from lora_edu.cli import train_cli; train_cli()"
GENERATE = "from lora_edu.cli import generate_cli; generate_cli()"
# As `python -m lora_edu.experiments` runs it.
EXPERIMENTS = (
    "import runpy; "
    "runpy.run_module('lora_edu.experiments', run_name='__main__', alter_sys=True)"
)
ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def weather(tmp_path_factory):
    directory = tmp_path_factory.mktemp("weather")
    (directory / "train.txt").write_text("\n".join(weather_reports(200, seed=0)) + "\n")
    return directory / "train.txt"


def quick(data, output, *more):
    return ["--data", data, "--output", output, "--block-size", "32", "--r", "4", *more]


def run(main, args, capsys):
    """Run a tool in this process; return (exit status, stdout, stderr)."""
    try:
        status = main([str(a) for a in args])
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def start(code, args, **env):
    """Start a tool in a subprocess of its own, as a user's shell would."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **env},
    )


def wait_for(process, text, timeout=300):
    """Read the process's stdout until a line holds `text`; return the lines read."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} never came: {lines}")


@pytest.fixture
def no_model(monkeypatch):
    """Make loading a model fail the test: these errors must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(llama, "load_model", refuse)
    monkeypatch.setattr(peft_workflow, "load_model_4bit", refuse)


# --- start-up: --help and argument errors come before the heavy imports ---------


def test_the_names_spelt_out_for_a_quick_start_are_the_packages():
    assert (cli.TINY, cli.TINY_DIR) == (llama.TINY_LLAMA3, pretrain.DATA_DIR)
    assert cli.GRID_DIR == experiments.RESULTS_DIR
    assert cli.GRID_FILES == (experiments.RESULTS, experiments.ADAPTERS)


@pytest.mark.parametrize("code", [TRAIN, GENERATE, EXPERIMENTS])
def test_help_answers_in_under_two_seconds_without_importing_torch(code):
    checked = (
        f"import sys\ntry:\n    {code}\n"
        "finally:\n    assert 'torch' not in sys.modules, 'torch was imported'"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", checked, "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0 and "usage:" in done.stdout
    assert elapsed < 2, f"--help took {elapsed:.1f} s"
    bad = subprocess.run(
        [sys.executable, "-c", code, "--max-new-tokens", "0", "--r", "0"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, bad.stderr
    assert time.monotonic() - started < 4


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--alpha", "inf", "argument --alpha: must be a finite number > 0, got inf"),
        ("--alpha", "nan", "argument --alpha: must be a finite number > 0, got nan"),
        ("--lr", "inf", "argument --lr: must be a finite number > 0, got inf"),
        ("--lr", "0", "argument --lr: must be a finite number > 0, got 0"),
        ("--epochs", "inf", "argument --epochs: must be a finite number > 0, got inf"),
        ("--epochs", "nan", "argument --epochs: must be a finite number > 0, got nan"),
        (
            "--block-size",
            "1",
            "argument --block-size: must be a finite number >= 2, got 1",
        ),
        (
            "--batch-size",
            "0",
            "argument --batch-size: must be a finite number > 0, got 0",
        ),
        ("--model", "", "--model is empty; name a model, e.g. --model tiny-llama3"),
        ("--targets", " , ", "--targets names no module"),
        (
            "--model",
            "/nowhere/my-model",
            "--model names /nowhere/my-model, which does not exist on this machine; "
            "name tiny-llama3, a hub name, or a model's folder",
        ),
    ],
)
def test_bad_numbers_and_names_are_one_line_errors(
    weather, tmp_path, capsys, no_model, option, value, message
):
    status, out, err = run(
        cli.train, quick(weather, tmp_path / "out", option, value), capsys
    )
    assert status == 2 and out == ""
    assert err == f"lora-edu-train: error: {message}\n"
    assert list(tmp_path.iterdir()) == []


def bad_files(tmp_path, weather):
    """(arguments, expected message) for inputs that name a bad file or folder."""
    (tmp_path / "nul.txt").write_bytes(b"\0" * 100)
    (tmp_path / "latin1.txt").write_bytes("Zürich".encode("latin-1"))
    (tmp_path / "a folder").mkdir()
    (tmp_path / "a file").write_text("not a folder")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("the user's notes")
    for name in ["adapter_config.json", "adapter_model.safetensors"]:
        (tmp_path / f"only-{name}").mkdir()
        (tmp_path / f"only-{name}" / name).write_text("half an adapter")
    out = tmp_path / "out"
    return [
        (
            quick(tmp_path / "nul.txt", out),
            "--data file .*nul.txt is not a text file: it holds NUL bytes",
        ),
        (
            quick(tmp_path / "latin1.txt", out),
            "--data file .*latin1.txt is not UTF-8: byte 1 is 0xfc",
        ),
        (
            quick(tmp_path / "a folder", out),
            "--data file .*a folder is a folder, not a text file",
        ),
        (
            quick(weather, out, "--eval-data", tmp_path / "gone.txt"),
            "--eval-data file .*gone.txt does not exist",
        ),
        (
            quick(weather, tmp_path / "a file"),
            "--output .*a file is a file; name a folder",
        ),
        (quick(weather, weather), "--output .*train.txt is a file"),
        (
            quick(weather, tmp_path / "a file" / "out"),
            "--output .*a file/out lies under .*a file, which is a file",
        ),
        (
            quick(weather, tmp_path / "foreign"),
            r"holds files that are not an adapter \(notes.txt\)",
        ),
        (
            quick(weather, tmp_path / "only-adapter_config.json"),
            "already holds an adapter; .* --overwrite",
        ),
        (
            quick(weather, tmp_path / "only-adapter_model.safetensors"),
            "already holds an adapter",
        ),
        (
            quick(weather, out, "--load-in-4bit", "--merge"),
            "--merge cannot merge into 4-bit weights",
        ),
    ]


def test_bad_files_are_one_line_errors_before_the_model_loads(
    weather, tmp_path, capsys, no_model
):
    for args, message in bad_files(tmp_path, weather):
        status, out, err = run(cli.train, args, capsys)
        assert status == 2 and out == "", args
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert __import__("re").search(message, err), (message, err)
    assert (tmp_path / "foreign" / "notes.txt").exists()
    assert not (tmp_path / "out" / "adapter_config.json").exists()
    assert not any(p.name.startswith(".out.new-") for p in tmp_path.iterdir())


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_a_read_only_output_folder_is_refused_before_training(
    weather, tmp_path, capsys, no_model
):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    status, _, err = run(cli.train, quick(weather, tmp_path / "ro" / "out"), capsys)
    assert status == 2 and "cannot write --output" in err and "Permission denied" in err


def test_without_bitsandbytes_load_in_4bit_is_a_one_line_error(
    weather, tmp_path, capsys, no_model, monkeypatch
):
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(
        cli.importlib.util,
        "find_spec",
        lambda n: None if n == "bitsandbytes" else real(n),
    )
    status, _, err = run(
        cli.train, quick(weather, tmp_path / "o", "--load-in-4bit"), capsys
    )
    assert status == 2
    assert err == (
        "lora-edu-train: error: --load-in-4bit needs the bitsandbytes package: "
        "pip install bitsandbytes\n"
    )


def test_a_glob_character_in_the_data_path_is_just_a_character(tmp_path):
    _, tokenizer = load_model()
    peft_workflow.ensure_pad_token(tokenizer)
    path = tmp_path / "notes [draft] *.txt"
    path.write_text("\n".join(weather_reports(20, seed=0)) + "\n")
    blocks = peft_workflow.load_text_blocks({"train": path}, tokenizer, 32)
    assert len(blocks["train"]) > 0
    with pytest.raises(ValueError, match="block_size must hold an input and a target"):
        peft_workflow.load_text_blocks({"train": path}, tokenizer, 1)


# --- signals: Ctrl-C during the imports, SIGTERM, and a concurrent run ----------


@pytest.mark.parametrize(
    ("number", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)]
)
def test_a_signal_during_the_imports_is_one_line(weather, tmp_path, number, status):
    process = start(TRAIN, quick(weather, tmp_path / "out"))
    time.sleep(1.0)  # importing torch and transformers takes several seconds
    process.send_signal(number)
    out, err = process.communicate(timeout=120)
    assert process.returncode == status
    assert out == "" and err == "\nInterrupted. Nothing was written.\n"
    assert not (tmp_path / "out").exists()


def test_a_second_run_on_the_same_output_is_refused_and_sigterm_stops_the_first(
    weather, tmp_path
):
    output = tmp_path / "out"
    first = start(TRAIN, quick(weather, output, "--epochs", "50"))
    wait_for(first, "Training")  # the lock is held, the model loaded, training starts
    second = subprocess.run(
        [sys.executable, "-c", TRAIN, *map(str, quick(weather, output))],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert second.returncode == 2
    assert second.stderr == (
        f"lora-edu-train: error: {output} is in use by another process "
        f"(PID {first.pid})\n"
    )
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 143
    message = err.replace("\r", "\n").splitlines()[-1]
    # The message says what is there, and what is there is complete: it loads.
    if "no adapter was written" in message:
        assert not output.exists()
    else:
        assert "holds the checkpoint from epoch" in message, message
        lora.load_adapter(load_model()[0], output)
    assert message.endswith("no file was left half-written.")
    assert (
        sorted(p.name for p in tmp_path.iterdir())
        == [".out.lock", "out"][: 1 + output.exists()]
    )


# --- crash safety: SIGKILL at every step of a save ------------------------------

SAVER = """
import sys, time, shutil, os, torch
from lora_edu import files, lora
from lora_edu.llama import load_model
output, pause_at, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
model = lora.inject_lora(load_model()[0], ["q_proj", "v_proj"], r=8, lora_alpha=16)
for layer in lora.lora_layers(model).values():
    torch.nn.init.ones_(layer.lora_B)
calls = []
def pausing(function, name):
    def step(*args, **kwargs):
        calls.append(name)
        if len(calls) == pause_at:
            print("paused before", name, flush=True)
            time.sleep(600)
        return function(*args, **kwargs)
    return step
files._fsync = pausing(files._fsync, "fsync")
exchange = (lambda a, b: False) if mode == "fallback" else files._exchange
files._exchange = pausing(exchange, "exchange")
os.rename = pausing(os.rename, "rename")
shutil.rmtree = pausing(shutil.rmtree, "rmtree")
lora.save_adapter(model, output, base_model_name_or_path="tiny-llama3", overwrite=True)
print("done after", calls, flush=True)
"""


def adapter_rank(directory, base):
    """The r of the adapter in directory, after loading it with both loaders."""
    config = json.loads((directory / "adapter_config.json").read_text())
    # Raises unless the adapter is complete and consistent.
    lora.load_adapter(copy.deepcopy(base), directory)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), directory)
    assert peft_model.peft_config["default"].r == config["r"]
    return config["r"]


@pytest.mark.parametrize("mode", ["exchange", "fallback"])
def test_a_sigkill_at_any_step_of_a_save_leaves_the_old_or_the_new_adapter(
    tmp_path, mode
):
    base = load_model()[0]
    old = tmp_path / "old"
    lora.save_adapter(lora.inject_lora(copy.deepcopy(base), ["q_proj"], 4, 8), old)
    seen = []
    for pause_at in range(1, 20):
        output = tmp_path / "adapter"
        shutil.rmtree(output, ignore_errors=True)
        shutil.copytree(old, output)
        process = start(SAVER, [output, pause_at, mode])
        line = process.stdout.readline()
        process.kill()  # SIGKILL: no handler runs, as in a power cut
        process.communicate(timeout=60)
        if mode == "fallback" and not output.exists():
            # Killed between the two renames: the next writer restores the old folder.
            seen.append((line.split()[-1], "absent until restored"))
            files.clean_leftovers(output)
            assert adapter_rank(output, base) == 4
        else:
            seen.append((line.split()[-1], adapter_rank(output, base)))
        files.clean_leftovers(output)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "old"]
        if line.startswith("done"):
            break
    print(mode, seen)
    ranks = [rank for _, rank in seen]
    assert (
        ranks[0] == 4
        and ranks[-1] == 8
        and set(ranks) <= {4, 8, "absent until restored"}
    )
    steps = [step for step, _ in seen]
    assert ("exchange" in steps) and steps.count("fsync") >= 3, steps


FALLBACK_KILL = """
import os, sys, time
from lora_edu import files, lora
from lora_edu.llama import load_model
files._exchange = lambda a, b: False  # a file system without RENAME_EXCHANGE
renames, rename = [], os.rename
def pausing(source, target):
    renames.append(source)
    if len(renames) == 2:  # the old adapter is aside, the new one not yet in place
        print("between the renames", flush=True)
        time.sleep(600)
    rename(source, target)
os.rename = pausing
model = lora.inject_lora(load_model()[0], ["q_proj", "v_proj"], r=8, lora_alpha=16)
lora.save_adapter(model, sys.argv[1], "tiny-llama3", overwrite=True)
"""


def test_an_adapter_set_aside_by_a_killed_save_is_restored_and_kept(
    weather, tmp_path, capsys, no_model
):
    base = load_model()[0]
    output = tmp_path / "adapter"
    lora.save_adapter(lora.inject_lora(copy.deepcopy(base), ["q_proj"], 4, 8), output)
    process = start(FALLBACK_KILL, [output])
    assert process.stdout.readline() == "between the renames\n"
    process.kill()  # SIGKILL between the fallback's two renames
    process.communicate(timeout=60)
    assert not output.exists()
    capsys.readouterr()  # the progress bar of loading the base model above
    status, out, err = run(cli.train, quick(weather, output), capsys)
    assert status == 2 and out == "", err
    assert err == (
        f"lora-edu-train: error: {output} already holds an adapter; choose another "
        "--output, or pass --overwrite to replace it\n"
    )
    assert adapter_rank(output, base) == 4, "the old adapter is back, unchanged"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".adapter.lock", "adapter"]


def test_a_link_to_an_output_takes_the_real_folders_lock(
    weather, tmp_path, capsys, no_model
):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with files.locked(tmp_path / "real"):
        status, _, err = run(cli.train, quick(weather, tmp_path / "link"), capsys)
    assert status == 2
    assert err.startswith(f"lora-edu-train: error: {tmp_path / 'link'} is in use")


# --- training that fails, and output that repeats -------------------------------


def test_a_diverging_run_fails_loudly_and_keeps_the_previous_adapter(
    weather, tmp_path, capsys
):
    output = tmp_path / "adapter"
    lora.save_adapter(lora.inject_lora(load_model()[0], ["q_proj"], 4, 8), output)
    before = (output / "adapter_model.safetensors").read_bytes()
    status, out, err = run(
        cli.train, quick(weather, output, "--lr", "1e6", "--overwrite"), capsys
    )
    assert status == 1 and "Wrote:" not in out
    # The message starts a line of its own, not the progress bar's line.
    (message,) = [line for line in err.split("\n") if "training failed" in line]
    assert message.startswith("lora-edu-train: training failed: "), message
    assert "Try a smaller --lr (now 1e+06)" in message
    assert f"{output} still holds the adapter it held before." in err
    assert (output / "adapter_model.safetensors").read_bytes() == before


def test_runs_are_quiet_repeatable_and_overwrite_removes_a_stale_merge(
    weather, tmp_path
):
    """Two runs in processes with different hash seeds write the same bytes."""
    outputs = [tmp_path / "one", tmp_path / "two"]
    results = []
    for seed, output, more in [("1", outputs[0], ["--merge"]), ("2", outputs[1], [])]:
        process = start(TRAIN, quick(weather, output, *more), PYTHONHASHSEED=seed)
        results.append(process.communicate(timeout=600))
        assert process.returncode == 0, results[-1][1]
    for out, err in results:
        assert "Your text: " in out and "Training 14,336 of" in out
        # One progress bar, and nothing else from the libraries.
        lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
        assert lines and all("it/s" in line or "s/it" in line for line in lines), lines
    for name in ["adapter_config.json", "adapter_model.safetensors"]:
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes(), (
            name
        )
    assert (outputs[0] / "merged").is_dir()
    process = start(TRAIN, quick(weather, outputs[0], "--overwrite"))
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    assert sorted(p.name for p in outputs[0].iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ], "the stale merged/ must go"
    leftovers = [p.name for p in tmp_path.iterdir() if ".new-" in p.name]
    assert leftovers == []


def test_a_killed_runs_leftovers_are_cleaned_by_the_next_run(weather, tmp_path, capsys):
    output = tmp_path / "out"
    (tmp_path / ".out.new-killed1").mkdir()
    (tmp_path / ".out.new-killed1" / "adapter_model.safetensors").write_text("partial")
    before = set(Path("/tmp").glob("lora-edu-train-*"))
    status, _, err = run(cli.train, quick(weather, output), capsys)
    assert status == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "out"]
    assert set(Path("/tmp").glob("lora-edu-train-*")) <= before, "nothing left in /tmp"


# --- QLoRA: --load-in-4bit ------------------------------------------------------


def test_load_in_4bit_trains_an_adapter_that_loads_on_the_full_precision_base(
    weather, tmp_path, capsys
):
    pytest.importorskip("bitsandbytes")
    output = tmp_path / "qlora"
    status, out, err = run(cli.train, quick(weather, output, "--load-in-4bit"), capsys)
    assert status == 0, err
    assert "Trained" in out
    base, tokenizer = load_model()
    ours = lora.load_adapter(copy.deepcopy(base), output).eval()
    theirs = PeftModel.from_pretrained(copy.deepcopy(base), output).eval()
    tokens = tokenizer(["On Monday, Oslo will be"], return_tensors="pt")
    with torch.no_grad():
        ours_logits, theirs_logits = ours(**tokens).logits, theirs(**tokens).logits
        base_logits = base(**tokens).logits
    assert (ours_logits - theirs_logits).abs().max() <= 1e-5
    assert (ours_logits - base_logits).abs().max() > 1e-3, (
        "training changed the adapter"
    )


# --- lora-edu-generate ----------------------------------------------------------


@pytest.fixture(scope="module")
def adapter(weather, tmp_path_factory):
    output = tmp_path_factory.mktemp("generate") / "adapter"
    assert cli.train([str(a) for a in quick(weather, output, "--epochs", "2")]) == 0
    return output


def test_generate_compares_the_base_model_with_the_adapter(adapter, capsys):
    prompt = "On Monday, Oslo will be"
    status, out, err = run(
        cli.generate, ["--adapter", adapter, "--prompt", prompt, "--compare"], capsys
    )
    assert status == 0, err
    base, tokenizer = load_model()
    expected_base = llama.complete(base, tokenizer, prompt, 20)
    expected = llama.complete(lora.load_adapter(base, adapter), tokenizer, prompt, 20)
    assert out == (
        f"base model (tiny-llama3):\n  {prompt}{expected_base}\n"
        f"with the adapter ({adapter}):\n  {prompt}{expected}\n"
    )
    status, out, _ = run(
        cli.generate,
        ["--adapter", adapter, "--prompt", prompt, "--max-new-tokens", "5"],
        capsys,
    )
    adapted = lora.load_adapter(load_model()[0], adapter)
    assert status == 0
    assert out == f"{prompt}{llama.complete(adapted, tokenizer, prompt, 5)}\n"


def test_generate_answers_bad_input_in_one_line(adapter, tmp_path, capsys):
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(adapter / "adapter_config.json", half)
    no_base = tmp_path / "no-base"
    shutil.copytree(adapter, no_base)
    config = json.loads((no_base / "adapter_config.json").read_text())
    (no_base / "adapter_config.json").write_text(
        json.dumps({**config, "base_model_name_or_path": None})
    )
    cases = [
        (
            ["--adapter", tmp_path / "missing", "--prompt", "Hi"],
            "--adapter .*missing is not a folder",
        ),
        (["--adapter", adapter, "--prompt", "  "], "--prompt is empty"),
        (
            ["--adapter", adapter, "--prompt", "Hi", "--max-new-tokens", "0"],
            "must be a finite number > 0",
        ),
        (
            ["--adapter", half, "--prompt", "Hi"],
            "is not a complete adapter: missing adapter_model.safetensors",
        ),
        (["--adapter", no_base, "--prompt", "Hi"], "names no base model"),
    ]
    for args, message in cases:
        status, out, err = run(cli.generate, args, capsys)
        assert status == 2 and out == "" and len(err.splitlines()) == 1, err
        assert __import__("re").search(message, err), (message, err)


# --- adapters that travel -------------------------------------------------------

LOADERS = """
import sys, torch
import lora_edu
from peft import PeftModel
from lora_edu import lora
from lora_edu.llama import load_model
assert lora_edu.__file__.startswith(sys.argv[2]), lora_edu.__file__
base, tokenizer = load_model()
ids = tokenizer(["On Monday, Oslo will be"], return_tensors="pt").input_ids
with torch.no_grad():
    theirs = PeftModel.from_pretrained(load_model()[0], sys.argv[1]).eval()(ids).logits
    ours = lora.load_adapter(base, sys.argv[1]).eval()(ids).logits
print(f"PEFT and load_adapter agree to {(theirs - ours).abs().max().item():.0e}")
"""


def test_an_adapter_trained_in_one_checkout_works_in_another(adapter, tmp_path):
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-llama3"
    clone = tmp_path / "clone"  # another checkout: its own package and tiny model
    shutil.copytree(
        ROOT / "lora_edu",
        clone / "lora_edu",
        ignore=shutil.ignore_patterns("__pycache__", ".*.lock"),
    )
    environment = {**os.environ, "PYTHONPATH": str(clone)}
    prompt = "On Monday, Oslo will be"
    done = subprocess.run(
        [sys.executable, "-c", GENERATE, "--adapter", adapter, "--prompt", prompt],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environment,
    )
    base, tokenizer = load_model()
    expected = llama.complete(lora.load_adapter(base, adapter), tokenizer, prompt, 20)
    assert (done.returncode, done.stdout) == (0, f"{prompt}{expected}\n"), done.stderr
    done = subprocess.run(
        [sys.executable, "-c", LOADERS, adapter, clone],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environment,
    )
    assert done.returncode == 0, done.stderr
    difference = float(done.stdout.split()[-1])
    assert difference <= 1e-5, done.stdout


def with_base(adapter, folder, base, **config_changes):
    """A copy of adapter whose config names base (and has config_changes)."""
    shutil.copytree(adapter, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config |= {"base_model_name_or_path": base, **config_changes}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def test_generate_finds_the_course_model_wherever_the_adapter_comes_from(
    adapter, tmp_path, capsys
):
    prompt = "On Monday, Oslo will be"
    base, tokenizer = load_model()
    adapted = lora.load_adapter(base, adapter)
    expected = f"{prompt}{llama.complete(adapted, tokenizer, prompt, 20)}\n"
    copied_model = tmp_path / "models" / "my-tiny"
    shutil.copytree(pretrain.DATA_DIR, copied_model)
    recognised = {
        # lora-edu-train before this change, or PEFT, in another checkout or machine
        "another checkout": "/home/ada/lora/lora_edu/data/tiny-llama3",
        "a copy of the model": str(copied_model),
        "the name": "tiny-llama3",
    }
    for name, recorded in recognised.items():
        moved = with_base(adapter, tmp_path / name, recorded)
        status, out, err = run(
            cli.generate, ["--adapter", moved, "--prompt", prompt], capsys
        )
        assert (status, out) == (0, expected), (name, err)
    missing = with_base(adapter, tmp_path / "missing", "/home/ada/models/mine")
    hub = with_base(adapter, tmp_path / "hub", "meta-llama/Meta-Llama-3-8B")
    cases = [
        (
            ["--adapter", missing],
            re.escape(str(missing / "adapter_config.json"))
            + " names the base model /home/ada/models/mine, which does not exist on "
            "this machine; name the base model with --model "
            r"\(tiny-llama3, a hub name, or a folder\)",
        ),
        (
            ["--adapter", hub],
            "meta-llama/Meta-Llama-3-8B cannot be loaded here: it needs a CUDA GPU.* "
            r"\(meta-llama/Meta-Llama-3-8B is no folder here, so it names a model on "
            r"the Hub.\) Run on a machine with a CUDA GPU, with --device cuda, or name "
            "another base model with --model",
        ),
    ]
    for args, message in cases:
        status, out, err = run(cli.generate, [*args, "--prompt", prompt], capsys)
        assert status == 2 and out == "" and len(err.splitlines()) == 1, err
        assert re.search(message, err), (message, err)
    # --model names the base when the adapter's config cannot.
    status, out, err = run(
        cli.generate,
        ["--adapter", missing, "--model", "tiny-llama3", "--prompt", prompt],
        capsys,
    )
    assert (status, out) == (0, expected), err


WEIGHTS = "adapter_model.safetensors"
UNREADABLE = f"{WEIGHTS} is not a safetensors file we can read"


def damage(folder, case):
    """Damage the adapter in folder as `case` says."""
    weights = folder / WEIGHTS
    if case == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif case == "garbage":
        weights.write_bytes(bytes(range(256)) * 40)
    elif case == "huge header":  # its first 8 bytes claim a header of 1 TB
        weights.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")
    elif case == "alpha 1e300":
        config = json.loads((folder / "adapter_config.json").read_text())
        config["lora_alpha"] = 1e300
        (folder / "adapter_config.json").write_text(json.dumps(config))
    else:  # each factor finite, their product B·A beyond float32: outputs overflow
        save_file({k: v * 1e25 for k, v in load_file(weights).items()}, weights)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("truncated", UNREADABLE),
        ("garbage", UNREADABLE),
        ("huge header", UNREADABLE),
        (
            "alpha 1e300",
            r"lora_alpha 1e\+300 scales the update by 2.5e\+299, beyond float32's "
            "range: every output would be infinite",
        ),
        (
            "huge weights",
            r"makes the model's outputs NaN or infinite \(lora_alpha 16, r 4\)",
        ),
    ],
)
def test_generate_refuses_a_damaged_adapter_in_one_line(
    adapter, tmp_path, capsys, case, message
):
    folder = with_base(adapter, tmp_path / "damaged", "tiny-llama3")
    damage(folder, case)
    status, out, err = run(
        cli.generate, ["--adapter", folder, "--prompt", "On Monday"], capsys
    )
    assert status == 2 and out == "" and len(err.splitlines()) == 1, err
    assert re.search(message, err), (message, err)


def test_generate_refuses_a_prompt_longer_than_the_models_context(adapter, capsys):
    prompt = "On Monday, Oslo will be warm. " * 40
    status, out, err = run(
        cli.generate, ["--adapter", adapter, "--prompt", prompt], capsys
    )
    assert status == 2 and out == ""
    assert re.fullmatch(
        r"lora-edu-generate: error: --prompt is \d+ tokens long; with --max-new-tokens "
        "20 that is more than the 256 positions tiny-llama3 reads at once: shorten "
        "the prompt or ask for fewer tokens\n",
        err,
    ), err


def test_a_prompt_that_is_not_utf8_is_one_line(adapter):
    # A shell in another locale passes Latin-1 bytes: "café" is b"caf\xe9".
    done = subprocess.run(
        [sys.executable, "-c", GENERATE, "--adapter", adapter, "--prompt", b"caf\xe9"],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "LC_ALL": "C"},
    )
    assert (done.returncode, done.stdout) == (2, b"")
    assert done.stderr == (
        b"lora-edu-generate: error: --prompt is not valid UTF-8: byte 3 is 0xe9; "
        b"write it in your terminal's encoding, or set a UTF-8 locale "
        b"(e.g. LC_ALL=C.UTF-8)\n"
    )
