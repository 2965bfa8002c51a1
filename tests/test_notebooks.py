"""The chapters' notebooks: structure, one source of truth, and runnable solutions.

nbval (`pytest --nbval notebooks`) re-runs the notebooks and compares their outputs;
these tests check what nbval does not.
"""

import ast
import importlib
import re
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SAVED = re.compile(r"^# Saved in (lora_edu/\w+\.py)\n")
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)

sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "_ext"))
from colab_setup import setup_cell  # noqa: E402
from jupyter_exercises import is_exercise, parse_exercise  # noqa: E402


def read(path):
    return nbformat.read(path, as_version=4)


def definitions(source: str) -> dict[str, str]:
    """Functions, classes and methods defined in `source`: name → exact text, dedented.

    A class is split into "Class" (its header, docstring and fields) and "Class.method"
    for each method, so that a chapter may build a class cell by cell: a function
    decorated with `@add_to_class(Class)` counts as "Class.method".
    """
    lines, found = source.splitlines(), {}

    def text(node, skip_add_to_class=False):
        decorators = [
            d
            for d in node.decorator_list
            if not (skip_add_to_class and is_add_to_class(d))
        ]
        start = min([d.lineno for d in decorators] + [node.lineno])
        return textwrap.dedent("\n".join(lines[start - 1 : node.end_lineno]))

    def is_add_to_class(decorator):
        return (
            isinstance(decorator, ast.Call)
            and getattr(decorator.func, "id", None) == "add_to_class"
        )

    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            methods = [n for n in node.body if isinstance(n, ast.FunctionDef)]
            rest = [
                ast.get_source_segment(source, n) for n in node.body if n not in methods
            ]
            found[node.name] = "\n".join([lines[node.lineno - 1], *rest])
            found.update({f"{node.name}.{m.name}": text(m) for m in methods})
        elif isinstance(node, ast.FunctionDef):
            owner = next(
                (d.args[0].id for d in node.decorator_list if is_add_to_class(d)), None
            )
            found[f"{owner}.{node.name}" if owner else node.name] = text(
                node, skip_add_to_class=True
            )
    return found


def test_every_chapter_is_in_the_table_of_contents():
    toc = (ROOT / "_toc.yml").read_text()
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        assert f"file: notebooks/{path.stem}" in toc, (
            f"{path.name} is missing from _toc.yml"
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_metadata_lets_the_book_highlight_code(path):
    metadata = read(path).metadata
    assert metadata["kernelspec"]["name"] == "python3"
    assert metadata["language_info"]["name"] == "python"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_first_cell_is_the_colab_setup_cell_from_config(path):
    first, expected = read(path).cells[0], setup_cell()
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    assert first.source == expected.source and first.metadata == expected.metadata, (
        "run `python tools/colab_setup.py`"
    )
    assert f'REPOSITORY = "{url}"' in first.source.splitlines()
    assert {"nbval-skip", "remove-cell"} <= set(first.metadata["tags"])


def test_every_line_of_the_setup_cell_fits_88_columns():
    lines = setup_cell().source.splitlines()
    assert [line for line in lines if len(line) > 88] == []


def test_the_setup_cell_installs_from_the_repository_in_colab_only(
    monkeypatch, tmp_path
):
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    # A throwaway shell: no history file, no profile in the home folder, and the
    # interpreter's display hook back as it was afterwards.
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path))
    monkeypatch.setattr(sys, "displayhook", sys.displayhook)
    config = Config()
    config.HistoryManager.enabled = False
    shell, installs = InteractiveShell.instance(config=config), []
    # A stand-in %pip that records its line after IPython has expanded {REPOSITORY}.
    shell.register_magic_function(installs.append, "line", "pip")
    try:
        assert shell.run_cell(setup_cell().source).success
        assert installs == [], "outside Colab the setup cell must install nothing"
        monkeypatch.setitem(sys.modules, "google.colab", ModuleType("google.colab"))
        assert shell.run_cell(setup_cell().source).success
    finally:
        InteractiveShell.clear_instance()
    assert installs == [f'install --quiet "lora-edu @ git+{url}"']


def test_colab_check_installs_the_setup_cells_package_from_this_clone():
    from colab_check import setup_command

    command = setup_command({"cells": [{"source": setup_cell().source}]})
    assert command == f'--quiet "lora-edu @ git+file://{ROOT}"'


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_code_cell_has_stored_outputs_and_no_errors_or_warnings(path):
    code = [c for c in read(path).cells if c.cell_type == "code" and c.source.strip()]
    executed = [c.execution_count for c in code]
    assert all(executed), f"{path.name} has unexecuted cells: run `make notebooks`"
    assert executed == sorted(executed), f"{path.name} was not run top to bottom"
    for cell in code:
        for output in cell.outputs:
            assert output.output_type != "error", (
                f"{path.name}: a stored error in\n{cell.source}"
            )
            assert not (
                output.output_type == "stream"
                and output.name == "stderr"
                and "Warning" in output.text
            ), f"{path.name}: a stored warning: {output.text}"


def saved_cells():
    for path in NOTEBOOKS:
        for cell in read(path).cells:
            if cell.cell_type == "code" and (match := SAVED.match(cell.source)):
                yield path, match.group(1), cell.source


@pytest.mark.parametrize(
    ("path", "module_file", "source"),
    [pytest.param(*c, id=f"{c[0].stem}:{c[1]}") for c in saved_cells()],
)
def test_code_taught_in_a_chapter_is_the_code_in_lora_edu(path, module_file, source):
    taught = definitions(source)
    assert taught, f"a '# Saved in' cell of {path.name} defines nothing"
    saved = definitions((ROOT / module_file).read_text())
    for name, text in taught.items():
        assert name in saved, (
            f"{path.name} teaches {name}, which {module_file} does not define"
        )
        assert text == saved[name], (
            f"{name} in {path.name} has drifted from {module_file}"
        )


def test_a_class_a_chapter_builds_is_built_completely():
    taught, saved = {}, {}
    for path, module_file, source in saved_cells():
        taught.setdefault(path.stem, set()).update(definitions(source))
        saved.update(
            {(module_file, k): k for k in definitions((ROOT / module_file).read_text())}
        )
    for chapter, names in taught.items():
        classes = {name.split(".")[0] for name in names if "." in name}
        for _, name in saved:
            if "." in name and name.split(".")[0] in classes:
                assert name in names, (
                    f"{chapter} builds {name.split('.')[0]} but never shows {name}"
                )


def test_at_least_one_saved_cell_per_chapter_that_writes_code():
    chapters = {path.stem for path, _, _ in saved_cells()}
    assert {"01_matrix_rank", "03_low_rank_approximation"} <= chapters


def exercises(path):
    """The exercises of a chapter, parsed from its exercise cells."""
    cells = read(path).cells
    return [
        parse_exercise(c.source)
        for c in cells
        if c.cell_type == "markdown" and is_exercise(c.source)
    ]


def solution_blocks():
    for path in NOTEBOOKS:
        blocks = [
            code
            for exercise in exercises(path)
            for code in PYTHON_BLOCK.findall(exercise.solution)
        ]
        for i, code in enumerate(blocks):
            yield pytest.param(code, id=f"{path.stem}:solution-{i}")


@pytest.mark.parametrize("code", list(solution_blocks()))
def test_the_code_in_every_solution_runs_and_its_assertions_hold(code, capsys):
    exec(compile(textwrap.dedent(code), "<solution>", "exec"), {})


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_chapter_ends_with_at_least_three_exercises_with_solutions(path):
    found = exercises(path)
    assert len(found) >= 3 and all(e.solution for e in found)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_chapter_offers_a_check_from_lora_edu(path):
    markdown = "\n".join(
        c.source for c in read(path).cells if c.cell_type == "markdown"
    )
    checks = set(re.findall(r"`(check_\w+)\(", markdown))
    exercises = importlib.import_module("lora_edu.exercises")
    assert checks, f"{path.name} names no check"
    assert all(hasattr(exercises, name) for name in checks), checks
