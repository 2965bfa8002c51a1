"""Exercises that read well in Jupyter and are numbered and folded in the book.

A chapter writes each exercise as one markdown cell in the shape below, which Jupyter
and Colab render as a heading, the text, and a folded solution:

    #### Exercise 4.3: Title

    The exercise text.

    <details>
    <summary>Solution</summary>

    The solution text.

    </details>

The student edition (tools/student_edition.py) keeps the heading and the text only.

At build time this Sphinx extension rewrites each such cell into sphinx-exercise's
`exercise` and `solution` (class dropdown) directives, so the book numbers exercises per
chapter and folds solutions. The tests, the student edition and the assignments parse
cells with `parse_exercise`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from sphinx.errors import ExtensionError

HEADING = re.compile(r"^#### Exercise\b")
EXERCISE = re.compile(
    r"\A#### Exercise (?P<chapter>\d+)\.(?P<number>\d+): (?P<title>[^\n]+)\n\n"
    r"(?P<text>.+?)"
    r"(?:\n\n<details>\n<summary>Solution</summary>\n\n(?P<solution>.+?)\n\n</details>)?\n*\Z",
    re.S,
)


@dataclass(frozen=True)
class Exercise:
    """One exercise cell, split into its parts."""

    chapter: int
    number: int
    title: str
    text: str
    solution: str  # empty in the student edition

    @property
    def label(self) -> str:
        return f"ex-{self.chapter}-{self.number}"


def is_exercise(source: str) -> bool:
    """Whether a markdown cell claims to be an exercise (it starts with the heading)."""
    return bool(HEADING.match(source))


def parse_exercise(source: str) -> Exercise:
    """Split an exercise cell; raise a ValueError naming what is out of shape."""
    match = EXERCISE.match(source)
    # A solution block out of shape would otherwise read as part of the text.
    if not match or "<details>" in match["text"] or "<summary>" in match["text"]:
        first = source.splitlines()[0] if source else ""
        raise ValueError(
            f"exercise cell {first!r} is not in the shape "
            "'#### Exercise N.M: Title', text, "
            "'<details>', '<summary>Solution</summary>', solution, '</details>' "
            "(blank lines between the parts)"
        )
    return Exercise(
        int(match["chapter"]),
        int(match["number"]),
        match["title"].strip(),
        match["text"].strip(),
        (match["solution"] or "").strip(),
    )


def without_solution(exercise: Exercise) -> str:
    """The exercise cell as the student edition has it: heading, text, no solution."""
    heading = f"#### Exercise {exercise.chapter}.{exercise.number}: {exercise.title}"
    return f"{heading}\n\n{exercise.text}"


def _fence(*texts: str) -> str:
    """A backtick fence longer than any backtick run in the texts (at least four)."""
    longest = max((len(run) for t in texts for run in re.findall(r"`+", t)), default=0)
    return "`" * max(4, longest + 1)


def to_directives(exercise: Exercise) -> str:
    """The exercise as sphinx-exercise directives, any solution in a dropdown."""
    fence = _fence(exercise.text, exercise.solution)
    directives = (
        f"{fence}{{exercise}} {exercise.title}\n:label: {exercise.label}\n\n"
        f"{exercise.text}\n{fence}\n"
    )
    if exercise.solution:
        directives += (
            f"\n{fence}{{solution}} {exercise.label}\n:class: dropdown\n\n"
            f"{exercise.solution}\n{fence}\n"
        )
    return directives


def convert_notebook(text: str) -> str:
    """A notebook's JSON with every exercise cell rewritten into directives."""
    notebook = json.loads(text)
    for cell in notebook["cells"]:
        source = cell["source"]
        source = "".join(source) if isinstance(source, list) else source
        if cell["cell_type"] == "markdown" and is_exercise(source):
            cell["source"] = to_directives(parse_exercise(source))
    return json.dumps(notebook)


def _source_read(app, docname: str, source: list[str]) -> None:
    if not str(app.env.doc2path(docname)).endswith(".ipynb"):
        return
    try:
        source[0] = convert_notebook(source[0])
    except ValueError as error:
        raise ExtensionError(f"{docname}: {error}") from error


def setup(app):
    app.connect("source-read", _source_read)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
