"""Exercises read well in Jupyter and Colab, and the book still numbers and folds them.

Each exercise is one markdown cell: a heading "#### Exercise N.M: Title", the text, and
the solution inside `<details>`. Jupyter shows that as it is;
`_ext/jupyter_exercises.py` turns it into sphinx-exercise directives when the book is
built. These tests render each chapter as Jupyter does (nbconvert's HTML exporter) and
check what a learner sees there.
"""

import html
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
sys.path.insert(0, str(ROOT / "_ext"))
from jupyter_exercises import (  # noqa: E402
    convert_notebook,
    is_exercise,
    parse_exercise,
)

# MyST syntax that Jupyter and Colab would show as raw text.
RAW_MYST = [
    "```{",
    "~~~{",
    ":::",
    "{cite}",
    "{numref}",
    "{ref}",
    "{glue}",
    "{eq}",
    "{doc}",
]
DETAILS = re.compile(r"<details>.*?</details>", re.S)


def chapter_number(path):
    return int(path.name[:2])


def exercise_cells(path):
    cells = nbformat.read(path, as_version=4).cells
    return [
        c.source for c in cells if c.cell_type == "markdown" and is_exercise(c.source)
    ]


def words(text, page=False):
    """Lower-case words and numbers, so that a rendered page and its source compare."""
    if page:
        text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    return re.findall(r"[a-z0-9]+", text.lower())


@pytest.fixture(scope="module", params=NOTEBOOKS, ids=lambda p: p.stem)
def rendered(request):
    """The chapter as JupyterLab's HTML export shows it, and its path."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_filename(str(request.param))
    return request.param, body


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_exercise_headings_are_numbered_by_chapter_and_position(path):
    cells = exercise_cells(path)
    parsed = [parse_exercise(source) for source in cells]
    assert [(e.chapter, e.number) for e in parsed] == [
        (chapter_number(path), n) for n in range(1, len(parsed) + 1)
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_exercise_is_written_any_other_way(path):
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "markdown" and not is_exercise(cell.source):
            assert not re.search(r"^#+ *Exercise \d", cell.source, re.M), cell.source
            assert "<summary>Solution" not in cell.source, cell.source


def test_the_markdown_jupyter_renders_holds_no_myst_syntax(rendered):
    path, body = rendered
    markdown = "\n".join(
        c.source
        for c in nbformat.read(path, as_version=4).cells
        if c.cell_type == "markdown"
    )
    for syntax in RAW_MYST:
        assert syntax not in markdown, f"{path.name}: {syntax!r} would show as raw text"
        assert syntax not in html.unescape(body), f"{path.name}: {syntax!r} in the page"


def test_every_solution_is_folded_in_jupyter(rendered):
    path, body = rendered
    cells = nbformat.read(path, as_version=4).cells
    solutions = [parse_exercise(source).solution for source in exercise_cells(path)]
    # Text that the chapter also shows outside its solutions proves nothing either way.
    outputs = [
        o.get("text", "") + o.get("data", {}).get("text/plain", "")
        for c in cells
        for o in c.get("outputs", [])
    ]
    elsewhere = " ".join(
        words(
            "\n".join([c.source for c in cells if not is_exercise(c.source)] + outputs)
        )
        + [w for s in exercise_cells(path) for w in words(parse_exercise(s).text)]
    )
    folded_away = " ".join(words(DETAILS.sub(" ", body), page=True))
    everything = " ".join(words(body, page=True))
    assert body.count("<summary>Solution</summary>") == len(solutions)
    for solution in solutions:
        # The fences' info strings ("```python") are not rendered as text.
        found = words(re.sub(r"^```\w*$", "", solution, flags=re.M))
        runs = [" ".join(found[i : i + 8]) for i in range(max(1, len(found) - 7))]
        runs = [run for run in runs if run not in elsewhere]
        assert runs, f"{path.name}: a solution says nothing the chapter does not"
        # Every run of eight words of the solution
        # is on the page, and only inside <details>.
        for run in runs:
            assert run in everything, f"{path.name}: {run!r} was not rendered"
            assert run not in folded_away, f"{path.name}: {run!r} is visible"


def test_the_book_gets_numbered_exercises_and_folded_solutions():
    path = NOTEBOOKS[0]
    converted = json.loads(convert_notebook(path.read_text()))
    sources = [
        "".join(c["source"]) for c in converted["cells"] if c["cell_type"] == "markdown"
    ]
    exercises = [s for s in sources if s.startswith("````{exercise}")]
    assert len(exercises) == len(exercise_cells(path))
    assert not any(is_exercise(s) or "<details>" in s for s in sources)
    assert ":label: ex-1-1\n" in exercises[0]
    assert sum("````{solution} ex-1-1\n:class: dropdown\n" in s for s in sources) == 1


def test_a_malformed_exercise_cell_is_an_error_that_names_it():
    broken = "#### Exercise 1.1: Title\n\nText.\n\n<details>\nThe solution.\n</details>"
    with pytest.raises(ValueError, match=r"Exercise 1\.1: Title"):
        parse_exercise(broken)
