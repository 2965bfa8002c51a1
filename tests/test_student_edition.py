"""The student edition: committed notebooks in sync, and a book with no solution in it.

`make book-student` builds the book from student/notebooks/ (tools/student_edition.py
writes them). The leak test builds it and searches every file of the output (pages,
_sources, notebooks, the search index) for text that only a solution contains.
"""

import html
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
sys.path.insert(0, str(ROOT / "_ext"))
sys.path.insert(0, str(ROOT / "tools"))
import student_edition  # noqa: E402
from jupyter_exercises import is_exercise, parse_exercise  # noqa: E402

RUN = 8  # words: a run this long that only a solution contains is that solution's text


def words(text):
    """Lower-case words and numbers; code fences' lines ("```python") are not text."""
    text = re.sub(r"^\s*```\w*\s*$", " ", text, flags=re.M)
    return re.findall(r"[a-z0-9]+", text.lower())


def exercises(path):
    cells = nbformat.read(path, as_version=4).cells
    return [parse_exercise(c.source) for c in cells if is_exercise(c.source)]


def notebook_text(path, solutions=True):
    """All the text of a notebook (sources, text outputs), with or without solutions."""
    notebook = nbformat.read(path, as_version=4)
    parts = []
    for cell in notebook.cells:
        if is_exercise(cell.source) and not solutions:
            exercise = parse_exercise(cell.source)
            parts.append(f"{exercise.title}\n{exercise.text}")
        else:
            parts.append(cell.source)
        for output in cell.get("outputs", []):
            parts.append(
                output.get("text", "") + output.get("data", {}).get("text/plain", "")
            )
    return "\n".join(parts)


def text_outside_solutions():
    """Everything the book says outside its solutions: its pages and its chapters."""
    pages = [p.read_text() for p in (ROOT / "book").glob("*.md")]
    return "\n".join(pages + [notebook_text(p, solutions=False) for p in NOTEBOOKS])


def solution_runs():
    """For each chapter, the runs of words that only its solutions contain."""
    elsewhere = " ".join(words(text_outside_solutions()))
    found = {}
    for path in NOTEBOOKS:
        runs = set()
        for exercise in exercises(path):
            solution = words(exercise.solution)
            runs |= {
                " ".join(solution[i : i + RUN]) for i in range(len(solution) - RUN + 1)
            }
        found[path.name] = {run for run in runs if run not in elsewhere}
    return found


def solution_only_stems():
    """Word stems, as the search index stores them, that only solutions use."""
    from sphinx.search.en import SearchEnglish

    stem = SearchEnglish({}).stem
    elsewhere = {stem(w) for w in words(text_outside_solutions())}
    in_solutions = {
        stem(w)
        for path in NOTEBOOKS
        for exercise in exercises(path)
        for w in words(exercise.solution)
        if w.isalpha() and len(w) > 3
    }
    return in_solutions - elsewhere


def file_text(path):
    """What a reader of a built file sees: page text, notebook text, or the raw text."""
    if path.suffix == ".ipynb":
        return notebook_text(path)
    text = path.read_text(errors="ignore")
    if path.suffix == ".html":
        text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    return text


def test_the_student_notebooks_are_in_sync_with_the_chapters():
    assert student_edition.stale() == [], "run `python tools/student_edition.py`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_student_notebook_keeps_every_exercise_and_drops_every_solution(path):
    student = student_edition.STUDENT / path.name
    theirs, ours = exercises(student), exercises(path)
    assert [(e.title, e.text) for e in theirs] == [(e.title, e.text) for e in ours]
    assert all(not e.solution for e in theirs) and all(e.solution for e in ours)
    assert "<details>" not in student.read_text()


def test_the_search_finds_solutions_where_they_are():
    # The leak test below is only as good as its
    # search: it must find them in the chapters.
    for path in NOTEBOOKS:
        text = " ".join(words(file_text(path)))
        runs = solution_runs()[path.name]
        assert runs and all(run in text for run in runs), path.name


@pytest.fixture(scope="module")
def student_book(tmp_path_factory):
    """The student book, built as `make book-student` builds it."""
    out = tmp_path_factory.mktemp("student")
    student_edition.write_book(out / "config")
    command = [
        *(
            str(Path(sys.executable).parent / "jupyter-book"),
            "build",
            str(ROOT),
            "--all",
        ),
        *("-W", "--keep-going", "--path-output", str(out)),
        *("--config", str(out / "config" / "_config.yml")),
        *("--toc", str(out / "config" / "_toc.yml")),
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out / "_build" / "html"


def test_the_student_book_holds_no_solution_text(student_book):
    files = [p for p in student_book.rglob("*") if p.is_file()]
    texts = {p: " ".join(words(file_text(p))) for p in files if p.suffix != ".png"}
    assert any(p.suffix == ".ipynb" for p in texts), (
        "no downloadable notebooks to check"
    )
    for runs in solution_runs().values():
        for path, text in texts.items():
            leaked = [run for run in runs if run in text]
            assert not leaked, f"{path.relative_to(student_book)}: {leaked[0]!r}"


def test_the_student_search_index_holds_no_word_only_solutions_use(student_book):
    index = (student_book / "searchindex.js").read_text()
    terms = json.loads(index[index.index("(") + 1 : index.rindex(")")])["terms"]
    only = solution_only_stems()
    assert only, "no word is used only by solutions: the test would prove nothing"
    assert not only & set(terms)


def test_the_student_book_launches_student_notebooks(student_book):
    page = (student_book / "student" / "notebooks" / "01_matrix_rank.html").read_text()
    launch = re.findall(r"colab\.research\.google\.com/github/[^\"]+", page)
    assert launch and all(
        url.endswith("/student/notebooks/01_matrix_rank.ipynb") for url in launch
    )
