"""Rollouts: sampling with a KV cache, and the log-probs of sampled tokens (paper §3.1).

For each question x LRPO samples K responses, each in the language ℓ_k the router chose
(`bandit.py`):  y_k ~ π_θ_old(· | x, ℓ_k),  π(y | x, ℓ) = Π_t π(y_t | x, ℓ, y_<t). The loss
(`loss.py`) needs log π(y_t | x, ℓ, y_<t) of every sampled token: :func:`sample` returns them
with the y_k, and :func:`token_logprobs` recomputes them with autograd for training.

Why a KV cache: attention at position t reads the keys and values of all earlier positions,
and those never change. One forward over the prompt (the "prefill") stores them in a cache
allocated once; each later step runs one new token per row, writes its key and value into the
next slot and attends over the filled slots: O(T) work per new token instead of O(T²).
Prompts are left-padded, so a step's new tokens land in the same slot in every row; position
ids (what RoPE sees) count only real tokens and pad slots are masked out: padding changes nothing.

Conventions: temperature, top-k, top-p, then a draw from an explicit torch.Generator (T = 0:
greedy). `Rollout.logprobs` are log softmax(logits / T) before the top-k/top-p cut (greedy:
T = 1). `completion_mask` is 1 up to and including the first EOS (credit for stopping). The
forward is the Llama family's (Llama, Qwen2/2.5, Qwen3, Mistral); other models (Gemma 3) and
the argument checks: `extras/any_model.py`; fused kernels, CUDA graphs: `extras/fast_rollout.py`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LLAMA_FAMILY = ("llama", "qwen2", "qwen3", "mistral")  # model types with the forward written below


@dataclass
class Rollout:
    """A batch of B sampled completions. P = longest prompt, T = longest completion."""
    prompt_ids: torch.Tensor       # (B, P) long, left-padded
    prompt_mask: torch.Tensor      # (B, P) long, 1 on real prompt tokens
    completion_ids: torch.Tensor   # (B, T) long, pad after the end
    completion_mask: torch.Tensor  # (B, T) float32, 1 up to and including the first EOS
    logprobs: torch.Tensor         # (B, T) float32, log π(y_t | ...) of sampled tokens, 0 if masked
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


def _special_tokens(model, tokenizer, eos_token_ids, suppress_eos: bool):
    """(EOS ids, pad id, banned): banned is a (V,) mask of ids never sampled, i.e. the embedding
    rows beyond the tokenizer (Qwen pads its 151,665 ids to 151,936 rows), and EOS if suppressed.
    Chat models often end a turn with an id only generation_config names: both count."""
    if eos_token_ids is None:
        named = (getattr(tokenizer, "eos_token_id", None), model.generation_config.eos_token_id)
        eos_token_ids = sorted({i for ids in named if ids is not None
                                for i in ([ids] if isinstance(ids, int) else ids)})
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = eos_token_ids[0] if pad_id is None else pad_id
    device = next(model.parameters()).device
    n_embeddings = model.get_input_embeddings().num_embeddings
    vocab_size = n_embeddings if tokenizer is None else min(len(tokenizer), n_embeddings)
    eos_ids = torch.tensor(list(eos_token_ids), device=device)
    banned = torch.arange(model.get_output_embeddings().out_features, device=device) >= vocab_size
    if suppress_eos:   # fixed-length benchmarks
        banned[eos_ids] = True
    return eos_ids, pad_id, banned


def _prompt_batch(tokenizer, prompts, model, pad_id: int):
    """Tokenize (or take token ids) and left-pad: (B, P) ids and mask on the model's device."""
    as_text = all(isinstance(p, str) for p in prompts)
    rows = (tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if as_text
            else [[int(t) for t in p] for p in prompts])
    P, device = max(len(r) for r in rows), next(model.parameters()).device
    ids = torch.tensor([[pad_id] * (P - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token among its row's real tokens, the same rule as HF generate."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def has_llama_forward(model, cache_len: int) -> bool:
    """True if the forward below computes what this model computes: a Llama-family decoder
    with a SiLU MLP whose attention sees the whole cache (no sliding window shorter than it)."""
    config = model.config
    if config.model_type not in LLAMA_FAMILY or config.hidden_act not in ("silu", "swish"):
        return False
    windows = [getattr(layer.self_attn, "sliding_window", None) for layer in model.model.layers]
    return all(w is None or w >= cache_len for w in windows)


class KVCache:
    """Keys and values of every layer, allocated once for all L = prompt + new-token slots.
    k[layer], v[layer]: (B, n_kv_heads, L, head_dim); slots [0, filled) hold data."""

    def __init__(self, model, batch: int, length: int):
        config = model.config
        if not has_llama_forward(model, length):   # a silent wrong forward otherwise
            raise ValueError(f"model_type {config.model_type!r} is not a Llama-family decoder over "
                             f"{length} slots: sample it with extras.any_model.sample")
        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads)
        like = model.get_input_embeddings().weight  # the model's dtype and device
        shape = (batch, config.num_key_value_heads, length, head_dim)
        self.k = [like.new_zeros(shape) for _ in model.model.layers]
        self.v = [like.new_zeros(shape) for _ in model.model.layers]
        self.filled = 0


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _forward_kv_cache(model, cache: KVCache, input_ids, position_ids, key_mask) -> torch.Tensor:
    """Run S new tokens per row, input_ids (B, S), writing their keys and values into cache
    slots [filled, filled + S); return the logits at the last position, (B, V) float32.
    key_mask (B, filled + S): 1 on slots that hold a real token, 0 on left padding."""
    inner, (B, S) = model.model, input_ids.shape
    start, end = cache.filled, cache.filled + S
    # Query slot s sees key slot j <= s if j holds a real token. A pad query also sees itself,
    # only so that its softmax row is not empty (its output is never used).
    q_slot = torch.arange(start, end, device=input_ids.device)[:, None]
    k_slot = torch.arange(end, device=input_ids.device)[None, :]
    visible = (k_slot <= q_slot) & (key_mask.bool()[:, None, :] | (k_slot == q_slot))
    visible = visible[:, None]                         # (B, 1, S, end): the same for every head
    x = inner.embed_tokens(input_ids)
    # (B, 1, S, head_dim): the rotation of each row's own positions, the same for every head
    cos, sin = (c[:, None] for c in inner.rotary_emb(x, position_ids))
    for i, layer in enumerate(inner.layers):
        attn = layer.self_attn
        h = layer.input_layernorm(x)                      # RMSNorm
        q, k, v = (proj(h).view(B, S, -1, attn.head_dim).transpose(1, 2)   # (B, heads, S, dim)
                   for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        if hasattr(attn, "q_norm"):                    # Qwen3: RMSNorm on each head's query and key
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = (z * cos + _rotate_half(z) * sin for z in (q, k))  # RoPE: rotate by each position
        cache.k[i][:, :, start:end], cache.v[i][:, :, start:end] = k, v   # store, then read all
        # enable_gqa: several query heads share each key/value head (Qwen2.5-1.5B: 12 and 2).
        o = F.scaled_dot_product_attention(q, cache.k[i][:, :, :end], cache.v[i][:, :, :end],
                                           attn_mask=visible, scale=attn.scaling, enable_gqa=True)
        x = x + attn.o_proj(o.transpose(1, 2).reshape(B, S, -1))
        h = layer.post_attention_layernorm(x)
        mlp = layer.mlp   # SwiGLU
        x = x + mlp.down_proj(mlp.act_fn(mlp.gate_proj(h)) * mlp.up_proj(h))
    cache.filled = end
    return model.get_output_embeddings()(inner.norm(x[:, -1])).float()


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
        scores = scores.masked_fill(scores < kth_best, -torch.inf)
    if top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs   # kept while better tokens fall short of top_p
        sorted_scores = sorted_scores.masked_fill(mass_before >= top_p, -torch.inf)
        scores = torch.empty_like(scores).scatter_(1, order, sorted_scores)
    return scores


def _choose_token(logits, banned, temperature: float, top_k: int, top_p: float, generator):
    """One token per row from logits (B, V), and its log-prob (before the top-k/top-p cut)."""
    logp = _log_probs(logits, temperature)
    scores = _top_k_top_p(logp.masked_fill(banned, -torch.inf), top_k, top_p)
    if temperature == 0:
        token = scores.argmax(dim=-1)
    else:
        # Gumbel-max: argmax(log p - log E), E ~ Exponential(1), is a draw from p. Same law as
        # torch.multinomial, and the noise is what extras/fast_rollout.py draws: same tokens.
        noise = torch.empty_like(scores).exponential_(generator=generator)
        token = (scores - noise.log()).argmax(dim=-1)
    return token, logp.gather(1, token[:, None]).squeeze(1)


def _rollout(tokenizer, prompt_ids, prompt_mask, tokens, logprobs, eos_ids, pad_id) -> Rollout:
    """Package the sampled (B, T) tokens: each row ends at its first EOS, which is kept."""
    is_eos = torch.isin(tokens, eos_ids).long()
    completion_mask = ((is_eos.cumsum(1) - is_eos) == 0).float()  # no EOS strictly before
    lengths = completion_mask.sum(1).long()
    width = int(lengths.max())
    completion_mask = completion_mask[:, :width]
    completion_ids = tokens[:, :width].masked_fill(completion_mask == 0, pad_id)
    rows = [row[:n].tolist() for row, n in zip(completion_ids, lengths.tolist())]
    texts = [] if tokenizer is None else tokenizer.batch_decode(rows, skip_special_tokens=True)
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask,
                   logprobs[:, :width] * completion_mask, lengths, texts)


def llama_decoder(model, batch: int, length: int):
    """The cache and forward of :func:`sample`: the explicit KV cache, the Llama forward above."""
    return KVCache(model, batch, length), _forward_kv_cache


@torch.no_grad()  # not inference_mode: the trainer feeds these tensors into autograd
def sample(model, tokenizer, prompts, max_new_tokens: int, *, temperature: float = 1.0,
           top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
           generator: torch.Generator | None = None, suppress_eos: bool = False,
           eos_token_ids: list[int] | None = None, decoder=llama_decoder) -> Rollout:
    """Sample up to ``max_new_tokens`` per prompt, stopping each row at its first EOS.
    prompts: strings (chat template applied; tokenized without special tokens) or token-id
    lists. temperature 0 = greedy; top_k 0 and top_p 1 disable those filters. seed or generator
    (on the model's device) makes the draw reproducible. suppress_eos: never sample EOS.
    eos_token_ids: default the tokenizer's and generation_config's. decoder(model, B, slots)
    -> (cache, forward): the architecture's part (extras/any_model.py: transformers' forward)."""
    eos_ids, pad_id, banned = _special_tokens(model, tokenizer, eos_token_ids, suppress_eos)
    prompt_ids, prompt_mask = _prompt_batch(tokenizer, prompts, model, pad_id)
    if generator is None:   # with no seed either, the seed comes from torch's global RNG
        seed = int(torch.randint(2**62, ())) if seed is None else seed
        generator = torch.Generator(device=prompt_ids.device).manual_seed(seed)
    (B, P), T = prompt_ids.shape, max_new_tokens
    cache, forward = decoder(model, B, P + T)

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
    return _rollout(tokenizer, prompt_ids, prompt_mask, torch.stack(tokens, 1),
                    torch.stack(logprobs, 1), eos_ids, pad_id)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   completion_start: int, *, temperature: float = 1.0,
                   return_entropy: bool = False):
    """log π_θ(y_t | x, y_<t) for y = input_ids[:, completion_start:], with autograd.
    input_ids, attention_mask: (B, L), prompts then completions (``Rollout.input_ids``, ...);
    positions follow the mask as in :func:`sample`, so at equal temperature these equal
    ``Rollout.logprobs``. One forward (the model's own head: Gemma's soft-cap included), a full
    log-softmax, a gather: (B, T) log-probs (≥ float32), and entropies if ``return_entropy``."""
    n_kept = input_ids.shape[1] - completion_start + 1   # the positions t-1 that predict a token t
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                   position_ids=_position_ids(attention_mask), logits_to_keep=n_kept).logits[:, :-1]
    at_least_fp32 = torch.promote_types(logits.dtype, torch.float32)   # float64 stays float64
    logp_all = torch.log_softmax(logits.to(at_least_fp32) / temperature, dim=-1)
    logprobs = logp_all.gather(-1, input_ids[:, completion_start:, None]).squeeze(-1)
    if not return_entropy:
        return logprobs
    return logprobs, -(logp_all.exp() * logp_all).sum(-1)
