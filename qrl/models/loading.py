"""Loading a tokenizer, and scoring texts with a reward model (a one-output sequence classifier): what both the
trainers and the learned reward need, below either of them."""

from __future__ import annotations

from pathlib import Path

from qrl.data.records import UserError


def load_tokenizer(model_path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
