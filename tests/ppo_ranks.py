"""Run under `accelerate launch` by tests/test_ppo_scaling.py: two PPO steps in which each rank's answers score its
rank (rank 0's score 0, rank 1's score 1), so that what is global can be told from what is per rank. Each rank
writes what it saw to <out>/rank<N>.json: the prompts it was given, the mean advantage of its answers, the
statistics it logged, and a digest of the value head, the trainable weights and the KL coefficient after training.

    PYTHONPATH=<checkout> accelerate launch ... tests/ppo_ranks.py <tiny model> <out folder> [--no_peft]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(model: str, out: Path, extra: list[str]) -> None:
    import torch
    from accelerate import PartialState

    from qrl.config.arguments import RL_SECTIONS, parse_config
    from qrl.config.run_folder import RunFolder
    from qrl.models.loading import load_tokenizer
    from qrl.training.ppo import PPOTrainer, ppo_config
    from qrl.training.ppo_stats import masked_mean
    from qrl.training.trl import peft_config

    state = PartialState(cpu=True)
    rank = state.process_index
    cfg = parse_config(RL_SECTIONS, [
        "--base_model", model, "--output_dir", str(out), "--experiment_name", "ranks", "--rl_algorithm", "ppo",
        "--max_steps", "2", "--save_steps", "100", "--eval_steps", "0", "--batch_size", "2",
        "--gradient_accumulation_steps", "1", "--max_completion_length", "8", "--max_seq_length", "64",
        "--ppo_epochs", "2", "--learning_rate", "1e-2", "--adaptive_kl", "--kl_target", "0.001",
        "--kl_horizon", "10", *extra,
    ])
    seen: list[str] = []

    def rank_reward(prompts, completions, **_) -> list[float]:
        seen.extend(p[0]["content"] for p in prompts)
        return [float(rank)] * len(prompts)

    tokenizer = load_tokenizer(model)
    rows = [{"prompt": [{"role": "user", "content": f"Write f{i}"}]} for i in range(8)]
    trainer = PPOTrainer(model, ppo_config(cfg, RunFolder(out / "run"), "ranks"), tokenizer, rank_reward, rows,
                         peft_config=peft_config(cfg))
    rollouts: list[dict] = []
    rollout = trainer._rollout  # the batch dict the step then whitens the advantages into

    def keep(rows):
        rollouts.append(rollout(rows))
        return rollouts[-1]

    trainer._rollout = keep
    logged: list[dict] = []

    class Logs:
        def __getattr__(self, name):
            return lambda *a, **k: None

        def on_log(self, args, state, control, logs=None, **kwargs):
            logged.append(logs)

    trainer.add_callback(Logs())
    trainer.train()
    module = trainer.accelerator.unwrap_model(trainer.policy)
    result = {
        "rank": rank, "world": trainer.world, "prompts": seen,
        "advantage_means": [masked_mean(b["advantages"], b["mask"]).item() for b in rollouts],
        "logged": logged,
        "value_head": [round(x, 7) for x in module.value_head.weight.flatten().tolist()[:8]],
        "value_head_norm": module.value_head.weight.norm().item(),
        "trainable_sum": sum(p.double().abs().sum().item() for p in module.parameters() if p.requires_grad),
        "kl_coef": trainer.kl_ctl.value,
        "random_draw": torch.rand(4).tolist(),  # each rank samples from a generator of its own
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3:])
