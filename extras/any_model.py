"""`rollout.sample` for any transformers causal LM, with its argument checks (not needed to
understand LRPO).

rollout.py writes the decoder forward out for the Llama family only (Llama, Qwen2/2.5, Qwen3,
Mistral), so that a reader sees the KV cache at work. Other families (Gemma 3: scaled
embeddings, sliding windows, extra norms, logit soft-capping) run the very same loop (prefill,
one token per step, the same token rule and random draws) through the model's own
transformers forward and cache: :func:`sample` passes that forward to `rollout.sample` as its
``decoder``, and keeps the explicit cache wherever it computes what the model computes.

It is also the sampler's edge: :func:`check_args` gives bad arguments a one-line error naming
the field (the core trusts its callers). `lrpo.set_up` picks this sampler for models outside the
Llama family; `extras/fast_rollout.py` hands them to it.
"""
from __future__ import annotations

import inspect
import math

import rollout


def check_args(model, tokenizer, prompts, max_new_tokens: int, *, temperature: float = 1.0,
               top_p: float = 1.0, top_k: int = 0, eos_token_ids=None, **_) -> None:
    """One-line ValueErrors for the arguments of `rollout.sample` that would otherwise fail deep
    inside it (or not at all): empty prompts, token ids outside the embedding, bad sampling
    parameters, no EOS id."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if len(prompts) == 0 or isinstance(prompts, str):
        raise ValueError("prompts: expected a non-empty list of strings or of token-id lists")
    if any(isinstance(p, str) for p in prompts) and tokenizer is None:
        raise ValueError("prompts are strings, so a tokenizer is needed")
    n_embeddings = model.get_input_embeddings().num_embeddings
    for i, row in enumerate(prompts):
        if len(row) == 0:
            raise ValueError(f"prompts[{i}] is empty")
        bad = [] if isinstance(row, str) else [
            t for t in (row.tolist() if hasattr(row, "tolist") else row)
            if not isinstance(t, int) or not 0 <= t < n_embeddings]
        if bad:
            raise ValueError(f"prompts[{i}]: token id {bad[0]!r} is not an int in "
                             f"[0, {n_embeddings})")
    if eos_token_ids is None:
        named = (getattr(tokenizer, "eos_token_id", None), model.generation_config.eos_token_id)
        eos_token_ids = [i for i in named if i not in (None, [])]
    if not eos_token_ids:
        raise ValueError("no EOS token id: pass eos_token_ids or use a tokenizer with eos_token_id")


def _forward_transformers(model, cache, input_ids, position_ids, key_mask):
    """rollout's forward contract (S new tokens per row in, last-position float32 logits out,
    the cache filled in place) through the model's own forward and transformers cache."""
    params = inspect.signature(model.forward).parameters
    # transformers 5.2x renamed past_key_values to cache; the signature says which one it takes.
    kwargs = {"cache" if "cache" in params else "past_key_values": cache}
    if "logits_to_keep" in params:  # the prefill needs the last position only (Gemma: V = 262,144)
        kwargs["logits_to_keep"] = 1
    out = model(input_ids=input_ids, attention_mask=key_mask, position_ids=position_ids,
                use_cache=True, **kwargs)
    return out.logits[:, -1].float()


def decoder(model, batch: int, length: int):
    """rollout's explicit KV cache where its Llama forward is this model's; elsewhere the
    model's transformers cache and forward."""
    if rollout.has_llama_forward(model, length):
        return rollout.llama_decoder(model, batch, length)
    from transformers import DynamicCache
    return DynamicCache(config=model.config), _forward_transformers


def sample(model, tokenizer, prompts, max_new_tokens: int, **kwargs) -> rollout.Rollout:
    """`rollout.sample` (same arguments and result) for any causal LM, arguments checked."""
    check_args(model, tokenizer, prompts, max_new_tokens, **kwargs)
    return rollout.sample(model, tokenizer, prompts, max_new_tokens, decoder=decoder, **kwargs)
