"""The student edition: the chapters without solutions, and a book built from them.

    python tools/student_edition.py  # rewrite student/notebooks/ from notebooks/
    python tools/student_edition.py --check  # exit 1 if student/notebooks/ is stale
    python tools/student_edition.py --book DIR  # also write DIR/_config.yml, _toc.yml

The student notebooks are committed, so that the student book's launch buttons open them
on Colab: `make book-student` builds the book from them, with `student/notebooks/...` as
each chapter's path. Each exercise keeps its heading and text; its solution is dropped.
Everything else is unchanged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
STUDENT = ROOT / "student" / "notebooks"

sys.path.insert(0, str(ROOT / "_ext"))
from jupyter_exercises import is_exercise, parse_exercise, without_solution  # noqa: E402


def student_notebook(path: Path) -> str:
    """The chapter at `path` as the student edition has it, as notebook JSON text."""
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "markdown" and is_exercise(cell.source):
            cell.source = without_solution(parse_exercise(cell.source))
    return nbformat.writes(notebook) + "\n"


def stale() -> list[str]:
    """Student notebooks that are missing, out of date, or have no chapter any more."""
    chapters = {p.name: p for p in sorted((ROOT / "notebooks").glob("*.ipynb"))}
    students = {p.name for p in STUDENT.glob("*.ipynb")}
    found = sorted(students - set(chapters))
    for name, path in chapters.items():
        target = STUDENT / name
        if not target.exists() or target.read_text() != student_notebook(path):
            found.append(name)
    return found


def write_notebooks() -> None:
    STUDENT.mkdir(parents=True, exist_ok=True)
    chapters = sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in STUDENT.glob("*.ipynb"):
        if not (ROOT / "notebooks" / path.name).exists():
            path.unlink()
    for path in chapters:
        text = student_notebook(path)
        target = STUDENT / path.name
        if not target.exists() or target.read_text() != text:
            temporary = target.with_suffix(".tmp")
            temporary.write_text(text)
            temporary.replace(target)


def student_toc(toc: dict) -> dict:
    """The table of contents with the chapters taken from student/notebooks/."""

    def entries(items):
        kept = []
        for item in items:
            item = dict(item)
            if item.get("file", "").startswith("notebooks/"):
                item["file"] = "student/" + item["file"]
            for key in ("chapters", "sections"):
                if key in item:
                    item[key] = entries(item[key])
            kept.append(item)
        return kept

    toc = dict(toc)
    toc["parts"] = [
        {**part, "chapters": entries(part["chapters"])} for part in toc["parts"]
    ]
    return toc


def student_config(config: dict) -> dict:
    """The book's configuration for the student edition."""
    config = yaml.safe_load(yaml.safe_dump(config))
    config["title"] += " (student edition)"
    sphinx = config["sphinx"]
    # The generated config lives under _build, so
    # the extension's folder is given absolutely.
    sphinx["local_extensions"] = {
        name: str(ROOT / path) for name, path in sphinx["local_extensions"].items()
    }
    # sphinx-exercise drops any solution that reaches the build; there should be none.
    sphinx["config"]["hide_solutions"] = True
    return config


def write_book(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, build in [("_config.yml", student_config), ("_toc.yml", student_toc)]:
        source = yaml.safe_load((ROOT / name).read_text())
        (directory / name).write_text(yaml.safe_dump(build(source), sort_keys=False))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    parser.add_argument(
        "--book", type=Path, help="write the student book's config here"
    )
    args = parser.parse_args(argv)
    if args.check:
        if found := stale():
            print(
                f"student/notebooks is out of date ({', '.join(found)}): "
                "run `python tools/student_edition.py`",
                file=sys.stderr,
            )
            return 1
        return 0
    write_notebooks()
    if args.book:
        write_book(args.book)
    return 0


if __name__ == "__main__":
    sys.exit(main())
