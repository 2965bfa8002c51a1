"""`make grade` holds: each notebook sandboxed, a bad file costs one grade, a safe CSV.

One grading run of a folder that mixes a right answer (under a formula's name, with a
kernel of its own), a hostile notebook, a broken file, a loop, a dead kernel, another
assignment's notebook and a text file; then the CSV, the refusal to grade unsandboxed,
and the hand-out run in a working folder other than its own, as Colab runs it.
"""

import contextlib
import csv
import io
import os
import random
import socket
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import colab_check  # noqa: E402

import assignments  # noqa: E402

NAME = "01_matrix_rank"
TIME_LIMIT = 90  # s: far above a notebook's grading here, and what the loop costs
SLEEP = 900_000 + random.randrange(99_999)  # a process no one else runs

HOSTILE = """\
import os
import pathlib
import socket
import subprocess

import lora_edu

package = pathlib.Path(lora_edu.__file__).resolve().parent
repository = package.parent
broke_out = (repository / "assignments").exists()  # the masters, hidden tests
for target in [{outside!r}, repository / "{token}", package / "{token}"]:
    try:
        pathlib.Path(target).write_text("written by a submission")
        broke_out = True
    except OSError:
        pass
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=5).sendall(b"answers")
    broke_out = True
except OSError:
    pass
subprocess.Popen(["sleep", "{sleep}"], start_new_session=True)


def require(*a, **k):
    return None


exact_rank = lambda m: rank_M  # noqa: E731
"""


def reference(out, name=NAME):
    return nbformat.read(out / name / "autograder" / f"{name}.ipynb", as_version=4)


def sleepers():
    """Processes whose command line is the hostile notebook's `sleep`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if f"sleep\0{SLEEP}".encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
    return found


@pytest.fixture(scope="module")
def batch(build_assignment, tmp_path_factory):
    """One `grade` run over the mixed folder: (exit status, printed text, CSV rows)."""
    out = build_assignment(NAME)
    build_assignment("02_svd")
    tmp = tmp_path_factory.mktemp("batch")
    folder = tmp / "submissions"
    folder.mkdir()
    listener = socket.create_server(("127.0.0.1", 0))
    token = f"written-by-a-submission-{random.randrange(10**9)}"
    outside = tmp / token

    right = reference(out)
    right.metadata["kernelspec"]["name"] = "my-own-env"
    nbformat.write(right, folder / '=HYPERLINK("x").ipynb')
    hostile = reference(out)
    code = HOSTILE.format(
        outside=str(outside), token=token, port=listener.getsockname()[1], sleep=SLEEP
    )
    hostile.cells.insert(5, nbformat.v4.new_code_cell(code))
    for cell in hostile.cells:
        cell.source = cell.source.replace("rank_M = 2", "rank_M = 3")
        # Right, unless it could reach the repository, the host or the network.
        cell.source = cell.source.replace(
            "M_rank_2 = [", "M_rank_2 = [[0]] if broke_out else ["
        )
    nbformat.write(hostile, folder / "carl.IPYNB")
    (folder / "cleo.ipynb").write_text(nbformat.writes(reference(out))[:900])
    looping = reference(out)
    looping.cells.insert(5, nbformat.v4.new_code_cell("while True:\n    pass"))
    nbformat.write(looping, folder / "dan.ipynb")
    dying = reference(out)
    dying.cells.insert(5, nbformat.v4.new_code_cell("import os\n\nos._exit(1)"))
    nbformat.write(dying, folder / "gus.ipynb")
    nbformat.write(reference(out, "02_svd"), folder / "hal.ipynb")
    (folder / "notes.txt").write_text("my answers are in the notebook")

    grades = tmp / "grades.csv"
    printed = io.StringIO()
    arguments = ["grade", NAME, str(folder), "--build", str(out), "--output"]
    arguments += [str(grades), "--time-limit", str(TIME_LIMIT)]
    if assignments.sandbox_problem():
        arguments.append("--unsafe")
    with contextlib.redirect_stdout(printed):
        status = assignments.main(arguments)
    listener.setblocking(False)
    try:
        listener.accept()
        connected = True
    except BlockingIOError:
        connected = False
    listener.close()
    with grades.open() as file:
        rows = list(csv.DictReader(file))
    found = {
        "status": status,
        "printed": printed.getvalue(),
        "rows": rows,
        "connected": connected,
        "outside": outside,
        "token": token,
        "sleepers": sleepers(),
    }
    for pid in found["sleepers"]:  # left by an unsandboxed run: do not leave it
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), 9)
    return found


def by_student(rows):
    found = {}
    for row in rows:
        found.setdefault(row["student"], {})[row["question"]] = (
            row["points"],
            row["total"],
            row["reason"],
        )
    return found


def test_one_bad_submission_costs_only_its_own_grade(batch):
    assert batch["status"] == 0
    graded = by_student(batch["rows"])
    kernel = "its kernel 'my-own-env' was replaced by python3"
    # The CSV writes points as whole numbers where they are (1, not 1.0).
    assert graded['\'=HYPERLINK("x")'] == {
        "q1_1": ("1", "1", kernel),
        "q1_3": ("2", "2", kernel),
    }
    reasons = {
        "cleo": "not graded: not a notebook (broken or half-written file)",
        "dan": f"not graded: timed out after {TIME_LIMIT} s",
        "gus": "not graded: its kernel died",
        "hal": "not graded: a notebook of assignment 02_svd, not 01_matrix_rank",
        "notes.txt": "not graded: not a .ipynb notebook",
    }
    for student, reason in reasons.items():
        assert graded[student] == {
            "q1_1": ("0", "1", reason),
            "q1_3": ("0", "2", reason),
        }, student
    assert "not notebooks, listed with 0 points: notes.txt" in batch["printed"]
    assert set(graded) == {'\'=HYPERLINK("x")', "carl", *reasons}


def test_a_submission_cannot_write_outside_connect_or_outlive_its_grading(batch):
    if assignments.sandbox_problem():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI needs the sandbox: {assignments.sandbox_problem()}")
        pytest.skip(assignments.sandbox_problem())
    # The hostile notebook (carl.IPYNB) tampered with its namespace: q1_1, wrong, gets
    # nothing. Its q1_3 is right only if none of its attempts got through.
    assert by_student(batch["rows"])["carl"] == {
        "q1_1": ("0", "1", ""),
        "q1_3": ("2", "2", ""),
    }
    assert not batch["outside"].exists()
    assert not (ROOT / batch["token"]).exists()
    assert not (assignments.package_folder() / batch["token"]).exists()
    assert not batch["connected"]
    assert batch["sleepers"] == []


def test_the_csv_is_spreadsheet_safe_and_never_replaced_silently(tmp_path):
    path = tmp_path / "grades.csv"
    rows = [
        {"student": s, "question": "q1_1", "points": 1.0, "total": 1, "reason": ""}
        for s in ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "ada"]
    ]
    assert assignments.write_csv(rows[:1], path) is None
    first = path.read_text()
    backup = assignments.write_csv(rows, path)
    assert backup is not None and backup.read_text() == first
    with path.open() as file:
        written = list(csv.DictReader(file))
    assert [r["student"] for r in written] == [
        "'=1+1",
        "'+1",
        "'-1",
        "'@SUM(A1)",
        "'\tx",
        "ada",
    ]
    assert {r["points"] for r in written} == {"1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["grades.csv", backup.name]
    )


def test_grading_refuses_to_run_without_a_sandbox_unless_told(
    tmp_path, monkeypatch, capsys
):
    (tmp_path / "build" / NAME).mkdir(parents=True)
    (tmp_path / "build" / NAME / "autograder.zip").write_bytes(b"")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "ada.ipynb").write_text("{}")
    monkeypatch.setattr(assignments, "sandbox_problem", lambda: "no bubblewrap here")
    arguments = [
        "grade",
        NAME,
        str(tmp_path / "in"),
        "--build",
        str(tmp_path / "build"),
    ]
    status = assignments.main([*arguments, "--output", str(tmp_path / "grades.csv")])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1
    assert "no bubblewrap here" in error and "UNSAFE=1" in error
    assert not (tmp_path / "grades.csv").exists()


def test_the_handout_checks_answers_from_a_working_folder_of_its_own(
    build_assignment, tmp_path
):
    # Colab runs a notebook in /content, wherever it lives: the hand-out must find its
    # public tests from a working folder that holds nothing, with otter in Colab mode.
    out = build_assignment(NAME)
    student = nbformat.read(out / NAME / "student" / f"{NAME}.ipynb", as_version=4)
    (tmp_path / "content").mkdir()
    answers = (
        'rank_M = 3\nassert grader.check("q1_1").grade == 0\n'
        'rank_M = 2\nassert grader.check("q1_1").grade == 1'
    )
    student.cells.append(nbformat.v4.new_code_cell(answers))
    colab_check.run_as_in_colab(student, tmp_path / "content")
    assert (tmp_path / "content" / "tests" / "q1_1.py").is_file()
