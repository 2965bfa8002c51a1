"""lora-edu-train under torchrun: one writer, one adapter, equal to one process's."""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from lora_edu import cli
from lora_edu.distributed import torchrun, torchrun_command, torchrun_env
from lora_edu.llama import load_model
from lora_edu.pretrain import weather_reports

# torchrun runs this in each rank: lora-edu-train, logging who locks and who saves.
WRAPPER = """
import os, sys
from pathlib import Path
from transformers import TrainerCallback
from lora_edu import cli, peft_workflow

log, rank = Path(os.environ["TEST_LOG"]), os.environ["RANK"]

def logged(name, function):
    def wrapper(*args, **kwargs):
        with log.open("a") as file:
            file.write(f"{name} {rank} {os.getpid()}\\n")
        return function(*args, **kwargs)
    return wrapper

class Mark(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            logged("step", print)()

make_trainer = peft_workflow.make_trainer
def marked(*args, **kwargs):
    trainer = make_trainer(*args, **kwargs)
    trainer.add_callback(Mark)
    return trainer

cli.locked = logged("lock", cli.locked)
peft_workflow.save_peft_adapter = logged("save", peft_workflow.save_peft_adapter)
peft_workflow.make_trainer = marked
sys.argv[0] = "lora-edu-train"
cli.train_cli()
"""


def even_data(path: Path, blocks: int, block_size: int = 32) -> Path:
    """Weather reports that pack into exactly `blocks` blocks: no ragged last batch."""
    _, tokenizer = load_model()
    lines, tokens = weather_reports(4 * blocks, seed=0), 0
    for count, line in enumerate(lines):
        tokens += len(tokenizer(line)["input_ids"]) + 1
        if tokens >= blocks * block_size:
            path.write_text("\n".join(lines[: count + 1]) + "\n")
            return path
    raise AssertionError("not enough lines")


def options(data, output, *more):
    return ["--data", data, "--output", output, "--block-size", "32", "--r", "4", *more]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An adapter trained by two processes (4 blocks each), one by one (8 blocks)."""
    folder = tmp_path_factory.mktemp("cli")
    data = even_data(folder / "train.txt", blocks=32)
    (folder / "wrapper.py").write_text(WRAPPER)
    log = folder / "log.txt"
    os.environ["TEST_LOG"] = str(log)
    try:
        # "--": without it torchrun would read --r as an abbreviation of its --rdzv-…
        arguments = ["--", *options(data, folder / "two", "--batch-size", "4")]
        two = torchrun(
            [str(folder / "wrapper.py"), *map(str, arguments), "--dropout", "0"],
            timeout=240,
        )
    finally:
        del os.environ["TEST_LOG"]
    one = cli.train(
        [
            *map(str, options(data, folder / "one", "--batch-size", "8")),
            "--dropout",
            "0",
        ]
    )
    return folder, two, one, log.read_text().split("\n")[:-1]


def test_only_rank_0_locks_and_writes_and_reports(runs):
    folder, two, one, log = runs
    assert two.returncode == 0 and one == 0, two.stderr[-3000:]
    who = [line.split()[:2] for line in log if not line.startswith("step")]
    # The lock, the checkpoint at the end of the epoch, the finished adapter.
    assert who == [["lock", "0"], ["save", "0"], ["save", "0"]]
    assert two.stdout.count("Trained ") == 1 and "Wrote:" in two.stdout
    assert sorted(p.name for p in (folder / "two").iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert not list(folder.glob(".two.new-*"))  # no scratch folder left beside it


def test_two_processes_equal_one_with_the_same_global_batch(runs):
    folder = runs[0]
    two = load_file(folder / "two" / "adapter_model.safetensors")
    one = load_file(folder / "one" / "adapter_model.safetensors")
    assert two.keys() == one.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5)
    assert max(t.abs().max() for t in one.values()) > 1e-3  # B moved from zero
    # And PEFT loads it: the logits of both adapters agree.
    ids = torch.tensor([[1, 50, 60, 70, 80]])
    logits = []
    for name in ("two", "one"):
        base, _ = load_model()
        model = PeftModel.from_pretrained(base, folder / name).eval()
        with torch.no_grad():
            logits.append(model(ids).logits)
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-4, atol=1e-4)


def test_a_rank_killed_mid_run_leaves_the_old_adapter_and_the_next_run_starts(runs):
    folder = runs[0]
    output, log = folder / "killed", folder / "kill-log.txt"
    shutil.copytree(folder / "one", output)
    before = {p.name: p.read_bytes() for p in output.iterdir()}
    data = even_data(folder / "long.txt", blocks=160)
    arguments = ["--", *options(data, output, "--batch-size", "1", "--overwrite")]
    process = subprocess.Popen(
        torchrun_command(
            [str(folder / "wrapper.py"), *map(str, arguments), "--accumulation", "1"]
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=torchrun_env(TEST_LOG=str(log)),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while "step 1" not in (log.read_text() if log.exists() else ""):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "training never reached step 2"
            time.sleep(0.1)
        rank_1 = next(
            line.split()[2]
            for line in log.read_text().split("\n")
            if line.startswith("step 1")
        )
        os.kill(int(rank_1), signal.SIGKILL)
        process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    assert process.returncode != 0
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before
    # The next run takes the lock at once, cleans what the killed run left, and writes.
    status = cli.train(
        [*map(str, options(folder / "train.txt", output, "--overwrite"))]
    )
    assert status == 0
    assert {p.name: p.read_bytes() for p in output.iterdir()} != before
    assert not list(folder.glob(".killed.new-*"))
