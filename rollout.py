"""Rollouts: batched sampling with a KV cache, and the log-probs of sampled tokens (paper §3.1).

LRPO, like GRPO, samples for each question x a group of K responses, here each in its own
target language ℓ_k (the router picks them, `bandit.py`):

    y_k ~ π_θ_old( · | x, ℓ_k),   π_θ(y | x, ℓ) = Π_t π_θ(y_t | x, ℓ, y_<t)

and the loss (`loss.py`) needs, per response token, log π_θ(y_t | ...) under the current policy,
the old policy (the sampler) and the frozen reference. This file provides both halves:

* :func:`sample` draws the y_k. It runs its own decode loop over the model's weights with an
  explicit, pre-allocated KV cache (below), for a batch of prompts of unequal length.
* :func:`token_logprobs` recomputes log π_θ(y_t | x, y_<t) for given sequences, with autograd,
  for training. It is the one place where training log-probs are computed, and it is chunked
  so that the full (batch × length × vocabulary) float32 logits never sit in memory at once.

**Why a KV cache.** A causal transformer's attention at position t reads the keys and values of
every earlier position. Those never change once computed, so instead of re-running the whole
prefix for every new token (O(T²) work) we keep them in a cache: one forward over the prompt
("prefill") fills the cache, then each decode step feeds one token per row, writes its key and
value into the next cache slot, and attends over the slots filled so far. A decode step then
costs one pass over the weights, which is why decoding is memory-bandwidth bound and why a large
batch (many rows sharing each weight read) is almost free: the whole reason one GPU is enough.

**Left padding.** Prompts have unequal lengths, so each row is left-padded to the longest
prompt P. The cache slot of a token is then the same for all rows (slot P + t for the t-th new
token), which keeps every step a dense tensor op, while a row's *position id* (what RoPE sees)
counts only its real tokens, so padding changes nothing a row computes. Pad slots are masked out
of attention for every query; a pad query attends only to itself so that no softmax row is empty.

**Two paths, same tokens.** The readable path is a plain Python loop. The fast path (chosen
automatically on CUDA; ``fast=False`` forces it off) runs the *same* decode-step function, but
captured once into a CUDA graph and replayed, which removes the ~460 kernel launches per step
from the CPU's critical path, and checks for "every row finished" only every few steps. Every
shape is static (the cache is allocated once for all P + max_new_tokens slots, and attention
spans the filled slots rounded up to a bucket of 128, masked), so one graph serves every step
of a bucket, and the two paths run identical kernels on identical inputs: for the same seed
they give the same tokens (tested on CPU, and on the GPU in bf16 by bench/rollout_bench.py).

**Fused helpers.** At batch 64 a decode step is ~3 ms of GPU work, of which about a third was
~400 tiny elementwise kernels (RoPE, SiLU·up, cache writes, sampling passes) at 2–3 µs each. The
few functions marked ``@_fused`` below each gather such a chain of ops; on CUDA they are compiled
once by ``torch.compile`` (Inductor writes one Triton kernel for most chains), on the CPU they
run eagerly as plain PyTorch. Both paths call the same helpers, so they still run identical
kernels and give identical tokens. ``rollout.FUSE = False`` turns compilation off (eager
everywhere, as before; the benchmark's ablation).

**Conventions.**
* Sampling: temperature, then top-k, then top-p (nucleus), then a Gumbel-max draw from noise
  taken from an explicit ``torch.Generator``; temperature 0 is greedy. Only ids below
  ``len(tokenizer)`` are ever sampled (Qwen pads its embedding matrix to 151,936 rows).
* ``Rollout.logprobs`` are log-probs of the sampled tokens under softmax(logits / temperature)
  over the full model vocabulary, *before* top-k/top-p truncation (greedy: temperature 1). This
  is what verl stores as the old policy's log-probs; ``token_logprobs(..., temperature=T)``
  recomputes exactly this. In bf16 the sampler's own forward and the training forward differ by
  rounding, so the trainer should compute the "old" log-probs with :func:`token_logprobs` too.
* ``completion_mask`` is 1 up to and including the first EOS, 0 after it (the EOS token gets
  credit for stopping; tiny-grpo's bug of masking it as padding is avoided).

The own forward supports the Llama family of decoders (Llama, Qwen2/2.5, Qwen3, Mistral without
a sliding window), which covers the models this project trains; other models raise an error.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
FUSE = True                   # compile the @_fused helpers on the devices below
FUSE_DEVICES = ("cuda",)      # never "cpu" in tests: Inductor's CPU backend needs a C++ compiler


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
# Prompts: tokenize and left-pad

def _prompt_batch(tokenizer, prompts, n_embeddings: int, pad_id: int, device):
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
    for i, row in enumerate(rows):
        if len(row) == 0:
            raise ValueError(f"prompts[{i}] is empty")
        bad = [t for t in row if not isinstance(t, int) or not 0 <= t < n_embeddings]
        if bad:
            raise ValueError(f"prompts[{i}]: token id {bad[0]!r} is not an int in [0, {n_embeddings})")
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), P), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, P - len(row):] = torch.tensor(row)
        mask[i, P - len(row):] = 1
    return ids.to(device), mask.to(device)


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token among its row's real tokens, the same rule as HF generate."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


# ----------------------------------------------------------------------------------------------
# Fused helpers: chains of small ops that become one kernel each on CUDA

def _fused(fn):
    """Run ``fn`` eagerly, except on FUSE_DEVICES where it runs ``torch.compile``'d.

    dynamic=True compiles one graph that serves every batch size and cache length (sizes 1 are
    specialised), so which compiled code a call runs does not depend on the order of earlier
    calls: the readable and the fast path of the same shapes always run the same kernels. The
    first call of each graph compiles (seconds); it must not happen during CUDA-graph capture,
    which is why the fast path runs one real step before capturing it. If compilation fails
    (say, no Triton), the helper warns once and stays eager for the rest of the process.
    """
    compiled = None
    failed = False

    @functools.wraps(fn)
    def helper(first, *args):
        nonlocal compiled, failed
        if not FUSE or failed or first.device.type not in FUSE_DEVICES:
            return fn(first, *args)
        if compiled is None:
            compiled = torch.compile(fn, dynamic=True, fullgraph=True)
        try:
            return compiled(first, *args)
        except Exception as error:  # compile errors surface at the first call of a shape
            failed = True
            warnings.warn(f"rollout: torch.compile of {fn.__name__} failed, running it eagerly: {error!r}")
            return fn(first, *args)

    helper.eager = fn
    return helper


@_fused
def _rope_and_cache_write(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                          k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """RoPE on this step's queries and keys, then the KV cache at work: store the new keys and
    values in their cache slots. Returns the queries grouped by KV head, (B, Hkv, G·S, D).

    qkv: (B, S, Hq + 2·Hkv, D) from the fused projection. cos, sin: (B, S, 1, D), sin with the
    sign of rotate_half folded in (see _forward). k_cache, v_cache: (B, Hkv, L, D), written in
    place at ``slots`` (S,). Eagerly this is 6 kernels; compiled on CUDA, one or two.
    """
    B, S, _, D = qkv.shape
    Hkv = k_cache.shape[1]
    Hq = qkv.shape[2] - 2 * Hkv
    G = Hq // Hkv  # query heads that share one key/value head
    qk, v = qkv[:, :, :Hq + Hkv], qkv[:, :, Hq + Hkv:]
    qk = qk * cos + qk.roll(D // 2, dims=-1) * sin   # RoPE on queries and keys at once
    q, k = qk[:, :, :Hq], qk[:, :, Hq:]
    k_cache.index_copy_(2, slots, k.transpose(1, 2))
    v_cache.index_copy_(2, slots, v.transpose(1, 2))
    # Queries are grouped by their KV head as G·S rows, so attention reads keys and values
    # once per KV head instead of copying them G times (HF's repeat_kv).
    return q.reshape(B, S, Hkv, G, D).permute(0, 2, 3, 1, 4).reshape(B, Hkv, G * S, D).contiguous()


@_fused
def _silu_times_up(gate_up: torch.Tensor) -> torch.Tensor:
    """SwiGLU's inner product: silu(gate) · up, from the fused gate/up projection (.., 2I)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


# ----------------------------------------------------------------------------------------------
# The decoder forward with an explicit KV cache

@dataclass
class _Decoder:
    """The model's weights, arranged for decoding (q, k, v projections fused into one matrix)."""

    model: torch.nn.Module
    w_qkv: list[torch.Tensor]
    b_qkv: list[torch.Tensor | None]
    w_gate_up: list[torch.Tensor]
    b_gate_up: list[torch.Tensor | None]
    n_heads: int
    n_kv_heads: int
    head_dim: int
    scale: float

    @classmethod
    def from_model(cls, model, cache_len: int) -> "_Decoder":
        config = model.config
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type {config.model_type!r} is not supported by rollout.sample; "
                             f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        w_qkv, b_qkv, w_gate_up, b_gate_up = [], [], [], []

        def fuse(linears, weights, biases):  # one GEMM instead of several reading the same input
            weights.append(torch.cat([p.weight for p in linears]))
            biases.append(None if linears[0].bias is None else torch.cat([p.bias for p in linears]))

        if getattr(config, "hidden_act", "silu") not in ("silu", "swish"):
            raise ValueError(f"hidden_act {config.hidden_act!r} is not supported by rollout.sample (only silu)")
        for layer in model.model.layers:
            attn = layer.self_attn
            window = getattr(attn, "sliding_window", None)
            if window is not None and window < cache_len:
                raise ValueError(f"sliding-window attention ({window} < {cache_len} tokens) is not supported")
            # Re-concatenated on every call, since the weights change after each optimizer step
            # (for Qwen2.5-1.5B: 1.7 GB of copies, about 1 ms, for the length of one call).
            fuse((attn.q_proj, attn.k_proj, attn.v_proj), w_qkv, b_qkv)
            fuse((layer.mlp.gate_proj, layer.mlp.up_proj), w_gate_up, b_gate_up)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(model, w_qkv, b_qkv, w_gate_up, b_gate_up, config.num_attention_heads, config.num_key_value_heads,
                   head_dim, model.model.layers[0].self_attn.scaling)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(hidden)


@dataclass
class KVCache:
    """Keys and values of every layer, pre-allocated for all L = prompt + new-token slots.

    ``k[layer]`` is (B, n_kv_heads, L, head_dim). Qwen2.5-1.5B keeps 2 KV heads for 12 query
    heads (grouped-query attention), so a token costs 2·28·2·128·2 B = 28 KiB of cache in bf16.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    @classmethod
    def allocate(cls, decoder: _Decoder, batch: int, length: int, dtype, device) -> "KVCache":
        shape = (batch, decoder.n_kv_heads, length, decoder.head_dim)
        n_layers = len(decoder.w_qkv)
        return cls([torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)],
                   [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)])


def _rms_norm(x: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    return F.rms_norm(x, x.shape[-1:], norm.weight, norm.variance_epsilon)




def _linear_plus(x: torch.Tensor, linear: torch.nn.Linear, residual: torch.Tensor) -> torch.Tensor:
    """residual + linear(x), as one GEMM whose epilogue adds the residual (one kernel, not two)."""
    if linear.bias is not None:
        return residual + linear(x)
    out = torch.addmm(residual.reshape(-1, residual.shape[-1]), x.reshape(-1, x.shape[-1]), linear.weight.t())
    return out.view(residual.shape)


def _forward(dec: _Decoder, cache: KVCache, input_ids, position_ids, write_slots, attn_bias):
    """Run S new tokens per row through the decoder; return the final hidden states (B, S, H).

    input_ids, position_ids: (B, S). write_slots: (S,) cache slots that receive the new keys and
    values. attn_bias: (B, 1, S, kv_len) additive mask (0 = visible, very negative = hidden) over
    cache slots [0, kv_len): each new token attends only to slots its row has filled.
    """
    B, S = input_ids.shape
    Hq, Hkv, D = dec.n_heads, dec.n_kv_heads, dec.head_dim
    G = Hq // Hkv
    kv_len = attn_bias.shape[-1]
    inner = dec.model.model
    x = inner.embed_tokens(input_ids)
    cos, sin = inner.rotary_emb(x, position_ids)            # (B, S, D), positions count real tokens only
    # RoPE rotates each pair (x_i, x_{i+D/2}) by a position-dependent angle:
    #   out = x * cos + rotate_half(x) * sin,  rotate_half(x) = (-x2, x1) = roll(x, D/2) * (-1, +1)
    # so the sign moves into sin once per forward instead of once per layer.
    half = D // 2
    cos = cos[:, :, None]                                    # broadcast over heads
    sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)[:, :, None]
    # Queries come grouped by KV head as G·S rows (see _rope_and_cache_write): the mask repeats over G.
    bias = attn_bias[:, :, None].expand(B, 1, G, S, kv_len).reshape(B, 1, G * S, kv_len)
    for i, layer in enumerate(inner.layers):
        attn = layer.self_attn
        h = _rms_norm(x, layer.input_layernorm)
        qkv = F.linear(h, dec.w_qkv[i], dec.b_qkv[i]).view(B, S, Hq + 2 * Hkv, D)
        if hasattr(attn, "q_norm"):  # Qwen3 normalises each head's query and key before RoPE
            qkv = torch.cat([attn.q_norm(qkv[:, :, :Hq]), attn.k_norm(qkv[:, :, Hq:Hq + Hkv]),
                             qkv[:, :, Hq + Hkv:]], dim=2)
        # Store this step's keys and values in the cache, then attend over the filled slots.
        q = _rope_and_cache_write(qkv, cos, sin, cache.k[i], cache.v[i], write_slots)
        o = F.scaled_dot_product_attention(q, cache.k[i][:, :, :kv_len], cache.v[i][:, :, :kv_len],
                                           attn_mask=bias, scale=dec.scale)
        o = o.view(B, Hkv, G, S, D).permute(0, 3, 1, 2, 4).reshape(B, S, Hq * D)
        x = _linear_plus(o, attn.o_proj, x)
        h = _rms_norm(x, layer.post_attention_layernorm)
        gate_up = F.linear(h, dec.w_gate_up[i], dec.b_gate_up[i])
        x = _linear_plus(_silu_times_up(gate_up), layer.mlp.down_proj, x)
    return _rms_norm(x, inner.norm)


# ----------------------------------------------------------------------------------------------
# Choosing the next token

@dataclass
class _SamplingConfig:
    temperature: float
    top_k: int
    top_p: float
    eos_ids: torch.Tensor             # (n_eos,)
    banned: torch.Tensor              # (V,) bool: never sampled (embedding padding; EOS if suppressed)
    pad_id: int

    @property
    def filters(self) -> bool:
        return 0 < self.top_k < self.banned.shape[0] or self.top_p < 1.0


def _draw_noise(noise: torch.Tensor, generator: torch.Generator) -> None:
    """Fill ``noise`` in place with E ~ Exponential(1); -log E is Gumbel(0, 1) noise, and the
    log is taken inside the sampler's fused kernel. (E > 0: torch's exponential_ never returns 0.)"""
    noise.exponential_(generator=generator)


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) in float32; greedy (T = 0) reports T = 1."""
    if temperature > 0 and temperature != 1.0:
        return torch.log_softmax(logits.float() / temperature, dim=-1)
    return torch.log_softmax(logits, dim=-1, dtype=torch.float32)


def _gumbel_argmax(scores: torch.Tensor, noise: torch.Tensor, temperature: float) -> torch.Tensor:
    """Gumbel-max: argmax(scores - log E) is a draw from softmax(scores), with no host
    synchronisation (torch.multinomial's would break CUDA-graph capture). Greedy: argmax."""
    if temperature > 0:
        return (scores - noise.log()).argmax(dim=-1)
    return scores.argmax(dim=-1)


@_fused
def _sample_plain(logits: torch.Tensor, noise: torch.Tensor, banned: torch.Tensor, temperature: float):
    """Sampling without top-k/top-p (as GRPO samples), fused: on CUDA a few kernels that read the
    logits and the noise once or twice, where the eager version makes ~6 passes over B × V."""
    logp = _log_probs(logits, temperature)
    token = _gumbel_argmax(logp.masked_fill(banned, -math.inf), noise, temperature)
    return token, logp.gather(1, token[:, None]).squeeze(1)


def _choose_token(logits: torch.Tensor, noise: torch.Tensor, cfg: _SamplingConfig):
    """Pick one token per row from logits (B, V); return (token, its log-prob).

    Every op here touches B × V numbers (V = 151,936 for Qwen), which at batch 256 costs as
    much as the attention of a whole step, so each pass counts; without top-k/top-p the whole
    choice is one fused helper. Sampling from softmax(logp) is sampling from
    softmax(logits / T): the two differ by a constant per row.
    """
    if not cfg.filters:
        return _sample_plain(logits, noise, cfg.banned, cfg.temperature)
    logp = _log_probs(logits, cfg.temperature)
    scores = logp.masked_fill(cfg.banned, -math.inf)
    if 0 < cfg.top_k < scores.shape[-1]:
        kth_best = torch.topk(scores, cfg.top_k, dim=-1).values[:, -1:]
        scores.masked_fill_(scores < kth_best, -math.inf)
    if cfg.top_p < 1.0:
        # Keep the smallest set of most likely tokens whose mass reaches top_p.
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        sorted_scores = sorted_scores.masked_fill(mass_before > cfg.top_p, -math.inf)
        scores = torch.empty_like(scores).scatter_(1, order, sorted_scores)
    token = _gumbel_argmax(scores, noise, cfg.temperature)
    return token, logp.gather(1, token[:, None]).squeeze(1)


@dataclass
class _DecodeState:
    """Every tensor one decode step reads or writes. Updated in place, so that a CUDA graph
    captured from one step can be replayed for all the others."""

    tokens_in: torch.Tensor     # (B, 1) the token fed at this step (the one sampled last)
    positions: torch.Tensor     # (B, 1) its position id: prompt length + tokens so far
    slot: torch.Tensor          # (1,) its cache slot: P + tokens so far, the same for all rows
    step: torch.Tensor          # (1,) output column of the token sampled at this step
    bias: torch.Tensor          # (B, 1, 1, L) additive attention mask over cache slots
    finished: torch.Tensor      # (B,) bool, row has produced an EOS
    noise: torch.Tensor         # (B, V) Exponential(1) noise, drawn outside the step
    out_tokens: torch.Tensor    # (B, T)
    out_logprobs: torch.Tensor  # (B, T)


def _emit(state: _DecodeState, logits: torch.Tensor, cfg: _SamplingConfig) -> None:
    token, logprob = _choose_token(logits, state.noise, cfg)
    token = torch.where(state.finished, cfg.pad_id, token)   # finished rows only emit padding
    logprob = torch.where(state.finished, 0.0, logprob)
    state.out_tokens.index_copy_(1, state.step, token[:, None])
    state.out_logprobs.index_copy_(1, state.step, logprob[:, None])
    state.finished |= (token[:, None] == cfg.eos_ids).any(dim=-1)
    state.tokens_in.copy_(token[:, None])
    state.step += 1


KV_BUCKET = 128      # attention spans a multiple of this many cache slots (a multiple of 16)
LENGTH_ROUND = 128   # the cache length is a multiple of this
PROMPT_ROUND = 64    # the prompt width is padded internally to a multiple of this


def _kv_len(slot: int, cache_len: int) -> int:
    """How many cache slots a step at ``slot`` attends over: the filled ones, rounded up to a
    multiple of KV_BUCKET, instead of all L slots every step. Each bucket costs one CUDA-graph
    capture (about two eager steps), so buckets are coarse."""
    return min(cache_len, (slot // KV_BUCKET + 1) * KV_BUCKET)


def _decode_step(dec: _Decoder, cache: KVCache, state: _DecodeState, cfg: _SamplingConfig, kv_len: int) -> None:
    state.bias.index_fill_(3, state.slot, 0.0)   # the slot written now becomes visible
    hidden = _forward(dec, cache, state.tokens_in, state.positions, state.slot, state.bias[..., :kv_len])
    _emit(state, dec.logits(hidden[:, -1]), cfg)
    state.positions += 1
    state.slot += 1


def _capture_decode_step(dec, cache, state, cfg, kv_len, draw):
    """Run one real decode step as warm-up (on a side stream, as CUDA graphs require), then
    record one step into a graph. Recording executes nothing, so the state is not advanced."""
    draw()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        _decode_step(dec, cache, state, cfg, kv_len)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _decode_step(dec, cache, state, cfg, kv_len)
    return graph


# ----------------------------------------------------------------------------------------------
# sample()

def _eos_ids(model, tokenizer) -> list[int]:
    ids = set()
    for source in (getattr(tokenizer, "eos_token_id", None),
                   getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if source is not None:
            ids.update([source] if isinstance(source, int) else source)
    return sorted(ids)


@torch.no_grad()  # not inference_mode: the trainer feeds these tensors into autograd
def sample(model, tokenizer, prompts, max_new_tokens: int, *, temperature: float = 1.0,
           top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
           generator: torch.Generator | None = None, fast: bool | None = None,
           suppress_eos: bool = False, eos_token_ids: list[int] | None = None,
           check_every: int = 8) -> Rollout:
    """Sample up to ``max_new_tokens`` per prompt, stopping each row at its first EOS.

    prompts: strings (chat template already applied; tokenized without special tokens) or
    lists of token ids. temperature 0 = greedy; top_k 0 and top_p 1 disable those filters.
    seed or generator (on the model's device) makes the draw reproducible; with neither, the
    seed comes from torch's global RNG. fast: None = CUDA graphs on CUDA, off elsewhere.
    suppress_eos: never sample EOS (fixed-length benchmarks). eos_token_ids: defaults to the
    tokenizer's EOS plus the model's generation_config EOS ids. check_every: how often (in
    steps) the fast path checks whether every row has finished (each check syncs the host).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    n_embeddings = model.get_input_embeddings().weight.shape[0]
    vocab_size = min(len(tokenizer), n_embeddings) if tokenizer is not None else n_embeddings
    eos = list(eos_token_ids) if eos_token_ids is not None else _eos_ids(model, tokenizer)
    if not eos:
        raise ValueError("no EOS token id: pass eos_token_ids or use a tokenizer with eos_token_id")
    pad_id = getattr(tokenizer, "pad_token_id", None)
    pad_id = eos[0] if pad_id is None else pad_id
    prompt_ids, prompt_mask = _prompt_batch(tokenizer, prompts, n_embeddings, pad_id, device)
    if generator is None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
    elif generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device}, the model on {device}")
    if fast is None:
        fast = device.type == "cuda"

    # Shapes are rounded up (more left padding, more cache slots) so that successive calls
    # reuse the same shapes: each new shape costs a cuDNN attention plan and a graph capture.
    P_returned = prompt_ids.shape[1]
    extra = -P_returned % PROMPT_ROUND
    prompt_ids = F.pad(prompt_ids, (extra, 0), value=pad_id)
    prompt_mask = F.pad(prompt_mask, (extra, 0), value=0)
    B, P = prompt_ids.shape
    T = max_new_tokens
    L = -(-(P + T) // LENGTH_ROUND) * LENGTH_ROUND  # cache slots
    n_logits = model.get_output_embeddings().weight.shape[0]
    eos_ids = torch.tensor(eos, device=device)
    banned = torch.arange(n_logits, device=device) >= vocab_size   # Qwen's padded embedding rows
    if suppress_eos:  # the benchmark decodes a fixed length
        banned[eos_ids] = True
    cfg = _SamplingConfig(temperature, top_k, top_p, eos_ids, banned, pad_id)
    dec = _Decoder.from_model(model, L)
    cache = KVCache.allocate(dec, B, L, dtype, device)
    hidden_mask = torch.finfo(dtype).min

    # Prefill: the whole prompt in one forward, filling cache slots [0, P). Token j of a row
    # sees token i <= j of the same row, unless i is padding; a pad query sees only itself.
    prompt_slots = torch.arange(P, device=device)
    causal = prompt_slots[None, :] <= prompt_slots[:, None]                    # (query, key)
    visible = (causal[None] & prompt_mask.bool()[:, None, :]) | torch.eye(P, dtype=torch.bool, device=device)
    prefill_bias = torch.zeros(B, 1, P, P, dtype=dtype, device=device).masked_fill(~visible[:, None], hidden_mask)
    hidden = _forward(dec, cache, prompt_ids, _position_ids(prompt_mask), prompt_slots, prefill_bias)

    # Decode state: a decode query sees the real prompt slots and every slot written since.
    bias = torch.full((B, 1, 1, L), hidden_mask, dtype=dtype, device=device)
    bias[:, 0, 0, :P].masked_fill_(prompt_mask.bool(), 0.0)
    state = _DecodeState(
        tokens_in=torch.zeros(B, 1, dtype=torch.long, device=device),
        positions=prompt_mask.sum(1, keepdim=True),
        slot=torch.tensor([P], device=device),
        step=torch.zeros(1, dtype=torch.long, device=device),
        bias=bias,
        finished=torch.zeros(B, dtype=torch.bool, device=device),
        noise=torch.ones(B, n_logits if temperature > 0 else 1, device=device),
        out_tokens=torch.full((B, T), pad_id, dtype=torch.long, device=device),
        out_logprobs=torch.zeros(B, T, device=device),
    )
    draw = (lambda: _draw_noise(state.noise, generator)) if temperature > 0 else (lambda: None)
    draw()
    _emit(state, dec.logits(hidden[:, -1]), cfg)   # token 0 comes from the prompt's last position

    steps_done = 1  # the token fed at the next step sits in cache slot P + steps_done - 1
    if not fast:
        # The readable path: one decode step per new token, stopping once every row has ended.
        while steps_done < T and not bool(state.finished.all()):
            draw()
            _decode_step(dec, cache, state, cfg, _kv_len(P + steps_done - 1, L))
            steps_done += 1
    else:
        # The fast path: the same steps, replayed from one CUDA graph per attention length.
        graph, graph_kv_len = None, None
        while steps_done < T:
            if (steps_done - 1) % check_every == 0 and bool(state.finished.all()):
                break
            kv_len = _kv_len(P + steps_done - 1, L)
            if device.type != "cuda":
                draw()
                _decode_step(dec, cache, state, cfg, kv_len)
            elif kv_len != graph_kv_len:
                graph = None  # never replayed again: free its memory before recording the next
                graph = _capture_decode_step(dec, cache, state, cfg, kv_len, draw)  # does one step
                graph_kv_len = kv_len
            else:
                draw()
                graph.replay()
            steps_done += 1
        del graph

    completion_ids = state.out_tokens
    is_eos = (completion_ids[..., None] == cfg.eos_ids).any(-1)
    after_eos = (is_eos.long().cumsum(1) - is_eos.long()) > 0
    completion_mask = (~after_eos).float()
    completion_mask[:, steps_done:] = 0.0  # never decoded: every row had already ended
    lengths = completion_mask.sum(1).long()
    width = int(lengths.max())
    completion_ids = completion_ids[:, :width].masked_fill(completion_mask[:, :width] == 0, pad_id)
    completion_mask = completion_mask[:, :width]
    logprobs = state.out_logprobs[:, :width] * completion_mask
    texts = []
    if tokenizer is not None:
        texts = tokenizer.batch_decode([row[:n].tolist() for row, n in zip(completion_ids, lengths.tolist())],
                                       skip_special_tokens=True)
    return Rollout(prompt_ids[:, extra:], prompt_mask[:, extra:], completion_ids.clone(), completion_mask, logprobs.clone(),
                   lengths, texts)


# ----------------------------------------------------------------------------------------------
# token_logprobs(): training-time log-probs, chunked

def _chunk_logprobs(hidden, targets, weight, bias, temperature: float, with_entropy: bool):
    logits = F.linear(hidden, weight, bias).float()
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

    input_ids, attention_mask: (B, L), left-padded prompts followed by completions (e.g.
    ``rollout.input_ids``/``rollout.attention_mask``). Position ids follow the attention mask as
    in :func:`sample`, so at equal temperature these equal ``Rollout.logprobs`` (float32).
    The vocabulary projection runs over chunks of about ``chunk_size`` tokens, each under
    activation checkpointing, so at most one chunk's (chunk_size × V) float32 logits exist at a
    time, in the forward and in the backward. Returns (B, T) log-probs, and (B, T) entropies of
    the full next-token distribution if ``return_entropy``.
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
    positions_per_chunk = max(1, chunk_size // B)
    logprobs, entropies = [], []
    for start in range(0, targets.shape[1], positions_per_chunk):
        args = (hidden[:, start:start + positions_per_chunk], targets[:, start:start + positions_per_chunk],
                head.weight, head.bias, temperature, return_entropy)
        if torch.is_grad_enabled() and hidden.requires_grad:
            # Recompute this chunk's logits in the backward instead of keeping them.
            lp, ent = torch.utils.checkpoint.checkpoint(_chunk_logprobs, *args, use_reentrant=False)
        else:
            lp, ent = _chunk_logprobs(*args)
        logprobs.append(lp)
        entropies.append(ent)
    logprobs = torch.cat(logprobs, dim=1)
    return (logprobs, torch.cat(entropies, dim=1)) if return_entropy else logprobs
