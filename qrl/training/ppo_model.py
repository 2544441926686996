"""PPO's networks under accelerate: the policy and its value head as one module, the reference network, DeepSpeed's
settings, whole weights for generation and for saving.

The policy and the value head are one ``torch.nn.Module`` (``PolicyWithValueHead``) so that ``accelerator.prepare``
wraps them together: DDP all-reduces the value head's gradients with the policy's, ZeRO shards and saves both, and
no rank's critic drifts from another's. The reference is the policy with its LoRA adapters off (no second copy of
the weights), or, in full fine-tuning, a frozen copy prepared as TRL prepares its reference models (sharded like
the policy under ZeRO-3).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator

VALUE_HEAD = "value_head.pt"


def _module_class():
    import torch

    class PolicyWithValueHead(torch.nn.Module):
        """A causal LM (a PEFT model with LoRA) and, for the policy, a linear value head on its last hidden state.

        ``forward`` returns the logits and values at the positions that predict ``input_ids[:, start:]``; the
        reference (``value_head`` None) returns no values.
        """

        def __init__(self, lm, value_head=None):
            super().__init__()
            self.lm = lm
            self.value_head = value_head
            self.config = lm.config  # what accelerate's DeepSpeed preparation reads (hidden_size)

        def forward(self, input_ids, attention_mask, start: int):
            lm = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
            position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
            hidden = lm.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   use_cache=False).last_hidden_state[:, start - 1:-1]
            logits = lm.get_output_embeddings()(hidden).float()
            if self.value_head is None:
                return logits, None
            values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()
            return logits, values

    return PolicyWithValueHead


def policy_with_value_head(lm, dtype) -> torch.nn.Module:
    """The policy and a zero-initialised value head (every rank starts from the same critic)."""
    import torch

    value_head = torch.nn.Linear(lm.config.get_text_config().hidden_size, 1, dtype=dtype)
    torch.nn.init.zeros_(value_head.weight)
    torch.nn.init.zeros_(value_head.bias)
    return _module_class()(lm, value_head)


def reference_module(lm) -> torch.nn.Module:
    return _module_class()(lm.eval().requires_grad_(False))


def deepspeed_stage(accelerator: Accelerator) -> int | None:
    """The ZeRO stage of this launch, or None without DeepSpeed."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return None if plugin is None else int(plugin.zero_stage)


def fill_deepspeed_config(accelerator: Accelerator, micro_batch: int, accumulation: int, max_grad_norm: float,
                          bf16: bool) -> None:
    """What the Trainer fills into DeepSpeed's config for DPO and GRPO ("auto" values), from PPO's own options;
    under ZeRO-3 checkpoints gather whole weights (``get_state_dict``)."""
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    config.update(train_micro_batch_size_per_gpu=micro_batch, gradient_accumulation_steps=accumulation,
                  train_batch_size=micro_batch * accumulation * accelerator.num_processes,
                  gradient_clipping=max_grad_norm)
    if bf16:
        config["bf16"] = {"enabled": True}
    config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True


def prepare_reference(ref: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module:
    """The full-fine-tuning reference, placed as TRL places its reference models: under DeepSpeed an inference
    engine (ZeRO-3 shards it like the policy; below stage 3 each rank holds it whole), else on the device."""
    if deepspeed_stage(accelerator) is not None:
        from trl.models.utils import prepare_deepspeed

        return prepare_deepspeed(ref, accelerator)
    return ref.to(accelerator.device)


@contextlib.contextmanager
def whole_weights(model, accelerator: Accelerator) -> Iterator[Any]:
    """The unwrapped module with whole weights, to generate from: under ZeRO-3 gathered once for the whole
    block (a collective: every rank enters it the same number of times), then sharded again."""
    unwrapped = accelerator.unwrap_model(model)
    if deepspeed_stage(accelerator) != 3:
        yield unwrapped
        return
    import deepspeed
    from trl.models.utils import add_hooks, remove_hooks

    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        remove_hooks(model)
        try:
            yield unwrapped
        finally:
            add_hooks(model)


def save_weights(model, accelerator: Accelerator, path: Path, value_head: bool = True) -> None:
    """The policy as ``from_pretrained`` loads it (adapters for LoRA, else whole weights) and the value head,
    written by the main process; under ZeRO-3 ``get_state_dict`` gathers the shards first (every rank calls it)."""
    import torch

    state = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return
    unwrapped = accelerator.unwrap_model(model)
    lm_state = {k.removeprefix("lm."): v for k, v in state.items() if k.startswith("lm.")}
    unwrapped.lm.save_pretrained(path, state_dict=lm_state)
    if not value_head:
        return
    head = {k.removeprefix("value_head."): v for k, v in state.items() if k.startswith("value_head.")}
    torch.save(head, path / VALUE_HEAD)


def load_weights(model, accelerator: Accelerator, path: Path) -> None:
    """A checkpoint's policy and value head into an unsharded module (one process, DDP, ZeRO-2); under ZeRO-3 the
    DeepSpeed engine's own checkpoint restores them (``load_checkpoint``)."""
    import torch

    from qrl.data.records import UserError

    unwrapped = accelerator.unwrap_model(model)
    lm = unwrapped.lm
    if hasattr(lm, "get_base_model"):
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        set_peft_model_state_dict(lm, load_peft_weights(str(path)))
    else:
        from safetensors.torch import load_file

        state = {}
        for shard in sorted(path.glob("model*.safetensors")):  # one file, or save_pretrained's shards
            state.update(load_file(shard))
        result = lm.load_state_dict(state, strict=False)
        missing = _untied(lm, result.missing_keys, set(state))
        if result.unexpected_keys or missing or not state:
            raise UserError(f"{path}: checkpoint does not fit the model "
                            f"(unexpected {result.unexpected_keys[:3]}, missing {missing[:3]})")
    unwrapped.value_head.load_state_dict(torch.load(path / VALUE_HEAD))


def _untied(lm, missing: list[str], loaded: set[str]) -> list[str]:
    """The missing keys that are not tied to a loaded weight (``save_pretrained`` leaves tied copies out)."""
    params = dict(lm.named_parameters(remove_duplicate=False))
    loaded_storage = {params[k].data_ptr() for k in loaded if k in params}
    return [k for k in missing if k not in params or params[k].data_ptr() not in loaded_storage]
