"""The page "For instructors" states what each assignment grades, with its points."""

import csv
import io
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


def test_no_assignment_is_due_on_the_day_its_chapter_is_taught():
    plan = re.findall(r"^\| (\d+) \| (.*?) \|(.*)\|$", PAGE, re.M)
    taught, due = {}, {}
    for day, in_class, hand_in in plan:
        for chapter in re.findall(r"Chapters? (\d+)", in_class):
            taught.setdefault(int(chapter), int(day))
        for assignment in re.findall(r"\b(\d\d)\b", hand_in):
            due[int(assignment)] = int(day)
    assert due, "found no plan"
    for assignment, day in due.items():
        assert taught[assignment] < day, f"assignment {assignment:02} on day {day}"


def test_the_page_shows_the_csv_as_the_tool_writes_it():
    (block,) = re.findall(r"```text\n(student,.*?)```", PAGE, re.S)
    header, *rows = block.splitlines()
    assert header == ",".join(assignments.FIELDS) and rows
    for row in csv.DictReader(io.StringIO(block)):
        for key in ("points", "total"):
            assert row[key] == assignments.spreadsheet_safe(float(row[key])), row
