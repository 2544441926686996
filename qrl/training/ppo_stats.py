"""PPO's arithmetic as plain functions: masked statistics, the per-token rewards, GAE, the clipped losses and the
adaptive KL coefficient. Plain so that each can be checked by hand (tests/test_ppo.py).

With several processes the statistics that must be global (advantage and reward whitening) take ``all_sum``: a
function that sums a tensor over every rank (``accelerator.reduce(t, "sum")``); without it they are this process's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

AllSum = Callable[["torch.Tensor"], "torch.Tensor"]


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_var(x, mask):
    """Unbiased variance of the masked entries."""
    n = mask.sum()
    var = masked_mean((x - masked_mean(x, mask)) ** 2, mask)
    return var * n / (n - 1) if n > 1 else var


def _local(t):
    return t


def global_mean_var(x, mask, all_sum: AllSum | None = None):
    """Mean and unbiased variance of the masked entries of every rank's ``x`` (two sums over the ranks), and
    how many entries there were."""
    import torch

    total = all_sum or _local
    n_sum = total(torch.stack([mask.sum(), (x * mask).sum()]).double())
    n, mean = n_sum[0], n_sum[1] / n_sum[0].clamp(min=1)
    squares = total(((x.double() - mean) ** 2 * mask).sum())
    var = squares / (n - 1) if n > 1 else squares / n.clamp(min=1)
    return mean.to(x.dtype), var.to(x.dtype), int(n.item())


def masked_whiten(x, mask, shift_mean: bool = True, all_sum: AllSum | None = None):
    """Unit variance (and zero mean unless ``shift_mean`` is False) over the masked entries, of every rank's
    batch when ``all_sum`` sums over the ranks: each rank's advantages are scaled by the same numbers."""
    mean, var, n = global_mean_var(x, mask, all_sum)
    if n < 2:
        return x
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


def explained_variance(values, returns, mask, all_sum: AllSum | None = None) -> float:
    """``1 - Var(R - V) / Var(R)``: 1 is a perfect critic, 0 no better than a constant, below 0 worse."""
    var = global_mean_var(returns, mask, all_sum)[1]
    return float(1 - global_mean_var(returns - values, mask, all_sum)[1] / var) if var > 0 else float("nan")


class AdaptiveKLController:
    """Ziegler et al. (2019): move kl_coef by at most 20% of the gap to the target per horizon of answers."""

    def __init__(self, value: float, target: float, horizon: int):
        self.value, self.target, self.horizon = value, target, horizon

    def update(self, current_kl: float, n_answers: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_answers / self.horizon
