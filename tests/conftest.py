"""Shared fixtures: a tiny random model with a real (trained) tokenizer, and small data files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def is_even(n):\n    return n % 2 == 0\n",
    "Write a Python function that returns the sum of a list.",
    "solve:{sum x where 0=x mod 2}",
    "```python\nfor i in range(10):\n    print(i)\n```",
    "I cannot help with that. The answer is wrong.",
]


def build_tiny_model(path: Path) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer trained on a few lines: fast, but real."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def preference_rows(n: int = 8) -> list[dict]:
    return [
        {
            "prompt": [{"role": "user", "content": f"Write a Python function add{i}(a, b) returning a+b."}],
            "chosen": [{"role": "assistant", "content": f"```python\ndef add{i}(a, b):\n    return a + b\n```"}],
            "rejected": [{"role": "assistant", "content": "I cannot help with that."}],
        }
        for i in range(n)
    ]


@pytest.fixture
def preference_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "prefs.jsonl", preference_rows())


@pytest.fixture
def dpo_argv(tiny_model, preference_file, tmp_path) -> list[str]:
    """A 4-step DPO run of the tiny model that checkpoints every 2 steps."""
    return [
        "--use_dpo", "--base_model", str(tiny_model), "--preference_data", str(preference_file),
        "--output_dir", str(tmp_path / "out"), "--experiment_name", "t", "--max_steps", "4",
        "--save_steps", "2", "--eval_steps", "2", "--batch_size", "2", "--gradient_accumulation_steps", "1",
        "--learning_rate", "1e-3", "--max_seq_length", "128",
    ]


@pytest.fixture(scope="session")
def tiny_reward_model(tiny_model, tmp_path_factory) -> Path:
    """An untrained one-output classifier on the tiny model: a reward model in shape, fast to make."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path_factory.mktemp("rm") / "tiny-rm"
    torch.manual_seed(1)
    AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(path)
    return path


@pytest.fixture
def ppo_argv(tiny_model, tiny_reward_model, preference_file, tmp_path):
    """Two PPO steps of the tiny model against the tiny reward model, a checkpoint each step, evaluation at 2."""
    return [
        "--use_reward_model", "--reward_model_path", str(tiny_reward_model), "--base_model", str(tiny_model),
        "--preference_data", str(preference_file), "--output_dir", str(tmp_path / "out"), "--experiment_name", "p",
        "--max_steps", "2", "--save_steps", "1", "--eval_steps", "2", "--batch_size", "2",
        "--gradient_accumulation_steps", "1", "--max_completion_length", "12", "--max_seq_length", "96",
        "--ppo_epochs", "2", "--learning_rate", "1e-3", "--eval_split", "0.25",
    ]


def problem_rows(n: int = 3) -> list[dict]:
    """The first n training problems of the shipped Python set (with tests and reference solutions)."""
    rows = [json.loads(line) for line in (ROOT / "data" / "problems" / "python.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == "train"][:n]

