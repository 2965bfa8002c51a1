"""The autograded assignments: their text is the chapters', and otter grades them right.

Each master notebook in assignments/ holds a chapter's gradable exercises in
otter-grader's format. The grading tests build every assignment (`otter assign`), then
grade three submissions of each in one process: the reference solutions, the blank
student notebook, and the reference with one wrong answer. They need the `instructor`
extra (otter-grader) and skip without it.
"""

import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "_ext"))
sys.path.insert(0, str(ROOT / "tools"))
from colab_setup import setup_cell  # noqa: E402
from jupyter_exercises import is_exercise, parse_exercise, without_solution  # noqa: E402

import assignments  # noqa: E402

MASTERS = assignments.masters()
# One wrong answer per assignment: (question, variable, a typical wrong value).
WRONG = {
    "01_matrix_rank": ("q1_1", "rank_M", "3"),
    "02_svd": ("q2_1", "sigma", "[45, 5]"),
    "03_low_rank_approximation": ("q3_2", "lora_count", "32_768"),
    "04_lora_from_scratch": ("q4_3", "budget_r", "11"),
    "05_lora_on_llama3": ("q5_1", "count_70b", "80 * 2 * 8 * (8192 + 8192)"),
    "06_peft_workflow": ("q6_1", "perplexity", "2**1.25"),
    "07_lora_paper_experiments": ("q7_1", "budget_r4", "2 * 12288 * 4 * 4"),
    "08_lora_variants": ("q8_1", "alpha_plain", "16 / math.sqrt(64)"),
    "09_qlora_from_first_principles": ("q9_3", "cast_count", "2 * 128256 * 8192"),
    "10_lora_cost": ("q10_2", "flop_ratio", "0.5"),
}

# Right answers reached the way the exercise suggests, which must keep full marks:
# (assignment, student, the cell that sets this variable, code appended to it).
DETOURS = [
    # Exercise 8.2 says "confirm it with pissa_init", which overwrites the model's
    # q_proj weight with the residual; the hidden test must not depend on it.
    (
        "08_lora_variants",
        "confirmed_with_pissa_init",
        "pissa_share",
        "q_proj = model.model.layers[0].self_attn.q_proj\n"
        "pissa_init(LoRALinear.from_linear(q_proj, 16, 8))",
    ),
]


def chapter_exercises(name):
    cells = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4).cells
    return [parse_exercise(c.source) for c in cells if is_exercise(c.source)]


def test_every_chapter_has_an_assignment():
    chapters = {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert chapters == set(MASTERS) and set(WRONG) == set(MASTERS)


@pytest.mark.parametrize("name", MASTERS)
def test_an_assignment_installs_the_course_as_every_chapter_does(name):
    # The repository URL is written by hand only in _config.yml; tools/colab_setup.py
    # writes the cell from it, and this copy must follow.
    cells = nbformat.read(MASTERS[name], as_version=4).cells
    installs = [c.source for c in cells if "google.colab" in c.source]
    assert installs == [setup_cell().source], (
        f"{name}: copy the setup cell that tools/colab_setup.py writes"
    )


@pytest.mark.parametrize("name", MASTERS)
def test_an_assignment_quotes_its_chapter_exercises_word_for_word(name):
    exercises = {f"{e.chapter}.{e.number}": e for e in chapter_exercises(name)}
    for question, _, prompt, _, _ in assignments.questions(MASTERS[name]):
        number = re.match(r"#### Exercise (\d+\.\d+):", prompt)[1]
        quoted = without_solution(exercises[number])
        assert prompt.startswith(quoted + "\n\n**For grading:** "), (
            f"{name} {question}: the text of Exercise {number} "
            "has drifted from the chapter"
        )


def solution_lines(master):
    """Lines of solution code and hidden tests that nothing a student sees contains."""
    cells = nbformat.read(master, as_version=4).cells
    secret, visible = set(), []
    for _, _, prompt, solution, hidden in assignments.questions(master):
        visible.append(prompt)
        inside = "".join(
            re.findall(r"# BEGIN SOLUTION[^\n]*\n(.*?)# END SOLUTION", solution, re.S)
        )
        for line in solution.splitlines():
            if "# SOLUTION" in line:
                code = line.split("# SOLUTION")[0].strip()
                secret.add(code.split(" = ", 1)[-1])
            elif line not in inside.splitlines():
                visible.append(line)
        secret |= {line.strip() for line in inside.splitlines()}
        secret |= {line.strip() for test in hidden for line in test.splitlines()[1:]}
    visible += [c.source for c in cells if "# SOLUTION" not in c.source]
    visible = [c for c in visible if not c.startswith("# HIDDEN")]
    shown = "\n".join(visible)
    return {line for line in secret if len(line) >= 8 and line not in shown}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pytest.importorskip("otter", reason="the grading tests need the `instructor` extra")
    out = tmp_path_factory.mktemp("assignments")
    assignments.build(out)
    return out


@pytest.fixture(scope="module")
def grades(built, tmp_path_factory):
    """Grades of the reference, blank, one-wrong and DETOURS submissions."""
    found = {}
    for name, (_, variable, wrong) in WRONG.items():
        folder = tmp_path_factory.mktemp(name)
        reference = nbformat.read(built / name / "autograder" / f"{name}.ipynb", 4)
        nbformat.write(reference, folder / "reference.ipynb")
        blank = nbformat.read(built / name / "student" / f"{name}.ipynb", 4)
        nbformat.write(blank, folder / "blank.ipynb")
        pattern = re.compile(rf"^{variable} = .*$", re.M)
        changed = [c for c in reference.cells if pattern.search(c.source)]
        assert len(changed) == 1, f"{name}: {variable} is not set in one cell"
        changed[0].source = pattern.sub(f"{variable} = {wrong}", changed[0].source)
        nbformat.write(reference, folder / "one_wrong.ipynb")
        for _, student, variable, code in (d for d in DETOURS if d[0] == name):
            detour = nbformat.read(folder / "reference.ipynb", 4)
            (cell,) = [c for c in detour.cells if f"\n{variable} = " in c.source]
            cell.source += "\n" + code
            nbformat.write(detour, folder / f"{student}.ipynb")
        autograder = built / name / "autograder.zip"
        submissions = sorted(folder.glob("*.ipynb"))
        found[name] = assignments.grade(autograder, submissions)
    return found


def scores(rows, student):
    return {
        r["question"]: (r["points"], r["total"])
        for r in rows
        if r["student"] == student
    }


@pytest.mark.parametrize("name", MASTERS)
def test_reference_full_marks_blank_zero_one_wrong_loses_that_question(grades, name):
    points = {q: p for q, p, *_ in assignments.questions(MASTERS[name])}
    reference, blank = scores(grades[name], "reference"), scores(grades[name], "blank")
    one_wrong = scores(grades[name], "one_wrong")
    assert reference == {q: (p, p) for q, p in points.items()}
    assert blank == {q: (0, p) for q, p in points.items()}
    question = WRONG[name][0]
    assert one_wrong == {q: (0 if q == question else p, p) for q, p in points.items()}


@pytest.mark.parametrize(("name", "student"), [d[:2] for d in DETOURS])
def test_a_right_answer_reached_the_way_the_exercise_suggests_keeps_full_marks(
    grades, name, student
):
    points = {q: p for q, p, *_ in assignments.questions(MASTERS[name])}
    assert scores(grades[name], student) == {q: (p, p) for q, p in points.items()}


@pytest.mark.parametrize("name", MASTERS)
def test_student_files_hold_no_solution_or_hidden_test(built, name):
    secrets = solution_lines(MASTERS[name])
    assert secrets, f"{name}: found no solution text to look for"
    everything = {
        p: readable(p) for p in (built / name / "student").rglob("*") if p.is_file()
    }
    assert any(p.suffix == ".ipynb" for p in everything)
    for path, text in everything.items():
        for secret in secrets:
            assert secret not in text, f"{path.name} holds {secret!r}"
    # The search is only as good as `readable`: it finds solutions where they belong.
    reference = readable(built / name / "autograder" / f"{name}.ipynb")
    assert any(secret in reference for secret in secrets)


def readable(path):
    """A file's text as its reader sees it: cell sources, test code, or the text."""
    if path.suffix == ".ipynb":
        return "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
    if path.suffix == ".py":
        namespace = {}
        exec(path.read_text(), namespace)
        cases = [c for suite in namespace["test"]["suites"] for c in suite["cases"]]
        return "\n".join(case["code"] for case in cases)
    return path.read_text(errors="ignore")


# Chapter 10's questions, each with a wrong answer of the right type: the hidden tests
# must take the reference solution and refuse the wrong one (no grader run needed).
WRONG_EACH = [
    ("10_lora_cost", "q10_1", "full_gb", 12 * 2_500_000_000 / 1e9),
    ("10_lora_cost", "q10_2", "flop_ratio", 0.5),
    ("10_lora_cost", "q10_3", "adapter_bytes", 2 * 12288 * 4 * 2 * 96),
]


@pytest.mark.parametrize(("name", "question", "variable", "wrong"), WRONG_EACH)
def test_hidden_tests_take_the_solution_and_refuse_a_wrong_answer(
    name, question, variable, wrong
):
    ((solution, hidden),) = [
        (q[3], q[4]) for q in assignments.questions(MASTERS[name]) if q[0] == question
    ]
    right = {}
    exec(solution, right)
    for test in hidden:
        exec(test, dict(right))
    for test in hidden:
        with pytest.raises(AssertionError):
            exec(test, {variable: wrong})
