# The two Quickstart commands: `make book` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The book's local MathJax, fetched once from the npm registry (tools/fetch_mathjax.py).
MATHJAX := _mathjax/mathjax/tex-mml-chtml.js

.PHONY: book book-student assignments grade test notebooks colab-check clean

book: $(VENV)/.installed $(MATHJAX)
	$(BIN)/jupyter-book build .

# The student edition: chapters without solutions (student/notebooks/, rewritten here from
# notebooks/ and committed, so that its Colab buttons open them), built into _build/student.
book-student: $(VENV)/.installed $(MATHJAX)
	$(BIN)/python tools/student_edition.py --book _build/student-config
	$(BIN)/jupyter-book build . --config _build/student-config/_config.yml \
		--toc _build/student-config/_toc.yml --path-output _build/student

# Autograded assignments (otter-grader, the `instructor` extra): student notebooks with their
# tests/ folder and autograder.zip per chapter, under _build/assignments/NAME/.
assignments: $(VENV)/.installed
	$(BIN)/python tools/assignments.py build _build/assignments

# Grade a folder of submitted notebooks: make grade ASSIGNMENT=01_matrix_rank SUBMISSIONS=dir
# writes _build/grades/ASSIGNMENT.csv (student, question, points, total, reason), keeping an
# older one as a backup. Each notebook runs in a bubblewrap sandbox (no network, writes only
# to its scratch folder, 300 s); without bubblewrap it refuses unless UNSAFE=1.
grade: $(VENV)/.installed
	$(BIN)/python tools/assignments.py grade "$(ASSIGNMENT)" "$(SUBMISSIONS)" \
		$(if $(filter 1,$(UNSAFE)),--unsafe)

# Lint, unit tests, the notebooks re-run (nbval), the strict book build, and last the
# book just built, opened in headless Chromium: formulas, figures, links, widths, no
# network.
test: $(VENV)/.installed $(MATHJAX)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest tests --ignore=tests/test_book_browser.py
	$(BIN)/pytest --nbval --nbval-current-env notebooks
	$(BIN)/jupyter-book build . --all -W --keep-going
	$(BIN)/pytest tests/test_book_browser.py

# Re-execute every chapter in place after editing it, so its stored outputs are current.
notebooks: $(VENV)/.installed
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.record_timing=False --ExecutePreprocessor.timeout=600 \
		notebooks/*.ipynb
	$(BIN)/python tools/student_edition.py

# Every chapter run as Colab runs it: Python 3.12, no constraints, lora_edu from git.
# Downloads about 3 GB from PyPI the first time; not part of `make test`.
colab-check:
	$(PYTHON) tools/colab_check.py

$(MATHJAX):
	$(PYTHON) tools/fetch_mathjax.py

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[book,test,lab,instructor]"
	touch $@

clean:
	rm -rf _build .pytest_cache .hypothesis
