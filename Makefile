# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_DIR ?= demo_run

export nnUNet_compile ?= f

export nnUNet_def_n_proc ?= 2
# product trainers first, then the benchmark variants (nnU-Net splits the list on os.pathsep)
export nnUNet_extTrainer := $(CURDIR)/trainers:$(CURDIR)/benchmarks/trainers

.PHONY: install test demo bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

demo: $(STAMP)
	DEMO_DIR=$(DEMO_DIR) $(PY) scripts/demo.py

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
