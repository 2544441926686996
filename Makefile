# Two commands a new user needs:
#   make demo   install everything, fetch the embedded model, train briefly, write a full run folder
#   make test   install everything, run the whole test suite
# and for contributors: make lint (ruff, with the project's rules and line length from pyproject.toml).
PYTHON ?= python3
# CPU build on this kind of machine; on a GPU box PyPI's torch 2.13.0 is the CUDA build.
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= output

.PHONY: install model demo test lint bench

# Not editable: an editable install adds an import hook that every interpreter start pays for (~20 ms), sandbox
# servers included. The scripts and tests in this folder import the package from here; benches and recipes import the
# installed one (make bench and make install reinstall it).
install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PYTHON) -m pip install --quiet --disable-pip-version-check ".[dev]"

model: install
	$(PYTHON) -m qrl.models.embedded

demo: model
	$(PYTHON) run_rl.py --use_dpo --experiment_name demo --output_dir $(DEMO_DIR) --overwrite_output_dir \
		--max_steps 10 --save_steps 5 --eval_steps 5 --batch_size 2 --gradient_accumulation_steps 1 \
		--learning_rate 5e-5

test: install
	$(PYTHON) -m pytest -q

lint: install
	$(PYTHON) -m ruff check .

bench: model
	$(PYTHON) bench/dpo_overhead.py
