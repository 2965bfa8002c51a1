"""The autograded assignments: their text is the chapters', and otter grades them right.

Each master notebook in assignments/ holds a chapter's gradable exercises in
otter-grader's format. The grading tests build every assignment (`otter assign`), then
grade three submissions of each in one run, sandboxed as `make grade` does: the
reference solutions (full marks), the reference with a wrong answer of the right type to
every question (WRONG; no points), and the same with every check run in a tampered
namespace (TAMPER; no points). They need the `instructor` extra (otter-grader) and skip
without it.
"""

import ast
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
# Without bubblewrap (a developer's machine), grade unsandboxed; .ci/run installs it.
SAFE = assignments.sandbox_problem() is None
# For every graded question, a wrong answer of the right type: (variable, code). In the
# reference solutions, the line `variable = ...` becomes `variable = code`; a function
# is replaced after its definition. A new question needs its entry here.
WRONG = {
    "q1_1": ("rank_M", "3"),
    "q1_3": ("matrix_of_rank", "lambda r: M_rank_2"),  # right for r = 2 only
    "q2_1": ("sigma", "[45, 5]"),  # the eigenvalues of AᵀA, not their roots
    "q2_3": ("zero_eigenvalues", "3"),  # an int, as the public test asks
    "q3_1": ("spectral_error", "5**0.5"),  # the Frobenius error twice
    "q3_2": ("lora_share", "32_768 / 4096**2"),  # one factor
    "q3_3": ("k_995", "rank_for_energy(s, 0.99)"),  # any int passes the public test
    "q4_1": ("lora_forward", "lambda x, W, b, A, B, s: x @ W.T + b + x @ A.T @ B.T"),
    "q4_2": ("merged_weight", "lambda W, A, B, scaling: W.add_(scaling * B @ A)"),
    "q4_3": ("budget_r", "11"),
    "q5_1": ("count_70b", "80 * 2 * 8 * (8192 + 8192)"),  # square projections
    "q6_1": ("perplexity_factor", "math.exp(0.1)"),  # the perplexity rises
    "q6_2": ("count_dapt", "4 * (32 * (128 + 128) * 2 + 32 * (128 + 64) * 2)"),
    "q7_1": ("budget_r4", "2 * 12288 * 4 * 4"),  # one layer
    "q7_2": ("phi_gpt3", "8 / 12288"),  # min(i, j) instead of max
    "q7_3": ("amplification", "1.90 / 3.57"),  # divided the other way
    "q8_1": ("alpha_plain", "16 / math.sqrt(64)"),
    "q8_2": ("pissa_share", "(s[:16].sum() / s.sum()).item()"),  # σ, not σ²
    "q8_3": ("dora_count", "32 * 16 * (2 * (4096 + 4096) + 2 * (4096 + 1024))"),
    "q8_4": (
        "convert",
        "lambda A, B, A0, B0: (torch.cat([A, A0]), torch.cat([B, B0], 1))",
    ),
    "q9_1": ("nf4_codes", "[12, 0, 8, 15]"),  # not divided by the absmax
    "q9_2": ("bits_128", "4 + 32 / 128"),  # no double quantization
    "q9_3": ("cast_count", "2 * 128256 * 8192"),  # the norms forgotten
    "q10_1": ("full_gb", "12 * 2_500_000_000 / 1e9"),  # no float32 master copy
    "q10_2": ("flop_ratio", "0.5"),  # the frozen weights' input gradients forgotten
    "q10_3": ("adapter_bytes", "2 * 12288 * 4 * 2 * 96"),  # values, not bytes
    "q11_1": (  # the FLOPs of both products counted, not the share
        "share_k_proj",
        "2 * 16 * (1024 + 4096) / (1024 * 4096)",
    ),
    "q11_2": (  # float32 bytes instead of bfloat16's
        "adapter_gb",
        "1000 * 4 * 32 * (8 * (4096 + 4096) + 8 * (1024 + 4096)) / 1e9",
    ),
    "q11_3": ("cross_norm", "2.0"),  # the norms added, not their squares
    "q12_1": ("allreduce_bytes", "32 * (8 * 8192 + 8 * 5120)"),  # gradients, not bytes
    "q12_2": ("stage2_gb", "16 * 8_030_261_248 / 4 / 1e9"),  # stage 3's
    "q12_3": ("rank0_scale", "3000 / 4000"),  # DDP's mean over ranks not undone
}

# What a submission can do to its own namespace before a check: every name the
# notebook binds, but the answers, becomes an object equal to everything, and the
# issue's two tricks are added. The names are restored after the check.
TAMPER = """\
_real = {{n: globals()[n] for n in {names!r} if n in globals()}}


class _Yes:
    def __getattr__(self, name):
        return self

    def __call__(self, *args, **kwargs):
        return self

    def __getitem__(self, key):
        return self

    def __eq__(self, other):
        return True

    __lt__ = __le__ = __gt__ = __ge__ = __eq__
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __call__
    __truediv__ = __rtruediv__ = __pow__ = __matmul__ = __rmatmul__ = __call__
    __abs__ = __neg__ = __call__


for _name in _real:
    globals()[_name] = _Yes()


def require(*a, **k):
    return None


exact_rank = lambda m: rank_M  # noqa: E731
{check}
globals().update(_real)
"""

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
    assert chapters == set(MASTERS)


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


def question_names(name):
    return [q for q, *_ in assignments.questions(MASTERS[name])]


def bound_names(node):
    """The names a top-level statement binds."""
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(a.asname or a.name).split(".")[0] for a in node.names}
    targets = getattr(node, "targets", [getattr(node, "target", None)])
    return {n.id for t in targets if t for n in ast.walk(t) if isinstance(n, ast.Name)}


def answer_names(name):
    """The names a master's solutions bind on lines marked SOLUTION: the answers."""
    found = set()
    for *_, solution, _ in assignments.questions(MASTERS[name]):
        lines = solution.splitlines()
        for node in ast.parse(solution).body:
            span = lines[node.lineno - 1 : node.end_lineno]
            if any("SOLUTION" in line for line in span):
                found |= bound_names(node)
    return found


def given_names(notebook):
    """Every top-level name a notebook's code binds (magics left out)."""
    found = set()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            code = re.sub(r"^(\s*)[%!].*$", r"\1pass", cell.source, flags=re.M)
            for node in ast.parse(code).body:
                found |= bound_names(node)
    return found


def with_wrong_answers(notebook, questions):
    """The notebook with WRONG's answer to each of `questions` in place of its own."""
    for question in questions:
        variable, code = WRONG[question]
        assigned = re.compile(rf"^{variable} = .*$", re.M)
        cells = [
            c
            for c in notebook.cells
            if assigned.search(c.source) or f"def {variable}(" in c.source
        ]
        assert len(cells) == 1, f"{question}: {variable} is not set in one cell"
        if assigned.search(cells[0].source):
            cells[0].source = assigned.sub(f"{variable} = {code}", cells[0].source)
        else:
            cells[0].source += f"\n{variable} = {code}"
    return notebook


def tampered(notebook, name):
    """The notebook with each check run in a namespace tampered as TAMPER does."""
    names = sorted(given_names(notebook) - answer_names(name) - {"grader", "otter"})
    for cell in notebook.cells:
        if cell.source.startswith("grader.check("):
            cell.source = TAMPER.format(names=names, check=cell.source)
    return notebook


@pytest.fixture(scope="module")
def grades(built, tmp_path_factory):
    """Grades of the reference, its wrong answers, tampered or not, and DETOURS."""
    found = {}
    for name in MASTERS:
        folder = tmp_path_factory.mktemp(name)
        path = built / name / "autograder" / f"{name}.ipynb"
        reference = nbformat.read(path, 4)
        nbformat.write(reference, folder / "reference.ipynb")
        wrong = with_wrong_answers(reference, question_names(name))
        nbformat.write(wrong, folder / "wrong.ipynb")
        nbformat.write(tampered(wrong, name), folder / "tampered.ipynb")
        for _, student, variable, code in (d for d in DETOURS if d[0] == name):
            detour = nbformat.read(path, 4)
            (cell,) = [c for c in detour.cells if f"\n{variable} = " in c.source]
            cell.source += "\n" + code
            nbformat.write(detour, folder / f"{student}.ipynb")
        autograder = built / name / "autograder.zip"
        submissions = sorted(folder.glob("*.ipynb"))
        found[name] = assignments.grade(autograder, submissions, name, safe=SAFE)
    return found


def scores(rows, student):
    return {
        r["question"]: (r["points"], r["total"])
        for r in rows
        if r["student"] == student
    }


def test_every_question_has_a_wrong_answer_and_is_all_or_nothing():
    graded = [q for name in MASTERS for q in question_names(name)]
    assert sorted(WRONG) == sorted(graded)
    # otter splits a question's points over its tests unless all_or_nothing is set.
    for name, master in MASTERS.items():
        for cell in nbformat.read(master, as_version=4).cells:
            if cell.source.startswith("# BEGIN QUESTION"):
                assert "\nall_or_nothing: true" in cell.source, f"{name}: {cell.source}"


@pytest.mark.parametrize("name", MASTERS)
def test_reference_full_marks_and_wrong_answers_none_tampered_or_not(grades, name):
    points = {q: p for q, p, *_ in assignments.questions(MASTERS[name])}
    assert scores(grades[name], "reference") == {q: (p, p) for q, p in points.items()}
    assert scores(grades[name], "wrong") == {q: (0, p) for q, p in points.items()}
    assert scores(grades[name], "tampered") == {q: (0, p) for q, p in points.items()}


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
