"""Tests for loss.py against float64 hand computations (verl 0.5 formulas: the official code's
verl/trainer/ppo/core_algos.py), and token_weights against verl's agg_loss (tests/verl_agg.py)."""
import math
import statistics

import pytest
import torch

from loss import AGG_MODES, group_advantages, low_var_kl, masked_mean, policy_loss, token_weights
from verl_agg import agg_loss

F64 = torch.float64


def token_mean(mask):
    """LRPO's token-mean weights over one micro-batch holding every row: a masked mean."""
    return token_weights(torch.as_tensor(mask, dtype=F64), "token-mean", rows_per_micro_batch=len(mask),
                         max_len=len(mask[0]))


# ----------------------------------------------------------------------------------------------
# Advantages


def hand_advantages(rewards, ids, norm_by_std=True, eps=1e-6):
    out = []
    for r, g in zip(rewards, ids):
        members = [x for x, h in zip(rewards, ids) if h == g]
        mean, std = (0.0, 1.0) if len(members) == 1 else (statistics.fmean(members),
                                                         statistics.stdev(members))
        out.append((r - mean) / (std + eps) if norm_by_std else r - mean)
    return out


# Groups interleaved on purpose: "q1" is a normal mixed group, "q2" a singleton, "q3" has equal
# rewards (zero variance), "q4" has two members.
REWARDS = [0.9, 0.1, 0.5, 0.7, 0.3, 0.3, 0.0, 0.4, 0.3, 0.8]
IDS = ["q1", "q1", "q2", "q1", "q3", "q3", "q1", "q4", "q3", "q4"]


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_group_advantages_match_hand_computation(norm_by_std):
    adv, metrics = group_advantages(torch.tensor(REWARDS, dtype=F64), IDS, norm_by_std=norm_by_std)
    expected = hand_advantages(REWARDS, IDS, norm_by_std)
    assert adv.dtype == F64
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)
    # The singleton keeps its raw reward (mean 0, std 1) and the equal-reward group gets 0.
    assert adv[2].item() == pytest.approx(0.5 / (1 + 1e-6) if norm_by_std else 0.5, abs=1e-12)
    assert adv[[4, 5, 8]].abs().max().item() < 1e-9
    assert metrics == {"num_groups": 4, "singleton_groups": 1, "zero_std_fraction": 1 / 3}


def test_group_advantages_tensor_ids_and_integer_rewards():
    ids = torch.tensor([7, 7, 3, 3, 3])
    adv, metrics = group_advantages(torch.tensor([1, 0, 1, 1, 1]), ids)
    expected = hand_advantages([1, 0, 1, 1, 1], ids.tolist())
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float32))
    assert metrics["zero_std_fraction"] == 0.5
    # Within a z-scored group of two, the advantages are ±1/sqrt(2) (unbiased std = 1/sqrt(2)).
    assert adv[0].item() == pytest.approx(1 / math.sqrt(2), rel=1e-5)


def test_group_advantages_bad_input():
    with pytest.raises(ValueError, match="group_ids has 2 entries"):
        group_advantages(torch.zeros(3), ["a", "b"])
    with pytest.raises(ValueError, match=r"rewards\[1\]"):
        group_advantages(torch.tensor([0.0, float("nan")]), ["a", "a"])
    with pytest.raises(ValueError, match="shape"):
        group_advantages(torch.zeros(2, 2), ["a", "b"])


# ----------------------------------------------------------------------------------------------
# Per-token loss, every branch


def hand_token_loss(logp, old, a, eps=0.2, c=3.0):
    """(loss, eps-clip active, dual clip active) for one token, following verl line by line."""
    ratio = math.exp(max(-20.0, min(20.0, logp - old)))
    l1 = -a * ratio
    l2 = -a * min(max(ratio, 1 - eps), 1 + eps)
    ppo = max(l1, l2)
    if a < 0:
        return min(ppo, -a * c), l2 > l1, ppo > -a * c
    return ppo, l2 > l1, False


def hand_k3(logp, ref):
    d = max(-20.0, min(20.0, ref - logp))
    return max(-10.0, min(10.0, math.exp(d) - d - 1))


# Two sequences of four tokens. Each token's (log ratio, advantage) hits one branch:
#   seq 0, A = +1.5: ratio 1.5 (upper clip), 1.1 (inside), 0.5 (below: unclipped for A > 0),
#                    and a padded token with an absurd ratio that must not count;
#   seq 1, A = -2.0: ratio 0.5 (lower clip), 2.0 (inside dual clip: unclipped), 4.0 (dual clip),
#                    1.0.
LOG_RATIO = [[math.log(1.5), math.log(1.1), math.log(0.5), 30.0],
             [math.log(0.5), math.log(2.0), math.log(4.0), 0.0]]
ADV = [1.5, -2.0]
MASK = [[1, 1, 1, 0], [1, 1, 1, 1]]
OLD = [[-1.0, -2.0, -0.5, -3.0], [-1.5, -0.7, -2.5, -1.2]]
# Reference log-probs chosen so k3 is ordinary on most tokens and hits both clamps on two.
REF_SHIFT = [[0.3, -0.2, 25.0, 0.0], [-25.0, 0.1, 0.2, 2.5]]


def hand_case():
    logp = [[o + d for o, d in zip(orow, drow)] for orow, drow in zip(OLD, LOG_RATIO)]
    ref = [[lp + s for lp, s in zip(lrow, srow)] for lrow, srow in zip(logp, REF_SHIFT)]
    return logp, ref


def test_policy_loss_matches_hand_computation_every_branch():
    logp, ref = hand_case()
    tokens = [(i, t) for i in range(2) for t in range(4) if MASK[i][t]]
    per_token = {(i, t): hand_token_loss(logp[i][t], OLD[i][t], ADV[i]) for i, t in tokens}
    k3 = {(i, t): hand_k3(logp[i][t], ref[i][t]) for i, t in tokens}
    n = len(tokens)
    pg = sum(v[0] for v in per_token.values()) / n
    kl = sum(k3.values()) / n
    # Every branch is exercised, and both KL clamps too.
    # The ε-clip binds on ratio 1.5 (A > 0) and 0.5 (A < 0); for A < 0 and ratio 4.0 the
    # unclipped term is the larger, and the dual clip binds instead.
    assert sum(v[1] for v in per_token.values()) == 2
    assert sum(v[2] for v in per_token.values()) == 1
    assert sorted(v for v in k3.values() if abs(v) == 10) == [10.0, 10.0]

    loss, m = policy_loss(torch.tensor(logp, dtype=F64), torch.tensor(OLD, dtype=F64),
                          torch.tensor(ADV, dtype=F64), token_mean(MASK),
                          ref_logp=torch.tensor(ref, dtype=F64))
    assert loss.item() == pytest.approx(pg + 0.001 * kl, rel=1e-12)
    assert m["pg_loss"].item() == pytest.approx(pg, rel=1e-12)
    assert m["kl_loss"].item() == pytest.approx(kl, rel=1e-12)
    assert m["pg_clipfrac"].item() == pytest.approx(2 / 7)
    assert m["pg_clipfrac_lower"].item() == pytest.approx(1 / 7)
    ppo_kl = -sum(LOG_RATIO[i][t] for i, t in tokens) / n
    assert m["ppo_kl"].item() == pytest.approx(ppo_kl, rel=1e-12)


def test_low_var_kl_values():
    logp = torch.tensor([-1.0, -1.0, -1.0, -1.0], dtype=F64)
    ref = torch.tensor([-1.0, -0.5, 30.0, -40.0], dtype=F64)
    expected = [hand_k3(a, b) for a, b in zip(logp.tolist(), ref.tolist())]
    torch.testing.assert_close(low_var_kl(logp, ref), torch.tensor(expected, dtype=F64))
    assert expected[0] == 0 and expected[2] == 10 and expected[3] == 10


# ----------------------------------------------------------------------------------------------
# Gradients


def test_gradcheck_on_tiny_case():
    logp, ref = hand_case()
    old, ref, adv = torch.tensor(OLD, dtype=F64), torch.tensor(ref, dtype=F64), torch.tensor(ADV, dtype=F64)
    x = torch.tensor(logp, dtype=F64, requires_grad=True)

    def f(lp):
        return policy_loss(lp, old, adv, token_mean(MASK), ref_logp=ref, kl_coef=0.1)[0]

    # No token sits within the 1e-6 finite-difference step of a clip or clamp boundary.
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-8)
    # Clipped tokens carry no policy gradient: only the KL term moves them.
    x.grad = None
    f(x).backward()
    kl_only = torch.autograd.grad(0.1 * masked_mean(low_var_kl(x, ref), torch.tensor(MASK)), x)[0]
    for i, t in [(0, 0), (1, 0), (1, 2)]:  # upper clip, lower clip, dual clip
        assert x.grad[i, t].item() == pytest.approx(kl_only[i, t].item(), abs=1e-12)
    assert kl_only[0, 0].item() != 0 and kl_only[1, 2].item() != 0
    # Ratio 0.5 with A > 0 is not clipped, and its k3 sits on the +10 clamp (no KL gradient).
    assert kl_only[0, 2].item() == 0 and x.grad[0, 2].item() == pytest.approx(-1.5 * 0.5 / 7)
    assert x.grad[0, 3].item() == 0  # padding


def test_on_policy_loss_is_reinforce_plus_kl_value_and_gradient():
    # A tiny "model": free logits over a vocabulary of 5, the sampled tokens and a reference.
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 6, 5, dtype=F64, generator=g, requires_grad=True)
    tokens = torch.randint(0, 5, (3, 6), generator=g)
    ref_logp = torch.randn(3, 6, 5, dtype=F64, generator=g).log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]])
    adv, _ = group_advantages(torch.tensor([0.2, 0.9, 0.4], dtype=F64), ["q", "q", "q"])

    def logp_of(z):
        return z.log_softmax(-1).gather(-1, tokens[..., None])[..., 0]

    logp = logp_of(logits)
    loss, m = policy_loss(logp, logp.detach(), adv, token_mean(mask), ref_logp=ref_logp)
    (grad,) = torch.autograd.grad(loss, logits)
    loss_none, _ = policy_loss(logp_of(logits), None, adv, token_mean(mask), ref_logp=ref_logp)

    lp = logp_of(logits)
    # REINFORCE's surrogate −A·log π has the same gradient as −A·ρ at ρ = 1 (its value differs).
    reinforce = masked_mean(-adv[:, None] * lp, mask)
    k3 = masked_mean(low_var_kl(lp, ref_logp), mask)
    (grad_ref,) = torch.autograd.grad(reinforce + 0.001 * k3, logits)
    assert loss.item() == pytest.approx(masked_mean(-adv[:, None].expand(3, 6), mask).item()
                                        + 0.001 * k3.item(), rel=1e-12)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-14)
    assert loss_none.item() == loss.item()
    assert m["pg_clipfrac"].item() == 0 and m["pg_clipfrac_lower"].item() == 0
    assert m["ppo_kl"].item() == 0


# ----------------------------------------------------------------------------------------------
# Aggregation


RAGGED_VALUES = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0], [5.0, 6.0, 9.0, 9.0]], dtype=F64)
RAGGED_MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])


@pytest.mark.parametrize("mode,kwargs,expected", [
    ("token-mean", {}, (1 + 2 + 3 + 4 + 5 + 6) / 6),
    ("batch-token-mean", {"num_tokens_total": 12}, (1 + 2 + 3 + 4 + 5 + 6) / 12),
    ("seq-mean-token-mean", {}, ((1 + 2 + 3) / 3 + 4 / 1 + (5 + 6) / 2) / 3),
    ("seq-mean-token-sum", {}, (6 + 4 + 11) / 3),
    ("seq-mean-token-sum-norm", {}, (6 + 4 + 11) / 4),
    ("seq-mean-token-sum-norm", {"max_len": 10}, (6 + 4 + 11) / 10),
])
def test_agg_modes_on_ragged_mask(mode, kwargs, expected):
    assert agg_loss(RAGGED_VALUES, RAGGED_MASK, mode, **kwargs).item() == pytest.approx(expected)


def test_every_mode_is_tested_and_bad_modes_fail():
    assert set(AGG_MODES) == {"token-mean", "batch-token-mean", "seq-mean-token-mean",
                              "seq-mean-token-sum", "seq-mean-token-sum-norm"}
    with pytest.raises(ValueError, match="unknown aggregation mode 'sum'"):
        agg_loss(RAGGED_VALUES, RAGGED_MASK, "sum")
    with pytest.raises(ValueError, match="num_tokens_total"):
        agg_loss(RAGGED_VALUES, RAGGED_MASK, "batch-token-mean")
    with pytest.raises(ValueError, match="num_tokens_total"):
        agg_loss(RAGGED_VALUES, RAGGED_MASK, "token-mean", num_tokens_total=5)
    with pytest.raises(ValueError, match="mask"):
        agg_loss(RAGGED_VALUES, RAGGED_MASK[:, :3])


def test_batch_token_mean_over_micro_batches_equals_full_batch_token_mean():
    # Summing micro-batch losses with batch-token-mean gives the full batch's token mean; LRPO's
    # token-mean / grad_accum does not when micro-batches hold different token counts.
    full = masked_mean(RAGGED_VALUES, RAGGED_MASK).item()
    micro = [(RAGGED_VALUES[:2], RAGGED_MASK[:2]), (RAGGED_VALUES[2:], RAGGED_MASK[2:])]
    n = int(RAGGED_MASK.sum())
    batch = sum(agg_loss(v, m, "batch-token-mean", num_tokens_total=n).item() for v, m in micro)
    lrpo = sum(agg_loss(v, m, "token-mean").item() / len(micro) for v, m in micro)
    assert batch == pytest.approx(full)
    assert full == 3.5 and lrpo == pytest.approx((10 / 4 + 11 / 2) / 2) == 4.0


# ----------------------------------------------------------------------------------------------
# Metrics helpers and input checks


def test_entropy_metric_is_the_masked_mean_of_the_given_entropies():
    logits = torch.randn(2, 7, 11, generator=torch.Generator().manual_seed(2))
    entropy = torch.distributions.Categorical(logits=logits).entropy()
    mask = torch.ones(2, 7)
    mask[1, 4:] = 0
    _, m = policy_loss(torch.zeros(2, 7), None, torch.zeros(2), token_mean(mask), entropy=entropy)
    assert m["entropy"].item() == pytest.approx((entropy * mask).sum().item() / 11, rel=1e-6)


def verl_minibatch_loss(values, mask, mode, rows_per_micro_batch, max_len=None):
    """verl 0.5's actor, restated: agg_loss on consecutive micro-batches, each divided by the
    number of micro-batches (gradient accumulation); batch-token-mean divides by the whole
    mini-batch's token count instead."""
    blocks = list(zip(values.split(rows_per_micro_batch), mask.split(rows_per_micro_batch)))
    if mode == "batch-token-mean":
        n = mask.sum()
        return sum(agg_loss(v, m, mode, num_tokens_total=n) for v, m in blocks)
    return sum(agg_loss(v, m, mode, max_len=max_len) for v, m in blocks) / len(blocks)


@pytest.mark.parametrize("mode", AGG_MODES)
@pytest.mark.parametrize("rows", [1, 2, 4, 5])
def test_token_weights_reproduce_verls_micro_batch_aggregation(mode, rows):
    g = torch.Generator().manual_seed(rows)
    values = torch.randn(10, 6, generator=g, dtype=F64)
    mask = (torch.rand(10, 6, generator=g) < 0.7).to(F64)
    mask[:, 0] = 1
    w = token_weights(mask, mode, rows_per_micro_batch=rows, max_len=6)
    expected = verl_minibatch_loss(values, mask, mode, rows, max_len=6)
    assert (w.to(F64) * values).sum().item() == pytest.approx(expected.item(), rel=1e-6)
    # and it does not matter how the rows are split into forward passes
    split = sum((w[i:i + 3].to(F64) * values[i:i + 3]).sum() for i in range(0, 10, 3))
    assert split.item() == pytest.approx(expected.item(), rel=1e-6)


def test_token_mean_weights_by_hand():
    # two micro-batches of 2 rows: tokens 3+1 and 2+2 -> weights 1/4/2 and 1/4/2; with one row
    # per micro-batch, 1/3/4, 1/1/4, 1/2/4, 1/2/4
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 0]], dtype=torch.float32)
    w2 = token_weights(mask, "token-mean", rows_per_micro_batch=2, max_len=3)
    assert torch.allclose(w2, mask / 8)
    w1 = token_weights(mask, "token-mean", rows_per_micro_batch=1, max_len=3)
    assert torch.allclose(w1[:, 0], torch.tensor([1 / 12, 1 / 4, 1 / 8, 1 / 8]))


def test_masked_mean_of_empty_mask_is_zero():
    assert masked_mean(torch.ones(2, 3), torch.zeros(2, 3)).item() == 0


def test_policy_loss_bad_shapes_fail_loudly():
    # Shapes are the caller's contract (no checks in the core), but a mismatch must not broadcast
    # silently into a wrong loss.
    x, w = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(RuntimeError):
        policy_loss(x, x, torch.zeros(2), w, ref_logp=torch.zeros(2, 4))
    with pytest.raises(RuntimeError):
        policy_loss(x, x, torch.zeros(3), w)
    with pytest.raises(ValueError, match="unknown aggregation mode 'sum'"):
        token_weights(w, "sum", rows_per_micro_batch=2, max_len=3)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_policy_loss_is_the_weighted_sum_and_metrics_ignore_the_weights(mode):
    # Every mode's weights give policy_loss = Σ w·ℓ (== verl's agg_loss over micro-batches), and
    # the logged fractions are plain token means over the response, whatever the mode.
    logp, ref = hand_case()
    logp, old, adv = torch.tensor(logp, dtype=F64), torch.tensor(OLD, dtype=F64), torch.tensor(ADV, dtype=F64)
    mask = torch.tensor(MASK, dtype=F64)
    w = token_weights(mask, mode, rows_per_micro_batch=1, max_len=4)
    loss, m = policy_loss(logp, old, adv, w, ref_logp=torch.tensor(ref, dtype=F64), kl_coef=0.0)
    per_token = torch.tensor([[hand_token_loss(logp[i, t].item(), OLD[i][t], ADV[i])[0]
                               for t in range(4)] for i in range(2)], dtype=F64)
    expected = verl_minibatch_loss(per_token, mask, mode, 1, max_len=4)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12) and "kl_loss" not in m
    assert m["pg_clipfrac"].item() == pytest.approx(2 / 7)
    assert m["pg_clipfrac_lower"].item() == pytest.approx(1 / 7)
