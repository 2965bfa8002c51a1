"""The front pages describe the course as it is: every chapter, every module."""

import re
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]


def numbered_chapters() -> list[Path]:
    """The chapters of the table of contents' numbered parts, in order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [
        ROOT / f"{chapter['file']}.ipynb"
        for part in toc["parts"]
        if part.get("numbered")
        for chapter in part["chapters"]
    ]


def title(path: Path) -> str:
    first = nbformat.read(path, as_version=4).cells[1].source.splitlines()[0]
    return first.removeprefix("# ")


def test_the_introduction_describes_every_chapter_in_order():
    items = re.findall(
        r"^(\d+)\. \*\*(.+?)\*\*", (ROOT / "book" / "intro.md").read_text(), re.M
    )
    chapters = numbered_chapters()
    assert [int(number) for number, _ in items] == list(range(1, len(chapters) + 1)), (
        "book/intro.md's 'What you will build' needs one numbered line per chapter"
    )
    for (number, name), path in zip(items, chapters):
        assert title(path).startswith(name), (number, name, title(path))


def test_how_to_use_lists_every_module_of_the_package():
    table = (ROOT / "book" / "how_to_use.md").read_text()
    modules = {
        path.stem
        for path in (ROOT / "lora_edu").glob("*.py")
        if path.stem != "__init__"
    }
    missing = sorted(m for m in modules if f"`lora_edu.{m}`" not in table)
    assert not missing, f"book/how_to_use.md's module table lacks {missing}"


def test_what_a_chapter_says_about_solutions_holds_in_the_student_edition_too():
    """The student edition drops solutions; text outside exercises is shared by both."""
    sys.path.insert(0, str(ROOT / "_ext"))
    from jupyter_exercises import is_exercise

    wrong = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type != "markdown" or is_exercise(cell.source):
                continue
            for sentence in re.split(r"(?<=[.!?])\s+", " ".join(cell.source.split())):
                if "solution" in sentence.lower() and "student" not in sentence:
                    wrong.append(f"{path.name}: {sentence}")
    assert not wrong, "say what the student edition has instead:\n" + "\n".join(wrong)
