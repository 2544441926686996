"""The toolkit's PPO (TRL 1.16 ships none): its config, the loss pieces as plain functions, the adaptive KL
coefficient, and the trainer.

One PPO step: sample one answer per prompt for a batch of prompts, score them, turn scores and the KL to the
reference into per-token rewards, estimate advantages with GAE against the value head, then take ppo_epochs passes
of clipped policy and value updates. The loss pieces are plain functions so that they can be checked by hand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from transformers import TrainingArguments

from qrl.config.arguments import Config
from qrl.config.run_folder import RunFolder
from qrl.data.records import UserError
from qrl.training.prompts import prompt_text
from qrl.training.tracking import CompletionTables
from qrl.training.trl import trl_arguments, trl_config

if TYPE_CHECKING:
    import torch


@dataclass
class PPOConfig(TrainingArguments):
    """PPO's settings: transformers' TrainingArguments (as TRL's configs are) with PPO's own beside them, built from
    the options by ``ppo_config``. ``per_device_train_batch_size`` answers go through one forward/backward pass,
    ``gradient_accumulation_steps`` passes make one optimizer update."""

    # TrainingArguments' own fields whose defaults differ for PPO
    learning_rate: float = 1e-5
    per_device_train_batch_size: int = 1
    max_steps: int = 100
    save_steps: float = 50
    logging_steps: float = 1
    activation_checkpointing: bool | None = True
    # PPO's own
    num_mini_batches: int = 1  # optimizer updates per pass over the rollouts
    ppo_epochs: int = 4  # passes over each step's rollouts
    max_seq_length: int = 1024  # longest prompt plus answer, in tokens
    max_completion_length: int = 256  # longest answer, in tokens
    temperature: float = 1.0  # sampling temperature of the rollouts
    kl_coef: float = 0.1  # KL penalty coefficient against the reference
    adaptive_kl: bool = False  # move kl_coef towards kl_target
    kl_target: float = 6.0  # the KL per answer that the adaptive coefficient aims at
    kl_horizon: int = 10000  # answers over which the adaptive coefficient closes 20% of the gap
    entropy_coef: float = 0.01  # entropy bonus coefficient
    reward_scale: float = 1.0  # multiplier applied to every score
    whiten_rewards: bool = False  # whiten the per-token rewards (without shifting their mean)
    cliprange: float = 0.2  # policy ratio clip range
    cliprange_value: float = 0.2  # value clip range
    vf_coef: float = 0.1  # value loss coefficient
    gamma: float = 1.0  # discount factor
    lam: float = 0.95  # GAE lambda
    wandb_project: str = "q-rl"  # W&B project, unless WANDB_PROJECT is set
    wandb_table_rows: int = 16  # answers per logging step in the W&B completions table

    @property
    def mini_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @property
    def rollout_size(self) -> int:
        """Answers (and prompts) per PPO step."""
        return self.mini_batch_size * self.num_mini_batches


def ppo_config(cfg: Config, folder: RunFolder, run_name: str) -> PPOConfig:
    """The options as a PPOConfig: the shared mapping (``trl_arguments``), and PPO's own options. Whether it
    evaluates is the trainer's to say (it has held-out prompts or not)."""
    m, p, g = cfg.model, cfg.ppo, cfg.grpo  # answer length and temperature: shared with GRPO
    shared = trl_arguments(cfg, folder, run_name, has_eval=True)
    shared.pop("model_init_kwargs")  # TRL's: PPO loads its model itself
    kl_coef = shared.pop("beta")
    return trl_config(
        PPOConfig, **shared, kl_coef=kl_coef, num_mini_batches=p.num_mini_batches, ppo_epochs=p.ppo_epochs,
        max_seq_length=m.max_seq_length, max_completion_length=g.max_completion_length, temperature=g.temperature,
        adaptive_kl=p.adaptive_kl, kl_target=p.kl_target, kl_horizon=p.kl_horizon, entropy_coef=m.entropy_coef,
        reward_scale=m.reward_scale, whiten_rewards=p.whiten_rewards, cliprange=p.cliprange,
        cliprange_value=p.cliprange_value, vf_coef=p.vf_coef, gamma=p.gamma, lam=p.lam,
        wandb_project=cfg.tracking.wandb_project, wandb_table_rows=cfg.tracking.wandb_table_rows,
    )


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x, mask):
    """Unbiased variance of the masked entries."""
    n = mask.sum()
    var = masked_mean((x - masked_mean(x, mask)) ** 2, mask)
    return var * n / (n - 1) if n > 1 else var


def masked_whiten(x, mask, shift_mean: bool = True):
    """Unit variance (and zero mean unless ``shift_mean`` is False) over the masked entries."""
    if mask.sum() < 2:
        return x
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * (var + 1e-8).rsqrt()
    return out if shift_mean else out + mean


def token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef: float):
    """Per-token rewards: ``-kl_coef * (logp - logp_ref)`` at every token, plus the score at the answer's last.

    Returns the rewards and the per-token KL estimate. Answers are right-padded: ``mask`` is a prefix.
    """
    import torch

    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = mask.sum(1).long().clamp(min=1) - 1
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, kl


def compute_gae(rewards, values, mask, gamma: float, lam: float):
    """Generalised advantage estimation (Schulman et al. 2016), right to left over each answer's tokens.

    ``A_t = delta_t + gamma * lam * A_{t+1}``, ``delta_t = r_t + gamma * V_{t+1} - V_t``, with ``V`` = 0 after
    the last token. Returns advantages and returns (``A + V``), zero outside ``mask``.
    """
    import torch

    rewards, values = rewards * mask, values * mask
    length = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    return advantages * mask, (advantages + values) * mask


def clipped_policy_loss(logprobs, old_logprobs, advantages, mask, cliprange: float):
    """PPO's clipped surrogate: ``max(-A * r, -A * clip(r, 1-e, 1+e))`` with ``r = p_new / p_old``.

    Returns the loss, the fraction of tokens where clipping bound, and the approximate KL of the update.
    """
    import torch

    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask)
    return loss, clip_fraction, approx_kl


def clipped_value_loss(values, old_values, returns, mask, cliprange_value: float):
    """``0.5 * max((V - R)^2, (V_clipped - R)^2)``, V_clipped kept within cliprange_value of the rollout's V."""
    import torch

    clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    unclipped_loss, clipped_loss = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_loss, clipped_loss), mask)
    return loss, masked_mean((clipped_loss > unclipped_loss).float(), mask)


def explained_variance(values, returns, mask) -> float:
    """``1 - Var(R - V) / Var(R)``: 1 is a perfect critic, 0 no better than a constant, below 0 worse."""
    var = masked_var(returns, mask)
    return float(1 - masked_var(returns - values, mask) / var) if var > 0 else float("nan")


class AdaptiveKLController:
    """Ziegler et al. (2019): move kl_coef by at most 20% of the gap to the target per horizon of answers."""

    def __init__(self, value: float, target: float, horizon: int):
        self.value, self.target, self.horizon = value, target, horizon

    def update(self, current_kl: float, n_answers: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_answers / self.horizon


class PPOTrainer:
    """PPO with a value head on the policy's last hidden state, a LoRA policy whose disabled adapters are the
    reference (a frozen copy without LoRA), and the Trainer's run-folder interface: ``train``,
    ``accelerator``, ``model``, ``end``, callbacks and ``checkpoint-N`` folders.

    ``reward_fn`` has TRL's reward-function signature: ``f(prompts, completions, **columns) -> list[float|None]``
    where the columns are the rows' other fields; ``None`` (not judged) gets the batch's mean reward, so it
    pushes neither way. Rows hold ``prompt`` (text or messages).
    """

    def __init__(self, model: str, args: PPOConfig, tokenizer, reward_fn, train_rows: list[dict],
                 eval_rows: list[dict] | None = None, peft_config=None, callbacks: list | None = None):
        import torch
        from accelerate import Accelerator
        from transformers import AutoModelForCausalLM, GenerationConfig, get_scheduler, set_seed
        from trl.trainer.utils import disable_dropout_in_model

        if args.max_seq_length <= args.max_completion_length:
            raise UserError(f"--max_seq_length ({args.max_seq_length}) must exceed --max_completion_length "
                            f"({args.max_completion_length}): the prompt needs room")
        if not train_rows:
            raise UserError("PPO needs at least one training prompt")
        self.args, self.tokenizer, self.reward_fn = args, tokenizer, reward_fn
        self.train_rows, self.eval_rows = train_rows, eval_rows or []
        self.callbacks = callbacks or []
        set_seed(args.seed)
        self.accelerator = Accelerator(log_with="wandb" if "wandb" in args.report_to else None)
        if self.accelerator.num_processes > 1:
            raise UserError("PPO runs in one process; launch it without accelerate/torchrun")
        dtype = torch.bfloat16 if args.bf16 else torch.float32
        policy = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
        self.ref_model = None
        if peft_config is not None:
            from peft import get_peft_model

            policy = get_peft_model(policy, peft_config)
        else:  # full fine-tuning: the reference is a frozen copy
            self.ref_model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).eval().requires_grad_(False)
            self.ref_model.to(self.accelerator.device)
        if args.activation_checkpointing:
            # only in training mode: rollouts generate in eval mode, with the KV cache
            policy.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        disable_dropout_in_model(policy)  # rollout and update must see the same network, or ratio != 1
        self.value_head = torch.nn.Linear(policy.config.get_text_config().hidden_size, 1, dtype=dtype)
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)
        self.policy = policy
        self.trainable = [p for p in policy.parameters() if p.requires_grad] + list(self.value_head.parameters())
        optimizer = torch.optim.AdamW(self.trainable, lr=args.learning_rate, eps=1e-5)
        self.policy, self.value_head, self.optimizer = self.accelerator.prepare(policy, self.value_head, optimizer)
        self.scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.warmup_steps,
                                       num_training_steps=args.max_steps)
        self.kl_ctl = AdaptiveKLController(args.kl_coef, args.kl_target, args.kl_horizon)
        self.reward_metrics: dict[str, float] = {}
        self.tables = CompletionTables(reward_fn, args.wandb_table_rows)  # the answers, for W&B
        eos = {tokenizer.eos_token_id}
        gen_eos = policy.generation_config.eos_token_id
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        self.eos_ids = torch.tensor(sorted(eos))
        # top_k=0 and top_p=1 switch truncation off: the log-probabilities PPO computes are of the full distribution
        common = dict(max_new_tokens=args.max_completion_length, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=sorted(eos), top_k=0, top_p=1.0)
        self.sampling = GenerationConfig(do_sample=True, temperature=args.temperature, **common)
        self.greedy = GenerationConfig(do_sample=False, **common)

    is_fsdp_enabled = False  # one process, whole weights: save_final_model saves it as it saves the others

    @property
    def model(self):
        """The policy, for saving (the value head is part of checkpoints only)."""
        return self.policy

    # --- the loop -----------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | None = None) -> None:
        from transformers import TrainerControl, TrainerState

        args = self.args
        self.state = TrainerState(max_steps=args.max_steps, logging_steps=args.logging_steps,
                                  save_steps=args.save_steps, eval_steps=args.eval_steps or 0,
                                  train_batch_size=args.rollout_size)
        self.control = TrainerControl()
        if resume_from_checkpoint:
            self._load_checkpoint(Path(resume_from_checkpoint))
        if args.report_to:
            self.accelerator.init_trackers(os.environ.get("WANDB_PROJECT", args.wandb_project),
                                           config=args.to_dict(),
                                           init_kwargs={"wandb": {"name": os.environ.get("WANDB_NAME", args.run_name)}})
        self._callback("on_train_begin", model=self.policy)
        if self.eval_rows and args.eval_on_start and self.state.global_step == 0:
            self._log({f"eval_{k}": v for k, v in self.evaluate().items()})
        while self.state.global_step < args.max_steps:
            rows = self._rows_for_step(self.state.global_step)
            stats = self.step(rows)
            self.state.global_step += 1
            self.state.epoch = self.state.global_step * args.rollout_size / len(self.train_rows)
            self.control.should_save = self.control.should_training_stop = False
            self._callback("on_step_end")  # a callback may ask for a save and a stop (StopAtSignal)
            step, stopping = self.state.global_step, self.control.should_training_stop
            if step % args.logging_steps == 0 or step == args.max_steps or stopping:
                self._log(stats)
            if (self.eval_rows and args.eval_steps and not stopping
                    and (step % args.eval_steps == 0 or step == args.max_steps)):
                self._log({f"eval_{k}": v for k, v in self.evaluate().items()})
            if step % args.save_steps == 0 or step == args.max_steps or self.control.should_save:
                self._save_checkpoint()
            if stopping:
                break
        self._callback("on_train_end")

    def add_callback(self, callback) -> None:
        self.callbacks.append(callback)

    def step(self, rows: list[dict]) -> dict[str, float]:
        """One PPO step on these rows: rollouts, advantages, ppo_epochs of updates; returns its statistics."""
        import torch

        args = self.args
        batch = self._rollout(rows)
        mask = batch["mask"]
        scores = batch["rewards"] * args.reward_scale
        rewards, kl = token_rewards(scores, batch["logprobs"], batch["ref_logprobs"], mask, self.kl_ctl.value)
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
        advantages, returns = compute_gae(rewards, batch["values"], mask, args.gamma, args.lam)
        advantages = masked_whiten(advantages, mask) * mask
        batch.update(advantages=advantages, returns=returns)

        self.policy.train()
        logged: dict[str, list[float]] = {}
        generator = torch.Generator().manual_seed(args.seed + self.state.global_step)
        for _ in range(args.ppo_epochs):
            order = torch.randperm(len(rows), generator=generator)
            for mini in order.split(args.mini_batch_size):
                for micro in mini.split(args.per_device_train_batch_size):
                    for key, value in self._train_micro_batch(batch, micro).items():
                        logged.setdefault(key, []).append(value)
                grad_norm = self.accelerator.clip_grad_norm_(self.trainable, args.max_grad_norm)
                logged.setdefault("grad_norm", []).append(float(grad_norm))
                self.optimizer.step()
                self.optimizer.zero_grad()
        learning_rate = self.scheduler.get_last_lr()[0]  # the rate this step trained with
        self.scheduler.step()
        sequence_kl = kl.sum(1).mean().item()
        stats = {
            "reward": batch["rewards"].mean().item(),
            "reward_std": batch["rewards"].std().item() if len(rows) > 1 else 0.0,
            "objective": (scores - self.kl_ctl.value * kl.sum(1)).mean().item(),
            "kl": sequence_kl,
            "kl_coef": self.kl_ctl.value,
            "value/estimate": masked_mean(batch["values"], mask).item(),
            "explained_variance": explained_variance(batch["values"], returns, mask),
            "response_length": mask.sum(1).float().mean().item(),
            "learning_rate": learning_rate,
        }
        stats.update({key: sum(v) / len(v) for key, v in logged.items()})
        stats.update(self.reward_metrics)
        self.reward_metrics = {}
        if args.adaptive_kl:
            self.kl_ctl.update(sequence_kl, len(rows))
        return stats

    def _train_micro_batch(self, batch: dict, idx) -> dict[str, float]:
        args = self.args
        ids, attn, start, response, mask = self._select(batch, idx)
        logits, values = self._forward(ids, attn, start)
        logits = logits / args.temperature
        from trl.trainer.utils import entropy_from_logits, selective_log_softmax

        logprobs = selective_log_softmax(logits, response)
        old = {k: batch[k][idx][:, :mask.shape[1]].to(mask.device)
               for k in ("logprobs", "advantages", "values", "returns")}
        pg_loss, clip_fraction, approx_kl = clipped_policy_loss(
            logprobs, old["logprobs"], old["advantages"], mask, args.cliprange)
        vf_loss, vf_clip_fraction = clipped_value_loss(
            values, old["values"], old["returns"], mask, args.cliprange_value)
        entropy = masked_mean(entropy_from_logits(logits), mask)
        loss = pg_loss + args.vf_coef * vf_loss - args.entropy_coef * entropy
        self.accelerator.backward(loss / args.gradient_accumulation_steps)
        return {"loss": loss.item(), "policy/loss": pg_loss.item(), "policy/clip_fraction": clip_fraction.item(),
                "policy/approx_kl": approx_kl.item(), "value/loss": vf_loss.item(),
                "value/clip_fraction": vf_clip_fraction.item(), "entropy": entropy.item()}

    # --- rollouts -----------------------------------------------------------------------------------
    def _rows_for_step(self, step: int) -> list[dict]:
        """The prompts of a step: a fresh seeded shuffle per pass over the data, so resume needs no extra state."""
        import random

        n, size = len(self.train_rows), self.args.rollout_size
        rows = []
        for g in range(step * size, (step + 1) * size):
            order = list(range(n))
            random.Random(self.args.seed + g // n).shuffle(order)
            rows.append(self.train_rows[order[g % n]])
        return rows

    def _generate(self, rows: list[dict], generation_config) -> dict:
        """Answers to the rows' prompts: query (left-padded) + response (cut after its first end token)."""
        import torch

        tok = self.tokenizer
        prompts = [r["prompt"] for r in rows]
        texts = [prompt_text(p, tok) for p in prompts]
        enc = tok(texts, padding=True, padding_side="left", truncation=True, truncation_side="left",
                  max_length=self.args.max_seq_length - self.args.max_completion_length,
                  add_special_tokens=not isinstance(prompts[0], list), return_tensors="pt")
        policy = self.accelerator.unwrap_model(self.policy)
        policy.eval()
        responses = []
        with torch.no_grad():
            for i in range(0, len(rows), self.args.mini_batch_size):
                part = {k: v[i:i + self.args.mini_batch_size].to(self.accelerator.device) for k, v in enc.items()}
                out = policy.generate(**part, generation_config=generation_config)
                responses.append(out[:, part["input_ids"].shape[1]:].cpu())
        width = max(r.shape[1] for r in responses)
        response = torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[1]), value=tok.pad_token_id)
                              for r in responses])
        is_end = torch.isin(response, self.eos_ids)
        last = torch.full_like(is_end[:, 0], width - 1, dtype=torch.long)
        ends = torch.where(is_end.any(1), is_end.int().argmax(1), last)
        mask = (torch.arange(width)[None, :] <= ends[:, None]).float()
        response = response.masked_fill(mask == 0, tok.pad_token_id)
        words = tok.batch_decode(response, skip_special_tokens=True)
        completions = [[{"role": "assistant", "content": w}] if isinstance(p, list) else w
                       for p, w in zip(prompts, words, strict=True)]
        return {"query": enc["input_ids"], "query_mask": enc["attention_mask"], "response": response, "mask": mask,
                "prompts": prompts, "completions": completions}

    def _score(self, rows: list[dict], batch: dict) -> torch.Tensor:
        import torch

        columns = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}
        ids = [r[m.bool()].tolist() for r, m in zip(batch["response"], batch["mask"], strict=True)]
        rewards = self.reward_fn(prompts=batch["prompts"], completions=batch["completions"], completion_ids=ids,
                                 log_metric=self._log_metric, **columns)
        if len(rewards) != len(rows):
            raise ValueError(f"the reward function returned {len(rewards)} rewards for {len(rows)} answers")
        judged = [float(r) for r in rewards if r is not None]
        neutral = sum(judged) / len(judged) if judged else 0.0  # not judged (e.g. a sandbox failure): no signal
        self.reward_metrics["reward_unjudged_fraction"] = 1 - len(judged) / len(rewards)
        return torch.tensor([neutral if r is None else float(r) for r in rewards])

    def _log_metric(self, name: str, value: float) -> None:
        """What a reward function reports about its components (TRL's ``log_metric``), logged with the step."""
        self.reward_metrics[name] = value

    def _rollout(self, rows: list[dict]) -> dict:
        """Answers, their rewards, and the rollout's log-probabilities, reference log-probabilities and values."""
        import torch

        self.reward_metrics = {}

        batch = self._generate(rows, self.sampling)
        batch["rewards"] = self._score(rows, batch)
        parts: dict[str, list] = {"logprobs": [], "ref_logprobs": [], "values": []}
        self.policy.eval()
        with torch.no_grad():
            for idx in torch.arange(len(rows)).split(self.args.mini_batch_size):
                ids, attn, start, response, mask = self._select(batch, idx)
                logits, values = self._forward(ids, attn, start)
                with self._reference():
                    ref_logits, _ = self._forward(ids, attn, start, model=self.ref_model)
                width = batch["response"].shape[1]
                for key, value in (("logprobs", self._logprobs(logits, response)),
                                   ("ref_logprobs", self._logprobs(ref_logits, response)), ("values", values)):
                    parts[key].append(torch.nn.functional.pad(value * mask, (0, width - value.shape[1])).cpu())
        batch.update({k: torch.cat(v) for k, v in parts.items()})
        return batch

    def _logprobs(self, logits, response):
        from trl.trainer.utils import selective_log_softmax

        return selective_log_softmax(logits / self.args.temperature, response)

    def _select(self, batch: dict, idx):
        """Rows ``idx`` as model inputs, without columns that are padding in all of them."""
        import torch

        query, qmask = batch["query"][idx], batch["query_mask"][idx]
        response, mask = batch["response"][idx], batch["mask"][idx]
        left = int((qmask.cumsum(1) == 0).sum(1).min())
        right = int(mask.sum(1).max())
        query, qmask, response, mask = query[:, left:], qmask[:, left:], response[:, :right], mask[:, :right]
        ids = torch.cat([query, response], dim=1)
        attn = torch.cat([qmask, mask.long()], dim=1)
        device = self.accelerator.device
        return ids.to(device), attn.to(device), query.shape[1], response.to(device), mask.to(device)

    def _forward(self, ids, attn, start: int, model=None):
        """Logits and values at the positions that predict the response tokens (``ids[:, start:]``)."""
        lm = self.accelerator.unwrap_model(model if model is not None else self.policy)
        if hasattr(lm, "get_base_model"):
            lm = lm.get_base_model()
        position_ids = (attn.cumsum(1) - 1).clamp(min=0)
        hidden = lm.base_model(input_ids=ids, attention_mask=attn, position_ids=position_ids,
                               use_cache=False).last_hidden_state[:, start - 1:-1]
        logits = lm.get_output_embeddings()(hidden).float()
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()
        return logits, values

    def _reference(self):
        """The reference network: the policy with its adapters off (LoRA), or the frozen copy."""
        from contextlib import nullcontext

        if self.ref_model is None:
            return self.accelerator.unwrap_model(self.policy).disable_adapter()
        return nullcontext()

    # --- evaluation, logging, checkpoints -------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Mean reward of greedy answers to the held-out prompts."""
        import torch

        rewards, lengths = [], []
        for i in range(0, len(self.eval_rows), self.args.mini_batch_size):
            rows = self.eval_rows[i:i + self.args.mini_batch_size]
            batch = self._generate(rows, self.greedy)
            rewards.append(self._score(rows, batch))
            lengths.append(batch["mask"].sum(1))
        r = torch.cat(rewards)
        return {"reward": r.mean().item(), "reward_std": r.std().item() if len(r) > 1 else 0.0,
                "response_length": torch.cat(lengths).float().mean().item()}

    def _callback(self, event: str, **kwargs) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self.args, self.state, self.control, **kwargs)

    def _log(self, logs: dict[str, float]) -> None:
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self._callback("on_log", logs=dict(logs))
        if self.args.report_to:
            tables = self.tables.for_log(logs, self.state.global_step)
            self.accelerator.log({**{k.replace("eval_", "eval/", 1) if k.startswith("eval_") else f"train/{k}": v
                                     for k, v in logs.items()}, **tables}, step=self.state.global_step)

    def _save_checkpoint(self) -> None:
        """``checkpoint-N`` under ``output_dir`` (the run folder's staging folder, renamed into ``checkpoints/`` and
        rotated by ``RunFolderCallback.on_save``): adapters (or weights), value head, optimizer, scheduler, RNG, KL
        coefficient, and ``trainer_state.json`` last, which marks the checkpoint complete."""
        import json
        import random
        import shutil

        import numpy as np
        import torch

        path = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        self.accelerator.unwrap_model(self.policy).save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        torch.save(self.accelerator.unwrap_model(self.value_head).state_dict(), path / "value_head.pt")
        torch.save(self.optimizer.state_dict(), path / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), path / "scheduler.pt")
        torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
                   path / "rng_state.pth")
        (path / "ppo_state.json").write_text(json.dumps({"kl_coef": self.kl_ctl.value}))
        self.state.save_to_json(str(path / "trainer_state.json"))
        self._callback("on_save")

    def _load_checkpoint(self, path: Path) -> None:
        import json
        import random

        import numpy as np
        import torch
        from transformers import TrainerState

        policy = self.accelerator.unwrap_model(self.policy)
        if hasattr(policy, "get_base_model"):
            from peft import set_peft_model_state_dict
            from peft.utils import load_peft_weights

            set_peft_model_state_dict(policy, load_peft_weights(str(path)))
        else:
            from safetensors.torch import load_file

            unexpected = policy.load_state_dict(load_file(path / "model.safetensors"), strict=False).unexpected_keys
            if unexpected:
                raise UserError(f"{path}: checkpoint does not fit the model (unexpected {unexpected[:3]})")
        self.accelerator.unwrap_model(self.value_head).load_state_dict(torch.load(path / "value_head.pt"))
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt"))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt"))
        rng = torch.load(path / "rng_state.pth", weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        self.kl_ctl.value = json.loads((path / "ppo_state.json").read_text())["kl_coef"]
        saved = TrainerState.load_from_json(str(path / "trainer_state.json"))
        self.state.global_step, self.state.epoch = saved.global_step, saved.epoch
        self.state.log_history = saved.log_history

    def end(self) -> None:
        if self.args.report_to:
            self.accelerator.end_training()
