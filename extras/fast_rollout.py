"""The fast decode path: the same sampling as `rollout.sample`, built for speed on a GPU.

Nothing here is needed to understand LRPO; `rollout.py` is the readable sampler. This module
runs the same algorithm (same prompts, KV cache, token rule, random draws, `Rollout`) and adds
what makes decoding fast on CUDA, measured in BENCHMARKS.md (H100, Qwen2.5-1.5B shape, bf16):

* **Fused weights and kernels.** q/k/v and gate/up projections are concatenated into one GEMM
  each, the residual add rides in the GEMM's epilogue (`_linear_plus`), queries are regrouped by
  KV head so attention reads each key/value head once, and the few helpers marked ``@fused``
  gather chains of ~400 tiny elementwise kernels per step (RoPE, SiLU·up, cache writes, the
  sampling passes) into one Triton kernel each via ``torch.compile`` on CUDA (eager elsewhere;
  ``FUSE = False`` turns compilation off, the benchmark's ablation).
* **CUDA graphs.** Every shape is static (the cache is allocated once for all P + max_new_tokens
  slots, rounded; attention spans the filled slots rounded up to a bucket of ``KV_BUCKET``,
  masked), so one decode step is captured once per bucket into a CUDA graph and replayed, which
  takes the ~460 kernel launches per step off the CPU's critical path; "every row finished" is
  checked only every ``check_every`` steps (each check syncs the host).
* **Finished rows leave the batch.** A row that has produced its EOS still costs a full decode
  step (its KV cache is read by attention) until the call's longest row ends; with answers of
  ~750 of up to 1,024 tokens, a quarter of the row-steps were such padding. At each new
  attention bucket, where a graph is captured anyway, the rows still running are gathered into
  a smaller batch (:func:`_drop_finished`). Each row keeps its own noise, drawn for the whole
  batch as before, so dropping rows changes no draw.

One check (H200, bf16, random Qwen2.5-1.5B shape, batch 64, prompt 128, 128 new tokens): the
core decodes 52 steps/s, about what transformers.generate does; this path 336 steps/s.

``sample(fast=False)`` runs the same decode-step function eagerly, so the graph can be compared
with its eager twin: for one seed they give identical tokens and log-probs. Against the core,
the tokens are the same too (same noise, same token rule; tested in float32: on CPU greedy and
sampled, on CUDA greedy), up to float rounding of the logits; in bf16 a near-tie may flip.
``sample`` falls back to `extras.any_model.sample` (the core loop) where this path does not apply
(not CUDA, or a model type its fused forward does not support, e.g. Gemma 3) unless ``fast`` is
given explicitly.
:func:`generate` is the batched text helper for evaluation and reports.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import rollout
from extras import any_model
from rollout import KVCache, Rollout, _log_probs, _position_ids, _top_k_top_p

SUPPORTED_MODEL_TYPES = rollout.LLAMA_FAMILY
FUSE = True                   # compile the @fused helpers on the devices below
FUSE_DEVICES = ("cuda",)      # never "cpu" in tests: Inductor's CPU backend needs a C++ compiler
KV_BUCKET = 128      # attention spans a multiple of this many cache slots (a multiple of 16)
COMPACT = True       # drop finished rows from the batch at each bucket (False: the ablation)
COMPACT_BELOW = 15 / 16   # ... once at most this share of the batch is still running
LENGTH_ROUND = 128   # the cache length is a multiple of this
PROMPT_ROUND = 64    # the prompt width is padded internally to a multiple of this


# ----------------------------------------------------------------------------------------------
# Fused helpers: chains of small ops that become one kernel each on CUDA

def fused(fn):
    """Run ``fn`` eagerly, except on FUSE_DEVICES where it runs ``torch.compile``'d.

    dynamic=True compiles one graph that serves every batch size and cache length (sizes 1 are
    specialised), so which compiled code a call runs does not depend on the order of earlier
    calls: the graph and its eager twin (fast=False) of the same shapes run the same kernels. The
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
            warnings.warn(f"{fn.__module__}: torch.compile of {fn.__name__} failed, running it eagerly: {error!r}")
            return fn(first, *args)

    helper.eager = fn
    return helper


@fused
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


@fused
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
            raise ValueError(f"model_type {config.model_type!r} is not supported by the fast path "
                             f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)}); fast=None uses any_model.sample")
        w_qkv, b_qkv, w_gate_up, b_gate_up = [], [], [], []

        def fuse(linears, weights, biases):  # one GEMM instead of several reading the same input
            weights.append(torch.cat([p.weight for p in linears]))
            biases.append(None if linears[0].bias is None else torch.cat([p.bias for p in linears]))

        if getattr(config, "hidden_act", "silu") not in ("silu", "swish"):
            raise ValueError(f"hidden_act {config.hidden_act!r} is not supported by the fast path (only silu)")
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


def _gumbel_argmax(scores: torch.Tensor, noise: torch.Tensor, temperature: float) -> torch.Tensor:
    """Gumbel-max: argmax(scores - log E) is a draw from softmax(scores), with no host
    synchronisation (torch.multinomial's would break CUDA-graph capture). Greedy: argmax."""
    if temperature > 0:
        return (scores - noise.log()).argmax(dim=-1)
    return scores.argmax(dim=-1)


@fused
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
    scores = _top_k_top_p(scores, cfg.top_k, cfg.top_p)   # the core's filter
    token = _gumbel_argmax(scores, noise, cfg.temperature)
    return token, logp.gather(1, token[:, None]).squeeze(1)


# ----------------------------------------------------------------------------------------------
# The decode step, as one static-shape function that a CUDA graph can capture

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
    draw(state)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        _decode_step(dec, cache, state, cfg, kv_len)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        _decode_step(dec, cache, state, cfg, kv_len)
    return graph


class _Outputs:
    """The call's tokens and log-probs for every row, while the decode state holds only the rows
    still running: ``rows`` maps the state's rows to the call's."""

    def __init__(self, state: _DecodeState):
        self.tokens, self.logprobs = state.out_tokens, state.out_logprobs
        self.rows = torch.arange(len(state.finished), device=state.finished.device)
        self.noise = state.noise   # every row's noise, drawn each step

    def draw(self, state: _DecodeState, generator: torch.Generator) -> None:
        if self.noise is state.noise:   # every row is still in the batch
            _draw_noise(state.noise, generator)
        else:   # the same draw as for the whole batch, so that dropping rows changes no token
            _draw_noise(self.noise, generator)
            torch.index_select(self.noise, 0, self.rows, out=state.noise)

    def collect(self, state: _DecodeState) -> None:
        """Copy the state's rows into the call's outputs."""
        if state.out_tokens is not self.tokens:
            self.tokens.index_copy_(0, self.rows, state.out_tokens)
            self.logprobs.index_copy_(0, self.rows, state.out_logprobs)


def _drop_finished(state: _DecodeState, cache: KVCache, out: _Outputs) -> _DecodeState:
    """The state and KV cache of the rows still running, if at most COMPACT_BELOW of the batch
    is (otherwise ``state`` unchanged). A finished row only emits padding from then on, so what
    it has produced is final: it is copied to ``out`` and the row leaves the batch. One host
    sync; the cache is copied layer by layer, so memory grows by one layer's cache at most."""
    if not COMPACT:
        return state
    running = (~state.finished).nonzero().squeeze(1)
    if len(running) == 0 or len(running) > COMPACT_BELOW * len(state.finished):
        return state
    out.collect(state)
    out.rows = out.rows[running]
    for layer in range(len(cache.k)):
        cache.k[layer] = cache.k[layer][running]
        cache.v[layer] = cache.v[layer][running]
    keep = lambda t: t[running]
    return _DecodeState(tokens_in=keep(state.tokens_in), positions=keep(state.positions), slot=state.slot,
                        step=state.step, bias=keep(state.bias), finished=keep(state.finished),
                        noise=keep(state.noise), out_tokens=keep(state.out_tokens),
                        out_logprobs=keep(state.out_logprobs))


# ----------------------------------------------------------------------------------------------
# sample(), generate()

@torch.no_grad()  # not inference_mode: the trainer feeds these tensors into autograd
def sample(model, tokenizer, prompts, max_new_tokens: int, *, temperature: float = 1.0,
           top_p: float = 1.0, top_k: int = 0, seed: int | None = None,
           generator: torch.Generator | None = None, suppress_eos: bool = False,
           eos_token_ids: list[int] | None = None, fast: bool | None = None,
           check_every: int = 8) -> Rollout:
    """`rollout.sample`, fast. Same arguments and result, plus:

    fast: None = CUDA graphs on CUDA for supported model types, and `any_model.sample` otherwise;
    True = this path (graphs on CUDA, eager steps elsewhere); False = this path's eager twin.
    check_every: how often (in steps) the graph path checks whether every row has finished.
    """
    core_args = dict(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, generator=generator,
                     suppress_eos=suppress_eos, eos_token_ids=eos_token_ids)
    any_model.check_args(model, tokenizer, prompts, max_new_tokens, **core_args)
    eos_ids, pad_id, banned = rollout._special_tokens(model, tokenizer, eos_token_ids, suppress_eos)
    prompt_ids, prompt_mask = rollout._prompt_batch(tokenizer, prompts, model, pad_id)
    device, dtype = prompt_ids.device, next(model.parameters()).dtype

    # Shapes are rounded up (more left padding, more cache slots) so that successive calls
    # reuse the same shapes: each new shape costs a cuDNN attention plan and a graph capture.
    extra = -prompt_ids.shape[1] % PROMPT_ROUND
    prompt_ids = F.pad(prompt_ids, (extra, 0), value=pad_id)
    prompt_mask = F.pad(prompt_mask, (extra, 0), value=0)
    B, P = prompt_ids.shape
    T = max_new_tokens
    L = -(-(P + T) // LENGTH_ROUND) * LENGTH_ROUND  # cache slots
    if fast is None:
        if device.type != "cuda" or not rollout.has_llama_forward(model, L):
            return any_model.sample(model, tokenizer, prompts, max_new_tokens, **core_args)
        fast = True
    if generator is None:   # as rollout.sample: with no seed either, from torch's global RNG
        seed = int(torch.randint(2**62, ())) if seed is None else seed
        generator = torch.Generator(device=device).manual_seed(seed)
    cfg = _SamplingConfig(temperature, top_k, top_p, eos_ids, banned, pad_id)
    dec = _Decoder.from_model(model, L)
    cache = KVCache(model, B, L)
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
        noise=torch.ones(B, banned.shape[0] if temperature > 0 else 1, device=device),
        out_tokens=torch.full((B, T), pad_id, dtype=torch.long, device=device),
        out_logprobs=torch.zeros(B, T, device=device),
    )
    out = _Outputs(state)
    draw = (lambda state: out.draw(state, generator)) if temperature > 0 else (lambda state: None)
    draw(state)
    _emit(state, dec.logits(hidden[:, -1]), cfg)   # token 0 comes from the prompt's last position

    steps_done = 1  # the token fed at the next step sits in cache slot P + steps_done - 1
    graph, graph_kv_len = None, None
    while steps_done < T:
        # The eager twin checks every step; the graph path every check_every (a host sync).
        if (not fast or (steps_done - 1) % check_every == 0) and bool(state.finished.all()):
            break
        kv_len = _kv_len(P + steps_done - 1, L)
        if kv_len != graph_kv_len:   # a new attention bucket: a new graph, and fewer rows
            graph = None   # never replayed again: free its memory before recording the next
            state = _drop_finished(state, cache, out)
            graph_kv_len = kv_len
            if fast and device.type == "cuda":
                graph = _capture_decode_step(dec, cache, state, cfg, kv_len, draw)   # does one step
                steps_done += 1
                continue
        draw(state)
        if graph is not None:   # the same step, replayed from one CUDA graph per attention length
            graph.replay()
        else:                   # the eager twin, and the fast path off CUDA
            _decode_step(dec, cache, state, cfg, kv_len)
        steps_done += 1
    del graph
    out.collect(state)
    # Columns past steps_done were never decoded (every row had ended): drop them.
    return rollout._rollout(tokenizer, prompt_ids[:, extra:], prompt_mask[:, extra:], out.tokens[:, :steps_done],
                            out.logprobs[:, :steps_done], eos_ids, pad_id)


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, *, temperature: float = 0.0,
             seed: int = 0, batch_size: int = 64) -> list[str]:
    """Completions of many prompts (greedy by default), returned in the prompts' order.

    Prompts go in batches of ``batch_size``, longest first, so that each batch pads little;
    batch i is sampled with seed ``seed + i``.
    """
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    texts = [""] * len(prompts)
    for n, start in enumerate(range(0, len(order), batch_size)):
        batch = order[start:start + batch_size]
        out = sample(model, tokenizer, [prompts[i] for i in batch], max_new_tokens,
                     temperature=temperature, seed=seed + n)
        for i, text in zip(batch, out.texts):
            texts[i] = text
    return texts


# ----------------------------------------------------------------------------------------------
# Sampling a step's rollouts in chunks that fit in memory

def rows_that_fit(model, prompt_tokens: int, new_tokens: int, share: float = 0.6) -> int:
    """How many rows one sampler call can hold in ``share`` of the free GPU memory: each row
    keeps its KV cache (2 · layers · KV heads · head dim · length values) and a few float32
    vectors over the vocabulary (logits, log-probs, noise). The paper's step (2,048 rows of up
    to 512 + 1,024 tokens) needs ~88 GB of cache for Qwen2.5-1.5B, more than one card has."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = next(model.parameters()).element_size()
    kv = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * (prompt_tokens + new_tokens) * element
    per_row = kv + 4 * 4 * model.get_output_embeddings().weight.shape[0]
    # What the caching allocator holds but no tensor uses is free too: after the update it holds
    # tens of GB, and counting it as taken made step 2's rollout run in 2.5x as many chunks.
    free = torch.cuda.mem_get_info()[0] + torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    return max(1, int(share * free // per_row))


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """One Rollout from several: prompts re-padded on the left (position ids follow the mask, so
    values do not change), completions on the right."""
    P = max(r.prompt_ids.shape[1] for r in parts)
    T = max(r.completion_ids.shape[1] for r in parts)
    left = lambda x, width, value: F.pad(x, (width - x.shape[1], 0), value=value)
    right = lambda x, width, value: F.pad(x, (0, width - x.shape[1]), value=value)
    return Rollout(torch.cat([left(r.prompt_ids, P, pad_id) for r in parts]),
                   torch.cat([left(r.prompt_mask, P, 0) for r in parts]),
                   torch.cat([right(r.completion_ids, T, pad_id) for r in parts]),
                   torch.cat([right(r.completion_mask, T, 0.0) for r in parts]),
                   torch.cat([right(r.logprobs, T, 0.0) for r in parts]),
                   torch.cat([r.lengths for r in parts]), [t for r in parts for t in r.texts])


def equal_chunks(n_rows: int, most: int) -> int:
    """Rows per call for the fewest calls of at most ``most`` rows, as equal as possible: each call
    runs until its longest rollout ends, so 1,024 + 1,024 rows take less time than 1,500 + 548."""
    calls = -(-n_rows // max(1, most))
    return -(-n_rows // calls)


def in_chunks(sample_fn, rows_per_call: int | None = None):
    """``sample_fn`` with the same interface, run over the prompts in chunks (chunk i seeded
    with seed + i). ``rows_per_call`` None: as many as fit (:func:`rows_that_fit`, on CUDA)."""
    @functools.wraps(sample_fn)
    def chunked(model, tokenizer, prompts, max_new_tokens, *, seed=None, **kwargs):
        rows = rows_per_call
        if rows is None and next(model.parameters()).is_cuda:
            torch.cuda.empty_cache()   # one large KV cache needs contiguous memory, not cached fragments
            longest = max(len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"])
            rows = rows_that_fit(model, longest, max_new_tokens)
            rows = equal_chunks(len(prompts), rows)
        if rows is None or rows >= len(prompts):
            return sample_fn(model, tokenizer, prompts, max_new_tokens, seed=seed, **kwargs)
        parts = [sample_fn(model, tokenizer, prompts[i:i + rows], max_new_tokens,
                           seed=None if seed is None else seed + n, **kwargs)
                 for n, i in enumerate(range(0, len(prompts), rows))]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return concat_rollouts(parts, pad_id)
    return chunked
