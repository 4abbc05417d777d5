"""verl 0.5's ``agg_loss`` (verl/trainer/ppo/core_algos.py in the official code), restated for the
tests: loss.token_weights must reproduce it for every mode, whatever the micro-batching."""
from torch import Tensor

from loss import AGG_MODES, masked_mean


def agg_loss(values: Tensor, mask: Tensor, mode: str = "token-mean", *,
             num_tokens_total=None, max_len: int | None = None) -> Tensor:
    """Reduce per-token ``values`` [B, T] over the response ``mask`` [B, T] to one scalar.
    ``num_tokens_total`` is required by (and only used by) batch-token-mean; ``max_len`` only by
    seq-mean-token-sum-norm (default: the width T)."""
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
