"""The ``qrl`` command, one subcommand per script (as ``trl <command>``):

    qrl rl ...            = python run_rl.py ...              (DPO, reward-model PPO, GRPO on test cases)
    qrl reward-model ...  = python train_reward_model.py ...  (train a reward model)
    qrl score ...         = python reward_model.py score ...  (run completions against their tests)
    qrl model             = fetch and convert the embedded default model, print its folder
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence

from qrl.config import interrupts, launch
from qrl.data.records import UserError

RL_DOC = "Reinforcement learning for code-generation models (Q/kdb+ and Python)."


def _quiet_known_warnings() -> None:
    # TRL and PEFT still call the old gradient-checkpointing names; the warning is theirs, not the user's.
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.* is deprecated", category=FutureWarning)


def rl(argv: Sequence[str] | None = None, prog: str = "run_rl.py") -> int:
    """Parse, merge over config.yaml, validate, and train along the chosen path."""
    from qrl.config.arguments import RL_SECTIONS, parse_config, validate_training

    _quiet_known_warnings()
    cfg = None
    try:
        with interrupts.handle_signals(prog):
            cfg = parse_config(RL_SECTIONS, None if argv is None else list(argv), prog=prog, description=RL_DOC)
            validate_training(cfg)
            from qrl.training import paths  # heavy imports only once the options are known to be good

            paths.method_of(cfg)
            folder = paths.train(cfg)
    except UserError as e:
        _say_error(prog, e)
        return 2
    except interrupts.Interrupted as e:
        during = "--eval_only: no results written" if cfg and cfg.evaluation.eval_only else "start-up: nothing saved"
        return _interrupted(prog, e, during)
    if launch.is_main_process():
        print(f"Run folder: {folder.root}")
    return 0


def reward_model(argv: Sequence[str] | None = None, prog: str = "train_reward_model.py") -> int:
    """Train a reward model from preferences, rankings, demonstrations or pairs mined from test runs."""
    from qrl.config.arguments import validate_training
    from qrl.training.reward_models import parse_options, train_reward_model

    _quiet_known_warnings()
    try:
        with interrupts.handle_signals(prog):
            cfg = parse_options(None if argv is None else list(argv), prog=prog)
            validate_training(cfg)
            folder = train_reward_model(cfg)
    except UserError as e:
        _say_error(prog, e)
        return 2
    except interrupts.Interrupted as e:
        return _interrupted(prog, e, "start-up: nothing saved")
    if launch.is_main_process():
        print(f"Run folder: {folder.root}")
        if not cfg.mining.mine_only:
            print(f"Reward model: {folder.final_model}")
    return 0


def _say_error(prog: str, e: UserError) -> None:
    """One line; an error every rank raised alike, from the main process only."""
    if not e.every_rank or launch.is_main_process():
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)


def _interrupted(prog: str, e: interrupts.Interrupted, before: str) -> int:
    """One line (from the main process) and 130 for SIGINT, 143 for SIGTERM. ``before`` says what a signal that
    stopped the command where it was (before training, or outside it) left undone."""
    message = e.message or f"interrupted ({e.signame}) during {before}"
    if launch.is_main_process():
        print(f"{prog}: {message}", file=sys.stderr, flush=True)
    return e.exit_code


def score(argv: Sequence[str] | None = None, prog: str = "qrl score") -> int:
    """Run completions against their problems' tests in the sandbox; no torch is imported."""
    from qrl.rewards.score import score_main

    return score_main(sys.argv[2:] if argv is None else argv, prog=prog)


def model(argv: Sequence[str] | None = None) -> int:
    from qrl.models.embedded import ensure_embedded_model

    print(ensure_embedded_model())
    return 0


COMMANDS: dict[str, Callable[..., int]] = {"rl": rl, "reward-model": reward_model, "score": score, "model": model}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command == "model":
        return model(rest)
    return COMMANDS[command](rest, prog=f"qrl {command}")


if __name__ == "__main__":
    sys.exit(main())
