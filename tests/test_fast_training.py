"""extras/fast_training.py: MasterWeightAdamW against float32 torch.optim.AdamW, its float32
gradient accumulation over micro-batches, and its state through torch.load(weights_only=True)."""
import io

import pytest
import torch

from extras.fast_training import MasterWeightAdamW

ADAMW = dict(lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01)


def params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 3, generator=g).to(dtype).requires_grad_(True),
            torch.randn(7, generator=g).to(dtype).requires_grad_(True)]


def grads(step, micro, dtype):
    """The gradient of micro-batch `micro` of optimizer step `step`: fixed values, representable in dtype."""
    g = torch.Generator().manual_seed(100 * step + micro)
    return [torch.randn(5, 3, generator=g).to(dtype), torch.randn(7, generator=g).to(dtype)]


def backward(ps, gs):
    """A backward whose gradient with respect to each parameter is exactly gs (Σ p·g)."""
    sum((p * g).sum() for p, g in zip(ps, gs)).backward()


def train(ps, optimizer, steps, micro_batches=3, dtype=None, first=0):
    for step in range(first, first + steps):
        optimizer.zero_grad(set_to_none=True)
        for micro in range(micro_batches):
            backward(ps, grads(step, micro, dtype or ps[0].dtype))
        optimizer.step()


def test_float32_params_take_exactly_adamws_steps():
    ours, theirs = params(torch.float32), params(torch.float32)
    train(ours, MasterWeightAdamW(ours, **ADAMW), steps=4)
    train(theirs, torch.optim.AdamW(theirs, **ADAMW), steps=4)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(ours[0], params(torch.float32)[0])


def test_bf16_params_follow_float32_masters_that_track_float32_adamw():
    """bf16 weights with the same bf16 gradients: the float32 masters take float32 AdamW's steps on
    the same float32 values (the grads summed in float32), and the bf16 weights are the masters
    rounded. At lr 1e-6 the updates are far below bf16 resolution: plain AdamW on the bf16 weights
    would not move them at all, the masters do."""
    lr = dict(ADAMW, lr=1e-6)
    ours = params(torch.bfloat16)
    optimizer = MasterWeightAdamW(ours, **lr)
    reference = [p.detach().float().requires_grad_(True) for p in ours]
    train(ours, optimizer, steps=3)
    train(reference, torch.optim.AdamW(reference, **lr), steps=3, dtype=torch.bfloat16)
    for p, master, ref in zip(ours, optimizer.masters, reference):
        torch.testing.assert_close(master, ref, rtol=1e-6, atol=1e-9)
        assert torch.equal(p, master.detach().bfloat16())
    start = params(torch.bfloat16)
    assert not torch.equal(optimizer.masters[0], start[0].float())   # the masters moved ...
    plain = params(torch.bfloat16)
    train(plain, torch.optim.AdamW(plain, **lr), steps=3)
    assert torch.equal(plain[0], start[0])                           # ... bf16 AdamW did not


def test_gradients_accumulate_in_float32():
    """Micro-batch gradients 1, 2⁻⁹, 2⁻⁹ (each exact in bf16): their float32 sum is 1 + 2⁻⁸; summed
    in bf16 (8 bits of mantissa) each 2⁻⁹ rounds away and the sum stays 1."""
    (p,) = [torch.ones(4, dtype=torch.bfloat16, requires_grad=True)]
    optimizer = MasterWeightAdamW([p], **ADAMW)
    for g in (1.0, 2.0 ** -9, 2.0 ** -9):
        (p * torch.full((4,), g, dtype=torch.bfloat16)).sum().backward()
    assert p.grad is None   # handed over to the master at once
    assert optimizer.masters[0].grad.dtype == torch.float32
    assert torch.equal(optimizer.masters[0].grad, torch.full((4,), 1 + 2.0 ** -8))
    # clipping sees the float32 gradient too
    norm = torch.nn.utils.clip_grad_norm_([m for g in optimizer.param_groups for m in g["params"]], 1e9)
    assert float(norm) == pytest.approx(2 * (1 + 2.0 ** -8), rel=1e-7)
    optimizer.zero_grad()
    assert optimizer.masters[0].grad is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_round_trips_through_weights_only_load(dtype):
    """Save after 2 steps, load with weights_only=True into fresh parameters and optimizer, take 2
    more: the same as 4 steps in one go."""
    one_go = params(dtype)
    train(one_go, MasterWeightAdamW(one_go, **ADAMW), steps=4)
    first = params(dtype)
    optimizer = MasterWeightAdamW(first, **ADAMW)
    train(first, optimizer, steps=2)
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    resumed = params(dtype, seed=1)   # other values: everything must come from the state
    optimizer = MasterWeightAdamW(resumed, **ADAMW)
    optimizer.load_state_dict(state["optimizer"])
    for p, q in zip(resumed, first):
        assert torch.equal(p, q)
    train(resumed, optimizer, steps=2, first=2)
    for p, q in zip(resumed, one_go):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def _core_and_fused_heads(model, ids, mask, start, temperature, chunk_size, answers_only=True):
    """rollout.token_logprobs, then extras.fast_training.token_logprobs, on the same rows: each
    one's (log-probs, entropies, parameter gradients of Σ w · log-prob), w a fixed ramp over the
    positions (over the answers' real tokens only where ``answers_only``)."""
    import rollout
    from extras import fast_training
    results = []
    for fn, kw in ((rollout.token_logprobs, {}), (fast_training.token_logprobs, {"chunk_size": chunk_size})):
        model.zero_grad()
        logp, entropy = fn(model, ids, mask, start, temperature=temperature, return_entropy=True, **kw)
        weights = torch.linspace(-1, 2, logp.numel(), dtype=logp.dtype, device=logp.device).view_as(logp)
        if answers_only:
            weights = weights * mask[:, start:]
        (logp * weights).sum().backward()
        results.append((logp.detach(), entropy.detach(),
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    return results


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_token_logprobs_equal_the_core_values_and_gradients(tiny_qwen, temperature):
    """extras.fast_training.token_logprobs (what lrpo trains with on CUDA) against
    rollout.token_logprobs: the same log-probs, entropies and parameter gradients, with left-padded
    prompts, right-padded answers and chunks that split rows (chunk_size 7)."""
    model, tok = tiny_qwen
    model = model.double()
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 1500, (3, 12), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0          # a left-padded prompt
    mask[1, 10:] = 0         # a short answer
    (lp0, ent0, g0), (lp1, ent1, g1) = _core_and_fused_heads(model, ids, mask, 5, temperature, chunk_size=7)
    torch.testing.assert_close(lp1, lp0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ent1, ent0, rtol=1e-9, atol=1e-9)
    assert g0.keys() == g1.keys() and "model.embed_tokens.weight" in g0
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-7, atol=1e-10, msg=name)


def _gemma3_text_softcapped():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                              sliding_window=4, layer_types=["sliding_attention", "full_attention"],
                              initializer_range=0.5, final_logit_softcapping=3.0,
                              tie_word_embeddings=False, pad_token_id=0)
    config._attn_implementation = "sdpa"
    return Gemma3ForCausalLM(config)


def _qwen2_with_head_bias():
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         initializer_range=0.5)
    config._attn_implementation = "sdpa"
    model = Qwen2ForCausalLM(config)
    model.lm_head = torch.nn.Linear(32, 64, bias=True)
    torch.nn.init.normal_(model.lm_head.bias, std=2.0)
    return model


@pytest.mark.parametrize("build", [_gemma3_text_softcapped, _qwen2_with_head_bias])
def test_fused_token_logprobs_with_softcap_and_head_bias_equal_the_core(build):
    """Gemma's final_logit_softcapping and a head bias in the fused head: the values, entropies
    and every gradient (bias included) of rollout.token_logprobs (the model's own forward)."""
    from extras import fast_training
    model = build().double().train()
    gen = torch.Generator().manual_seed(4)
    ids = torch.randint(1, 64, (3, 11), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    (lp0, ent0, g0), (lp1, ent1, g1) = _core_and_fused_heads(model, ids, mask, 4, 0.8, chunk_size=4,
                                                             answers_only=False)
    torch.testing.assert_close(lp1, lp0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ent1, ent0, rtol=1e-9, atol=1e-9)
    assert g0.keys() == g1.keys() and "lm_head.weight" in g0
    for name in g0:   # Gemma's RMSNorms compute in float32 even in a float64 model: 1e-7 rounding
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-6, atol=1e-7, msg=name)
    # and the soft-cap / bias really act: without them the values differ
    head = model.get_output_embeddings()
    if head.bias is not None:
        assert g0["lm_head.bias"].abs().sum() > 0
    else:
        cap = model.config.final_logit_softcapping
        model.config.final_logit_softcapping = None
        uncapped = fast_training.token_logprobs(model, ids, mask, 4, temperature=0.8)
        model.config.final_logit_softcapping = cap
        assert (uncapped - lp1).abs().max() > 0.05


def test_left_aligned_rows_keep_a_kernel_that_fails_on_all_padding_queries_finite(tiny_qwen, monkeypatch):
    """Issue 18's non-finite gradient, recreated by value. Measured on an H100 (BENCHMARKS.md): the
    memory-efficient attention kernel's backward writes NaN into the query gradient of a row whose
    every key is padding, which a left-padded prompt has. Here attention is wrapped to do exactly
    that. On the left-padded layout (the core's, which lrpo used on the GPU before the fix) the
    gradient turns NaN; the fused head's left-aligned rows give finite gradients, and the same
    values as the core's without the faulty kernel."""
    import torch.nn.functional as F
    import rollout
    from extras import fast_training
    model, _ = tiny_qwen
    model.config._attn_implementation = "sdpa"
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 1500, (3, 14), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[1, :1] = 0
    aligned_ids, aligned_mask, prompt_len = fast_training.left_aligned(ids, mask, 6)
    assert prompt_len.tolist() == [2, 5, 6]
    assert (aligned_mask.cumsum(1) > 0).all()   # every query position sees a real key
    assert aligned_ids[0, :2].tolist() == ids[0, 4:6].tolist()   # row 0's prompt starts the row

    def grads(fn):
        model.zero_grad()
        logp = fn(model, ids, mask, 6)
        (logp * mask[:, 6:]).sum().backward()
        return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    clean_core = grads(rollout.token_logprobs)
    real_sdpa = F.scaled_dot_product_attention

    def faulty_sdpa(q, k, v, attn_mask=None, **kw):
        out = real_sdpa(q, k, v, attn_mask=attn_mask, **kw)
        if attn_mask is not None and attn_mask.dtype == torch.bool and q.requires_grad:
            empty = ~attn_mask.any(-1, keepdim=True)   # query rows with no visible key
            q.register_hook(lambda g: g.masked_fill(empty, float("nan")))
        return out
    monkeypatch.setattr(F, "scaled_dot_product_attention", faulty_sdpa)
    _, core_grads = grads(rollout.token_logprobs)
    assert any(not torch.isfinite(g).all() for g in core_grads.values())   # the kernel's fault acts
    logp, fused_grads = grads(fast_training.token_logprobs)
    assert all(torch.isfinite(g).all() for g in fused_grads.values())
    torch.testing.assert_close(logp * mask[:, 6:], clean_core[0] * mask[:, 6:], atol=1e-5, rtol=0)
    for name, g in clean_core[1].items():
        torch.testing.assert_close(fused_grads[name], g, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("limit, expect_all", [(None, True), (8, False)])
def test_compiled_layers_keep_every_guard_variant_of_lrpos_loop_compiled(limit, expect_all, monkeypatch):
    """Policy and reference, with and without grad, padding mask or none, train and eval: 16
    guard variants of one layer's code. compile_layers must keep all of them compiled; with
    torch's default limit of 8 (the H100 paper-shape run's bug) the rest run eagerly."""
    import copy
    import itertools

    import torch._dynamo
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from extras import fast_training
    compiled = []

    def counting_backend(graph, example_inputs):
        compiled.append(graph)
        return graph.forward

    torch._dynamo.reset()
    if limit is not None:
        monkeypatch.setattr(fast_training, "LAYER_VARIANTS", limit)
    # torch's config.patch, not monkeypatch: on torch 2.13 monkeypatch's undo deletes the entry,
    # so a later case would read no recompile_limit at all
    with torch._dynamo.config.patch(recompile_limit=8):
        torch.manual_seed(0)
        config = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=64, pad_token_id=0)
        policy = Qwen2ForCausalLM(config)
        policy.config._attn_implementation = "sdpa"
        reference = copy.deepcopy(policy).requires_grad_(False)
        for model in (policy, reference):
            fast_training.compile_layers(model, backend=counting_backend)
        ids = torch.randint(1, 64, (3, 10))
        no_padding, padded = torch.ones_like(ids), torch.ones_like(ids)
        padded[0, -3:] = 0   # transformers passes a mask for this one and drops the other
        for model, grad, mask, train in itertools.product((policy, reference), (True, False),
                                                          (no_padding, padded), (True, False)):
            model.train(train)
            with torch.set_grad_enabled(grad):
                model(input_ids=ids, attention_mask=mask)
        torch._dynamo.reset()
    assert (len(compiled) == 16) if expect_all else (len(compiled) == 8)


def _qwen2_plain():
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=5000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.5)
    config._attn_implementation = "sdpa"
    return Qwen2ForCausalLM(config)


CUDA = pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU: the head's element-wise passes are "
    "compiled only there (extras.fast_rollout.FUSE_DEVICES)"))


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("build", [_qwen2_plain, _gemma3_text_softcapped, _qwen2_with_head_bias])
def test_fused_head_in_float32_equals_the_core(build, device):
    """On CUDA the fused head's two element-wise passes run torch.compile'd (eager on the CPU):
    the values, entropies and gradients must still be rollout.token_logprobs's in float32, with
    chunks that split rows. Gradients are compared relative to each tensor's largest entry: the
    plain model's reach 200, and float32 sums in another order differ there by ~1e-4."""
    model = build().to(device)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(3, model.config.vocab_size, (4, 40), generator=gen).to(device)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[1, 30:] = 0
    (core_logp, core_entropy, core_grads), (logp, entropy, grads) = _core_and_fused_heads(
        model, ids, mask, 8, 0.7, chunk_size=37)
    torch.testing.assert_close(logp, core_logp, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(entropy, core_entropy, rtol=1e-4, atol=1e-4)
    for name, core in core_grads.items():
        torch.testing.assert_close(grads[name], core, rtol=1e-3, atol=1e-5 * float(core.abs().max()), msg=name)


def test_token_budget_passes_pack_short_rows_and_keep_the_widest_pass():
    """Rows sorted by length: short rows share a pass beyond --micro-batch, rows as wide as the
    widest take --micro-batch per pass, no pass pads to more than --micro-batch × (longest
    prompt + longest answer) tokens, and none holds a single row (the compiled layers specialise
    a batch of 1: a new graph to compile). Worked by hand: budget 2 × (3 + 7) = 20; rows 0–2 pad to
    3 × 3 = 9, adding row 3 would pad to 4 × (2 + 5) = 28; rows 3–4 pad to 2 × (3 + 6) = 18."""
    from extras.fast_training import token_budget_passes
    prompt, answer = torch.tensor([2, 2, 2, 2, 3, 3]), torch.tensor([1, 1, 1, 5, 6, 7])
    assert token_budget_passes(prompt, answer, 2) == [slice(0, 3), slice(3, 5), slice(5, 6)]
    same = torch.full((10,), 4)   # a last pass of one row would compile new graphs: it takes two
    assert token_budget_passes(same, same, 3) == [slice(0, 3), slice(3, 6), slice(6, 8), slice(8, 10)]
    assert token_budget_passes(same[:9], same[:9], 3) == [slice(0, 3), slice(3, 6), slice(6, 9)]
    gen = torch.Generator().manual_seed(0)
    prompt, answer = torch.randint(1, 40, (300,), generator=gen), torch.randint(1, 200, (300,), generator=gen)
    by_length = (prompt + answer).argsort()
    prompt, answer = prompt[by_length], answer[by_length]
    passes = token_budget_passes(prompt, answer, 8)
    assert [r for part in passes for r in range(300)[part]] == list(range(300))   # every row once, in order
    budget = 8 * int(prompt.max() + answer.max())
    assert all((part.stop - part.start) * int(prompt[part].max() + answer[part].max()) <= budget for part in passes)
    assert len(passes) < 300 / 8   # fewer passes than fixed passes of 8
    assert all(part.stop - part.start >= 2 for part in passes)
