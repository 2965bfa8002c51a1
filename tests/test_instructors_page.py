"""The page "For instructors" states what each assignment grades, with its points."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import assignments  # noqa: E402

PAGE = (ROOT / "book" / "instructors.md").read_text()


def test_the_page_is_in_the_table_of_contents():
    assert "file: book/instructors" in (ROOT / "_toc.yml").read_text()


def test_the_page_lists_every_question_with_its_points_and_nothing_else():
    rows = re.findall(
        r"^\| (\d\d_\w+) \| `(q\w+)` \| [\d.]+ \| .* \| (\d+) \|$", PAGE, re.M
    )
    listed = {(name, question, int(points)) for name, question, points in rows}
    graded = {
        (name, question, points)
        for name, master in assignments.masters().items()
        for question, points, *_ in assignments.questions(master)
    }
    assert listed == graded


def test_the_page_gives_the_commands_the_makefile_has():
    makefile = (ROOT / "Makefile").read_text()
    for target in ["book-student", "assignments", "grade"]:
        assert f"make {target}" in PAGE and f"\n{target}:" in makefile
