"""What a reader meets in every chapter: plain-markdown citations, sourced in
references.bib, no reference to a cell the book hides, and figure text that matplotlib
renders as maths.

The chapters must read well in Jupyter and Colab as well as in the book, so their
markdown uses no MyST-only roles; a citation is a plain link to the paper, and the paper
has an entry in book/references.bib, the book's bibliography.
"""

import ast
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BIBLIOGRAPHY = (ROOT / "book" / "references.bib").read_text()
# Chapters that still carry MyST roles, with the work that removes them. Their tests are
# expected to fail (strictly: once one passes, remove its entry).
PENDING_ROLES: dict[str, str] = {}
ROLE = re.compile(r"\{(?:cite(?::\w+)?|numref|ref|eq|glue(?::\w+)?|doc|download)\}`")
PAPER_LINK = re.compile(
    r"\]\(https?://(?:arxiv\.org/(?:abs|pdf)/(?P<arxiv>\d{4}\.\d{4,5})"
    r"|(?:dx\.)?doi\.org/(?P<doi>10\.[^)\s]+))"
)
HIDDEN = {"remove-cell", "remove-input", "hide-cell", "hide-input"}
CELL_ABOVE = re.compile(r"\b(?:setup )?cell above\b", re.IGNORECASE)
LABEL_CALLS = {
    "set_title",
    "set_xlabel",
    "set_ylabel",
    "title",
    "xlabel",
    "ylabel",
    "suptitle",
}
LABEL_KEYWORDS = {"title", "xlabel", "ylabel", "label"}


def read(path):
    return nbformat.read(path, as_version=4)


def chapter(path):
    return path.stem.split("_")[0]


def markdown(path):
    return [c.source for c in read(path).cells if c.cell_type == "markdown"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_myst_roles_in_chapter_markdown(path):
    if chapter(path) in PENDING_ROLES:
        pytest.xfail(PENDING_ROLES[chapter(path)])
    roles = [m.group(0) for text in markdown(path) for m in ROLE.finditer(text)]
    assert not roles, (
        f"{path.name} uses MyST roles {roles}: write a plain markdown link"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_cited_paper_is_in_the_bibliography(path):
    missing = []
    for text in markdown(path):
        for m in PAPER_LINK.finditer(text):
            key = m.group("arxiv") or m.group("doi")
            if key.lower() not in BIBLIOGRAPHY.lower():
                missing.append(key)
    assert not missing, (
        f"{path.name} cites papers that book/references.bib lacks: {missing}"
    )


def test_the_bibliography_names_each_paper_the_chapters_rely_on():
    for key in ["2106.09685", "2312.03732", "2405.09673", "10.1093/qmath/11.1.50"]:
        assert key in BIBLIOGRAPHY


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_prose_points_at_a_cell_the_book_hides(path):
    last_code = None
    for cell in read(path).cells:
        if cell.cell_type == "code":
            last_code = cell
        elif CELL_ABOVE.search(cell.source) and last_code is not None:
            tags = set(last_code.metadata.get("tags", []))
            assert not tags & HIDDEN, (
                f"{path.name}: {cell.source[:80]!r} points at a cell the book hides"
            )


def figure_texts(source):
    """The strings a cell gives matplotlib as titles, axis labels or legend labels."""
    # IPython's %magic and !shell lines are not Python: parse them as `pass`.
    source = re.sub(r"^(\s*)[%!].*$", r"\1pass", source, flags=re.M)
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "attr", getattr(node.func, "id", ""))
        values = list(node.args) if name in LABEL_CALLS else []
        values += [k.value for k in node.keywords if k.arg in LABEL_KEYWORDS]
        for value in values:
            parts = value.values if isinstance(value, ast.JoinedStr) else [value]
            for part in parts:
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    yield part.value


def raw_tex(text):
    """TeX markup outside $…$, which matplotlib would print literally."""
    outside = re.sub(r"\$[^$]*\$", "", text)
    # A subscript after a symbol ("‖A‖²_F"); "q_proj" is a name, not maths.
    return re.findall(r"[_^]\{|\\[A-Za-z]+|(?<![A-Za-z0-9])_[A-Za-z0-9]", outside)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_figure_text_has_no_raw_tex(path):
    found = [
        text
        for cell in read(path).cells
        if cell.cell_type == "code"
        for text in figure_texts(cell.source)
        if raw_tex(text)
    ]
    assert not found, f"{path.name}: figure text with raw TeX (wrap it in $…$): {found}"


def test_raw_tex_is_recognised():
    assert raw_tex("share of ‖A‖²_F") and raw_tex("σ_{k+1}")
    assert not raw_tex(r"share of $\Vert A\Vert_F^2$") and not raw_tex("σᵢ (log scale)")
    assert not raw_tex("LoRA on q_proj")
