#!/usr/bin/env bash
# GPU recipe: GRPO on test-case rewards with vLLM generation, on every GPU of one machine, measured on the
# held-out problems before and after. Not run by the project (no GPU was lent): see docs/recipes.md.
# Expected time, estimated from arithmetic (not measured): about 40-60 minutes for a 1.5B model on one H100-class
# GPU, 2-3 hours for a 7B one.
#
#   MODEL=/path/to/sft_model bash recipes/gpu_grpo.sh
#
# Settings are environment variables; EXTRA holds more run_rl.py flags for every step.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:?set MODEL to the model to train (a local folder, e.g. Qwen2.5-Coder-1.5B-Instruct)}
OUT=${OUT:-output/recipes}
NAME=${NAME:-gpu_grpo}
PROBLEMS=${PROBLEMS:-data/problems}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-configs/accelerate/ddp.yaml}
NUM_PROCESSES=${NUM_PROCESSES:-$(python -c "import torch; print(max(1, torch.cuda.device_count()))")}
GRPO=${GRPO:---bf16 --use_vllm --vllm_mode colocate --learning_rate 1e-5 --max_steps 500 --save_steps 50
  --eval_steps 50 --batch_size 16 --gradient_accumulation_steps 2 --num_generations 8 --max_completion_length 384
  --temperature 1.0 --loss_type dapo --scale_rewards group --drop_zero_variance_groups}
EVAL=${EVAL:---eval_num_samples 16 --eval_temperature 0.8 --max_completion_length 384}
EXTRA=${EXTRA:-}
ROOT="$OUT/$NAME"
[ -e "$ROOT" ] && { echo "gpu_grpo.sh: error: $ROOT exists: choose another NAME or remove it" >&2; exit 2; }

# shellcheck disable=SC2086  # the flag lists are meant to split into words
python run_rl.py --eval_only $EVAL --train_data "$PROBLEMS" --base_model "$MODEL" $EXTRA \
    --output_dir "$ROOT" --experiment_name eval-0
accelerate launch --config_file "$ACCELERATE_CONFIG" --num_processes "$NUM_PROCESSES" \
    run_rl.py --test_case_rewards_only $GRPO --train_data "$PROBLEMS" --base_model "$MODEL" $EXTRA \
    --output_dir "$ROOT" --experiment_name grpo-1
python run_rl.py --eval_only $EVAL --train_data "$PROBLEMS" --base_model "$ROOT/grpo-1/checkpoints/final" $EXTRA \
    --output_dir "$ROOT" --experiment_name eval-1
python recipes/recipe_report.py --recipe "$NAME" --evals "$ROOT/eval-0" "$ROOT/eval-1" --training "$ROOT/grpo-1" \
    --report "$ROOT/results/$NAME.json"
