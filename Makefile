# llama2-edu: `make lab` to read the book, `make test` to check everything.
# Each target creates .venv and installs the project into it when needed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
JUPYTER_PORT ?= 8888

.PHONY: setup lab test unit notebooks figures bench student clean

setup: $(STAMP)

# torch is pinned through constraints.txt (see DEVELOPERS.md): the pin stays out of pyproject.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks --port=$(JUPYTER_PORT) $(if $(filter 0,$(shell id -u)),--allow-root)

test: unit notebooks

unit: $(STAMP)
	$(PY) -m pytest tests

# Every notebook is executed and its outputs compared with the committed ones (nbval), one
# notebook per run so that the log shows each one's time; all run even if one fails.
NBVAL := $(PY) -m pytest -q --nbval --nbval-current-env \
	--nbval-sanitize-with notebooks/sanitize.cfg -p no:cacheprovider

notebooks: $(STAMP)
	@failed=""; for nb in $(NOTEBOOKS); do \
		start=$$(date +%s); \
		$(NBVAL) $$nb || failed="$$failed $$nb"; \
		echo "== $$nb: $$(( $$(date +%s) - start )) s"; \
	done; \
	if [ -n "$$failed" ]; then echo "notebooks failing nbval:$$failed"; exit 1; fi

figures: $(STAMP)
	$(PY) -m llama2_edu.tools.figures

bench: $(STAMP)
	$(PY) benchmarks/decode.py

student: $(STAMP)
	$(PY) -m llama2_edu.tools.student notebooks student

clean:
	rm -rf $(VENV) .cache student .pytest_cache
