"""Autograded assignments with otter-grader: build the handouts, grade submissions.

    python tools/assignments.py build [OUT]              # default _build/assignments
    python tools/assignments.py grade NAME SUBMISSIONS [--output CSV] [--build OUT]
        [--time-limit SECONDS] [--memory-limit GIB] [--unsafe]

`build` runs `otter assign` on each master notebook in assignments/ and writes, per
assignment, OUT/NAME/student/NAME.ipynb (the notebook to hand out; it carries its public
tests and writes them to ./tests where they are missing, as in Colab) and
OUT/NAME/autograder.zip.

`grade` grades every notebook in SUBMISSIONS with that zip, each in its own sandbox
(bubblewrap): a fresh scratch folder, the only place it can write; no network; the
instructor's repository hidden but for the `lora_edu` package; a time and a memory
limit; every process it starts killed when its grading ends. A notebook that cannot be
graded scores 0 with the reason, and the rest are still graded. It writes one CSV
(student, question, points, total, reason), keeping an older one as a backup. Without
bubblewrap it refuses, unless --unsafe. Needs the `instructor` extra (otter-grader).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import importlib.util
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
MASTERS = ROOT / "assignments"
BUILD = ROOT / "_build" / "assignments"
TIME_LIMIT = 300  # seconds for one notebook: run top to bottom and tested
MEMORY_LIMIT = 6  # GiB of address space for each process of a submission
SCRATCH_PREFIX = "lora-edu-grading-"
FIELDS = ["student", "question", "points", "total", "reason"]


class UsageError(Exception):
    """A mistake in the command line or the files it names: reported in one line."""


class NotGraded(Exception):
    """Why a submission scores 0 without being graded, in a few words."""


def masters() -> dict[str, Path]:
    """The master notebooks, by assignment name (the chapter's file name)."""
    return {path.stem: path for path in sorted(MASTERS.glob("*.ipynb"))}


def questions(master):
    """(name, points, prompt, solution code, hidden tests) for each question."""
    cells, found = nbformat.read(master, as_version=4).cells, []
    for i, cell in enumerate(cells):
        if cell.cell_type == "raw" and cell.source.startswith("# BEGIN QUESTION"):
            name = re.search(r"name: (\w+)", cell.source)[1]
            points = int(re.search(r"points: (\d+)", cell.source)[1])
            end = next(
                j for j in range(i, len(cells)) if cells[j].source == "# END QUESTION"
            )
            block = cells[i + 1 : end]
            prompt = next(c.source for c in block if c.cell_type == "markdown")
            begin = next(
                j for j, c in enumerate(block) if c.source == "# BEGIN SOLUTION"
            )
            hidden = [c.source for c in block if c.source.startswith("# HIDDEN")]
            found.append((name, points, prompt, block[begin + 1].source, hidden))
    return found


def build(out: Path = BUILD, names=None) -> None:
    """Write each assignment's (or those named) student folder and autograder.zip."""
    import otter.assign

    for name, master in masters().items():
        if names is not None and name not in names:
            continue
        target = out / name
        shutil.rmtree(target, ignore_errors=True)
        # otter assign runs the tests against the solutions: a broken master fails here.
        otter.assign.main(str(master), str(target), no_pdfs=True)
        # otter stamps the zip's name with the time; give it a name a command can use.
        (zipped,) = (target / "autograder").glob(f"{name}-autograder_*.zip")
        shutil.copyfile(zipped, target / "autograder.zip")
        carry_public_tests(target / "student" / f"{name}.ipynb")


def public_tests_cell(tests: dict[str, str]) -> nbformat.NotebookNode:
    """A cell that writes the public tests to ./tests, where otter looks for them.

    Colab runs a notebook in /content, wherever the notebook is, so a tests/ folder
    handed out beside it is not found there: the notebook carries its own.
    """
    source = (
        "# @title The public tests for grader.check (written to ./tests if missing)\n"
        "# In Colab the working folder is /content, not the notebook's: the tests\n"
        "# travel inside the notebook. Grading uses its own tests, not these.\n"
        "from pathlib import Path\n\n"
        f"PUBLIC_TESTS = {json.dumps(tests, indent=4)}\n"
        "for file, text in PUBLIC_TESTS.items():\n"
        '    path = Path("tests", file)\n'
        "    if not path.exists():\n"
        "        path.parent.mkdir(exist_ok=True)\n"
        "        path.write_text(text)"
    )
    cell = nbformat.v4.new_code_cell(source)
    # otter_ignore: grading skips it. Colab and Jupyter show the title, not the code.
    cell.metadata.update(
        {
            "tags": ["otter_ignore"],
            "cellView": "form",
            "jupyter": {"source_hidden": True},
        }
    )
    return cell


def carry_public_tests(notebook_path: Path) -> None:
    """Put the public tests of a student notebook inside it, before otter's init."""
    tests = {
        p.name: p.read_text() for p in sorted(notebook_path.parent.glob("tests/*"))
    }
    notebook = nbformat.read(notebook_path, as_version=4)
    (init,) = [
        i
        for i, c in enumerate(notebook.cells)
        if c.source.startswith("# Initialize Otter")
    ]
    notebook.cells.insert(init, public_tests_cell(tests))
    nbformat.write(notebook, notebook_path)


# --- Grading ------------------------------------------------------------------------


def sandbox_problem() -> str | None:
    """Why submissions cannot be sandboxed here, or None if bubblewrap works."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap is not installed (Debian: apt-get install bubblewrap)"
    trial = subprocess.run(
        [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "true"],
        capture_output=True,
        text=True,
    )
    if trial.returncode != 0:
        lines = trial.stderr.strip().splitlines() or ["no message"]
        return f"bubblewrap cannot make a sandbox here ({lines[-1]})"
    return None


def package_folder() -> Path:
    """The folder of the lora_edu that grading imports (found without importing it)."""
    spec = importlib.util.find_spec("lora_edu")
    if spec is None or spec.origin is None:
        raise UsageError("lora_edu is not importable: install the course first")
    return Path(spec.origin).resolve().parent


def sandbox_command(scratch: Path, hidden: list[Path]) -> list[str]:
    """bubblewrap's arguments: scratch as /tmp, the only writable place, and no network.

    The root file system is read-only, the folders in `hidden` are empty (the course
    package and the Python environment inside them stay readable), every namespace is
    new (so every process dies with the sandbox), and the terminal is out of reach.
    """
    command = [shutil.which("bwrap"), "--unshare-all", "--die-with-parent"]
    command += ["--new-session", "--ro-bind", "/", "/", "--dev", "/dev"]
    command += ["--proc", "/proc", "--tmpfs", "/dev/shm", "--tmpfs", "/run"]
    # The scratch comes first, so that what follows applies under /tmp too (a course
    # checked out there): mounts made later lie on top of it.
    command += ["--bind", str(scratch), "/tmp"]
    keep = [package_folder(), Path(sys.prefix).resolve()]
    # Only existing folders, and not one inside another (its tmpfs is read-only).
    hidden = [f for f in hidden if f.is_dir() and f != Path("/")]
    hidden = [
        f for f in hidden if not any(f != g and f.is_relative_to(g) for g in hidden)
    ]
    for folder in hidden:
        command += ["--tmpfs", str(folder)]
        for inside in (k for k in keep if k.is_relative_to(folder)):
            command += ["--ro-bind", str(inside), str(inside)]
        command += ["--remount-ro", str(folder)]
    # What is kept and lay under /tmp outside every hidden folder: visible again.
    for inside in keep:
        if inside.is_relative_to("/tmp") and not any(
            inside.is_relative_to(folder) for folder in hidden
        ):
            command += ["--ro-bind", str(inside), str(inside)]
    return [*command, "--chdir", "/tmp"]


def limit_resources(memory_gib: float):
    """A function for Popen's preexec_fn: the memory, file-size and core limits."""

    def apply():
        address_space = int(memory_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**30, 2**30))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


# Runs inside the sandbox, in the scratch folder: otter's own grader (otter run's,
# without Docker), then the scores as JSON. Nothing else comes out of the sandbox.
RUNNER = """
import json, sys
from otter.api import grade_submission
results = grade_submission("submission.ipynb", "autograder.zip", quiet=True)
if results.has_catastrophic_failure():
    report = {"error": str(results.catastrophic_error)}
else:
    report = {
        "scores": {q: results.get_score(q) for q in results.test_files}
    }
with open("result.json", "w") as file:
    json.dump(report, file)
"""

INSTALL = re.compile(r"^(\s*)[%!](pip|conda|mamba|uv)\b.*$", re.M)


def readable_notebook(path: Path, name: str, question_names) -> tuple:
    """The submission to grade (setup skipped, kernel python3) and a note, or NotGraded.

    Checks all this before any code runs: it is a notebook, of this assignment.
    """
    try:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
    except Exception as error:  # nbformat raises many kinds for a broken file
        raise NotGraded("not a notebook (broken or half-written file)") from error
    meta = notebook.metadata.get("otter", {})
    other = meta.get("assignment_name") if isinstance(meta, dict) else None
    if other is not None and other != name:
        raise NotGraded(f"a notebook of assignment {other}, not {name}")
    text = "\n".join(c.source for c in notebook.cells)
    if not any(q in text for q in question_names):
        raise NotGraded(f"not a notebook of {name}: none of its questions is in it")
    note = ""
    kernel = notebook.metadata.get("kernelspec", {}).get("name", "python3")
    if kernel != "python3":
        note = f"its kernel {kernel!r} was replaced by python3"
    notebook.metadata["kernelspec"] = {
        "display_name": "Python 3",
        "language": "python",
        "name": "python3",
    }
    for cell in notebook.cells:
        if cell.cell_type == "code":
            # Grading installs nothing: the setup cells' %pip lines do nothing.
            cell.source = INSTALL.sub(r"\1pass  # not run in grading", cell.source)
    return notebook, note


def run_sandboxed(scratch: Path, hidden, time_limit: float, memory: float, safe: bool):
    """Run RUNNER in scratch; return (report or None, what went wrong)."""
    command = [sys.executable, "-c", RUNNER]
    environment = {
        **os.environ,
        "HOME": "/tmp/home" if safe else str(scratch / "home"),
        "TMPDIR": "/tmp" if safe else str(scratch),
        "HF_HUB_OFFLINE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if safe:
        command = [*sandbox_command(scratch, hidden), "--", *command]
    process = subprocess.Popen(
        command,
        cwd=scratch,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
        preexec_fn=limit_resources(memory),
    )
    try:
        _, errors = process.communicate(timeout=time_limit)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {time_limit:g} s"
    finally:
        # The sandbox's processes die with it; without one, kill the session we made.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    result = scratch / "result.json"
    if result.is_file() and result.stat().st_size < 2**20:
        with contextlib.suppress(ValueError):
            return json.loads(result.read_text()), ""
    lines = (errors or "").strip().splitlines()
    if any("DeadKernelError" in line or "Kernel died" in line for line in lines):
        return None, "its kernel died"
    if any("MemoryError" in line for line in lines):
        return None, f"ran out of memory (limit {memory:g} GiB)"
    return None, "grading failed: " + (lines[-1][:200] if lines else "no message")


def scores_from(report: dict, points: dict[str, int]) -> tuple[dict, str]:
    """Each question's points from the sandbox's report, or why there are none.

    The questions and their totals are the master's: a report cannot add questions or
    raise a total, and a score that is not a number within the total counts 0.
    """
    if not isinstance(report, dict):
        return {}, "grading returned no scores"
    if "error" in report:
        message = str(report["error"]).strip().splitlines() or ["no message"]
        return {}, "could not be graded: " + message[-1][:200]
    given = report.get("scores")
    if not isinstance(given, dict):
        return {}, "grading returned no scores"
    scores = {}
    for question, total in points.items():
        score = given.get(question)
        valid = isinstance(score, (int, float)) and not isinstance(score, bool)
        valid = valid and math.isfinite(score) and 0 <= score <= total
        scores[question] = score if valid else 0
    return scores, ""


def grade_one(
    autograder: Path, submission: Path, name: str, points: dict, hidden, limits
) -> tuple[dict, str]:
    """One submission, in its own scratch folder: (points per question, reason)."""
    notebook, note = readable_notebook(submission, name, list(points))
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))
    try:
        (scratch / "home").mkdir()
        nbformat.write(notebook, scratch / "submission.ipynb")
        shutil.copyfile(autograder, scratch / "autograder.zip")
        report, problem = run_sandboxed(scratch, hidden, *limits)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if report is None:
        raise NotGraded(problem)
    scores, problem = scores_from(report, points)
    if problem:
        raise NotGraded(problem)
    return scores, note


def remove_stale_scratch() -> None:
    """Remove scratch folders that a killed grading run (SIGKILL) left behind."""
    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        pid = folder.name[len(SCRATCH_PREFIX) :].split("-")[0]
        if pid.isdigit() and not Path("/proc", pid).exists():
            shutil.rmtree(folder, ignore_errors=True)


def grade(
    autograder: Path,
    submissions: list[Path],
    name: str,
    *,
    time_limit: float = TIME_LIMIT,
    memory: float = MEMORY_LIMIT,
    safe: bool = True,
    hidden=(),
) -> list[dict]:
    """Grade each submission; one row per student and question, with a reason.

    A file that is not a .ipynb notebook, or a notebook that cannot be graded, scores 0
    with the reason; the others are graded all the same.
    """
    points = {q: p for q, p, *_ in questions(masters()[name])}
    total = sum(points.values())
    hidden = [ROOT, *hidden]
    rows = []
    for submission in submissions:
        started = time.perf_counter()
        notebook = submission.suffix.lower() == ".ipynb"
        student = submission.stem if notebook else submission.name
        try:
            if not notebook:
                raise NotGraded("not a .ipynb notebook")
            scores, reason = grade_one(
                autograder,
                submission,
                name,
                points,
                hidden,
                (time_limit, memory, safe),
            )
        except NotGraded as error:
            scores, reason = dict.fromkeys(points, 0), f"not graded: {error}"
        seconds = time.perf_counter() - started
        rows += [
            {
                "student": student,
                "question": q,
                "points": scores[q],
                "total": points[q],
                "reason": reason,
            }
            for q in points
        ]
        score = f"{sum(scores.values()):g} / {total:g}"
        shown = student if student.isprintable() else ascii(student)
        print(f"{shown}: {score} ({seconds:.1f} s){f'  {reason}' if reason else ''}")
    return rows


def spreadsheet_safe(value) -> str:
    """A cell that no spreadsheet reads as a formula: = + - @ (tab, CR) get a quote."""
    text = f"{value:g}" if isinstance(value, (int, float)) else str(value)
    if text and text[0] in "=+-@\t\r" and not isinstance(value, (int, float)):
        return "'" + text
    return text


def write_csv(rows: list[dict], path: Path) -> Path | None:
    """Write the grades atomically; an older file is kept as a backup, returned.

    A reader, or a crash, never sees half a file, and no run replaces grades silently.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows({k: spreadsheet_safe(r[k]) for k in FIELDS} for r in rows)
        file.flush()
        os.fsync(file.fileno())
    backup = None
    if path.exists():
        stamp = datetime.datetime.fromtimestamp(path.stat().st_mtime)
        for n in range(1000):
            suffix = f"-{n}" if n else ""
            candidate = path.with_name(
                f"{path.stem}.{stamp:%Y-%m-%dT%H-%M-%S}{suffix}{path.suffix}"
            )
            if not candidate.exists():
                break
        os.link(path, candidate)  # the old file, whole, under its new name
        backup = candidate
    os.replace(temporary, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return backup


def interrupted(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    building = commands.add_parser(
        "build", help="write student notebooks and autograder zips"
    )
    building.add_argument("out", nargs="?", type=Path, default=BUILD)
    grading = commands.add_parser("grade", help="grade a folder of submitted notebooks")
    grading.add_argument("name", help="the assignment, e.g. 01_matrix_rank")
    grading.add_argument("submissions", type=Path, help="a folder of .ipynb files")
    grading.add_argument(
        "--output", type=Path, help="the CSV (default _build/grades/NAME.csv)"
    )
    grading.add_argument(
        "--build", type=Path, default=BUILD, help="where `build` wrote to"
    )
    grading.add_argument(
        "--time-limit",
        type=float,
        default=TIME_LIMIT,
        help=f"seconds for one notebook (default {TIME_LIMIT})",
    )
    grading.add_argument(
        "--memory-limit",
        type=float,
        default=MEMORY_LIMIT,
        help=f"GiB of memory for each process of a notebook (default {MEMORY_LIMIT})",
    )
    grading.add_argument(
        "--unsafe",
        action="store_true",
        help="grade without a sandbox, in your own account (no bubblewrap here)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, interrupted)
    try:
        if args.command == "build":
            build(args.out)
            return 0
        if args.name not in masters():
            raise UsageError(
                f"no assignment {args.name!r}; choose one of: {', '.join(masters())}"
            )
        autograder = args.build / args.name / "autograder.zip"
        if not autograder.is_file():
            raise UsageError(
                f"{autograder} does not exist: run `make assignments` first"
            )
        if not args.submissions.is_dir():
            raise UsageError(
                f"SUBMISSIONS must be a folder of notebooks: {args.submissions}"
            )
        for value, option in [(args.time_limit, "time"), (args.memory_limit, "memory")]:
            if not (math.isfinite(value) and value > 0):
                raise UsageError(f"--{option}-limit must be a positive number")
        files = sorted(p for p in args.submissions.iterdir() if p.is_file())
        if not files:
            raise UsageError(f"no files in {args.submissions}")
        problem = sandbox_problem()
        if problem and not args.unsafe:
            raise UsageError(
                f"{problem}; grading runs the students' code, so it refuses to run "
                "without a sandbox. Pass --unsafe (make grade UNSAFE=1) to grade in "
                "your own account, with no protection"
            )
        if args.unsafe:
            print("warning: --unsafe: the notebooks run in your account, unsandboxed")
        output = args.output or ROOT / "_build" / "grades" / f"{args.name}.csv"
        others = [p.name for p in files if p.suffix.lower() != ".ipynb"]
        if others:
            print(f"not notebooks, listed with 0 points: {', '.join(others)}")
        remove_stale_scratch()
        hidden = {args.submissions, autograder.parent, output.parent}
        rows = grade(
            autograder,
            files,
            args.name,
            time_limit=args.time_limit,
            memory=args.memory_limit,
            safe=not args.unsafe,
            hidden=sorted(p.resolve() for p in hidden),
        )
        backup = write_csv(rows, output)
        if backup:
            print(f"kept the previous grades as {backup}")
        print(f"wrote {output}")
        return 0
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: no grades written; temporary folders removed", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
