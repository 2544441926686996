"""The toolkit's PPO (TRL 1.16 ships none): its config and the trainer, on accelerate (one process, DDP, DeepSpeed
ZeRO-2 and ZeRO-3, as ``accelerate launch`` starts them).

One PPO step: each rank samples one answer to each of its share of the step's prompts, scores them, turns scores
and the KL to the reference into per-token rewards and estimates advantages with GAE against the value head; the
advantages are whitened over every rank's answers; then ppo_epochs passes of clipped policy and value updates,
whose gradients DDP or ZeRO average over the ranks. The arithmetic is in ``ppo_stats``, the networks in
``ppo_model``.
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
from qrl.training.ppo_model import (
    deepspeed_stage,
    fill_deepspeed_config,
    load_weights,
    policy_with_value_head,
    prepare_reference,
    reference_module,
    save_weights,
    whole_weights,
)
from qrl.training.ppo_stats import (
    AdaptiveKLController,
    clipped_policy_loss,
    clipped_value_loss,
    compute_gae,
    explained_variance,
    global_mean_var,
    masked_mean,
    masked_whiten,
    token_rewards,
)
from qrl.training.prompts import prompt_text
from qrl.training.tracking import CompletionTables
from qrl.training.trl import trl_arguments, trl_config

__all__ = ["AdaptiveKLController", "PPOConfig", "PPOTrainer", "ppo_config"]

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


class PPOTrainer:
    """PPO with a value head on the policy's last hidden state, a LoRA policy whose disabled adapters are the
    reference (a frozen copy without LoRA), and the Trainer's run-folder interface: ``train``, ``accelerator``,
    ``model``, ``state``, ``end``, callbacks and ``checkpoint-N`` folders.

    ``reward_fn`` has TRL's reward-function signature: ``f(prompts, completions, **columns) -> list[float|None]``
    where the columns are the rows' other fields; ``None`` (not judged) gets the mean of every rank's judged
    rewards, so it pushes neither way. Rows hold ``prompt`` (text or messages). A step takes
    ``rollout_size`` prompts per process.
    """

    def __init__(self, model: str, args: PPOConfig, tokenizer, reward_fn, train_rows: list[dict],
                 eval_rows: list[dict] | None = None, peft_config=None, callbacks: list | None = None):
        import torch
        from accelerate import Accelerator
        from transformers import AutoModelForCausalLM, get_scheduler, set_seed
        from trl.trainer.utils import disable_dropout_in_model

        if args.max_seq_length <= args.max_completion_length:
            raise UserError(f"--max_seq_length ({args.max_seq_length}) must exceed --max_completion_length "
                            f"({args.max_completion_length}): the prompt needs room")
        if not train_rows:
            raise UserError("PPO needs at least one training prompt")
        self.args, self.tokenizer, self.reward_fn = args, tokenizer, reward_fn
        self.train_rows, self.eval_rows = train_rows, eval_rows or []
        self.callbacks = callbacks or []
        # no cpu=: accelerate turns DeepSpeed off with it; the launch (or paths.train's PartialState) says the device
        self.accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps,
                                       log_with="wandb" if "wandb" in args.report_to else None)
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.zero_stage = deepspeed_stage(self.accelerator)
        if self.zero_stage is not None:
            fill_deepspeed_config(self.accelerator, args.per_device_train_batch_size,
                                  args.gradient_accumulation_steps, args.max_grad_norm, args.bf16)
        set_seed(args.seed)  # the same LoRA initialisation on every rank
        dtype = torch.bfloat16 if args.bf16 else torch.float32
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=dtype)
        reference = None
        if peft_config is not None:
            from peft import get_peft_model

            lm = get_peft_model(lm, peft_config)
        else:  # full fine-tuning: the reference is a frozen copy
            reference = reference_module(AutoModelForCausalLM.from_pretrained(model, dtype=dtype))
        if args.activation_checkpointing:
            # only in training mode: rollouts generate in eval mode, with the KV cache
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        disable_dropout_in_model(lm)  # rollout and update must see the same network, or ratio != 1
        policy = policy_with_value_head(lm, dtype)
        self.trainable = [p for p in policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.trainable, lr=args.learning_rate, eps=1e-5)
        self.scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.warmup_steps,
                                       num_training_steps=args.max_steps)
        self.policy, self.optimizer = self.accelerator.prepare(policy, optimizer)
        self.ref_model = prepare_reference(reference, self.accelerator) if reference is not None else None
        if self.world > 1:
            from accelerate.utils import set_seed as seed_per_rank

            seed_per_rank(args.seed, device_specific=True)  # each rank samples its own answers
        self.kl_ctl = AdaptiveKLController(args.kl_coef, args.kl_target, args.kl_horizon)
        self.reward_metrics: dict[str, float] = {}
        self.tables = CompletionTables(reward_fn, args.wandb_table_rows)  # the answers, for W&B
        self._generation_configs(lm)

    def _generation_configs(self, lm) -> None:
        import torch
        from transformers import GenerationConfig

        tokenizer = self.tokenizer
        eos = {tokenizer.eos_token_id}
        gen_eos = lm.generation_config.eos_token_id
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        self.eos_ids = torch.tensor(sorted(eos))
        # top_k=0 and top_p=1 switch truncation off: the log-probabilities PPO computes are of the full distribution
        common = dict(max_new_tokens=self.args.max_completion_length, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=sorted(eos), top_k=0, top_p=1.0)
        self.sampling = GenerationConfig(do_sample=True, temperature=self.args.temperature, **common)
        self.greedy = GenerationConfig(do_sample=False, **common)

    @property
    def model(self):
        """The policy (without the value head, which only checkpoints hold), for saving and for callbacks."""
        return self.accelerator.unwrap_model(self.policy).lm

    @property
    def is_fsdp_enabled(self) -> bool:
        """Whether the weights are shards on every rank (ZeRO-3): ``save_final_model`` then gathers them through
        ``save_model`` and merges LoRA on the main process, as it does for FSDP."""
        return self.zero_stage == 3

    def save_model(self, output_dir: str) -> None:
        """The policy's whole weights (or adapters) in ``output_dir``, gathered from every rank."""
        path = Path(output_dir)
        if self.accelerator.is_main_process:
            path.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        save_weights(self.policy, self.accelerator, path, value_head=False)

    # --- the loop -----------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | None = None) -> None:
        from transformers import TrainerControl, TrainerState

        args = self.args
        self.state = TrainerState(max_steps=args.max_steps, logging_steps=args.logging_steps,
                                  save_steps=args.save_steps, eval_steps=args.eval_steps or 0,
                                  train_batch_size=args.rollout_size * self.world)
        self.state.is_world_process_zero = self.accelerator.is_main_process  # only it writes the run folder
        self.state.is_local_process_zero = self.accelerator.is_local_main_process
        self.control = TrainerControl()
        if resume_from_checkpoint:
            self._load_checkpoint(Path(resume_from_checkpoint))
        if args.report_to:
            self.accelerator.init_trackers(os.environ.get("WANDB_PROJECT", args.wandb_project),
                                           config=args.to_dict(),
                                           init_kwargs={"wandb": {"name": os.environ.get("WANDB_NAME", args.run_name)}})
        self._callback("on_train_begin", model=self.model)
        if self.eval_rows and args.eval_on_start and self.state.global_step == 0:
            self._log({f"eval_{k}": v for k, v in self.evaluate().items()})
        while self.state.global_step < args.max_steps:
            stats = self.step(self._rows_for_step(self.state.global_step))
            self.state.global_step += 1
            self.state.epoch = self.state.global_step * args.rollout_size * self.world / len(self.train_rows)
            self.control.should_save = self.control.should_training_stop = False
            self._callback("on_step_end")  # a callback may ask for a save and a stop (StopAtSignal, every rank)
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
        """One PPO step on this rank's rows: rollouts, advantages (whitened over every rank's), ppo_epochs of
        updates; returns the step's statistics over every rank."""
        args = self.args
        batch = self._rollout(rows)
        mask = batch["mask"]
        scores = batch["rewards"] * args.reward_scale
        rewards, kl = token_rewards(scores, batch["logprobs"], batch["ref_logprobs"], mask, self.kl_ctl.value)
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False, all_sum=self._all_sum) * mask
        advantages, returns = compute_gae(rewards, batch["values"], mask, args.gamma, args.lam)
        advantages = masked_whiten(advantages, mask, all_sum=self._all_sum) * mask
        batch.update(advantages=advantages, returns=returns)
        logged = self._update(batch, len(rows))
        learning_rate = self.scheduler.get_last_lr()[0]  # the rate this step trained with
        self.scheduler.step()
        stats = self._step_stats(batch, scores, kl, logged, learning_rate)
        if args.adaptive_kl:  # the same numbers on every rank: the coefficient stays identical
            self.kl_ctl.update(stats["kl"], len(rows) * self.world)
        return stats

    def _update(self, batch: dict, n: int) -> dict[str, list[float]]:
        """ppo_epochs passes over the rollouts in mini-batches; ``accumulate`` makes one optimizer update of each
        mini-batch's micro-batches (DDP all-reduces, DeepSpeed steps, at its last)."""
        import torch

        args = self.args
        self.policy.train()
        logged: dict[str, list[float]] = {}
        generator = torch.Generator().manual_seed(args.seed + self.state.global_step)
        for _ in range(args.ppo_epochs):
            order = torch.randperm(n, generator=generator)
            for mini in order.split(args.mini_batch_size):
                for micro in mini.split(args.per_device_train_batch_size):
                    with self.accelerator.accumulate(self.policy):
                        for key, value in self._train_micro_batch(batch, micro).items():
                            logged.setdefault(key, []).append(value)
                        if self.accelerator.sync_gradients:
                            norm = self.accelerator.clip_grad_norm_(self.trainable, args.max_grad_norm)
                            logged.setdefault("grad_norm", []).append(float("nan") if norm is None else float(norm))
                        self.optimizer.step()
                        self.optimizer.zero_grad()
        return logged

    def _all_sum(self, t):
        """``t`` summed over every rank (itself in one process)."""
        if self.world == 1:
            return t
        return self.accelerator.reduce(t.to(self.accelerator.device), "sum").to(t.device)

    def _gather(self, t):
        """Every rank's per-answer numbers, concatenated in rank order."""
        return t if self.world == 1 else self.accelerator.gather(t.to(self.accelerator.device)).cpu()

    def _step_stats(self, batch: dict, scores, kl, logged: dict[str, list[float]],
                    learning_rate: float) -> dict[str, float]:
        mask, values, returns = batch["mask"], batch["values"], batch["returns"]
        rewards = self._gather(batch["rewards"])
        sequence_kl = self._gather(kl.sum(1))
        objective = self._gather(scores - self.kl_ctl.value * kl.sum(1))
        stats = {
            "reward": rewards.mean().item(),
            "reward_std": rewards.std().item() if len(rewards) > 1 else 0.0,
            "objective": objective.mean().item(),
            "kl": sequence_kl.mean().item(),
            "kl_coef": self.kl_ctl.value,
            "value/estimate": global_mean_var(values, mask, self._all_sum)[0].item(),
            "explained_variance": explained_variance(values, returns, mask, self._all_sum),
            "response_length": self._gather(mask.sum(1)).float().mean().item(),
            "learning_rate": learning_rate,
        }
        local = {key: sum(v) / len(v) for key, v in logged.items()}
        stats.update(self._mean_over_ranks({**local, **self.reward_metrics}))
        self.reward_metrics = {}
        return stats

    def _mean_over_ranks(self, numbers: dict[str, float]) -> dict[str, float]:
        """Each key's mean over the ranks that report it (the losses, the reward's components)."""
        if self.world == 1:
            return numbers
        from accelerate.utils import gather_object

        every = gather_object([numbers])
        keys = list(dict.fromkeys(k for d in every for k in d))
        return {k: sum(d[k] for d in every if k in d) / sum(k in d for d in every) for k in keys}

    def _train_micro_batch(self, batch: dict, idx) -> dict[str, float]:
        from trl.trainer.utils import entropy_from_logits, selective_log_softmax

        args = self.args
        ids, attn, start, response, mask = self._select(batch, idx)
        logits, values = self.policy(ids, attn, start)
        logits = logits / args.temperature
        logprobs = selective_log_softmax(logits, response)
        old = {k: batch[k][idx][:, :mask.shape[1]].to(mask.device)
               for k in ("logprobs", "advantages", "values", "returns")}
        pg_loss, clip_fraction, approx_kl = clipped_policy_loss(
            logprobs, old["logprobs"], old["advantages"], mask, args.cliprange)
        vf_loss, vf_clip_fraction = clipped_value_loss(
            values, old["values"], old["returns"], mask, args.cliprange_value)
        entropy = masked_mean(entropy_from_logits(logits), mask)
        loss = pg_loss + args.vf_coef * vf_loss - args.entropy_coef * entropy
        self.accelerator.backward(loss)  # divided by the accumulation steps (accelerate, or DeepSpeed itself)
        return {"loss": loss.item(), "policy/loss": pg_loss.item(), "policy/clip_fraction": clip_fraction.item(),
                "policy/approx_kl": approx_kl.item(), "value/loss": vf_loss.item(),
                "value/clip_fraction": vf_clip_fraction.item(), "entropy": entropy.item()}

    # --- rollouts -----------------------------------------------------------------------------------
    def _rows_for_step(self, step: int) -> list[dict]:
        """This rank's prompts of a step: the step takes ``rollout_size`` x processes prompts from a fresh seeded
        shuffle per pass over the data (so resume needs no extra state), and each rank its own slice of them."""
        import random

        n, size = len(self.train_rows), self.args.rollout_size
        first = (step * self.world + self.rank) * size
        rows = []
        for g in range(first, first + size):
            order = list(range(n))
            random.Random(self.args.seed + g // n).shuffle(order)
            rows.append(self.train_rows[order[g % n]])
        return rows

    def _generate(self, rows: list[dict], generation_config) -> dict | None:
        """Answers to the rows' prompts: query (left-padded) + response (cut after its first end token). Every
        rank calls it alike, with rows or without (under ZeRO-3 gathering the weights is collective)."""
        import torch

        tok, size = self.tokenizer, self.args.mini_batch_size
        prompts = [r["prompt"] for r in rows]
        enc = None
        if rows:
            enc = tok([prompt_text(p, tok) for p in prompts], padding=True, padding_side="left", truncation=True,
                      truncation_side="left", max_length=self.args.max_seq_length - self.args.max_completion_length,
                      add_special_tokens=not isinstance(prompts[0], list), return_tensors="pt")
        responses = []
        with whole_weights(self.policy, self.accelerator) as unwrapped, torch.no_grad():
            unwrapped.eval()
            for i in range(0, len(rows), size):
                part = {k: v[i:i + size].to(self.accelerator.device) for k, v in enc.items()}
                # the weights are whole here: no rank waits on another (transformers would sync under ZeRO-3)
                out = unwrapped.lm.generate(**part, generation_config=generation_config, synced_gpus=False)
                responses.append(out[:, part["input_ids"].shape[1]:].cpu())
        if not rows:
            return None
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
        return torch.tensor([float("nan") if r is None else float(r) for r in rewards])

    def _fill_unjudged(self, rewards):
        """Rewards with the unjudged ones (NaN: e.g. a sandbox failure) set to the mean of every rank's judged
        ones, so that after global whitening they carry no signal; one rank's outage must not read as a low
        reward. Called on every rank (a collective)."""
        import torch

        judged = ~torch.isnan(rewards)
        totals = self._all_sum(torch.tensor([rewards[judged].sum().item(), float(judged.sum()), float(len(rewards))]))
        neutral = (totals[0] / totals[1]).item() if totals[1] > 0 else 0.0
        self.reward_metrics["reward_unjudged_fraction"] = (1 - totals[1] / totals[2]).item() if totals[2] else 0.0
        return torch.where(judged, rewards, torch.full_like(rewards, neutral))

    def _log_metric(self, name: str, value: float) -> None:
        """What a reward function reports about its components (TRL's ``log_metric``), logged with the step."""
        self.reward_metrics[name] = value

    def _rollout(self, rows: list[dict]) -> dict:
        """Answers, their rewards, and the rollout's log-probabilities, reference log-probabilities and values."""
        import torch

        self.reward_metrics = {}
        batch = self._generate(rows, self.sampling)
        batch["rewards"] = self._fill_unjudged(self._score(rows, batch))
        parts: dict[str, list] = {"logprobs": [], "ref_logprobs": [], "values": []}
        self.policy.eval()
        width = batch["response"].shape[1]
        with torch.no_grad():  # in micro-batches, as training goes: the fp32 logits of a whole mini-batch are large
            for idx in torch.arange(len(rows)).split(self.args.per_device_train_batch_size):
                ids, attn, start, response, mask = self._select(batch, idx)
                logits, values = self.policy(ids, attn, start)
                ref_logits = self._reference_logits(ids, attn, start)
                for key, value in (("logprobs", self._logprobs(logits, response)),
                                   ("ref_logprobs", self._logprobs(ref_logits, response)), ("values", values)):
                    parts[key].append(torch.nn.functional.pad(value * mask, (0, width - value.shape[1])).cpu())
        batch.update({k: torch.cat(v) for k, v in parts.items()})
        return batch

    def _reference_logits(self, ids, attn, start: int):
        """The reference network's logits: the policy with its adapters off (LoRA), or the frozen copy."""
        if self.ref_model is None:
            with self.model.disable_adapter():
                return self.policy(ids, attn, start)[0]
        return self.ref_model(ids, attn, start)[0]

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

    # --- evaluation, logging, checkpoints -------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Mean reward of greedy answers to the held-out prompts: each rank answers its share, the rewards are
        gathered, every rank reports the same numbers."""
        import torch
        from accelerate.utils import gather_object

        mine = self.eval_rows[self.rank::self.world]
        batch = self._generate(mine, self.greedy)
        rewards, lengths = [], []
        if batch is not None:
            rewards, lengths = self._score(mine, batch).tolist(), batch["mask"].sum(1).tolist()
        if self.world > 1:
            rewards, lengths = gather_object(rewards), gather_object(lengths)
        r = torch.tensor(rewards)
        r = r[~torch.isnan(r)]  # an answer the reward could not judge is left out of the held-out mean
        return {"reward": r.mean().item(), "reward_std": r.std().item() if len(r) > 1 else 0.0,
                "response_length": sum(lengths) / max(len(lengths), 1)}

    def _callback(self, event: str, **kwargs) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self.args, self.state, self.control, **kwargs)

    def _log(self, logs: dict[str, float]) -> None:
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self._callback("on_log", logs=dict(logs))
        if self.args.report_to and self.accelerator.is_main_process:
            tables = self.tables.for_log(logs, self.state.global_step)
            self.accelerator.log({**{k.replace("eval_", "eval/", 1) if k.startswith("eval_") else f"train/{k}": v
                                     for k, v in logs.items()}, **tables}, step=self.state.global_step)

    def _rng_file(self) -> str:
        return "rng_state.pth" if self.world == 1 else f"rng_state_{self.rank}.pth"

    def _save_checkpoint(self) -> None:
        """``checkpoint-N`` under ``output_dir`` (the run folder's staging folder, renamed into ``checkpoints/`` and
        rotated by ``RunFolderCallback.on_save``): adapters (or weights) and value head, written once; optimizer
        (under DeepSpeed each rank's shard, in ``global_stepN/``), scheduler, each rank's RNG (their count is the
        process count resume checks), the KL coefficient, and ``trainer_state.json`` last, once every rank has
        written, which marks it complete."""
        import json
        import random
        import shutil

        import numpy as np
        import torch

        main = self.accelerator.is_main_process
        path = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        if main:
            if path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        save_weights(self.policy, self.accelerator, path)
        if self.zero_stage is not None:
            self.policy.save_checkpoint(str(path), tag=f"global_step{self.state.global_step}")
        elif main:
            torch.save(self.optimizer.state_dict(), path / "optimizer.pt")
        if main:
            self.tokenizer.save_pretrained(path)
            torch.save(self.scheduler.state_dict(), path / "scheduler.pt")
            (path / "ppo_state.json").write_text(json.dumps({"kl_coef": self.kl_ctl.value}))
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():  # sampling on a GPU draws from its own generator
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, path / self._rng_file())
        self.accelerator.wait_for_everyone()
        if main:
            self.state.save_to_json(str(path / "trainer_state.json"))
        self._callback("on_save")

    def _load_checkpoint(self, path: Path) -> None:
        import json
        import random

        import numpy as np
        import torch
        from transformers import TrainerState

        ppo_state = json.loads((path / "ppo_state.json").read_text())
        saved = TrainerState.load_from_json(str(path / "trainer_state.json"))
        if self.zero_stage is not None:
            self.policy.load_checkpoint(str(path), tag=f"global_step{saved.global_step}",
                                        load_lr_scheduler_states=False)
        else:
            load_weights(self.policy, self.accelerator, path)
            self.optimizer.load_state_dict(torch.load(path / "optimizer.pt"))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt"))
        rng = torch.load(path / self._rng_file(), weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.kl_ctl.value = ppo_state["kl_coef"]
        self.state.global_step, self.state.epoch = saved.global_step, saved.epoch
        self.state.log_history = saved.log_history

    def end(self) -> None:
        if self.args.report_to:
            self.accelerator.end_training()
