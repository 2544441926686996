"""PPO's networks: a full fine-tuning checkpoint loads whole (one file or save_pretrained's shards) or is refused
in one line; it never loads in part."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM

from qrl.data.records import UserError
from qrl.training.ppo_model import VALUE_HEAD, load_weights, policy_with_value_head, save_weights


def _policy(tiny_model, seed: int):
    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_pretrained(tiny_model)
    for p in lm.parameters():
        p.data.normal_()
    policy = policy_with_value_head(lm, torch.float32)
    policy.value_head.weight.data.normal_()
    return policy


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_full_weights_round_trip_whole_and_sharded(tiny_model, tmp_path):
    accelerator = Accelerator(cpu=True)
    saved, other = _policy(tiny_model, 0), _policy(tiny_model, 1)
    save_weights(saved, accelerator, tmp_path / "whole")
    load_weights(other, accelerator, tmp_path / "whole")
    assert _same(saved, other)

    sharded = tmp_path / "sharded"
    saved.lm.save_pretrained(sharded, max_shard_size="20KB")
    torch.save(saved.value_head.state_dict(), sharded / VALUE_HEAD)
    assert len(list(sharded.glob("model-*.safetensors"))) > 1
    fresh = _policy(tiny_model, 2)
    load_weights(fresh, accelerator, sharded)
    assert _same(saved, fresh)


def test_a_checkpoint_missing_weights_is_refused(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    accelerator = Accelerator(cpu=True)
    save_weights(_policy(tiny_model, 0), accelerator, tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    dropped = next(k for k in state if "layers.0" in k)
    save_file({k: v for k, v in state.items() if k != dropped}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(UserError, match="missing"):
        load_weights(_policy(tiny_model, 1), accelerator, tmp_path)
