import pytest

from qrl.config.arguments import RL_SECTIONS, parse_config
from qrl.config.run_folder import RunFolder
from qrl.data.records import UserError
from qrl.training.trl import peft_config, resolve_base_model, trl_arguments


def test_specification_names_map_onto_trl(tmp_path):
    cfg = parse_config(RL_SECTIONS, ["--kl_coef", "0.25", "--batch_size", "3", "--gradient_accumulation_steps", "2",
                                     "--max_seq_length", "256", "--eval_steps", "5", "--wandb"])
    from trl import DPOConfig

    args = DPOConfig(**trl_arguments(cfg, RunFolder(tmp_path / "r"), "r", has_eval=True), max_length=256)
    assert args.beta == 0.25
    assert args.per_device_train_batch_size == 3 and args.gradient_accumulation_steps == 2
    assert args.bf16 is False  # TRL defaults to True; the specification makes it opt-in
    assert args.gradient_checkpointing is True
    assert args.eval_strategy == "steps" and args.eval_steps == 5
    assert args.report_to == ["wandb"]
    assert args.output_dir == str(RunFolder(tmp_path / "r").staging)  # published into checkpoints/ when complete
    no_eval = trl_arguments(cfg, RunFolder(tmp_path / "r"), "r", has_eval=False)
    assert no_eval["eval_strategy"] == "no"


def test_lora_defaults_and_full_fine_tuning():
    lora = peft_config(parse_config(RL_SECTIONS, ["--lora_r", "8", "--lora_target_modules", "q_proj", "v_proj"]))
    assert lora.r == 8 and set(lora.target_modules) == {"q_proj", "v_proj"}
    assert peft_config(parse_config(RL_SECTIONS, [])).target_modules == "all-linear"
    assert peft_config(parse_config(RL_SECTIONS, ["--no_peft"])) is None


def test_model_resolution(tmp_path, tiny_model):
    assert resolve_base_model(str(tiny_model)) == str(tiny_model)
    with pytest.raises(UserError, match="no-such-model: model folder not found"):
        resolve_base_model(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a model folder"):
        resolve_base_model(str(tmp_path / "empty"))


# --- GRPO ----------------------------------------------------------------------------------------------------

from types import SimpleNamespace  # noqa: E402

from qrl.training.prompts import build_prompt, prompt_text, truncate_prompt  # noqa: E402
from qrl.training.trl import build_grpo_trainer, check_vllm  # noqa: E402


def problem(prompt="Write a Python function `add(a, b)` returning a + b.", language="python", joins=False):
    return SimpleNamespace(prompt=prompt, language=language, completion_joins_prompt=joins, task_id="t",
                           entry_point="add")


def test_prompt_builder_uses_the_chat_template_or_the_raw_prompt(tiny_model):
    from qrl.models.loading import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    chat = build_prompt(problem(), tok)
    assert chat[0]["role"] == "user" and "```python" in chat[0]["content"]
    # the instruction names the function the tests call; a stdin program has none to name
    assert chat[0]["content"].endswith("Answer with the complete Python function `add` in one ```python code block.")
    program = SimpleNamespace(**{**vars(problem()), "entry_point": None})
    assert build_prompt(program, tok)[0]["content"].endswith("the complete Python program in one ```python code block.")
    assert prompt_text(chat, tok).endswith("<|im_start|>assistant\n")
    code = build_prompt(problem('def add(a, b):\n    """Sum."""\n', joins=True), tok)  # HumanEval style
    shown = 'Complete the Python function `add`:\n\n```python\ndef add(a, b):\n    """Sum."""\n```'
    assert code[0]["content"].startswith(shown)
    tok.chat_template = None  # a completion model continues the code itself
    assert build_prompt(problem("def add(a, b):\n    ", joins=True), tok) == "def add(a, b):\n    "


def test_truncation_cuts_from_the_left_and_keeps_the_end(tiny_model):
    from qrl.models.loading import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    long = problem("blah " * 300 + "Write a Python function `add(a, b)`.")
    cut, was_cut = truncate_prompt(build_prompt(long, tok), tok, 60)
    assert was_cut and len(tok(prompt_text(cut, tok), add_special_tokens=False)["input_ids"]) <= 60
    assert cut[0]["content"].endswith("code block.")
    same, was_cut = truncate_prompt(build_prompt(problem(), tok), tok, 500)
    assert not was_cut and same == build_prompt(problem(), tok)


def test_sampling_shows_progress_only_when_labelled(tiny_model, capsys):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from qrl.models.loading import load_tokenizer
    from qrl.training.prompts import sample_completions

    tok = load_tokenizer(str(tiny_model))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    prompts = [build_prompt(problem(), tok)] * 3
    answers = sample_completions(model, tok, prompts, 2, 0.8, 4, batch_size=2, desc="mining: sampling answers")
    assert [len(a) for a in answers] == [2, 2, 2]
    err = capsys.readouterr().err
    assert "mining: sampling answers" in err and "3/3" in err
    sample_completions(model, tok, prompts, 2, 0.8, 4)  # no label (say, ranks other than the first): silent
    hf_logging.disable_progress_bar()  # as transformers' own bars are silenced
    try:
        sample_completions(model, tok, prompts, 2, 0.8, 4, desc="evaluation")
    finally:
        hf_logging.enable_progress_bar()
    assert capsys.readouterr().err == ""


def test_use_vllm_without_vllm_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(UserError, match="--use_vllm: the vllm package is not installed"):
        check_vllm(parse_config(RL_SECTIONS, ["--use_vllm"]))
    check_vllm(parse_config(RL_SECTIONS, []))


def grpo_trainer(tiny_model, tmp_path, reward, extra=()):
    from datasets import Dataset

    from qrl.models.loading import load_tokenizer

    cfg = parse_config(RL_SECTIONS, ["--max_steps", "1", "--batch_size", "8", "--gradient_accumulation_steps", "1",
                                     "--num_generations", "4", "--max_completion_length", "8", "--kl_coef", "0.3",
                                     "--entropy_coef", "0.02", *extra])
    tok = load_tokenizer(str(tiny_model))
    rows = [{"prompt": [{"role": "user", "content": f"Write f{i}"}], "task_id": f"t{i}"} for i in range(4)]
    return build_grpo_trainer(cfg, str(tiny_model), tok, Dataset.from_list(rows), None, [reward],
                              RunFolder(tmp_path / "r"), "r", callbacks=[])


def test_grpo_options_reach_trl(tiny_model, tmp_path):
    trainer = grpo_trainer(tiny_model, tmp_path, lambda completions, **kw: [0.0] * len(completions),
                           ["--temperature", "0.7", "--loss_type", "grpo", "--scale_rewards", "none"])
    a = trainer.args
    assert a.beta == 0.3 and a.entropy_coef == 0.02 and a.num_generations == 4 and a.max_completion_length == 8
    assert a.temperature == 0.7 and a.loss_type == "grpo" and a.scale_rewards == "none" and a.bf16 is False


def test_reward_scale_multiplies_advantages_and_flat_groups_are_dropped(tiny_model, tmp_path):
    """Two groups per batch: t-even prompts get equal rewards (a flat group), the others differ."""

    def reward(completions, task_id, **kw):
        return [1.0 if int(t[1:]) % 2 == 0 else float(i % 2) for i, t in enumerate(task_id)]

    base = grpo_trainer(tiny_model, tmp_path / "a", reward, ["--scale_rewards", "none"])
    scaled = grpo_trainer(tiny_model, tmp_path / "b", reward,
                          ["--scale_rewards", "none", "--reward_scale", "3", "--drop_zero_variance_groups"])
    batch = [{"prompt": [{"role": "user", "content": f"Write f{i}"}], "task_id": f"t{i}"}
             for i in (0, 1) for _ in range(4)]
    base.model.train()
    scaled.model.train()
    out_a = base._generate_and_score_completions(batch)
    out_b = scaled._generate_and_score_completions(batch)
    import torch

    assert torch.allclose(out_b["advantages"], 3 * out_a["advantages"])
    flat = out_a["advantages"].view(2, 4).eq(0).all(dim=1)
    assert flat.tolist() == [True, False]
    assert out_b["completion_mask"][:4].sum() == 0 and out_b["completion_mask"][4:].sum() > 0
    assert scaled._metrics["train"]["dropped_groups"] == [1.0]
