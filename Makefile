# The two Quickstart commands: `make book` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: book book-student assignments grade test notebooks clean

book: $(VENV)/.installed
	$(BIN)/jupyter-book build .

# The student edition: chapters without solutions (student/notebooks/, rewritten here from
# notebooks/ and committed, so that its Colab buttons open them), built into _build/student.
book-student: $(VENV)/.installed
	$(BIN)/python tools/student_edition.py --book _build/student-config
	$(BIN)/jupyter-book build . --config _build/student-config/_config.yml \
		--toc _build/student-config/_toc.yml --path-output _build/student

# Autograded assignments (otter-grader, the `instructor` extra): student notebooks with their
# tests/ folder and autograder.zip per chapter, under _build/assignments/NAME/.
assignments: $(VENV)/.installed
	$(BIN)/python tools/assignments.py build _build/assignments

# Grade a folder of submitted notebooks: make grade ASSIGNMENT=01_matrix_rank SUBMISSIONS=dir
# writes _build/grades/ASSIGNMENT.csv (student, question, points, total). No Docker, no network.
grade: $(VENV)/.installed
	$(BIN)/python tools/assignments.py grade "$(ASSIGNMENT)" "$(SUBMISSIONS)"

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/pytest tests
	$(BIN)/pytest --nbval --nbval-current-env notebooks
	$(BIN)/jupyter-book build . --all -W --keep-going

# Re-execute every chapter in place after editing it, so that its stored outputs are current.
notebooks: $(VENV)/.installed
	$(BIN)/jupyter execute --inplace notebooks/*.ipynb

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[book,test,instructor]"
	touch $@

clean:
	rm -rf _build .pytest_cache .hypothesis
