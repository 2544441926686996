# Two commands a new user needs:
#   make demo   install everything, fetch the embedded model, train briefly, write a full run folder
#   make test   install everything, run the whole test suite
PYTHON ?= python3
# CPU build on this kind of machine; on a GPU box PyPI's torch 2.13.0 is the CUDA build.
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= output

.PHONY: install model demo test bench

# Not editable: the scripts run from this folder, and an editable install of a project without modules only adds an
# import hook that every interpreter start pays for (~20 ms), sandbox servers and benchmarks included.
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

bench: model
	$(PYTHON) bench/dpo_overhead.py
