# Two commands a new user needs:
#   make demo   install everything, fetch the embedded model, and run the main job briefly: GRPO on test-case
#               rewards on the shipped problems, held-out pass@1 before and after, a full run folder
#   make test   install everything, run the whole test suite
# and make demo-dpo (DPO on the shipped preference pairs), and for contributors: make lint (ruff, with the project's
# rules and line length from pyproject.toml).
PYTHON ?= python3
# CPU build on this kind of machine; on a GPU box PyPI's torch 2.13.0 is the CUDA build.
TORCH_SPEC ?= torch==2.13.0
DEEPSPEED_SPEC ?= deepspeed==0.19.8
DEMO_DIR ?= output
# The demo's run, a few GRPO steps on 2 CPU cores; DEMO_ARGS adds or overrides flags (the tests shrink it with them).
DEMO_FLAGS = --test_case_rewards_only --experiment_name demo --output_dir $(DEMO_DIR) --overwrite_output_dir \
	--max_steps 6 --eval_steps 6 --eval_on_start --save_steps 6 --batch_size 4 --gradient_accumulation_steps 2 \
	--num_generations 4 --max_completion_length 160 --learning_rate 5e-5 --eval_temperature 0
DEMO_ARGS ?=

.PHONY: install model demo demo-run demo-dpo test lint bench

# Not editable: an editable install adds an import hook that every interpreter start pays for (~20 ms), sandbox
# servers included. The scripts and tests in this folder import the package from here; benches and recipes import the
# installed one (make bench and make install reinstall it). DeepSpeed builds against the torch already installed
# (--no-build-isolation), so that the ZeRO tests run rather than skip.
install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(PYTHON) -m pip install --quiet --disable-pip-version-check ".[dev]"
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-build-isolation "$(DEEPSPEED_SPEC)"

model: install
	$(PYTHON) -m qrl.models.embedded

demo: model
	$(MAKE) --no-print-directory demo-run

demo-run:
	$(PYTHON) run_rl.py $(DEMO_FLAGS) $(DEMO_ARGS)

demo-dpo: model
	$(PYTHON) run_rl.py --use_dpo --experiment_name demo-dpo --output_dir $(DEMO_DIR) --overwrite_output_dir \
		--max_steps 10 --save_steps 5 --eval_steps 5 --batch_size 2 --gradient_accumulation_steps 1 \
		--learning_rate 5e-5

test: install
	$(PYTHON) -m pytest -q

lint: install
	$(PYTHON) -m ruff check .

bench: model
	$(PYTHON) bench/dpo_overhead.py
