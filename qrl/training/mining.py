"""Preference pairs mined from test runs: sample answers, run their tests, prefer the better answer.

For each problem, ``--mine_samples`` answers are sampled from the policy (``--policy_model``, default
``--base_model``) with the prompt GRPO and evaluation use, each is scored in the sandbox, and pairs are
formed by ``reward_data.mined_pairs``:
an answer that passes every test over one that does not, more tests passed over fewer, then the
code-quality score as a tie-break. The pairs are in the preference format (``prompt``/``chosen``/``rejected``,
conversational when the policy has a chat template) with what decided each pair beside them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import qrl.languages  # noqa: F401 -- registers the languages besides Python (their formats, executors)
from qrl.config.arguments import Config
from qrl.config.run_folder import RunFolder
from qrl.data.preferences import MiningCounts, ScoredAnswer, mined_pairs
from qrl.data.records import DataError

Scorer = Callable[[list[Any], list[list[str]]], list[list[ScoredAnswer]]]


def mine(cfg: Config, scorer: Scorer | None = None) -> tuple[list[dict[str, Any]], MiningCounts]:
    """Mined pairs for ``--mine_pairs_from`` and their counts; generation happens here, nothing is written.

    ``scorer`` maps problems and their answers to scored answers (default: the sandbox, see ``sandbox_scorer``).
    """
    from transformers import set_seed

    from qrl.problems import load_problems
    from qrl.training.prompts import build_prompt, sample_completions
    from qrl.training.trl import load_for_generation, resolve_base_model

    m = cfg.mining
    problems = [p for p in load_problems(m.mine_pairs_from) if p.split != "eval"]  # held-out problems never train
    if not problems:
        raise DataError(f"{m.mine_pairs_from}: no problems to mine (all are in the 'eval' split)")
    model_path = resolve_base_model(m.policy_model or cfg.model.base_model)
    model, tokenizer = load_for_generation(model_path, cfg)
    set_seed(cfg.model.seed)
    prompts = [build_prompt(p, tokenizer) for p in problems]  # as GRPO and evaluation ask them
    gen = _generation(cfg)
    answers = sample_completions(model, tokenizer, prompts, m.mine_samples, gen.temperature,
                                 gen.max_completion_length, desc="mining: sampling answers")
    del model
    if m.mine_with_reference:
        answers = [a + [f"```{p.language}\n{p.reference.rstrip()}\n```"] if p.reference else a
                   for p, a in zip(problems, answers, strict=True)]
    scored = (scorer or sandbox_scorer(cfg))(problems, answers)
    rows, counts = [], MiningCounts()
    for problem, prompt, judged in zip(problems, prompts, scored, strict=True):
        pairs = mined_pairs(judged, m.mine_max_pairs)
        counts.add(judged, pairs)
        for chosen, rejected, reason in pairs:
            rows.append({
                "prompt": prompt, "chosen": _answer(prompt, chosen.text), "rejected": _answer(prompt, rejected.text),
                "task_id": problem.task_id, "reason": reason, "tests": chosen.total,
                "chosen_passed": chosen.passed, "rejected_passed": rejected.passed,
                "chosen_quality": chosen.quality, "rejected_quality": rejected.quality,
            })
    if not rows:
        raise DataError(
            f"{m.mine_pairs_from}: mining found no pairs ({counts.samples} answers to {counts.problems} problems all "
            "scored the same); sample more with --mine_samples, raise --temperature, or add --mine_with_reference"
        )
    return rows, counts


def _generation(cfg: Config):
    """Sampling options: the ``grpo:`` section of run_rl.py, the ``generation:`` section of train_reward_model.py."""
    return cfg.grpo if hasattr(cfg, "grpo") else cfg.generation


def sandbox_scorer(cfg: Config) -> Scorer:
    """Tests passed in the sandbox, and the code-quality score (the composite reward's) for the tie-break.

    Answers the sandbox could not judge (infra errors) are left out rather than counted as failures.
    """

    def score(problems: list, answers: list[list[str]]) -> list[list[ScoredAnswer]]:
        from qrl.rewards.base import Sample
        from qrl.rewards.composite import CompositeReward
        from qrl.rewards.test_cases import TestCaseReward

        r = getattr(cfg, "rewards", None)
        tests = TestCaseReward(problems, workers=r.workers if r else None, timeout=r.timeout if r else None)
        samples = [Sample(a, p.task_id) for p, group in zip(problems, answers, strict=True) for a in group]
        with CompositeReward(tests, quality=getattr(cfg, "quality", None)) as composite:
            results = iter(composite.score_samples(samples))
        out = []
        for group in answers:
            judged = []
            for text, result in zip(group, results, strict=False):  # results: one iterator over all groups
                if result.reward is not None:
                    judged.append(ScoredAnswer(text, result.tests_passed, result.tests_total,
                                               result.components.get("quality", 0.0)))
            out.append(judged)
        return out

    return score


def _answer(prompt, text: str):
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text


def write_mined(folder: RunFolder, rows: list[dict[str, Any]], counts: MiningCounts, source: str) -> None:
    """The pairs (reusable as --data_path or --preference_data) and their counts, in the run folder."""
    from qrl.config.run_folder import atomic_write

    atomic_write(folder.mined_pairs, "".join(json.dumps(r) + "\n" for r in rows))
    folder.write_json(folder.mining_json, {"source": source, **dataclasses.asdict(counts)})
    folder.log_line(summary(counts) + f"; pairs in {folder.mined_pairs}")


def summary(counts: MiningCounts) -> str:
    by = ", ".join(f"{k} {v}" for k, v in counts.pairs_by_reason.items())
    return (f"mined {counts.pairs} pairs ({by}) from {counts.problems} problems: {counts.samples} answers, "
            f"{counts.passing_samples} passing all tests, {counts.problems_without_pairs} problems without a pair")

