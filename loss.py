"""The policy update: GRPO over a multilingual rollout group (paper §3.1–3.2, Eq. 5; Alg. 2).

LRPO rewards each of a question's K rollouts, whatever language the router gave it, and "applies
GRPO using the gated rewards, normalized within each multilingual rollout group". The paper
gives no more formula; the official code runs verl 0.5's GRPO (verl/trainer/ppo/core_algos.py:
compute_grpo_outcome_advantage, compute_policy_loss, kl_penalty, agg_loss), which this file follows:

    A_k   = (r_k − mean_G r) / (std_G r + 1e-6)        G = all K rollouts of one question (uid)
    ρ     = π_θ(y_t | ·) / π_old(y_t | ·)
    ℓ_t   = max(−A ρ, −A clip(ρ, 1 − 0.2, 1 + 0.2)),  and min(ℓ_t, −3A) when A < 0  (dual clip)
    k3_t  = e^d − d − 1,  d = log π_ref − log π_θ     (verl's low_var_kl clamps)
    loss  = Σ_t w_t ℓ_t + 0.001 · Σ_t w_t k3_t          w = token_weights (the aggregation)

The official run is on-policy (one mini-batch, one PPO epoch), so verl sets π_old = π_θ.detach():
ρ ≡ 1, clipping never acts, and the update is REINFORCE with group-normalised advantages plus
the KL term (``old_logp=None``; the tests check value and gradient).

Aggregation is a real hyper-parameter, written here once, as per-token weights w over a whole
mini-batch. verl 0.5 (and LRPO) uses ``token-mean``: a masked mean over the tokens of each
micro-batch of 4 rows, averaged over micro-batches, so a token of a short micro-batch weighs more.
Other modes: ``batch-token-mean`` (DAPO: every token of the mini-batch the same),
``seq-mean-token-mean`` (the GRPO paper), ``seq-mean-token-sum``, ``seq-mean-token-sum-norm``
(Dr. GRPO: divide by a constant length). ``norm_by_std=False`` gives Dr. GRPO's A_k = r_k − mean.
"""
from __future__ import annotations

from typing import Hashable, Sequence

import torch
from torch import Tensor

AGG_MODES = ("token-mean", "batch-token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
             "seq-mean-token-sum-norm")
STD_EPS = 1e-6          # A_k's denominator guard (verl: epsilon=1e-6)
LOG_RATIO_CLAMP = 20.0  # keeps e^Δ finite in ρ and in k3
K3_CLAMP = 10.0         # verl's low_var_kl bound on the per-token KL


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` is 1; 0 (not NaN) where nothing is selected."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


def group_advantages(rewards: Tensor, group_ids: Tensor | Sequence[Hashable], *,
                     norm_by_std: bool = True) -> tuple[Tensor, dict]:
    """A_k = (r_k − mean_G) / (std_G + 1e-6) over each group G of rollouts sharing an id.

    ``rewards`` [N]; ``group_ids``: N ids (a tensor, or any hashables such as question uids), in
    any order. A group of one keeps its raw reward (verl: mean 0, std 1). Metrics: ``num_groups``,
    ``singleton_groups``, ``zero_std_fraction`` (share of groups of ≥ 2 with all rewards equal).
    """
    if rewards.dim() != 1 or len(group_ids) != rewards.numel():
        raise ValueError(f"group_ids has {len(group_ids)} entries but rewards has shape "
                         f"{tuple(rewards.shape)}; expected one id per reward")
    bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"rewards[{bad[0]}] = {rewards[bad[0]].item()} is not finite")
    r = rewards.detach() if rewards.is_floating_point() else rewards.float()
    ids = group_ids.tolist() if isinstance(group_ids, Tensor) else list(group_ids)
    advantages, groups = torch.empty_like(r), {}
    for i, g in enumerate(ids):
        groups.setdefault(g, []).append(i)
    zero_std = 0
    for rows in groups.values():
        members = r[rows]
        mean, std = (members.mean(), members.std()) if len(rows) > 1 else (0.0, 1.0)
        advantages[rows] = (members - mean) / (std + STD_EPS) if norm_by_std else members - mean
        zero_std += len(rows) > 1 and bool(members.max() == members.min())  # exact, unlike std
    singletons = sum(len(rows) == 1 for rows in groups.values())
    metrics = {"num_groups": len(groups), "singleton_groups": singletons,
               "zero_std_fraction": zero_std / max(len(groups) - singletons, 1)}
    return advantages, metrics


def low_var_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(π_θ ‖ π_ref), with verl's ``low_var_kl`` clamps.

    k3 = e^d − d − 1 with d = log π_ref − log π_θ: unbiased for the KL under samples from π_θ,
    never negative, and with lower variance than −d (Schulman's "Approximating KL"). The ±20
    clamp keeps e^d finite; the [−10, 10] clamp bounds the gradient of a runaway token.
    """
    d = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return (d.exp() - d - 1).clamp(-K3_CLAMP, K3_CLAMP)


def token_weights(mask: Tensor, mode: str, *, rows_per_micro_batch: int, max_len: int) -> Tensor:
    """Per-token weights w [B, T] such that Σ w·v is verl's loss over a mini-batch of B rows.

    verl (dp_actor.py) computes ``agg_loss`` on each micro-batch of ``rows_per_micro_batch``
    consecutive rows and divides by the number of micro-batches (gradient accumulation). As
    weights, the loss no longer depends on how many rows one forward pass holds: token-mean gives
    each token 1 / (tokens of its micro-batch · number of micro-batches). ``max_len`` is Dr.
    GRPO's constant length (seq-mean-token-sum-norm). Weights are > 0 exactly where mask is 1.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; choose one of {AGG_MODES}")
    mask = mask if mask.is_floating_point() else mask.float()
    if mode == "batch-token-mean":   # every token of the mini-batch weighs the same
        return mask / mask.sum().clamp(min=1)
    block = torch.arange(mask.shape[0], device=mask.device) // rows_per_micro_batch
    n_blocks = int(block[-1]) + 1
    if mode == "token-mean":
        block_tokens = mask.new_zeros(n_blocks).index_add(0, block, mask.sum(-1))
        return mask / block_tokens[block].clamp(min=1)[:, None] / n_blocks
    rows_in_block = torch.bincount(block, minlength=n_blocks).to(mask.dtype)[block][:, None]
    if mode == "seq-mean-token-mean":
        return mask / mask.sum(-1, keepdim=True).clamp(min=1) / rows_in_block / n_blocks
    if mode == "seq-mean-token-sum":
        return mask / rows_in_block / n_blocks
    return mask / max_len / n_blocks   # seq-mean-token-sum-norm


def policy_loss(logp: Tensor, old_logp: Tensor | None, advantages: Tensor, weights: Tensor, *,
                ref_logp: Tensor | None = None, kl_coef: float = 0.001, clip_low: float = 0.2,
                clip_high: float = 0.2, clip_ratio_c: float = 3.0,
                entropy: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped, dual-clipped policy-gradient loss plus β·k3 KL, aggregated by ``weights``.

    ``logp``, ``old_logp``, ``ref_logp`` [B, T]: log-probs of the sampled tokens under the policy
    being trained (with grad), the one that sampled them (None: on-policy, ``logp.detach()``),
    and the frozen reference (None or ``kl_coef`` 0: no KL term). ``advantages`` [B], one per
    sequence. ``weights`` [B, T] from `token_weights`: the loss is Σ w·ℓ, this rows' share of the
    mini-batch loss. ``entropy`` [B, T] is only logged (LRPO has no entropy bonus). Metrics:
    ``pg_loss``, ``kl_loss`` (before β), ``pg_clipfrac``, ``pg_clipfrac_lower`` (the dual clip),
    ``ppo_kl`` (mean log π_old − log π_θ), ``entropy``. Use float32/64 log-probs: ρ = e^Δ.
    """
    old_logp = logp.detach() if old_logp is None else old_logp
    a = advantages.detach().to(logp.dtype).view(-1, 1)   # the same advantage for every token
    w = weights.to(logp.dtype)
    mask = (w > 0).to(logp.dtype)                          # the response tokens

    log_ratio = logp - old_logp
    ratio = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()
    loss_unclipped = -a * ratio
    loss_clipped = -a * ratio.clamp(1 - clip_low, 1 + clip_high)
    loss_ppo = torch.maximum(loss_unclipped, loss_clipped)
    # Dual clip: for A < 0 a huge ratio would make the loss (and its gradient) unbounded.
    per_token = torch.where(a < 0, torch.minimum(loss_ppo, -a * clip_ratio_c), loss_ppo)

    loss = pg_loss = (w * per_token).sum()
    metrics = {"pg_loss": pg_loss.detach()}
    if ref_logp is not None and kl_coef != 0:
        kl = (w * low_var_kl(logp, ref_logp.detach())).sum()
        loss = loss + kl_coef * kl
        metrics["kl_loss"] = kl.detach()
    with torch.no_grad():
        if entropy is not None:
            metrics["entropy"] = masked_mean(entropy, mask)
        metrics["pg_clipfrac"] = masked_mean((loss_clipped > loss_unclipped).to(w.dtype), mask)
        dual_active = (loss_ppo > -a * clip_ratio_c) & (a < 0)
        metrics["pg_clipfrac_lower"] = masked_mean(dual_active.to(w.dtype), mask)
        metrics["ppo_kl"] = masked_mean(-log_ratio, mask)
    return loss, metrics
