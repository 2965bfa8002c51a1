"""No graded answer in what students see: the student edition and the hand-outs.

For every graded question of every assignment (assignments/*.ipynb), two searches of
the student edition's chapters (student/notebooks/: code, outputs, exercise text):

- a demo must not run the question's own check on the question's own inputs: its hint
  then speaks of this very answer ("those are the eigenvalues of AᵀA, take their square
  roots" is the answer to Exercise 2.1). The inputs are the public test's arguments
  that are not answers, compared as code after following names to what they are set to.
- the answer's value, printed as a number (four significant digits or more), must not
  appear in the assignment's own chapter or in its hand-out.
"""

import ast
import math
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import assignments  # noqa: E402

CHAPTERS = sorted((ROOT / "student" / "notebooks").glob("*.ipynb"))
MASTERS = assignments.masters()
QUESTIONS = {
    question: name
    for name, master in MASTERS.items()
    for question, *_ in assignments.questions(master)
}
# Answers an exercise states by design, with the reason. Nothing else may appear.
STATED = {
    "q6_2": "the exercise asks to derive the count that the chapter printed",
    "q7_1": "the exercise quotes the paper's count and asks for its derivation",
}


def code(source):
    """Cell source as Python: IPython magics and shell lines become `pass`."""
    return re.sub(r"^(\s*)[%!].*$", r"\1pass", source, flags=re.M)


def definitions(sources):
    """name → the expression last assigned to it at the top level of these sources."""
    found = {}
    for source in sources:
        for node in ast.parse(code(source)).body:
            single = isinstance(node, ast.Assign) and len(node.targets) == 1
            if single and isinstance(node.targets[0], ast.Name):
                found[node.targets[0].id] = node.value
    return found


def normal(expression, known, depth=0):
    """An argument as code, with a name replaced by what it was set to."""
    if isinstance(expression, ast.Name) and expression.id in known and depth < 5:
        return normal(known[expression.id], known, depth + 1)
    return ast.unparse(expression)


def check_calls(source):
    """(check, [arguments]) for each call of a check_*, direct or through require."""
    for node in ast.walk(ast.parse(code(source))):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            continue
        if node.func.id == "require" and isinstance(node.args[0], ast.Name):
            yield node.args[0].id, node.args[1:]
        elif node.func.id.startswith("check_"):
            yield node.func.id, node.args


def answer_names(solution):
    """The names bound on lines marked SOLUTION."""
    found = set()
    lines = solution.splitlines()
    for node in ast.parse(solution).body:
        if any("SOLUTION" in line for line in lines[node.lineno - 1 : node.end_lineno]):
            targets = getattr(node, "targets", [getattr(node, "target", None)])
            found |= {getattr(node, "name", None)} | {
                n.id
                for t in targets
                if t
                for n in ast.walk(t)
                if isinstance(n, ast.Name)
            }
    return found - {None}


def public_test(cells, question_name):
    """The public test of a question: the first test cell not marked # HIDDEN."""
    owner, in_tests = None, False
    for cell in cells:
        if cell.source.startswith("# BEGIN QUESTION"):
            owner = re.search(r"name: (\w+)", cell.source)[1]
        in_tests = (in_tests or cell.source == "# BEGIN TESTS") and (
            cell.source != "# END TESTS"
        )
        public = cell.cell_type == "code" and not cell.source.startswith("# HIDDEN")
        if owner == question_name and in_tests and public:
            return cell.source
    raise AssertionError(f"{question_name} has no public test")


def question(question_name):
    """(solution code, answer names, the public test's check, its inputs as code)."""
    master = MASTERS[QUESTIONS[question_name]]
    cells = nbformat.read(master, as_version=4).cells
    known = definitions(c.source for c in cells if c.cell_type == "code")
    (solution,) = [
        s for q, _, _, s, _ in assignments.questions(master) if q == question_name
    ]
    answers = answer_names(solution)
    calls = list(check_calls(public_test(cells, question_name)))
    if not calls:  # a type check only, such as isinstance(...)
        return solution, answers, None, {}
    check, arguments = calls[0]
    inputs = {
        i: normal(a, known)
        for i, a in enumerate(arguments)
        if not (isinstance(a, ast.Name) and a.id in answers)
    }
    return solution, answers, check, inputs


def chapter_text(path):
    """Everything a learner sees in a chapter: sources and text outputs."""
    parts = []
    for cell in nbformat.read(path, as_version=4).cells:
        parts.append(cell.source)
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def printed_forms(value):
    """How a number would be printed, where that is specific enough to search for."""
    if isinstance(value, (list, tuple)):
        return {f for v in value for f in printed_forms(v)}
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return set()
    if float(value).is_integer():
        n = int(value)
        return {str(n), f"{n:,}", f"{n:_}"} if abs(n) >= 1000 else set()
    # Four significant digits: fewer (0.5, 2.24) turn up in any chapter by chance.
    forms = {f"{value:.4g}", f"{value:.4f}"}
    return {f for f in forms if len(f.replace(".", "").strip("-0")) >= 4}


def answer_values(solution, answers):
    """The values of the answers that plain arithmetic gives (others are skipped)."""
    values = {}
    for node in ast.parse(solution).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else None
        if isinstance(target, ast.Name) and target.id in answers:
            try:
                value = eval(ast.unparse(node.value), {"math": math})
            except (NameError, AttributeError, TypeError):
                continue
            values[target.id] = value
    return values


@pytest.mark.parametrize("name", sorted(QUESTIONS))
def test_no_demo_runs_a_graded_check_on_its_own_inputs(name):
    _, _, check, inputs = question(name)
    if not inputs:
        pytest.skip(f"{check} takes only the answer (a function)")
    for path in CHAPTERS:
        cells = [
            c.source
            for c in nbformat.read(path, as_version=4).cells
            if c.cell_type == "code"
        ]
        for i, source in enumerate(cells):
            known = definitions(cells[: i + 1])
            for called, arguments in check_calls(source):
                same = called == check and all(
                    i < len(arguments) and normal(arguments[i], known) == expected
                    for i, expected in inputs.items()
                )
                assert not same, (
                    f"{path.name} runs {check} on {name}'s own inputs: its hint speaks "
                    "of the graded answer; demonstrate the check on other inputs"
                )


@pytest.mark.parametrize("name", sorted(QUESTIONS))
def test_no_graded_answer_is_printed_in_the_student_edition_or_handout(name, built):
    solution, answers, _, _ = question(name)
    forms = set()
    for value in answer_values(solution, answers).values():
        forms |= printed_forms(value)
    if name in STATED:
        pytest.skip(STATED[name])
    assignment = QUESTIONS[name]
    chapter = ROOT / "student" / "notebooks" / f"{assignment}.ipynb"
    handout = built / assignment / "student" / f"{assignment}.ipynb"
    texts = {p.name: chapter_text(p) for p in [chapter, handout]}
    for path, text in texts.items():
        found = [
            f for f in forms if re.search(rf"(?<![\d.,_]){re.escape(f)}(?!\d)", text)
        ]
        assert not found, f"{path} shows {name}'s answer: {found}"


def test_the_searches_find_what_they_look_for():
    # A demo on Exercise 2.1's own matrix is found, and so is a printed 65,536.
    _, _, check, inputs = question("q2_1")
    demo = "A = [[3, 0], [4, 5]]\ncheck_singular_values(A, [45, 5])"
    (call,) = check_calls(demo)
    known = definitions([demo])
    assert call[0] == check and normal(call[1][0], known) == inputs[0]
    assert "65,536" in printed_forms(65_536) and "2.236" in printed_forms(5**0.5)
    assert printed_forms(0.5) == printed_forms(2.25) == set()
