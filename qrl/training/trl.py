"""Thin wrappers around TRL: the model, LoRA, and the mapping of the specification's names onto TRL's.

The mapping lives here and nowhere else: ``kl_coef`` -> ``beta``, ``batch_size`` ->
``per_device_train_batch_size``, ``max_seq_length`` -> ``max_length``, and so on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qrl.config.arguments import EMBEDDED_MODEL_NAME, Config
from qrl.config.run_folder import RunFolder
from qrl.data.records import UserError
from qrl.models.embedded import ensure_embedded_model


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def resolve_base_model(name: str, allow_adapter: bool = False) -> str:
    """A loadable model folder for --base_model, or one clear error naming it."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not (allow_adapter and is_adapter(path)):
            hint = (" (a LoRA adapter checkpoint: train from checkpoints/final, or resume with --resume_from_checkpoint)"
                    if is_adapter(path) else " (no config.json)")
            raise UserError(f"--base_model {name}: not a model folder{hint}")
        return str(path)
    if name == EMBEDDED_MODEL_NAME:
        try:
            return str(ensure_embedded_model())
        except RuntimeError as e:
            raise UserError(f"embedded model: {e}") from None
    if path.exists() or "/" not in name or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"--base_model {name}: model folder not found")
    from transformers import AutoConfig

    try:  # a hub id that the local Hugging Face cache (or a reachable hub) holds
        AutoConfig.from_pretrained(name)
    except OSError:
        raise UserError(f"--base_model {name}: not a local folder, and not loadable from the Hugging Face cache") from None
    return name


def load_tokenizer(model_path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_for_generation(model_path: str, cfg: Config):
    """A model (a LoRA checkpoint merged into its base) and its tokenizer, ready to sample from."""
    from transformers import AutoModelForCausalLM

    kwargs = model_init_kwargs(cfg)
    if is_adapter(model_path):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(model_path, **kwargs).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    has_tokenizer = (Path(model_path) / "tokenizer_config.json").is_file() or not Path(model_path).is_dir()
    tokenizer = load_tokenizer(model_path if has_tokenizer else model.config._name_or_path)
    return model, tokenizer


def peft_config(cfg: Config, task_type: str = "CAUSAL_LM"):
    """LoRA on all linear layers by default; None for full fine-tuning.

    For a reward model (``SEQ_CLS``) PEFT also trains the new score head in full (``modules_to_save``).
    """
    if not cfg.lora.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora.lora_r,
        lora_alpha=cfg.lora.lora_alpha,
        lora_dropout=cfg.lora.lora_dropout,
        target_modules=cfg.lora.lora_target_modules or "all-linear",
        task_type=task_type,
    )


def model_init_kwargs(cfg: Config) -> dict[str, Any]:
    import torch

    mem = cfg.memory
    # fp16 autocast needs fp32 master weights for what trains; LoRA adapters are fp32 anyway, so the base may be fp16.
    half = torch.float16 if mem.fp16 and cfg.lora.use_peft else torch.float32
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if cfg.model.bf16 else half}
    if mem.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"],
            bnb_4bit_quant_storage=kwargs["dtype"],  # stored as the compute dtype, so that ZeRO-3 and FSDP can shard it
        )
    return kwargs


def memory_arguments(cfg: Config) -> dict[str, Any]:
    """The memory options as TrainingArguments (every TRL path); precision's bf16 is mapped with the model's."""
    mem = cfg.memory
    return dict(fp16=mem.fp16, optim=mem.optim, torch_compile=mem.torch_compile)


def generation_arguments(cfg: Config) -> dict[str, Any]:
    """Where GRPO generates: vLLM's share of each GPU (colocate) or the server's URL (server); under ZeRO-3
    without vLLM, whether the weights are gathered whole."""
    mem = cfg.memory
    return dict(
        vllm_gpu_memory_utilization=mem.vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size=mem.vllm_tensor_parallel_size,
        vllm_server_base_url=mem.vllm_server_base_url,
        ds3_gather_for_generation=mem.ds3_gather_for_generation,
    )


def check_scaling(cfg: Config) -> None:
    """Memory and launch options this machine cannot honour: one line each, at start, before any model loads."""
    import importlib.util

    import torch

    mem = cfg.memory
    gpu = torch.cuda.is_available()
    bnb = importlib.util.find_spec("bitsandbytes") is not None
    if mem.fp16 and cfg.model.bf16:
        raise UserError("--fp16 and --bf16: choose one precision")
    if mem.fp16 and not gpu:
        raise UserError("--fp16 needs a CUDA GPU (none found); train in fp32 (the default) or with --bf16")
    if mem.load_in_4bit:
        if not cfg.lora.use_peft:
            raise UserError("--load_in_4bit (QLoRA) trains LoRA adapters on frozen 4-bit weights: drop --no_peft")
        missing = [what for what, ok in (("a CUDA GPU", gpu), ("the bitsandbytes package", bnb)) if not ok]
        if missing:
            raise UserError(
                f"--load_in_4bit (QLoRA) needs {' and '.join(missing)} (pip install bitsandbytes, on a CUDA machine); "
                "without them, train LoRA adapters (the default) on unquantized weights"
            )
    from transformers import trainer_optimizer  # an unknown name is TRL's config check (trl_config)

    if mem.optim in getattr(trainer_optimizer, "_BITSANDBYTES_OPTIMIZERS", ()) and not bnb:
        raise UserError(f"--optim {mem.optim} needs the bitsandbytes package (pip install bitsandbytes)")
    if not 0 < mem.vllm_gpu_memory_utilization <= 1:
        raise UserError(f"--vllm_gpu_memory_utilization must be in (0, 1] (got {mem.vllm_gpu_memory_utilization})")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not gpu and os.environ.get("RANK", "0") == "0":
        print("FSDP needs GPUs: without one, accelerate trains these processes with plain DDP (gloo)", flush=True)


def trl_arguments(cfg: Config, folder: RunFolder, run_name: str, has_eval: bool) -> dict[str, Any]:
    """The specification's options as keyword arguments of TRL's configs (shared by every TRL path)."""
    import torch

    m = cfg.model
    evaluate = has_eval and m.eval_steps > 0
    extra = {"beta": m.kl_coef} if hasattr(m, "kl_coef") else {}  # reward-model runs have no KL penalty
    return dict(
        # Without an accelerator, say so: several processes then form a gloo group instead of each training alone.
        use_cpu=not torch.accelerator.is_available(),
        output_dir=str(folder.checkpoints),
        run_name=run_name,
        learning_rate=m.learning_rate,
        per_device_train_batch_size=m.batch_size,
        per_device_eval_batch_size=m.batch_size,
        gradient_accumulation_steps=m.gradient_accumulation_steps,
        max_steps=m.max_steps,
        save_strategy="steps",
        save_steps=m.save_steps,
        save_total_limit=cfg.run.save_total_limit,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=m.eval_steps if evaluate else None,
        logging_steps=m.logging_steps,
        bf16=m.bf16,  # TRL defaults to True; the specification makes it opt-in
        activation_checkpointing=m.gradient_checkpointing,  # transformers 5 name of gradient checkpointing
        max_grad_norm=m.max_grad_norm,
        warmup_steps=m.warmup_steps,
        lr_scheduler_type=m.lr_scheduler_type,
        seed=m.seed,
        report_to=["wandb"] if cfg.tracking.wandb else "none",
        model_init_kwargs=model_init_kwargs(cfg),
        **memory_arguments(cfg),
        **extra,
    )


def trl_config(config_class, **kwargs):
    """A TRL config; the checks TRL makes of the options (batch sizes that do not divide, ...) become one line."""
    try:
        return config_class(**kwargs)
    except ValueError as e:
        raise UserError(f"{config_class.__name__}: {str(e).strip().splitlines()[0]}") from None


def build_dpo_trainer(cfg: Config, model_path: str, tokenizer, train_dataset, eval_dataset, folder: RunFolder,
                      run_name: str, callbacks: list):
    """TRL's DPOTrainer with the run's options; the reference model is the base with adapters off."""
    from trl import DPOConfig, DPOTrainer

    sft = cfg.dpo.dpo_sft_weight
    losses = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, sft]} if sft > 0 else {}
    args = trl_config(
        DPOConfig,
        **trl_arguments(cfg, folder, run_name, has_eval=eval_dataset is not None),
        max_length=cfg.model.max_seq_length,
        **losses,
    )
    return DPOTrainer(
        model=model_path,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(cfg),
        callbacks=callbacks,
    )


def check_wandb(cfg: Config, run_name: str) -> None:
    """Fail at start, in one line, when W&B cannot be used; never at the first log step."""
    if not cfg.tracking.wandb:
        return
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise UserError("--wandb: the wandb package is not installed (pip install wandb)") from None
    os.environ.setdefault("WANDB_PROJECT", cfg.tracking.wandb_project)
    os.environ.setdefault("WANDB_NAME", run_name)
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "disabled", "dryrun"):
        return
    if not (os.environ.get("WANDB_API_KEY") or _wandb_logged_in()):
        raise UserError("--wandb: not logged in to W&B; run `wandb login`, or set WANDB_MODE=offline to log locally")


def _wandb_logged_in() -> bool:
    import netrc

    try:
        auth = netrc.netrc(os.environ.get("NETRC")).authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
    return auth is not None


def save_final_model(trainer, tokenizer, folder: RunFolder) -> Path:
    """The final model as an ordinary checkpoint (LoRA merged into the base), loadable with from_pretrained."""
    if trainer.is_fsdp_enabled:
        return _save_final_sharded(trainer, tokenizer, folder)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if trainer.accelerator.is_main_process:
        model.save_pretrained(folder.final_model)
        tokenizer.save_pretrained(folder.final_model)
    trainer.accelerator.wait_for_everyone()
    return folder.final_model


def _save_final_sharded(trainer, tokenizer, folder: RunFolder) -> Path:
    """Under FSDP the weights are shards on every rank: the Trainer gathers them into files (whole weights, or the
    adapters for LoRA), then the main process merges the adapters into the base on the CPU."""
    trainer.save_model(str(folder.final_model))
    if trainer.accelerator.is_main_process:
        if is_adapter(folder.final_model):
            from peft import AutoPeftModelForCausalLM

            merged = AutoPeftModelForCausalLM.from_pretrained(folder.final_model, device_map="cpu").merge_and_unload()
            for path in folder.final_model.glob("adapter_*"):
                path.unlink()
            merged.save_pretrained(folder.final_model)
        tokenizer.save_pretrained(folder.final_model)
    trainer.accelerator.wait_for_everyone()
    return folder.final_model


# --- GRPO: the test-case paths ------------------------------------------------------------------------------

INSTRUCTIONS = {
    "python": "Answer with the complete Python function in one ```python code block.",
    "q": "Answer with the q definition of `{entry_point}` in one ```q code block.",
}


def build_prompt(problem, tokenizer) -> str | list[dict[str, str]]:
    """The one prompt builder for training and evaluation: the chat template where the model has one, else the raw
    prompt. A completion-style problem (HumanEval: code that the answer continues) is shown to a chat model as code
    to complete: given the bare code, the embedded chat model wrote prose after it (0 of HumanEval's 164 greedy,
    against 9 asked this way); scoring joins whatever function it answers with to the prompt's code."""
    if not tokenizer.chat_template:
        return problem.prompt
    entry_point = getattr(problem, "entry_point", None) or "solve"  # Q-HumanEval names its own function
    instruction = INSTRUCTIONS.get(problem.language, "").format(entry_point=entry_point)
    task = problem.prompt.rstrip()
    if problem.completion_joins_prompt:
        code = f"```{problem.language}\n{problem.prompt.strip()}\n```"
        task = f"Complete the {problem.language.capitalize()} function `{entry_point}`:\n\n{code}"
    return [{"role": "user", "content": f"{task}\n\n{instruction}".rstrip()}]


def prompt_text(prompt: str | list[dict[str, str]], tokenizer) -> str:
    """What the model actually reads for a prompt (the chat template applied)."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def truncate_prompt(prompt: str | list[dict[str, str]], tokenizer, max_tokens: int) -> tuple[Any, bool]:
    """Cut a prompt from the left to max_tokens (template included), keeping the instruction's end."""
    n_tokens = len(tokenizer(prompt_text(prompt, tokenizer), add_special_tokens=False)["input_ids"])
    if n_tokens <= max_tokens:
        return prompt, False
    content = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    ids = tokenizer(content, add_special_tokens=False)["input_ids"]
    keep = max(len(ids) - (n_tokens - max_tokens), 1)
    cut = tokenizer.decode(ids[-keep:])
    if isinstance(prompt, str):
        return cut, True
    return [*prompt[:-1], {**prompt[-1], "content": cut}], True


def check_vllm(cfg: Config) -> None:
    if cfg.grpo.use_vllm:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise UserError("--use_vllm: the vllm package is not installed (pip install vllm; it needs a GPU)")


def _grpo_class():
    from trl import GRPOTrainer

    class CodeGRPOTrainer(GRPOTrainer):
        """TRL's GRPOTrainer plus what code RL needs: reward_scale that survives group normalisation, groups
        with equal rewards left out of the loss, and evaluation by running sampled code (pass@k)."""

        def __init__(self, *args, reward_scale: float = 1.0, drop_zero_variance_groups: bool = False,
                     evaluator=None, **kwargs):
            super().__init__(*args, **kwargs)
            self.reward_scale = reward_scale
            self.drop_zero_variance_groups = drop_zero_variance_groups
            self.evaluator = evaluator

        def _generate_and_score_completions(self, inputs):
            import torch

            out = super()._generate_and_score_completions(inputs)
            if self.model.training and self.drop_zero_variance_groups:
                adv, mask = out["advantages"], out["completion_mask"]
                g = self.num_generations
                flat = adv == 0
                if adv.numel() % g == 0:  # whole groups on this process: drop a group only if all of it is flat
                    flat = flat.view(-1, g).all(dim=1).repeat_interleave(g)
                dropped_tokens = mask[flat].sum()
                out["completion_mask"] = mask * (~flat).unsqueeze(1).to(mask.dtype)
                counts = self.accelerator.gather(torch.stack([flat.sum() / g, dropped_tokens.float()]).view(1, 2))
                counts = counts.view(-1, 2).sum(dim=0)
                self._metrics["train"]["dropped_groups"].append(counts[0].item())
                if out.get("num_items_in_batch") is not None:
                    out["num_items_in_batch"] = torch.clamp(out["num_items_in_batch"] - counts[1], min=1)
            out["advantages"] = out["advantages"] * self.reward_scale
            return out

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
            if self.evaluator is None:
                return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            metrics, _ = self.evaluator(self.accelerator.unwrap_model(self.model), self.accelerator)
            metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return CodeGRPOTrainer


def build_grpo_trainer(cfg: Config, model_path: str, tokenizer, train_dataset, eval_dataset, reward_funcs: list,
                       folder: RunFolder, run_name: str, callbacks: list, evaluator=None):
    """TRL's GRPOTrainer with the run's options: kl_coef -> beta, entropy_coef -> entropy_coef, and TRL's own
    GRPO names passed through."""
    from trl import GRPOConfig

    g = cfg.grpo
    common = trl_arguments(cfg, folder, run_name, has_eval=evaluator is not None)
    common["per_device_eval_batch_size"] = g.num_generations  # TRL checks it; evaluation is ours (pass@k)
    args = trl_config(
        GRPOConfig,
        **common,
        entropy_coef=cfg.model.entropy_coef,
        num_generations=g.num_generations,
        temperature=g.temperature,
        max_completion_length=g.max_completion_length,
        loss_type=g.loss_type,
        epsilon=g.epsilon,
        epsilon_high=g.epsilon_high,
        num_iterations=g.num_iterations,
        scale_rewards=g.scale_rewards,
        mask_truncated_completions=g.mask_truncated_completions,
        use_vllm=g.use_vllm,
        vllm_mode=g.vllm_mode,
        **generation_arguments(cfg),
        log_completions=False,
    )
    return _grpo_class()(
        model=model_path,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(cfg),
        callbacks=callbacks,
        reward_scale=cfg.model.reward_scale,
        drop_zero_variance_groups=g.drop_zero_variance_groups,
        evaluator=evaluator,
    )


def sample_completions(model, tokenizer, prompts: list, n: int, temperature: float, max_new_tokens: int,
                       batch_size: int = 8, desc: str | None = None) -> list[list[str]]:
    """n sampled answers per prompt (greedy and one answer when temperature is 0), decoded without specials.

    ``desc``: show a progress bar with this label (as transformers shows its own, and silenced the same way):
    sampling hundreds of answers on a CPU takes minutes."""
    import torch
    from transformers.utils import logging as hf_logging

    was_training = model.training
    model.eval()
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    greedy = temperature <= 0
    n = 1 if greedy else n
    out: list[list[str]] = []
    bar = hf_logging.tqdm(total=len(prompts), desc=desc, unit="prompt", disable=desc is None or not
                          hf_logging.is_progress_bar_enabled())  # fmt: skip
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [prompt_text(p, tokenizer) for p in prompts[start:start + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.no_grad():
                gen = model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=not greedy,
                    temperature=temperature if not greedy else None, top_p=None, top_k=None,
                    num_return_sequences=n, pad_token_id=tokenizer.pad_token_id,
                )
            answers = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            out.extend(answers[i:i + n] for i in range(0, len(answers), n))
            bar.update(len(texts))
    finally:
        bar.close()
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return out


# --- reward models ----------------------------------------------------------------------------------
def build_reward_trainer(cfg: Config, model_path: str, tokenizer, train_dataset, eval_dataset, folder: RunFolder,
                         run_name: str, callbacks: list):
    """TRL's RewardTrainer: a one-output sequence classifier on the base model, Bradley-Terry loss on pairs."""
    from trl import RewardConfig, RewardTrainer

    args = trl_config(
        RewardConfig,
        **trl_arguments(cfg, folder, run_name, has_eval=eval_dataset is not None),
        max_length=cfg.model.max_seq_length,
    )
    return RewardTrainer(
        model=model_path,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config(cfg, task_type="SEQ_CLS"),
        callbacks=callbacks,
    )


def check_reward_model(path: str, option: str = "--reward_model_path") -> Path:
    """A folder holding a one-output sequence classifier, or one line saying what it is instead."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"{option} {path}: model folder not found")
    if not (folder / "config.json").is_file():
        if (folder / "adapter_config.json").is_file():
            raise UserError(f"{option} {path}: a LoRA checkpoint, not a whole model; use the run's checkpoints/final")
        raise UserError(f"{option} {path}: not a model folder (no config.json)")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise UserError(f"{option} {path}: unreadable model config ({e})") from None
    archs = config.architectures or []
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise UserError(
            f"{option} {path}: not a sequence-classification reward model (it is {', '.join(archs) or 'unknown'}); "
            "train one with train_reward_model.py"
        )
    if config.num_labels != 1:
        raise UserError(f"{option} {path}: a classifier with {config.num_labels} outputs; a reward model has 1")
    return folder


def reward_model_texts(tokenizer, prompts: list, completions: list) -> list[str]:
    """The texts a reward model scores, built exactly as TRL's RewardTrainer built its training pairs."""
    texts = []
    for prompt, completion in zip(prompts, completions, strict=True):
        if isinstance(prompt, list):
            answer = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
            texts.append(tokenizer.apply_chat_template(prompt + answer, tokenize=False))
        else:
            text = prompt + (completion if isinstance(completion, str) else completion[0]["content"])
            texts.append(text if text.endswith(tokenizer.eos_token) else text + tokenizer.eos_token)
    return texts


def score_texts(model, tokenizer, texts: list[str], conversational: bool, batch_size: int,
                max_length: int) -> list[float]:
    """One reward per text, in batches; long texts keep their end (the score is read at the last token)."""
    import torch

    scores: list[float] = []
    device = next(model.parameters()).device
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                          padding_side="right", truncation_side="left", add_special_tokens=not conversational,
                          return_tensors="pt").to(device)
        with torch.inference_mode():
            scores.extend(model(**batch).logits[:, 0].float().tolist())
    return scores


def as_chat(tokenizer, prompt):
    """Text prompts become a user turn for chat models: how a chat policy is asked a question."""
    if isinstance(prompt, str) and tokenizer.chat_template:
        return [{"role": "user", "content": prompt}]
    return prompt


# --- PPO ----------------------------------------------------------------------------------------------
# TRL no longer ships a PPO trainer; this one is small on purpose. One PPO step: sample one answer per
# prompt for a batch of prompts, score them, turn scores and the KL to the reference into per-token
# rewards, estimate advantages with GAE against the value head, then take ppo_epochs passes of clipped
# policy and value updates. The loss pieces are plain functions so that they can be checked by hand.
@dataclass
class PPOConfig:
    """PPO's settings (built from the options by ``ppo_config``; the names follow the specification)."""

    output_dir: str
    run_name: str = "ppo"
    learning_rate: float = 1e-5
    batch_size: int = 1  # answers per forward/backward pass
    gradient_accumulation_steps: int = 1  # passes per optimizer update
    num_mini_batches: int = 1  # optimizer updates per pass over the rollouts
    ppo_epochs: int = 4
    max_steps: int = 100
    save_steps: int = 50
    save_total_limit: int | None = None
    eval_steps: int = 0
    logging_steps: int = 1
    max_seq_length: int = 1024
    max_completion_length: int = 256
    temperature: float = 1.0
    kl_coef: float = 0.1
    adaptive_kl: bool = False
    kl_target: float = 6.0
    kl_horizon: int = 10000
    entropy_coef: float = 0.01
    reward_scale: float = 1.0
    whiten_rewards: bool = False
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    max_grad_norm: float = 1.0
    warmup_steps: int = 0
    lr_scheduler_type: str = "linear"
    gradient_checkpointing: bool = True
    bf16: bool = False
    seed: int = 42
    report_to: list[str] = field(default_factory=list)
    wandb_project: str = "q-rl"

    @property
    def mini_batch_size(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps

    @property
    def rollout_size(self) -> int:
        """Answers (and prompts) per PPO step."""
        return self.mini_batch_size * self.num_mini_batches


def ppo_config(cfg: Config, folder: RunFolder, run_name: str) -> PPOConfig:
    """The options as a PPOConfig: the PPO half of the name mapping."""
    m, p, g = cfg.model, cfg.ppo, cfg.grpo  # answer length and temperature: shared with GRPO
    return PPOConfig(
        output_dir=str(folder.checkpoints), run_name=run_name, learning_rate=m.learning_rate,
        batch_size=m.batch_size, gradient_accumulation_steps=m.gradient_accumulation_steps,
        num_mini_batches=p.num_mini_batches, ppo_epochs=p.ppo_epochs, max_steps=m.max_steps,
        save_steps=m.save_steps, save_total_limit=cfg.run.save_total_limit, eval_steps=m.eval_steps,
        logging_steps=m.logging_steps, max_seq_length=m.max_seq_length, max_completion_length=g.max_completion_length,
        temperature=g.temperature, kl_coef=m.kl_coef, adaptive_kl=p.adaptive_kl, kl_target=p.kl_target,
        kl_horizon=p.kl_horizon, entropy_coef=m.entropy_coef, reward_scale=m.reward_scale,
        whiten_rewards=p.whiten_rewards, cliprange=p.cliprange, cliprange_value=p.cliprange_value, vf_coef=p.vf_coef,
        gamma=p.gamma, lam=p.lam, max_grad_norm=m.max_grad_norm, warmup_steps=m.warmup_steps,
        lr_scheduler_type=m.lr_scheduler_type, gradient_checkpointing=m.gradient_checkpointing, bf16=m.bf16,
        seed=m.seed, report_to=["wandb"] if cfg.tracking.wandb else [], wandb_project=cfg.tracking.wandb_project,
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


def entropy_from_logits(logits):
    import torch

    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


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
        if args.gradient_checkpointing:
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
                                  save_steps=args.save_steps, eval_steps=args.eval_steps,
                                  train_batch_size=args.rollout_size)
        self.control = TrainerControl()
        if resume_from_checkpoint:
            self._load_checkpoint(Path(resume_from_checkpoint))
        if args.report_to:
            import dataclasses

            self.accelerator.init_trackers(os.environ.get("WANDB_PROJECT", args.wandb_project),
                                           config=dataclasses.asdict(args),
                                           init_kwargs={"wandb": {"name": os.environ.get("WANDB_NAME", args.run_name)}})
        self._callback("on_train_begin")
        while self.state.global_step < args.max_steps:
            rows = self._rows_for_step(self.state.global_step)
            stats = self.step(rows)
            self.state.global_step += 1
            self.state.epoch = self.state.global_step * args.rollout_size / len(self.train_rows)
            self._callback("on_step_end")
            step = self.state.global_step
            if step % args.logging_steps == 0 or step == args.max_steps:
                self._log(stats)
            if self.eval_rows and args.eval_steps and (step % args.eval_steps == 0 or step == args.max_steps):
                self._log({f"eval_{k}": v for k, v in self.evaluate().items()})
            if step % args.save_steps == 0 or step == args.max_steps:
                self._save_checkpoint()
        self._callback("on_train_end")

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
                for micro in mini.split(args.batch_size):
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
        from trl.trainer.utils import selective_log_softmax

        logprobs = selective_log_softmax(logits, response)
        old = {k: batch[k][idx][:, :mask.shape[1]].to(mask.device) for k in ("logprobs", "advantages", "values", "returns")}
        pg_loss, clip_fraction, approx_kl = clipped_policy_loss(
            logprobs, old["logprobs"], old["advantages"], mask, args.cliprange)
        vf_loss, vf_clip_fraction = clipped_value_loss(values, old["values"], old["returns"], mask, args.cliprange_value)
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
        ends = torch.where(is_end.any(1), is_end.int().argmax(1), torch.full_like(is_end[:, 0], width - 1, dtype=torch.long))
        mask = (torch.arange(width)[None, :] <= ends[:, None]).float()
        response = response.masked_fill(mask == 0, tok.pad_token_id)
        words = tok.batch_decode(response, skip_special_tokens=True)
        completions = [[{"role": "assistant", "content": w}] if isinstance(p, list) else w
                       for p, w in zip(prompts, words)]
        return {"query": enc["input_ids"], "query_mask": enc["attention_mask"], "response": response, "mask": mask,
                "prompts": prompts, "completions": completions}

    def _score(self, rows: list[dict], batch: dict) -> "torch.Tensor":
        import torch

        columns = {k: [r.get(k) for r in rows] for k in rows[0] if k != "prompt"}
        ids = [r[m.bool()].tolist() for r, m in zip(batch["response"], batch["mask"])]
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
            self.accelerator.log({k.replace("eval_", "eval/", 1) if k.startswith("eval_") else f"train/{k}": v
                                  for k, v in logs.items()}, step=self.state.global_step)

    def _save_checkpoint(self) -> None:
        """``checkpoint-N``: adapters (or weights), value head, optimizer, scheduler, RNG, KL coefficient, and
        ``trainer_state.json`` last, which marks the checkpoint complete."""
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
        self._rotate_checkpoints()

    def _rotate_checkpoints(self) -> None:
        import re
        import shutil

        limit = self.args.save_total_limit
        if not limit:
            return
        found = sorted((int(m.group(1)), p) for p in Path(self.args.output_dir).iterdir()
                       if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))
        for _, old in found[:-limit]:
            shutil.rmtree(old)

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
