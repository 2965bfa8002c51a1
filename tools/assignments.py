"""Autograded assignments with otter-grader: build the handouts, grade submissions.

    python tools/assignments.py build [OUT]              # default _build/assignments
    python tools/assignments.py grade NAME SUBMISSIONS [--output CSV] [--build OUT]

`build` runs `otter assign` on each master notebook in assignments/ and writes, per
assignment, OUT/NAME/student/ (the notebook to hand out, with its tests/ folder beside
it) and OUT/NAME/autograder.zip. `grade` grades every .ipynb in SUBMISSIONS with that
zip, the way `otter run` does (no Docker, no network), and writes one CSV: student,
question, points, total. Needs the `instructor` extra (otter-grader).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
MASTERS = ROOT / "assignments"
BUILD = ROOT / "_build" / "assignments"


class UsageError(Exception):
    """A mistake in the command line or the files it names: reported in one line."""


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


def build(out: Path = BUILD) -> None:
    """Write each assignment's student folder and autograder.zip under out/NAME."""
    import otter.assign

    for name, master in masters().items():
        target = out / name
        shutil.rmtree(target, ignore_errors=True)
        # otter assign runs the tests against the solutions: a broken master fails here.
        otter.assign.main(str(master), str(target), no_pdfs=True)
        # otter stamps the zip's name with the time; give it a name a command can use.
        (zipped,) = (target / "autograder").glob(f"{name}-autograder_*.zip")
        shutil.copyfile(zipped, target / "autograder.zip")


def grade(autograder: Path, submissions: list[Path]) -> list[dict]:
    """Grade each submission with otter; one row per student and question."""
    from otter.api import grade_submission

    rows = []
    for submission in submissions:
        started = time.perf_counter()
        results = grade_submission(str(submission), str(autograder), quiet=True)
        seconds = time.perf_counter() - started
        if results.has_catastrophic_failure():
            raise UsageError(
                f"{submission.name} could not be graded: {results.catastrophic_error}"
            )
        for question in results.test_files:
            rows.append(
                {
                    "student": submission.stem,
                    "question": question,
                    "points": float(results.get_score(question)),
                    "total": float(results.get_result(question).possible),
                }
            )
        score = f"{results.total:g} / {results.possible:g}"
        print(f"{submission.stem}: {score} ({seconds:.1f} s)")
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    """Write the grades atomically: a reader, or a crash, never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("w", newline="") as file:
        writer = csv.DictWriter(
            file, fieldnames=["student", "question", "points", "total"]
        )
        writer.writeheader()
        writer.writerows(
            {**r, "points": f"{r['points']:g}", "total": f"{r['total']:g}"}
            for r in rows
        )
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


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
    args = parser.parse_args(argv)
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
        submissions = sorted(args.submissions.glob("*.ipynb"))
        if not submissions:
            raise UsageError(f"no .ipynb files in {args.submissions}")
        output = args.output or ROOT / "_build" / "grades" / f"{args.name}.csv"
        write_csv(grade(autograder, submissions), output)
        print(f"wrote {output}")
        return 0
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
