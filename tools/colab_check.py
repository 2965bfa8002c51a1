"""Run every chapter as Colab does: Python 3.12, no constraints, lora_edu from git.

Colab has its own, newer packages and opens a notebook alone, without the repository.
This script builds a Python 3.12 virtual environment in `.colab-check/venv` with only
the packages Colab preinstalls (unpinned), runs each chapter's setup-cell install
command with the repository URL replaced by this clone (`git+file://...`, so the last
commit is what gets installed), and executes every chapter top to bottom in an empty
folder. It prints a line per chapter (passed or failed, seconds, compared outputs that
differ from the stored ones) and exits with status 1 if any chapter failed. It needs the
network to reach PyPI (about 3 GB: PyPI's torch is the CUDA build) and is not part of
`make test`.

Where `make assignments` has built the hand-outs (_build/assignments/NAME/student/), it
also runs each as Colab would: from an empty working folder that is not the notebook's
(Colab's is /content), with otter-grader installed by the notebook's first cell and told
that it runs in Colab, so that `grader.check` must find the tests the notebook carries.

    python tools/colab_check.py            # or: make colab-check
    python tools/colab_check.py 04 05      # only the chapters whose names start so
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".colab-check"
VENV = WORK / "venv"
# What Colab has before a notebook's setup cell runs (unpinned: Colab follows releases).
PREINSTALLED = ["torch", "numpy", "matplotlib", "jupyter", "ipykernel", "nbclient"]
# Compared like nbval: stdout and plain-text results, but not where a chapter says they
# vary.
SKIP_TAGS = {"nbval-skip", "nbval-ignore-output"}
WIDGET = "application/vnd.jupyter.widget-view+json"
ASSIGNMENTS = ROOT / "_build" / "assignments"


def python312() -> str:
    """A working Python 3.12: $COLAB_PYTHON, then one on PATH, then pyenv's versions."""
    candidates = [os.environ.get("COLAB_PYTHON"), shutil.which("python3.12")]
    try:
        pyenv_root = subprocess.run(
            ["pyenv", "root"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pyenv_root = str(Path.home() / ".pyenv")
    versions = sorted(Path(pyenv_root, "versions").glob("3.12*"), reverse=True)
    candidates += [str(version / "bin" / "python3.12") for version in versions]
    # A pyenv shim is on PATH even where its version is not selected, and then fails.
    for candidate in filter(None, candidates):
        works = subprocess.run([candidate, "-c", "pass"], capture_output=True)
        if works.returncode == 0:
            return candidate
    sys.exit("colab-check: no working Python 3.12 found; set COLAB_PYTHON to one")


def setup_command(notebook: dict) -> str:
    """The arguments of a chapter's setup-cell `%pip install`, aimed at this clone.

    The cell sets REPOSITORY and installs from git+{REPOSITORY}, which IPython expands;
    here {REPOSITORY} becomes this clone instead.
    """
    source = "".join(notebook["cells"][0]["source"])
    assigned = re.search(r'^REPOSITORY = "[^"]+"$', source, re.M)
    match = re.search(r'%pip install (.*"lora-edu @ git\+)\{REPOSITORY\}(")', source)
    if assigned is None or match is None:
        sys.exit(
            'colab-check: the first cell has no `REPOSITORY = "..."` and '
            '`%pip install ... "lora-edu @ git+{REPOSITORY}"`'
        )
    return match.group(1) + "file://" + str(ROOT) + match.group(2)


def compared_texts(notebook: dict) -> dict[str, str]:
    """Per code cell id, the text nbval compares: stdout and text/plain, in order."""
    texts = {}
    for cell in notebook["cells"]:
        tags = set(cell.get("metadata", {}).get("tags", []))
        if cell["cell_type"] != "code" or SKIP_TAGS & tags:
            continue
        parts = []
        for output in cell.get("outputs", []):
            if output["output_type"] == "stream" and output["name"] == "stdout":
                parts.append("".join(output["text"]))
            # Colab's ipywidgets turn progress bars into widgets; nbval's env has none.
            elif (
                "text/plain" in output.get("data", {}) and WIDGET not in output["data"]
            ):
                parts.append("".join(output["data"]["text/plain"]))
        texts[cell["id"]] = "".join(parts)
    return texts


def first_difference(stored: str, fresh: str) -> str:
    """The first line where two outputs differ, as `stored -> fresh`."""
    pairs = zip(stored.splitlines(), fresh.splitlines(), strict=False)
    return next((f"{a!r} -> {b!r}" for a, b in pairs if a != b), "line count differs")


def main() -> int:
    chapters = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))
    if sys.argv[1:]:
        chapters = [c for c in chapters if c.name.startswith(tuple(sys.argv[1:]))]
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if dirty:
        print(
            "colab-check: uncommitted changes are not installed "
            "(git+file:// installs the last commit)"
        )

    if not (VENV / "bin" / "python").exists():
        subprocess.run([python312(), "-m", "venv", str(VENV)], check=True)
    python = str(VENV / "bin" / "python")
    version = subprocess.run(
        [python, "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "--upgrade", *PREINSTALLED], check=True)
    first = json.loads(chapters[0].read_text())
    # The setup cell's own arguments; --force-reinstall --no-deps picks up a new commit.
    install = setup_command(first)
    subprocess.run(f"{' '.join(pip)} {install}", shell=True, check=True)
    subprocess.run(
        f"{' '.join(pip)} --force-reinstall --no-deps {install}", shell=True, check=True
    )
    packages = subprocess.run(
        [python, "-c", VERSIONS], capture_output=True, text=True, check=True
    ).stdout.strip()
    print(f"colab-check: Python {version}; {packages}")

    failed = 0
    for chapter in chapters:
        stored = json.loads(chapter.read_text())
        with tempfile.TemporaryDirectory() as folder:
            # An empty working folder, as in Colab: a chapter may use only the package.
            copy = Path(folder, chapter.name)
            shutil.copy(chapter, copy)
            start = time.perf_counter()
            run = subprocess.run(
                [python, "-c", EXECUTE, str(copy)],
                cwd=folder,
                capture_output=True,
                text=True,
            )
            seconds = time.perf_counter() - start
            if run.returncode != 0:
                failed += 1
                error = (run.stderr.strip().splitlines() or ["(no message)"])[-1]
                print(f"FAIL  {chapter.name:36} {seconds:6.1f} s  {error}")
                continue
            fresh = json.loads(copy.read_text())
        stored_texts, fresh_texts = compared_texts(stored), compared_texts(fresh)
        differ = [i for i in stored_texts if stored_texts[i] != fresh_texts.get(i)]
        note = f"{len(differ)} compared outputs differ"
        for cell_id in differ:
            change = first_difference(
                stored_texts[cell_id], fresh_texts.get(cell_id, "")
            )
            note += f"\n      {cell_id}: {change}"
        print(f"pass  {chapter.name:36} {seconds:6.1f} s  {note}")
    print(f"colab-check: {len(chapters) - failed} of {len(chapters)} chapters ran")
    handouts = sorted(ASSIGNMENTS.glob("*/student/*.ipynb"))
    for handout in handouts:
        start = time.perf_counter()
        try:
            run_as_in_colab(nbformat.read(handout, as_version=4), python=python)
            outcome = "pass"
        except RuntimeError as error:
            failed, outcome = failed + 1, f"FAIL  {error}"
        seconds = time.perf_counter() - start
        print(f"{outcome[:4]}  {handout.name:36} {seconds:6.1f} s  {outcome[6:]}")
    if not handouts:
        print("colab-check: no hand-outs in _build/assignments (run make assignments)")
    return 1 if failed else 0


# Otter tells Colab by the shell's name; in this kernel, it takes ipykernel's for it.
OTTER_IN_COLAB = """\
from otter.check.utils import IPythonInterpreter

IPythonInterpreter.COLAB.value.check_strs.append("ipykernel")"""


def run_as_in_colab(notebook, folder=None, python=None) -> None:
    """Execute a hand-out as Colab does: otter in Colab mode, another working folder.

    `folder` (default: a new empty one) is the working folder; the notebook runs from a
    copy in another folder. `python` is the interpreter whose kernel runs it (default:
    this one, where otter is installed already, so the notebook's %pip lines are
    skipped). Raises RuntimeError with the last line of the error if a cell fails.
    """
    notebook = nbformat.reads(nbformat.writes(notebook), as_version=4)
    first = 1 if notebook.cells[0].source.startswith("%pip install") else 0
    if python is None:
        for cell in notebook.cells:
            cell.source = re.sub(r"^(\s*)%pip .*$", r"\1pass", cell.source, flags=re.M)
    notebook.cells.insert(first, nbformat.v4.new_code_cell(OTTER_IN_COLAB))
    with tempfile.TemporaryDirectory() as elsewhere:
        working = Path(folder or Path(elsewhere, "content"))
        working.mkdir(exist_ok=True)
        copy = Path(elsewhere, "drive", "handout.ipynb")
        copy.parent.mkdir()
        nbformat.write(notebook, copy)
        run = subprocess.run(
            [python or sys.executable, "-c", EXECUTE, str(copy), str(working)],
            capture_output=True,
            text=True,
        )
    if run.returncode != 0:
        lines = run.stderr.strip().splitlines() or ["(no message)"]
        raise RuntimeError(lines[-1])


VERSIONS = """
import importlib.metadata as m
names = ["torch", "numpy", "transformers", "peft", "datasets", "matplotlib", "lora-edu"]
print(", ".join(f"{n} {m.version(n)}" for n in names))
"""

# Runs inside the Colab-like venv: execute the notebook in place, top to bottom, in the
# working folder given after it (default: its own).
EXECUTE = """
import sys
from pathlib import Path
import nbformat
from nbclient import NotebookClient
path = sys.argv[1]
folder = sys.argv[2] if len(sys.argv) > 2 else str(Path(path).parent)
nb = nbformat.read(path, as_version=4)
NotebookClient(
    nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": folder}}
).execute()
nbformat.write(nb, path)
"""


if __name__ == "__main__":
    sys.exit(main())
