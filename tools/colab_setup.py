"""Write each notebook's Colab setup cell from the one repository URL in `_config.yml`.

Colab opens a notebook alone, without the repository, so each notebook must carry the
install command itself. The URL is still written by hand only in `_config.yml`; run this
script after changing it, and `tests/test_notebooks.py` and `tests/test_assignments.py`
fail until every chapter and assignment agrees.

    python tools/colab_setup.py
"""

from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]


def repository_url() -> str:
    """The repository URL that `_config.yml` gives to the launch buttons."""
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]


def setup_cell() -> nbformat.NotebookNode:
    """The first cell of every chapter: installs `lora_edu` in Colab, nothing elsewhere.

    IPython expands {REPOSITORY} in the %pip line magic: with the URL on a line of its
    own, every line of the cell fits 88 columns.
    """
    source = (
        "# In Google Colab, install the course's package `lora_edu`; "
        "elsewhere, do nothing.\n"
        "import sys\n"
        "\n"
        f'REPOSITORY = "{repository_url()}"\n'
        'if "google.colab" in sys.modules:\n'
        '    %pip install --quiet "lora-edu @ git+{REPOSITORY}"'
    )
    cell = nbformat.v4.new_code_cell(source)
    # nbval skips it; the rendered book hides it (the launch buttons do its job there).
    cell.metadata["tags"] = ["nbval-skip", "remove-cell"]
    return cell


def main() -> None:
    fresh = setup_cell()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        first = notebook.cells[0]
        if (first.source, first.metadata) != (fresh.source, fresh.metadata):
            first.source, first.metadata = fresh.source, fresh.metadata
            nbformat.write(notebook, path)
            print(f"updated {path.relative_to(ROOT)}")
    # The assignments install the course the same way, in a cell after otter's config.
    for path in sorted((ROOT / "assignments").glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        (cell,) = [c for c in notebook.cells if "google.colab" in c.source]
        if cell.source != fresh.source:
            cell.source = fresh.source
            nbformat.write(notebook, path)
            print(f"updated {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
