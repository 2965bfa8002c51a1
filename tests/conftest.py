"""Fixtures shared by the grading tests."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import assignments


@pytest.fixture(scope="session")
def build_assignment(tmp_path_factory):
    """A function that builds one assignment as `make assignments` does, once."""
    pytest.importorskip("otter", reason="the grading tests need the `instructor` extra")
    out = tmp_path_factory.mktemp("assignments")

    def build(name):
        if not (out / name / "autograder.zip").exists():
            assignments.build(out, [name])
        return out

    return build


@pytest.fixture(scope="session")
def built(build_assignment):
    """Every assignment built (about 10 s each), in one folder."""
    for name in assignments.masters():
        out = build_assignment(name)
    return out
