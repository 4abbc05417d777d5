"""Rollouts: sampling with a KV cache, and the log-probs of sampled tokens (paper §3.1).

For each question x LRPO samples a group of K responses, each in the language ℓ_k the router
chose (`bandit.py`):  y_k ~ π_θ_old(· | x, ℓ_k),  with π(y | x, ℓ) = Π_t π(y_t | x, ℓ, y_<t).
The loss (`loss.py`) needs log π(y_t | x, ℓ, y_<t) of every sampled token: :func:`sample` returns
them with the y_k, and :func:`token_logprobs` recomputes them with autograd for training.

Why a KV cache: attention at position t reads the keys and values of all earlier positions,
and those never change. One forward over the prompt (the "prefill") stores them in a cache
allocated once; each later step runs one new token per row, writes its key and value into the
next slot and attends over the filled slots: O(T) work per new token instead of O(T²).

Left padding and position ids: prompts of unequal length are left-padded to the longest, so a
step's new tokens land in the same cache slot in every row. A row's position ids (what RoPE
sees) count only its real tokens, and pad slots are masked out, so padding changes nothing.

Conventions: temperature, then top-k, then top-p, then a draw from an explicit torch.Generator;
temperature 0 is greedy. `Rollout.logprobs` are log softmax(logits / T) of the sampled tokens,
*before* top-k/top-p truncation (greedy: T = 1), what `token_logprobs(..., temperature=T)`
recomputes. `completion_mask` is 1 up to and including the first EOS, so the EOS gets credit
for stopping. The forward below is written out for the Llama family (Llama, Qwen2/2.5, Qwen3,
Mistral); any other model (Gemma 3, ...) runs the same loop through its own transformers forward
and cache. A faster path (fused kernels, CUDA graphs), same tokens: `extras/fast_rollout.py`.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LLAMA_FAMILY = ("llama", "qwen2", "qwen3", "mistral")  # model types with the forward written out below


@dataclass
class Rollout:
    """A batch of B sampled completions. P = longest prompt, T = longest completion."""

    prompt_ids: torch.Tensor       # (B, P) long, left-padded
    prompt_mask: torch.Tensor      # (B, P) long, 1 on real prompt tokens
    completion_ids: torch.Tensor   # (B, T) long, pad after the end
    completion_mask: torch.Tensor  # (B, T) float32, 1 up to and including the first EOS
    logprobs: torch.Tensor         # (B, T) float32, log π(y_t | ...) of the sampled tokens, 0 where masked
    lengths: torch.Tensor          # (B,) long, completion_mask.sum(1)
    texts: list[str]               # decoded completions, special tokens skipped

    @property
    def input_ids(self) -> torch.Tensor:
        """Prompt and completion side by side, (B, P + T): what `token_logprobs` takes."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask.long()], dim=1)

    @property
    def completion_start(self) -> int:
        return self.prompt_ids.shape[1]


# ----------------------------------------------------------------------------------------------
# Prompts, special tokens, position ids

def _check_args(max_new_tokens: int, temperature: float, top_p: float, top_k: int) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")


def _special_tokens(model, tokenizer, eos_token_ids, suppress_eos: bool):
    """(EOS ids, pad id, banned): banned is a (V,) mask of ids never sampled, i.e. the embedding
    rows beyond the tokenizer (Qwen pads its 151,665 ids to 151,936 rows), and EOS if suppressed."""
    if eos_token_ids is None:  # chat models often end a turn with an id only generation_config names
        eos_token_ids = set()
        for ids in (getattr(tokenizer, "eos_token_id", None),
                    getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
            eos_token_ids.update([] if ids is None else [ids] if isinstance(ids, int) else ids)
        eos_token_ids = sorted(eos_token_ids)
    if not eos_token_ids:
        raise ValueError("no EOS token id: pass eos_token_ids or use a tokenizer with eos_token_id")
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = eos_token_ids[0] if pad_id is None else pad_id
    device = next(model.parameters()).device
    n_embeddings = model.get_input_embeddings().weight.shape[0]
    vocab_size = min(len(tokenizer), n_embeddings) if tokenizer is not None else n_embeddings
    eos_ids = torch.tensor(list(eos_token_ids), device=device)
    banned = torch.arange(model.get_output_embeddings().weight.shape[0], device=device) >= vocab_size
    if suppress_eos:  # fixed-length benchmarks
        banned[eos_ids] = True
    return eos_ids, pad_id, banned


def _prompt_batch(tokenizer, prompts, model, pad_id: int):
    """Tokenize (or take token ids) and left-pad: (B, P) ids and mask on the model's device."""
    if torch.is_tensor(prompts) and prompts.dim() == 2:  # equal-length rows of token ids
        prompts = prompts.tolist()
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        raise ValueError("prompts: expected a non-empty list of strings or of token-id lists")
    if all(isinstance(p, str) for p in prompts):
        if tokenizer is None:
            raise ValueError("prompts are strings, so a tokenizer is needed")
        rows = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    else:
        rows = [p.tolist() if torch.is_tensor(p) else list(p) for p in prompts]
    n_embeddings, device = model.get_input_embeddings().weight.shape[0], next(model.parameters()).device
    for i, row in enumerate(rows):
        if len(row) == 0:
            raise ValueError(f"prompts[{i}] is empty")
        bad = [t for t in row if not isinstance(t, int) or not 0 <= t < n_embeddings]
        if bad:
            raise ValueError(f"prompts[{i}]: token id {bad[0]!r} is not an int in [0, {n_embeddings})")
    P = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (P - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token among its row's real tokens, the same rule as HF generate."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


# ----------------------------------------------------------------------------------------------
# The forward with an explicit KV cache (Llama family), and the transformers one (the others)

def _has_own_forward(model, cache_len: int) -> bool:
    """True if the forward below computes what this model computes: a Llama-family decoder
    with a SiLU MLP whose attention sees the whole cache (no sliding window shorter than it)."""
    config = model.config
    if config.model_type not in LLAMA_FAMILY or getattr(config, "hidden_act", "silu") not in ("silu", "swish"):
        return False
    windows = [getattr(layer.self_attn, "sliding_window", None) for layer in model.model.layers]
    return all(w is None or w >= cache_len for w in windows)


class KVCache:
    """Keys and values of every layer, allocated once for all L = prompt + new-token slots.
    k[layer], v[layer]: (B, n_kv_heads, L, head_dim); slots [0, filled) hold data."""

    def __init__(self, model, batch: int, length: int):
        config = model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        like = model.get_input_embeddings().weight  # the model's dtype and device
        n_layers = len(model.model.layers)
        self.k = [like.new_zeros(batch, config.num_key_value_heads, length, head_dim) for _ in range(n_layers)]
        self.v = [like.new_zeros(batch, config.num_key_value_heads, length, head_dim) for _ in range(n_layers)]
        self.filled = 0


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _forward_kv_cache(model, cache: KVCache, input_ids, position_ids, key_mask) -> torch.Tensor:
    """Run S new tokens per row, input_ids (B, S), writing their keys and values into cache
    slots [filled, filled + S); return the logits at the last position, (B, V) float32.
    key_mask (B, filled + S): 1 on slots that hold a real token, 0 on left padding."""
    inner = model.model
    B, S = input_ids.shape
    start, end = cache.filled, cache.filled + S
    # Query slot s sees key slot j <= s if j holds a real token. A pad query also sees itself,
    # only so that its softmax row is not empty (its output is never used).
    q_slot = torch.arange(start, end, device=input_ids.device)[:, None]
    k_slot = torch.arange(end, device=input_ids.device)[None, :]
    visible = (k_slot <= q_slot) & (key_mask.bool()[:, None, :] | (k_slot == q_slot))
    visible = visible[:, None]                            # (B, 1, S, end): the same for every head
    x = inner.embed_tokens(input_ids)
    cos, sin = inner.rotary_emb(x, position_ids)          # (B, S, head_dim), from each row's own positions
    cos, sin = cos[:, None], sin[:, None]
    for i, layer in enumerate(inner.layers):
        attn = layer.self_attn
        h = layer.input_layernorm(x)                      # RMSNorm
        q = attn.q_proj(h).view(B, S, -1, attn.head_dim)
        k = attn.k_proj(h).view(B, S, -1, attn.head_dim)
        v = attn.v_proj(h).view(B, S, -1, attn.head_dim)
        if hasattr(attn, "q_norm"):                       # Qwen3: RMSNorm on each head's query and key
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)   # (B, heads, S, head_dim)
        q = q * cos + _rotate_half(q) * sin               # RoPE: rotate by each token's position
        k = k * cos + _rotate_half(k) * sin
        cache.k[i][:, :, start:end] = k                   # the cache at work: store, then read all
        cache.v[i][:, :, start:end] = v
        # enable_gqa: several query heads share each key/value head (Qwen2.5-1.5B: 12 and 2).
        o = F.scaled_dot_product_attention(q, cache.k[i][:, :, :end], cache.v[i][:, :, :end],
                                           attn_mask=visible, scale=attn.scaling, enable_gqa=True)
        x = x + attn.o_proj(o.transpose(1, 2).reshape(B, S, -1))
        h = layer.post_attention_layernorm(x)
        mlp = layer.mlp
        x = x + mlp.down_proj(mlp.act_fn(mlp.gate_proj(h)) * mlp.up_proj(h))  # SwiGLU
    cache.filled = end
    return model.get_output_embeddings()(inner.norm(x[:, -1])).float()


def _forward_transformers(model, cache, input_ids, position_ids, key_mask) -> torch.Tensor:
    """The same contract, through the model's own forward and transformers cache (filled in
    place). Gemma 3 goes here: its scaled embeddings, sliding windows, extra norms and logit
    soft-capping are all in its forward."""
    params = inspect.signature(model.forward).parameters
    # transformers 5.2x renamed past_key_values to cache; the signature says which one it takes.
    kwargs = {"cache" if "cache" in params else "past_key_values": cache}
    if "logits_to_keep" in params:  # the prefill needs the last position only (Gemma: V = 262,144)
        kwargs["logits_to_keep"] = 1
    out = model(input_ids=input_ids, attention_mask=key_mask, position_ids=position_ids, use_cache=True, **kwargs)
    return out.logits[:, -1].float()


# ----------------------------------------------------------------------------------------------
# Choosing the next token

def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) in float32; greedy (T = 0) reports T = 1."""
    if temperature > 0 and temperature != 1.0:
        return torch.log_softmax(logits.float() / temperature, dim=-1)
    return torch.log_softmax(logits, dim=-1, dtype=torch.float32)


def _top_k_top_p(scores: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Keep the top_k best tokens, then of those the smallest set of best tokens whose
    (renormalised) probability reaches top_p; the others get -inf. scores: (B, V) log-probs."""
    if 0 < top_k < scores.shape[-1]:
        kth_best = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth_best, -math.inf)
    if top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs   # kept while the better tokens fall short of top_p
        sorted_scores = sorted_scores.masked_fill(mass_before >= top_p, -math.inf)
        scores = torch.empty_like(scores).scatter_(1, order, sorted_scores)
    return scores


def _choose_token(logits, banned, temperature: float, top_k: int, top_p: float, generator):
    """One token per row from logits (B, V), and its log-prob (before the top-k/top-p cut)."""
    logp = _log_probs(logits, temperature)
    scores = _top_k_top_p(logp.masked_fill(banned, -math.inf), top_k, top_p)
    if temperature == 0:
        token = scores.argmax(dim=-1)
    else:
        # Gumbel-max: argmax(log p - log E), E ~ Exponential(1), is a draw from p. Same law as
        # torch.multinomial, and the noise is what extras/fast_rollout.py draws: same tokens.
        noise = torch.empty_like(scores).exponential_(generator=generator)
        token = (scores - noise.log()).argmax(dim=-1)
    return token, logp.gather(1, token[:, None]).squeeze(1)


def _make_generator(seed, generator, device) -> torch.Generator:
    if generator is not None:
        if generator.device.type != device.type:
            raise ValueError(f"generator is on {generator.device}, the model on {device}")
        return generator
    seed = seed if seed is not None else int(torch.randint(2**62, ()).item())  # from torch's global RNG
    return torch.Generator(device=device).manual_seed(seed)


def _rollout(tokenizer, prompt_ids, prompt_mask, tokens, logprobs, eos_ids, pad_id) -> Rollout:
    """Package the sampled (B, T) tokens: each row ends at its first EOS, which is kept."""
    is_eos = torch.isin(tokens, eos_ids).long()
    completion_mask = ((is_eos.cumsum(1) - is_eos) == 0).float()  # no EOS strictly before
    lengths = completion_mask.sum(1).long()
    width = int(lengths.max())
    completion_mask = completion_mask[:, :width]
    completion_ids = tokens[:, :width].masked_fill(completion_mask == 0, pad_id)
    texts = [] if tokenizer is None else tokenizer.batch_decode(
        [row[:n].tolist() for row, n in zip(completion_ids, lengths.tolist())], skip_special_tokens=True)
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask,
                   logprobs[:, :width] * completion_mask, lengths, texts)


# ----------------------------------------------------------------------------------------------
# sample()

@torch.no_grad()  # not inference_mode: the trainer feeds these tensors into autograd
def sample(model, tokenizer, prompts, max_new_tokens: int, *, temperature: float = 1.0,
           top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
           generator: torch.Generator | None = None, suppress_eos: bool = False,
           eos_token_ids: list[int] | None = None) -> Rollout:
    """Sample up to ``max_new_tokens`` per prompt, stopping each row at its first EOS.

    prompts: strings (chat template already applied; tokenized without special tokens) or
    lists of token ids. temperature 0 = greedy; top_k 0 and top_p 1 disable those filters.
    seed or generator (on the model's device) makes the draw reproducible; with neither, the
    seed comes from torch's global RNG. suppress_eos: never sample EOS (fixed-length
    benchmarks). eos_token_ids: defaults to the tokenizer's EOS plus the model's
    generation_config EOS ids.
    """
    _check_args(max_new_tokens, temperature, top_p, top_k)
    eos_ids, pad_id, banned = _special_tokens(model, tokenizer, eos_token_ids, suppress_eos)
    prompt_ids, prompt_mask = _prompt_batch(tokenizer, prompts, model, pad_id)
    generator = _make_generator(seed, generator, prompt_ids.device)
    (B, P), T = prompt_ids.shape, max_new_tokens
    if _has_own_forward(model, P + T):
        cache, forward = KVCache(model, B, P + T), _forward_kv_cache
    else:
        from transformers import DynamicCache
        cache, forward = DynamicCache(config=model.config), _forward_transformers

    # Prefill: the whole prompt in one forward; its last position predicts the first new token.
    logits = forward(model, cache, prompt_ids, _position_ids(prompt_mask), prompt_mask)
    key_mask, prompt_len = prompt_mask, prompt_mask.sum(1, keepdim=True)
    finished = torch.zeros(B, dtype=torch.bool, device=prompt_ids.device)
    tokens, logprobs = [], []
    for t in range(T):
        token, logprob = _choose_token(logits, banned, temperature, top_k, top_p, generator)
        token = torch.where(finished, pad_id, token)              # finished rows only emit padding
        tokens.append(token)
        logprobs.append(torch.where(finished, 0.0, logprob))
        finished |= torch.isin(token, eos_ids)
        if t == T - 1 or bool(finished.all()):
            break
        # Decode: feed each row's new token (position = its prompt length + t) into the next slot.
        key_mask = F.pad(key_mask, (0, 1), value=1)
        logits = forward(model, cache, token[:, None], prompt_len + t, key_mask)
    return _rollout(tokenizer, prompt_ids, prompt_mask, torch.stack(tokens, 1), torch.stack(logprobs, 1),
                    eos_ids, pad_id)


# ----------------------------------------------------------------------------------------------
# token_logprobs(): training-time log-probs, chunked

def _chunk_logprobs(hidden, targets, weight, bias, softcap, temperature: float, with_entropy: bool):
    # contiguous: on a strided slice the GEMM re-reads the (V × H) head once per row (8× slower on an H100)
    logits = F.linear(hidden.contiguous(), weight, bias).float()
    if softcap:  # Gemma's final_logit_softcapping, as its own forward applies it
        logits = softcap * torch.tanh(logits / softcap)
    if temperature != 1.0:
        logits = logits / temperature
    log_normaliser = torch.logsumexp(logits, dim=-1)
    logprobs = logits.gather(-1, targets[..., None]).squeeze(-1) - log_normaliser
    if not with_entropy:
        return logprobs, logprobs.new_zeros(())
    entropy = log_normaliser - (logits.softmax(dim=-1) * logits).sum(-1)  # H = log Z - E_p[logit]
    return logprobs, entropy


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_start: int,
                   *, chunk_size: int = 2048, temperature: float = 1.0, return_entropy: bool = False):
    """log π_θ(y_t | x, y_<t) for y = input_ids[:, completion_start:], with autograd.

    input_ids, attention_mask: (B, L), left-padded prompts then completions (``Rollout.input_ids``,
    ``.attention_mask``). Position ids follow the mask as in :func:`sample`, so at equal
    temperature these equal ``Rollout.logprobs`` (float32). The vocabulary projection runs over
    chunks of about ``chunk_size`` tokens under activation checkpointing, so at most one chunk's
    float32 logits exist at a time, forward and backward. Returns (B, T) log-probs, and (B, T)
    entropies of the full next-token distribution if ``return_entropy``. Body: ``base_model``
    (also right for the multimodal Gemma 3 class: its text path); head: ``get_output_embeddings()``
    plus ``config.final_logit_softcapping`` where the config has one (Gemma3ForCausalLM).
    """
    B, L = input_ids.shape
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} != input_ids {tuple(input_ids.shape)}")
    if not 1 <= completion_start < L:
        raise ValueError(f"completion_start must be in [1, {L}), got {completion_start}")
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=_position_ids(attention_mask), use_cache=False).last_hidden_state
    hidden = hidden[:, completion_start - 1:-1]   # the state at t-1 predicts token t
    targets = input_ids[:, completion_start:]
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    positions_per_chunk = max(1, chunk_size // B)
    logprobs, entropies = [], []
    for start in range(0, targets.shape[1], positions_per_chunk):
        args = (hidden[:, start:start + positions_per_chunk], targets[:, start:start + positions_per_chunk],
                head.weight, head.bias, softcap, temperature, return_entropy)
        if torch.is_grad_enabled() and hidden.requires_grad:
            # Recompute this chunk's logits in the backward instead of keeping them.
            lp, ent = torch.utils.checkpoint.checkpoint(_chunk_logprobs, *args, use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs(*args)
        logprobs.append(lp)
        entropies.append(ent)
    logprobs = torch.cat(logprobs, dim=1)
    return (logprobs, torch.cat(entropies, dim=1)) if return_entropy else logprobs
