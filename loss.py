"""The policy update: GRPO over a multilingual rollout group (paper §3.1–3.2, Eq. 5; Alg. 2).

LRPO rewards each of a question's K rollouts, whatever language the router gave it, and "applies
GRPO using the gated rewards, normalized within each multilingual rollout group". The paper
gives no more formula; the official code runs verl 0.5's GRPO (spec §3.5), which this file follows:

    A_k   = (r_k − mean_G r) / (std_G r + 1e-6)        G = all K rollouts of one question (uid)
    ρ     = π_θ(y_t | ·) / π_old(y_t | ·)
    ℓ_t   = max(−A ρ, −A clip(ρ, 1 − 0.2, 1 + 0.2)),  and min(ℓ_t, −3A) when A < 0  (dual clip)
    k3_t  = e^d − d − 1,  d = log π_ref − log π_θ     (verl's low_var_kl clamps)
    loss  = agg(ℓ) + 0.001 · agg(k3)

The official run is on-policy (one mini-batch, one PPO epoch), so verl sets π_old = π_θ.detach():
ρ ≡ 1, clipping never acts, and the update is REINFORCE with group-normalised advantages plus
the KL term (``old_logp=None``; the tests check value and gradient).

Aggregation is a real hyper-parameter. verl 0.5 (and LRPO) uses ``token-mean``: a masked mean over
the tokens of each micro-batch of 4 rows, averaged over micro-batches, so a token of a short
micro-batch weighs more. :func:`token_weights` writes any mode as per-token weights over a whole
mini-batch, so the loop reproduces verl whatever size its forward passes have. Other modes:
``batch-token-mean`` (DAPO: every token of the mini-batch the same), ``seq-mean-token-mean``
(the GRPO paper), ``seq-mean-token-sum``, ``seq-mean-token-sum-norm`` (Dr. GRPO: divide by a
constant length). ``norm_by_std=False`` gives Dr. GRPO's A_k = r_k − mean_G r.
"""
from __future__ import annotations

from typing import Hashable, Sequence

import torch
from torch import Tensor

AGG_MODES = ("token-mean", "batch-token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
             "seq-mean-token-sum-norm")


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` where ``mask`` is 1; 0 (not NaN) where nothing is selected."""
    mask = mask.to(values.dtype)
    total = (values * mask).sum() if dim is None else (values * mask).sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp(min=1)


# ----------------------------------------------------------------------------------------------
# Group-relative advantages


def group_advantages(rewards: Tensor, group_ids: Tensor | Sequence[Hashable], *,
                     norm_by_std: bool = True, eps: float = 1e-6) -> tuple[Tensor, dict]:
    """A_k = (r_k − mean_G) / (std_G + eps) over each group of rollouts (see the module docstring).

    ``rewards``: shape [N], one scalar per rollout. ``group_ids``: N ids (a tensor, or a list of
    any hashables such as question uids); rollouts sharing an id form one group, in any order.
    Returns the advantages [N] (same dtype as ``rewards``; broadcast to tokens with ``adv[:, None]``
    or pass them to `policy_loss` as they are) and metrics: ``num_groups``, ``singleton_groups``,
    ``zero_std_fraction`` (share of groups of ≥ 2 rollouts whose rewards are all equal).
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must have shape [N], got {tuple(rewards.shape)}")
    if len(group_ids) != rewards.numel():
        raise ValueError(f"group_ids has {len(group_ids)} entries but rewards has {rewards.numel()}")
    bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"rewards[{bad[0]}] = {rewards[bad[0]].item()} is not finite")
    rewards = rewards.detach()
    if not rewards.is_floating_point():
        rewards = rewards.float()
    # Map the ids to 0..G-1 so that the per-group statistics are a few scatter-adds.
    if isinstance(group_ids, Tensor):
        _, group = torch.unique(group_ids, return_inverse=True)
    else:
        first_seen: dict = {}
        group = torch.tensor([first_seen.setdefault(g, len(first_seen)) for g in group_ids])
    group = group.to(rewards.device)
    num_groups = int(group.max()) + 1 if group.numel() else 0

    zeros = torch.zeros(num_groups, dtype=rewards.dtype, device=rewards.device)
    count = zeros.index_add(0, group, torch.ones_like(rewards))
    mean = zeros.index_add(0, group, rewards) / count
    sq_dev = zeros.index_add(0, group, (rewards - mean[group]) ** 2)
    std = (sq_dev / (count - 1).clamp(min=1)).sqrt()  # unbiased, like torch.std
    singleton = count == 1
    mean = torch.where(singleton, torch.zeros_like(mean), mean)  # verl: mean 0, std 1
    std = torch.where(singleton, torch.ones_like(std), std)

    advantages = rewards - mean[group]
    if norm_by_std:
        advantages = advantages / (std[group] + eps)

    # "All rewards equal" is tested as max == min, which the rounding in mean/std cannot fool.
    r_max = torch.full_like(zeros, -torch.inf).scatter_reduce(0, group, rewards, "amax")
    r_min = torch.full_like(zeros, torch.inf).scatter_reduce(0, group, rewards, "amin")
    multi = ~singleton
    zero_std = (r_max == r_min) & multi
    metrics = {
        "num_groups": num_groups,
        "singleton_groups": int(singleton.sum()),
        "zero_std_fraction": float(zero_std.sum()) / max(int(multi.sum()), 1),
    }
    return advantages, metrics


# ----------------------------------------------------------------------------------------------
# Per-token terms and their aggregation


def low_var_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(π_θ ‖ π_ref), with verl's ``low_var_kl`` clamps.

    k3 = e^d − d − 1 with d = log π_ref − log π_θ: unbiased for the KL under samples from π_θ,
    never negative, and with lower variance than −d (Schulman's "Approximating KL"). The ±20
    clamp keeps e^d finite; the [−10, 10] clamp bounds the gradient of a runaway token.
    """
    d = (ref_logp - logp).clamp(-20, 20)
    return (d.exp() - d - 1).clamp(-10, 10)


def agg_loss(values: Tensor, mask: Tensor, mode: str = "token-mean", *,
             num_tokens_total: int | float | Tensor | None = None,
             max_len: int | None = None) -> Tensor:
    """Reduce per-token ``values`` [B, T] over the response ``mask`` [B, T] to one scalar.

    The modes are listed in the module docstring. ``num_tokens_total`` is required by (and only
    used by) ``"batch-token-mean"``; ``max_len`` only by ``"seq-mean-token-sum-norm"``.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; choose one of {AGG_MODES}")
    if values.shape != mask.shape:
        raise ValueError(f"values {tuple(values.shape)} and mask {tuple(mask.shape)} differ in shape")
    if (num_tokens_total is None) == (mode == "batch-token-mean"):
        raise ValueError("num_tokens_total must be given with agg='batch-token-mean' and only then")
    mask = mask.to(values.dtype)
    if mode == "token-mean":
        return masked_mean(values, mask)
    if mode == "batch-token-mean":
        return (values * mask).sum() / num_tokens_total
    token_sum = (values * mask).sum(-1)  # [B]
    if mode == "seq-mean-token-mean":
        return (token_sum / mask.sum(-1).clamp(min=1)).mean()
    if mode == "seq-mean-token-sum":
        return token_sum.mean()
    return token_sum.sum() / (max_len or mask.shape[-1])  # seq-mean-token-sum-norm


def token_weights(mask: Tensor, mode: str = "token-mean", *, rows_per_micro_batch: int,
                  max_len: int | None = None) -> Tensor:
    """Per-token weights w [B, T] such that Σ w·v is verl's loss over a whole mini-batch of B rows.

    verl computes ``agg_loss`` on each micro-batch of ``rows_per_micro_batch`` consecutive rows
    and averages over the micro-batches (its gradient accumulation divides by their number).
    Written as weights, the loss no longer depends on how many rows one forward pass holds, so
    the training loop can run large forwards and still reproduce verl's numerics exactly:
    token-mean gives each token 1 / (tokens of its micro-batch · number of micro-batches).
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; choose one of {AGG_MODES}")
    mask = mask.float()
    B = mask.shape[0]
    if mode == "batch-token-mean":   # every token of the mini-batch weighs the same
        return mask / mask.sum().clamp(min=1)
    block = torch.arange(B, device=mask.device) // rows_per_micro_batch
    n_blocks = int(block[-1]) + 1 if B else 1
    if mode == "token-mean":
        block_tokens = torch.zeros(n_blocks, device=mask.device).index_add(0, block, mask.sum(-1))
        return mask / block_tokens[block].clamp(min=1)[:, None] / n_blocks
    rows_in_block = torch.bincount(block, minlength=n_blocks).float()[block][:, None]
    if mode == "seq-mean-token-mean":
        return mask / mask.sum(-1, keepdim=True).clamp(min=1) / rows_in_block / n_blocks
    if mode == "seq-mean-token-sum":
        return mask / rows_in_block / n_blocks
    return mask / (max_len or mask.shape[-1]) / n_blocks   # seq-mean-token-sum-norm


# ----------------------------------------------------------------------------------------------
# The loss


def policy_loss(logp: Tensor, old_logp: Tensor | None, advantages: Tensor, mask: Tensor, *,
                ref_logp: Tensor | None = None, kl_coef: float = 0.001,
                clip_low: float = 0.2, clip_high: float = 0.2, clip_ratio_c: float = 3.0,
                agg: str = "token-mean", num_tokens_total: int | float | Tensor | None = None,
                max_len: int | None = None, weights: Tensor | None = None, entropy: Tensor | None = None,
                entropy_coef: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped, dual-clipped policy-gradient loss plus β·k3 KL, aggregated with ``agg``.

    ``logp``, ``old_logp``, ``ref_logp``: log-probabilities of the sampled response tokens,
    [B, T], under the policy being trained (with grad), the policy that sampled them, and the
    frozen reference. ``weights`` [B, T] (from `token_weights`) replace ``agg``: the loss is then
    Σ weights · per-token loss, this micro-batch's share of the mini-batch loss. ``old_logp=None`` means on-policy (old_logp = logp.detach(), LRPO's run).
    ``advantages``: [B] (one per sequence, from `group_advantages`) or [B, T]. ``mask``: [B, T],
    1 on response tokens. ``ref_logp=None`` or ``kl_coef=0`` drops the KL term. ``entropy``: the
    per-token entropy [B, T] (from `rollout.token_logprobs`), logged and, if
    ``entropy_coef`` > 0, subtracted as a bonus (LRPO: 0).

    Returns the scalar loss and detached scalar metrics: ``pg_loss``, ``kl_loss`` (the
    aggregated k3, before β), ``pg_clipfrac`` (share of tokens where the ε-clip is active),
    ``pg_clipfrac_lower`` (the dual clip), ``ppo_kl`` (mean of log π_old − log π_θ), ``entropy``.
    Log-probabilities should be float32 or float64: ρ = e^{Δ} is sensitive to bf16 rounding.
    """
    if logp.shape != mask.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and mask {tuple(mask.shape)} differ in shape")
    for name, t in (("old_logp", old_logp), ("ref_logp", ref_logp), ("entropy", entropy)):
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(logp.shape)}")
    if advantages.shape == logp.shape[:1]:
        advantages = advantages[:, None]  # one advantage per sequence, same for every token
    elif advantages.shape != logp.shape:
        raise ValueError(f"advantages has shape {tuple(advantages.shape)}; expected "
                         f"[{logp.shape[0]}] or {tuple(logp.shape)}")
    if clip_ratio_c <= 1:
        raise ValueError(f"clip_ratio_c must be > 1, got {clip_ratio_c}")
    if old_logp is None:
        old_logp = logp.detach()
    advantages = advantages.detach().to(logp.dtype)
    mask = mask.to(logp.dtype)

    log_ratio = logp - old_logp
    ratio = log_ratio.clamp(-20, 20).exp()
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * ratio.clamp(1 - clip_low, 1 + clip_high)
    loss_ppo = torch.maximum(loss_unclipped, loss_clipped)
    # Dual clip: for A < 0 a huge ratio would make the loss (and its gradient) unbounded.
    loss_dual = torch.minimum(loss_ppo, -advantages * clip_ratio_c)
    per_token = torch.where(advantages < 0, loss_dual, loss_ppo)

    def agg_(values: Tensor) -> Tensor:
        if weights is not None:   # precomputed by token_weights over the whole mini-batch
            return (values * weights.to(values.dtype)).sum()
        return agg_loss(values, mask, agg, num_tokens_total=num_tokens_total, max_len=max_len)

    pg_loss = agg_(per_token)
    loss = pg_loss
    metrics = {"pg_loss": pg_loss.detach()}
    if ref_logp is not None and kl_coef != 0:
        kl = agg_(low_var_kl(logp, ref_logp.detach()))
        loss = loss + kl_coef * kl
        metrics["kl_loss"] = kl.detach()
    if entropy is not None:
        if entropy_coef != 0:
            loss = loss - entropy_coef * agg_(entropy)
        metrics["entropy"] = masked_mean(entropy.detach(), mask)
    with torch.no_grad():
        metrics["pg_clipfrac"] = masked_mean((loss_clipped > loss_unclipped).to(mask.dtype), mask)
        dual_active = (loss_ppo > -advantages * clip_ratio_c) & (advantages < 0)
        metrics["pg_clipfrac_lower"] = masked_mean(dual_active.to(mask.dtype), mask)
        metrics["ppo_kl"] = masked_mean(-log_ratio, mask)
    return loss, metrics
