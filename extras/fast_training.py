"""bf16 training with float32 master weights, and compiled decoder layers (not needed to understand LRPO).

On a GPU the policy computes and samples in bf16, which halves memory and doubles GEMM speed.
Two things then go wrong if nothing is done, and this file fixes both:

* **Updates vanish.** At the paper's lr of 1e-6 an AdamW update is far below bf16's resolution
  (8 bits of mantissa: 1 + 2⁻⁸ is the next number after 1), so updating bf16 weights directly
  rounds most updates away. :class:`MasterWeightAdamW` keeps float32 master copies and float32
  moments, and rounds the result into the bf16 model after each step.
* **Gradients lose precision while they add up.** A step's gradient is the sum over many
  micro-batches; summed in bf16 the small ones are rounded away. Here each parameter's bf16
  gradient is added into its float32 master gradient as soon as the backward produces it (a
  post-accumulate-grad hook) and the bf16 one is freed, so accumulation and clipping happen in
  float32, as verl does (its FSDP actor keeps float32 gradients).

Memory per parameter: 2 (bf16 weight) + 4 (master) + 4 (master grad) + 8 (moments) bytes.

:func:`compile_layers` compiles each decoder layer with ``torch.compile`` (regional compilation:
all layers share one kernel set, so it takes seconds). It fuses the element-wise work of the
training forward and backward; BENCHMARKS.md has the measured effect.

:func:`token_logprobs` is the training twin of ``rollout.token_logprobs``: the same log-probs and
gradients without the (positions × vocabulary) logits in memory, on rows left-aligned so that the
GPU attention backward sees no all-padding query; its passes over each chunk's logits run
compiled on CUDA.
"""
from __future__ import annotations

import warnings

import torch

from extras.fast_rollout import fused

# Inductor says this once per run when it compiles the head's log-normaliser over 151,936 ids (it
# splits so long a reduction); the kernel is correct and measured (BENCHMARKS.md), so it is noise.
warnings.filterwarnings("ignore", message=r"\s*Online softmax is disabled on the fly")


class MasterWeightAdamW:
    """AdamW over float32 master copies of low-precision parameters (interface of torch.optim)."""

    def __init__(self, params, **adamw_kwargs):
        self.params = [p for p in params if p.requires_grad]
        self.masters = [p.detach().float().clone().requires_grad_(True) for p in self.params]
        fused = self.masters[0].is_cuda   # one kernel over all tensors on CUDA
        self.inner = torch.optim.AdamW(self.masters, fused=fused, **adamw_kwargs)
        self.param_groups = self.inner.param_groups   # clip_grad_norm_ over these clips in float32
        for p, m in zip(self.params, self.masters):
            p.register_post_accumulate_grad_hook(self._accumulate_into(m))
            p.master = m   # where extras/divergence.py finds the gradient to name

    @staticmethod
    def _accumulate_into(master):
        def hook(p):
            if master.grad is None:
                master.grad = p.grad.float()
            else:
                master.grad.add_(p.grad)
            p.grad = None
        return hook

    def zero_grad(self, set_to_none: bool = True):
        for p, m in zip(self.params, self.masters):
            p.grad = None
            m.grad = None

    @torch.no_grad()
    def step(self):
        self.inner.step()
        for p, m in zip(self.params, self.masters):
            p.copy_(m)

    def state_dict(self):
        return {"inner": self.inner.state_dict(), "masters": [m.detach() for m in self.masters]}

    @torch.no_grad()
    def load_state_dict(self, state):
        for m, saved in zip(self.masters, state["masters"]):
            m.copy_(saved)
        for p, m in zip(self.params, self.masters):
            p.copy_(m)
        self.inner.load_state_dict(state["inner"])


# How many guard variants of the layers' code torch.compile keeps before it runs them eagerly for
# good (torch's default is 8). lrpo's loop calls the layers with and without grad (training and
# reference passes), with a padding mask or none (transformers drops the mask of a pass whose rows
# all have the same length: sorted passes of capped answers do), for the policy and for the
# reference: on the H100 the paper-shape run used up 8 during step 1, and every training pass
# after it ran uncompiled (forward/backward 55 s a step instead of ~45 s; BENCHMARKS.md, issue 18).
LAYER_VARIANTS = 64


def compile_layers(model, backend: str = "inductor") -> None:
    """torch.compile every decoder layer; dynamic shapes avoid a recompile per sequence length."""
    import torch._dynamo
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, LAYER_VARIANTS)
    for layer in model.base_model.layers:
        layer.compile(dynamic=True, backend=backend)


# ----------------------------------------------------------------------------------------------
# Training log-probs without the vocabulary's logits in memory (the twin of rollout.token_logprobs)

def _scaled_logits(raw, bias, softcap, temperature: float):
    """float32 logits / T of one chunk from the head's product ``raw`` = h·Wᵀ, with the head's bias
    and Gemma's final_logit_softcapping c·tanh(z / c) where the model has them; also tanh(z / c)
    (or None), which the backward needs for the soft-cap's derivative 1 − tanh²."""
    logits = raw.to(torch.promote_types(raw.dtype, torch.float32))   # a float64 model stays float64
    if bias is not None:
        logits = logits + bias
    squashed = None
    if softcap:
        squashed = torch.tanh(logits / softcap)
        logits = squashed * softcap
    return logits / temperature, squashed


# The two element-wise passes over a chunk's (positions, vocabulary) logits. Eagerly each op is a
# pass over 4096 × 151,936 float32 values; on CUDA each function is compiled into one or two
# kernels that read the bf16 product once (measured on the H100: BENCHMARKS.md, issue 18).
@fused
def _log_normaliser(raw, bias, targets, softcap, temperature: float, with_entropy: bool):
    """log Z and the target's logit of each position; and the entropy log Z − E_p[logit]."""
    logits, _ = _scaled_logits(raw, bias, softcap, temperature)
    log_z = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(1, targets[:, None]).squeeze(1)
    entropy = log_z - (logits.softmax(-1) * logits).sum(-1) if with_entropy else None
    return log_z, picked, entropy


@fused
def _logit_gradient(raw, bias, targets, log_z, grad_logp, softcap, temperature: float):
    """∂/∂raw of Σ g · log p[target] = (1[j = target] − p_j) · g / T (· (1 − tanh²) under a
    soft-cap), in raw's dtype, and its sum over positions (the bias's gradient) where there is a bias."""
    logits, squashed = _scaled_logits(raw, bias, softcap, temperature)
    grad = (logits - log_z[:, None]).exp() * -grad_logp[:, None]    # −p · g
    grad = grad.scatter_add(1, targets[:, None], grad_logp[:, None]) / temperature   # + 1[target] · g
    if squashed is not None:
        grad = grad * (1 - squashed.square())
    return grad.to(raw.dtype), (None if bias is None else grad.sum(0))


class _TargetLogProbs(torch.autograd.Function):
    """log softmax(head(h) / T)[target] for N positions, in chunks of positions, keeping only the
    log-normaliser per position for the backward (the "fused linear cross-entropy" of Liger and
    Apple's Cut Cross-Entropy, written with plain PyTorch ops).

    rollout.token_logprobs keeps the float32 (N, V) logits and autograd's intermediates: about
    17 MB of memory traffic per position for Qwen's 151,936 ids in the backward. Here the
    backward recomputes only the logits' product and forms ∂/∂logits = (1[j = target] − softmax_j)
    · g / T from it in one pass: the same values with far less traffic.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature: float, softcap, chunk: int,
                with_entropy: bool):
        at_least_fp32 = torch.promote_types(hidden.dtype, torch.float32)
        logp = torch.empty(hidden.shape[0], dtype=at_least_fp32, device=hidden.device)
        log_z, entropy = torch.empty_like(logp), torch.zeros_like(logp)
        for s in range(0, hidden.shape[0], chunk):
            part = slice(s, s + chunk)
            log_z[part], picked, part_entropy = _log_normaliser(
                hidden[part] @ weight.T, bias, targets[part], softcap, temperature, with_entropy)
            logp[part] = picked - log_z[part]
            if with_entropy:
                entropy[part] = part_entropy
        ctx.save_for_backward(hidden, weight, bias, targets, log_z)
        ctx.temperature, ctx.softcap, ctx.chunk = temperature, softcap, chunk
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, weight, bias, targets, log_z = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        accumulate = torch.promote_types(weight.dtype, torch.float32)   # bf16 chunks add in float32
        needs = ctx.needs_input_grad
        grad_weight = torch.zeros_like(weight, dtype=accumulate) if needs[1] else None
        grad_bias = torch.zeros_like(bias, dtype=accumulate) if needs[2] else None
        for s in range(0, hidden.shape[0], ctx.chunk):
            part = slice(s, s + ctx.chunk)
            h = hidden[part]
            grad_logits, grad_bias_part = _logit_gradient(
                h @ weight.T, bias, targets[part], log_z[part], grad_logp[part].to(log_z.dtype),
                ctx.softcap, ctx.temperature)
            if grad_bias is not None:
                grad_bias += grad_bias_part.to(accumulate)
            if grad_hidden is not None:
                grad_hidden[part] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += (grad_logits.T @ h).to(accumulate)
        grad_weight = None if grad_weight is None else grad_weight.to(weight.dtype)
        grad_bias = None if grad_bias is None else grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


def left_aligned(input_ids, attention_mask, completion_start: int):
    """Each row moved left by its prompt's padding, which then trails the row (columns wrap).

    A left-padded row leaves query positions whose every key is padding. On an H100 the
    memory-efficient attention kernel's backward returns NaN in the query gradient of such rows
    (measured: NaN first in layer 27's q_proj gradient, finite k/v gradients; BENCHMARKS.md, issue
    18), and one NaN row poisons the whole gradient. Trailing padding sees the row's tokens, and
    position ids follow the mask, so every value is unchanged. Returns (ids, mask, prompt lengths).
    """
    prompt_len = attention_mask[:, :completion_start].sum(1)
    width = input_ids.shape[1]
    cols = (torch.arange(width, device=input_ids.device)[None] + (completion_start - prompt_len)[:, None]) % width
    return input_ids.gather(1, cols), attention_mask.gather(1, cols), prompt_len


def token_logprobs(model, input_ids, attention_mask, completion_start: int, *,
                   chunk_size: int = 4096, temperature: float = 1.0, return_entropy: bool = False):
    """rollout.token_logprobs with the vocabulary projection of :class:`_TargetLogProbs`, on
    left-aligned rows (:func:`left_aligned`): same arguments, same values and gradients
    (tests/test_fast_training.py), less memory traffic, no NaN from padded query rows on a GPU.
    Body: ``base_model`` (also the text path of the multimodal Gemma 3 class); head:
    ``get_output_embeddings()`` with its bias, and ``config.final_logit_softcapping`` where the
    config has one (Gemma3ForCausalLM)."""
    import rollout
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    ids, mask, prompt_len = left_aligned(input_ids, attention_mask, completion_start)
    first = int(prompt_len.min())   # the shortest prompt: every answer starts at or after it
    hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=rollout._position_ids(mask),
                              use_cache=False).last_hidden_state
    hidden = hidden[:, first - 1:-1]   # the state at t−1 predicts token t
    B, W, H = hidden.shape
    logp, entropy = _TargetLogProbs.apply(hidden.reshape(B * W, H), head.weight, head.bias,
                                          ids[:, first:].reshape(-1), float(temperature), softcap,
                                          chunk_size, return_entropy)
    # row b's answer starts at column prompt_len[b]: gather the (B, T) completion positions back
    T = input_ids.shape[1] - completion_start
    at = torch.arange(T, device=ids.device)[None] + (prompt_len - first)[:, None]
    logp = logp.view(B, W).gather(1, at)
    return (logp, entropy.view(B, W).gather(1, at)) if return_entropy else logp


# ----------------------------------------------------------------------------------------------
# The update of lrpo.policy_update with mini-batches, PPO epochs and no host synchronisation

def _loop():
    """The training loop's module: ``lrpo`` when imported, ``__main__`` under ``python lrpo.py``."""
    import sys
    return sys.modules.get("lrpo") or sys.modules["__main__"]


def token_budget_passes(prompt_len: torch.Tensor, answer_len: torch.Tensor, rows_per_pass: int) -> list[slice]:
    """Consecutive passes over rows sorted by length, each padded to at most ``rows_per_pass`` ×
    (the longest prompt + the longest answer) tokens: passes of short rows hold more rows than
    ``--micro-batch``, passes of the longest rows exactly that many, so no pass needs more memory
    than the widest fixed-size pass would (verl's ``use_dynamic_bsz`` packs by tokens the same way).
    Each pass has a fixed cost (launching its kernels, adding each parameter's gradient into its
    float32 master: 12–18 ms on the H100, BENCHMARKS.md); fewer passes pay it fewer times, and
    loss.token_weights make the gradient the same whatever rows a pass holds. The last pass never
    holds a single row where its neighbour can spare one: the compiled layers specialise a batch of
    1, so such a pass compiles new graphs (seconds on the GPU) whenever one first appears."""
    budget = rows_per_pass * (int(prompt_len.max()) + int(answer_len.max()))
    passes, begin, widest_prompt, widest_answer = [], 0, 0, 0
    for i, (p, a) in enumerate(zip(prompt_len.tolist(), answer_len.tolist())):
        widest_prompt, widest_answer = max(widest_prompt, p), max(widest_answer, a)
        if i > begin and (i + 1 - begin) * (widest_prompt + widest_answer) > budget:
            passes.append(slice(begin, i))
            begin, widest_prompt, widest_answer = i, p, a
    if passes and len(prompt_len) - begin == 1 and passes[-1].stop - passes[-1].start >= 3:
        begin -= 1   # two rows at most as wide as the widest fit any budget of ≥ 2 rows
        passes[-1] = slice(passes[-1].start, begin)
    return passes + [slice(begin, len(prompt_len))]


def policy_update(run, roll, advantages: torch.Tensor, order: torch.Tensor, step: int) -> dict:
    """lrpo.policy_update with what the paper's run does not need but real runs use: several
    optimizer steps per batch (``--mini-batch``) and PPO epochs (``--ppo-epochs``), with the old
    policy's log-probs for the ratio; on a GPU every tensor stays on the device and metrics are
    read once at the end (a read per micro-batch waits for the GPU); the entropy is logged from
    one micro-batch (verl computes it only when its coefficient is non-zero,
    verl/workers/actor/dp_actor.py:422-435); the reference and the forward/backward are timed.
    Passes hold as many rows as fit a token budget (:func:`token_budget_passes`), planned on the
    host, so a pass starts without waiting for the GPU to say how wide its rows are.
    With one mini-batch and one epoch it computes lrpo.policy_update's gradient (a test checks).
    """
    import math
    import loss
    from extras import runlog
    lrpo = _loop()
    cfg, model, optimizer = run.cfg, run.model, run.optimizer
    device = next(model.parameters()).device
    ids, mask, start = roll.input_ids.to(device), roll.attention_mask.to(device), roll.completion_start
    completion_mask, advantages = roll.completion_mask.float().to(device), advantages.to(device)
    order, n = order.to(device), ids.shape[0]
    host_mask, host_order = roll.attention_mask.cpu(), order.cpu()   # one read: passes are planned here
    prompt_len, answer_len = host_mask[:, :start].sum(1), host_mask[:, start:].sum(1)
    clock = runlog.PhaseClock(cfg.device)
    ref_logp = None if run.reference is None else lrpo.frozen_logprobs(run, run.reference, ids, mask, start)
    clock.lap("update_reference")
    mini = cfg.mini_batch or n
    off_policy = cfg.ppo_epochs > 1 or mini < n
    old_logp = lrpo.frozen_logprobs(run, model, ids, mask, start) if off_policy else None
    clock.lap("update_old_logprobs")
    shares, means, grad_norms, skipped = {}, {}, [], 0
    model.train()
    for _ in range(cfg.ppo_epochs):
        for m0 in range(0, n, mini):
            rows, host_rows = order[m0:m0 + mini], host_order[m0:m0 + mini]
            weights = loss.token_weights(completion_mask[rows], cfg.loss_agg,
                                         rows_per_micro_batch=cfg.loss_micro_batch, max_len=cfg.max_new_tokens)
            by_length = (prompt_len + answer_len)[host_rows].argsort(stable=True)
            optimizer.zero_grad(set_to_none=True)
            terms = []
            sorted_rows = host_rows[by_length]
            prompts, answers = prompt_len[sorted_rows], answer_len[sorted_rows]
            for i, part in enumerate(token_budget_passes(prompts, answers, cfg.micro_batch)):
                picked = by_length[part].to(device)
                micro = rows[picked]
                # lrpo.completion_logprobs's columns (left of the longest prompt, right of the longest
                # answer), from the host's lengths instead of a read of the GPU's mask
                first = start - int(prompts[part].max())
                last = start + max(int(answers[part].max()), 1)
                out = run.logprobs(model, ids[micro, first:last], mask[micro, first:last], start - first,
                                   temperature=cfg.temperature, return_entropy=i == 0)
                logp, entropy = out if i == 0 else (out, None)
                T = logp.shape[1]
                pick = lambda x: None if x is None else x[micro][:, :T]
                value, metrics = loss.policy_loss(
                    logp.float(), pick(old_logp), advantages[micro], weights[picked][:, :T],
                    ref_logp=pick(ref_logp), kl_coef=cfg.kl_coef,
                    entropy=None if entropy is None else entropy.detach())
                value.backward()
                terms.append({**metrics, "loss": value.detach()})
            params = [p for group in optimizer.param_groups for p in group["params"]]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            clock.lap("update_forward_backward")
            if not run.guard.check(model, grad_norm, terms, step, (ids[:2], mask[:2], start)):
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                continue
            optimizer.step()
            grad_norms.append(grad_norm)
            for t in terms:   # device tensors: loss terms are shares of the mini-batch's loss
                for k, v in t.items():
                    (shares if k in ("loss", "pg_loss", "kl_loss") else means).setdefault(k, []).append(v)
            clock.lap("update_optimizer")
    model.eval()
    n_minibatches = max(1, cfg.ppo_epochs * math.ceil(n / mini) - skipped)
    out = {f"train/{k}": float(torch.stack(v).sum()) / n_minibatches for k, v in shares.items()}
    out.update({f"train/{k}": float(torch.stack(v).float().mean()) for k, v in means.items()})
    out["train/grad_norm"] = float(torch.stack(grad_norms).mean()) if grad_norms else 0.0
    out["train/skipped_steps"] = skipped
    return {**out, **clock.totals}
