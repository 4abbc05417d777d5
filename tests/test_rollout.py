"""rollout.py (the core sampler) and extras/fast_rollout.py (its fast twin), on CPU with tiny
random models built from configs (no downloads); one CUDA-only test for the CUDA-graph path."""
import ast
import copy
import functools
import math
from pathlib import Path

import pytest
import torch

import rollout
from extras import any_model, fast_rollout

CHARS = "abcdefghijklmnopqrstuvwxyz ,.?!0123456789"

# The samplers that must give the same tokens: the core, the fast path's eager twin, and the
# fast path proper (CUDA graphs on CUDA; on the CPU its own loop with check_every, no graphs).
SAMPLERS = {
    "core": rollout.sample,
    "any_model": any_model.sample,   # the checked edge; Llama models keep the core's forward
    "fast_eager": functools.partial(fast_rollout.sample, fast=False),
    "fast": functools.partial(fast_rollout.sample, fast=True),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def small_kv_buckets(monkeypatch):
    # 70 new tokens after prompts of <= 30 then cross several attention-length buckets.
    monkeypatch.setattr(fast_rollout, "KV_BUCKET", 32)


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


@pytest.fixture(scope="module")
def model(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=64,  # > len(tokenizer) == 43: padded embedding rows, like Qwen's 151936
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        eos_token_id=1, pad_token_id=0, bos_token_id=1, initializer_range=0.5,
    )
    config._attn_implementation = "sdpa"
    return Qwen2ForCausalLM(config).eval()


GEMMA_TEXT = dict(  # a tiny Gemma 3 text decoder with every Gemma feature switched on
    vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=256, initializer_range=0.5,
    sliding_window=4, layer_types=["sliding_attention", "full_attention"],  # the window really slides
    final_logit_softcapping=5.0, eos_token_id=1, pad_token_id=0, bos_token_id=2,
)


@pytest.fixture(scope="module")
def gemma3_text():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(**GEMMA_TEXT, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    return Gemma3ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def gemma3_multimodal():
    """What AutoModelForCausalLM returns for google/gemma-3-4b-it: the image-text class."""
    from transformers import AutoModelForCausalLM, Gemma3Config

    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=28, patch_size=14)
    config = Gemma3Config(text_config=GEMMA_TEXT, vision_config=vision, mm_tokens_per_image=4,
                          image_token_index=63, boi_token_index=61, eoi_token_index=62,
                          tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(config).eval()


PROMPTS = ["what is 2 plus 3?", "hi", "the capital of france, please.", "abc"]


def left_padded(tokenizer, prompts):
    rows = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    P = max(map(len, rows))
    ids = torch.tensor([[tokenizer.pad_token_id] * (P - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def hf_greedy(model, tokenizer, prompts, n, **kw):
    """transformers generate, greedy, on the same left-padded prompts; returns the new tokens."""
    ids, mask = left_padded(tokenizer, prompts)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         suppress_tokens=list(range(len(tokenizer), model.get_output_embeddings().weight.shape[0])),
                         **kw)
    return out[:, ids.shape[1]:]


def full_forward_logprobs(model, out, temperature=1.0):
    """Reference: one HF forward over prompt + completion, full log_softmax, no chunking."""
    ids, mask = out.input_ids, out.attention_mask
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float() / temperature
    P = out.completion_start
    lp = logits[:, P - 1:-1].log_softmax(-1).gather(-1, ids[:, P:, None]).squeeze(-1)
    return lp * out.completion_mask


def test_core_imports_nothing_from_extras():
    tree = ast.parse(Path(rollout.__file__).read_text())
    modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    modules += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in modules if m.split(".")[0] == "extras"]


@pytest.mark.parametrize("name", SAMPLERS)
def test_greedy_matches_hf_generate(model, tokenizer, name):
    # 70 new tokens: the fast path's attention length grows through several KV buckets.
    out = SAMPLERS[name](model, tokenizer, PROMPTS, 70, temperature=0.0, suppress_eos=True)
    ids, mask = left_padded(tokenizer, PROMPTS)
    assert torch.equal(out.prompt_ids, ids) and torch.equal(out.prompt_mask, mask)
    assert torch.equal(out.completion_ids, hf_greedy(model, tokenizer, PROMPTS, 70, min_new_tokens=70))
    assert out.completion_ids.shape == (4, 70) and out.lengths.tolist() == [70] * 4


def test_core_and_fast_eager_greedy_equal_generate_on_tiny_qwen(tiny_qwen):
    model, tok = tiny_qwen  # the toy tokenizer; 1536 real ids in a 1600-row embedding
    torch.manual_seed(1)
    with torch.no_grad():  # at its init scale (0.02) greedy repeats one token; at 0.3 it varies
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    prompts = ["What is 3 plus 4?", "Hello", "Which city is the capital of the northern region of Valoria?"]
    core = rollout.sample(model, tok, prompts, 24, temperature=0.0)
    hf = hf_greedy(model, tok, prompts, 24)
    assert len({len(row) for row in tok(prompts, add_special_tokens=False)["input_ids"]}) == 3  # unequal
    assert torch.equal(core.completion_ids, hf) and len(set(core.completion_ids[0].tolist())) > 12
    eager = fast_rollout.sample(model, tok, prompts, 24, temperature=0.0, fast=False)
    assert torch.equal(eager.completion_ids, core.completion_ids) and eager.texts == core.texts
    # Different kernels (fused q/k/v, regrouped GQA, additive mask) in float32: rounding only.
    torch.testing.assert_close(eager.logprobs, core.logprobs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_full_forward_and_token_logprobs(model, tokenizer, temperature):
    out = rollout.sample(model, tokenizer, PROMPTS, 70, temperature=temperature, seed=1)
    reference = full_forward_logprobs(model, out, temperature)
    torch.testing.assert_close(out.logprobs, reference, atol=1e-4, rtol=0)
    recomputed = rollout.token_logprobs(model, out.input_ids, out.attention_mask, out.completion_start,
                                        temperature=temperature)
    torch.testing.assert_close(out.logprobs, recomputed * out.completion_mask, atol=1e-4, rtol=0)
    assert (out.logprobs[out.completion_mask.bool()] < 0).all()


def test_token_logprobs_entropy_and_gradients_equal_the_chunked_twin(model, tokenizer):
    # The core's one log-softmax against extras.fast_training's chunked fused head (chunks of 5
    # positions and one chunk of all): the same values and parameter gradients.
    from extras import fast_training
    out = rollout.sample(model, tokenizer, PROMPTS, 10, seed=3)
    model = copy.deepcopy(model).double()   # float64: different algorithms, no rounding to hide in
    args = (model, out.input_ids, out.attention_mask, out.completion_start)
    results = []
    for fn, kw in ((rollout.token_logprobs, {}), (fast_training.token_logprobs, {"chunk_size": 5}),
                   (fast_training.token_logprobs, {"chunk_size": 10_000})):
        model.zero_grad()
        lp, ent = fn(*args, return_entropy=True, **kw)
        (lp * out.completion_mask).sum().backward()
        results.append((lp.detach(), ent, [p.grad.clone() for p in model.parameters()]))
    for lp, entropy, grads in results[1:]:
        torch.testing.assert_close(lp, results[0][0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(entropy, results[0][1], rtol=1e-10, atol=1e-10)
        for a, b in zip(grads, results[0][2]):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    _, ent, grads = results[0]
    assert any(g.abs().sum() > 0 for g in grads)
    model.zero_grad()
    with torch.no_grad():
        logits = model(input_ids=out.input_ids, attention_mask=out.attention_mask,
                       position_ids=(out.attention_mask.cumsum(1) - 1).clamp(min=0)).logits
        logp = logits[:, out.completion_start - 1:-1].log_softmax(-1)
        torch.testing.assert_close(ent, -(logp.exp() * logp).sum(-1), atol=1e-4, rtol=0)


def test_seed_reproducible_and_fast_equals_core(model, tokenizer):
    kw = dict(temperature=1.0, top_p=0.9, top_k=20)
    a = fast_rollout.sample(model, tokenizer, PROMPTS, 70, seed=7, fast=False, **kw)
    b = fast_rollout.sample(model, tokenizer, PROMPTS, 70, seed=7, fast=True, check_every=3, **kw)
    c = rollout.sample(model, tokenizer, PROMPTS, 70, generator=torch.Generator().manual_seed(7), **kw)
    d = rollout.sample(model, tokenizer, PROMPTS, 70, seed=8, **kw)
    e = fast_rollout.sample(model, tokenizer, PROMPTS, 70, seed=7, **kw)  # CPU: delegates to the core
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.completion_ids, c.completion_ids)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=0, rtol=0)   # the same kernels
    # float rounding only: the fast path's matmuls see fewer rows once finished rows leave
    torch.testing.assert_close(a.logprobs, c.logprobs, atol=1e-4, rtol=1e-4)
    assert torch.equal(c.completion_ids, e.completion_ids) and torch.equal(c.logprobs, e.logprobs)
    assert a.texts == c.texts and all(isinstance(t, str) for t in a.texts)
    assert not torch.equal(c.completion_ids, d.completion_ids)


def test_finished_rows_leave_the_batch_and_change_no_token(model, tokenizer, monkeypatch):
    """At each attention bucket the rows that have ended leave the decode batch
    (fast_rollout._drop_finished), and each row keeps its own noise, so the tokens are those of
    the batch that keeps every row (COMPACT = False); log-probs up to float rounding."""
    sizes = []
    drop = fast_rollout._drop_finished

    def counting(state, cache, out):
        after = drop(state, cache, out)
        sizes.append((len(state.finished), len(after.finished)))
        return after
    monkeypatch.setattr(fast_rollout, "_drop_finished", counting)
    prompts = PROMPTS * 3
    for fast in (False, True):
        sizes.clear()
        a = fast_rollout.sample(model, tokenizer, prompts, 70, seed=3, fast=fast)
        assert any(after < before for before, after in sizes), sizes   # rows did leave
        assert (a.lengths > 32).sum() > 0 and (a.lengths < 32).sum() > 0   # ... before others ended
        with monkeypatch.context() as off:
            off.setattr(fast_rollout, "COMPACT", False)
            sizes.clear()
            b = fast_rollout.sample(model, tokenizer, prompts, 70, seed=3, fast=fast)
            assert all(after == before for before, after in sizes)
        assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.lengths, b.lengths)
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-4, rtol=1e-4)
        assert a.texts == b.texts


def test_never_samples_padded_vocab_rows(model, tokenizer):
    out = rollout.sample(model, tokenizer, ["a", "b"] * 8, 24, temperature=5.0, seed=0, suppress_eos=True)
    assert out.completion_ids.max() < len(tokenizer) < model.config.vocab_size
    # the padded rows are sampled at this temperature if nothing stops them
    probe = rollout.sample(model, None, [[5], [6]] * 8, 24, temperature=5.0, seed=0, eos_token_ids=[1],
                           suppress_eos=True)
    assert probe.completion_ids.max() >= len(tokenizer)


@pytest.mark.parametrize("name", SAMPLERS)
def test_eos_handling_and_every_row_finishing_early(model, tokenizer, name):
    sample = SAMPLERS[name]
    greedy = sample(model, tokenizer, PROMPTS, 8, temperature=0.0, suppress_eos=True)
    # Declare row 0's 3rd greedy token to be EOS: row 0 must stop there, EOS kept in the mask.
    stop = int(greedy.completion_ids[0, 2])
    first = [int((row == stop).nonzero()[0]) + 1 if (row == stop).any() else 8 for row in greedy.completion_ids]
    out = sample(model, tokenizer, PROMPTS, 8, temperature=0.0, eos_token_ids=[stop])
    assert out.lengths.tolist() == first and first[0] == 3
    assert out.completion_ids.shape[1] == max(first)
    for i, n in enumerate(first):
        assert torch.equal(out.completion_ids[i, :n], greedy.completion_ids[i, :n])
        assert out.completion_mask[i, :n].eq(1).all() and out.completion_mask[i, n:].eq(0).all()
        assert out.logprobs[i, n:].eq(0).all() and out.logprobs[i, :n].lt(0).all()
        assert out.completion_ids[i, n:].eq(tokenizer.pad_token_id).all()
    # Every row finishes after its first token: the loop stops early and T == 1.
    firsts = greedy.completion_ids[:, 0].unique().tolist()
    early = sample(model, tokenizer, PROMPTS, 8, temperature=0.0, eos_token_ids=firsts)
    assert early.completion_ids.shape == (4, 1) and early.lengths.tolist() == [1] * 4


@pytest.mark.parametrize("name", ["core", "fast"])
def test_generation_config_eos_ids_are_honoured(model, tokenizer, monkeypatch, name):
    # Chat models end a turn with an id (<|im_end|>, <end_of_turn>) that only generation_config
    # may name; the tokenizer's EOS (here 1) differs from it.
    sample = SAMPLERS[name]
    free = sample(model, tokenizer, PROMPTS, 8, temperature=0.0)
    stop = int(free.completion_ids[0, 2])
    assert stop != tokenizer.eos_token_id and stop not in free.completion_ids[0, :2].tolist()
    assert free.lengths[0] > 3
    monkeypatch.setattr(model.generation_config, "eos_token_id", [tokenizer.eos_token_id, stop])
    out = sample(model, tokenizer, PROMPTS, 8, temperature=0.0)
    assert out.lengths[0] == 3 and out.completion_ids[0, 2] == stop and out.completion_mask[0, 2] == 1
    both = sample(model, tokenizer, PROMPTS, 8, temperature=0.0, eos_token_ids=[tokenizer.eos_token_id, stop])
    assert torch.equal(out.completion_ids, both.completion_ids) and torch.equal(out.lengths, both.lengths)


def test_max_new_tokens_and_batch_of_one(model, tokenizer):
    out = rollout.sample(model, tokenizer, ["hello"], 5, seed=0, suppress_eos=True)
    assert out.completion_ids.shape == (1, 5) and out.lengths.tolist() == [5]
    assert out.prompt_mask.all() and len(out.texts) == 1
    free = rollout.sample(model, tokenizer, PROMPTS, 5, seed=0)
    assert free.completion_ids.shape[1] <= 5 and (free.lengths <= 5).all()
    ids = rollout.sample(model, tokenizer, [[3, 4, 5], [6]], 3, temperature=0.0)
    assert ids.prompt_ids.tolist() == [[3, 4, 5], [0, 0, 6]]


@pytest.mark.parametrize("name", ["any_model", "fast"])   # the checks live at the edge (extras)
@pytest.mark.parametrize("prompts, kwargs, match", [
    ([], {}, "non-empty"),
    (["ok", ""], {}, r"prompts\[1\] is empty"),
    ([[1, 2], [3, 999]], {}, r"prompts\[1\]: token id 999"),
    (["ok"], {"temperature": -1.0}, "temperature"),
    (["ok"], {"top_p": 0.0}, "top_p"),
    (["ok"], {"max_new_tokens": 0}, "max_new_tokens"),
])
def test_bad_input_is_named(model, tokenizer, prompts, kwargs, match, name):
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        SAMPLERS[name](model, tokenizer, prompts, kwargs.pop("max_new_tokens"), **kwargs)


# ----------------------------------------------------------------------------------------------
# top-k / top-p against a brute-force reference

PROBS = [0.08, 0.30, 0.005, 0.15, 0.04, 0.20, 0.015, 0.12, 0.03, 0.06]  # shuffled: order != index


def reference_kept(probs, top_k, top_p, temperature):
    """Sort, cut to top_k, renormalise, keep best tokens until the mass before one reaches top_p."""
    weights = [p ** (1 / temperature) for p in probs]          # softmax(log p / T), unnormalised
    order = sorted(range(len(probs)), key=lambda i: -weights[i])
    order = order[:top_k] if top_k else order
    total = sum(weights[i] for i in order)
    kept, mass = [], 0.0
    for i in order:
        if mass >= top_p:
            break
        kept.append(i)
        mass += weights[i] / total
    return kept, total


@pytest.mark.parametrize("top_k, top_p, temperature, expected", [
    (0, 1.0, 1.0, 10),
    (3, 1.0, 1.0, 3),
    (0, 0.55, 1.0, 3),   # 0.30 + 0.20 = 0.50 < 0.55: the token that crosses top_p is kept
    (0, 0.45, 1.0, 2),
    (4, 0.7, 1.0, 3),    # renormalised over the top 4 (0.77): without it all 4 would stay
    (0, 0.8, 0.7, None),
    (5, 0.9, 1.5, None),
])
def test_top_k_top_p_equal_brute_force(top_k, top_p, temperature, expected):
    kept, total = reference_kept(PROBS, top_k, top_p, temperature)
    assert expected is None or len(kept) == expected
    logits = torch.tensor(PROBS).log()[None].repeat(4000, 1) * 3.0 + 1.0  # any scale: T does the rest
    temperature_3 = 3.0 * temperature   # logits = 3 log p + c, so softmax(logits / 3T) = softmax(log p / T)
    banned = torch.zeros(len(PROBS), dtype=torch.bool)
    scores = rollout._top_k_top_p(rollout._log_probs(logits[:1], temperature_3), top_k, top_p)
    assert set(torch.isfinite(scores[0]).nonzero().flatten().tolist()) == set(kept)
    token, logp = rollout._choose_token(logits, banned, temperature_3, top_k, top_p,
                                        torch.Generator().manual_seed(0))
    assert set(token.tolist()) == set(kept)      # every kept token is drawn, no other ever is
    best = kept[0]
    share = (token == best).float().mean().item()
    kept_mass = sum(PROBS[i] ** (1 / temperature) for i in kept)
    assert share == pytest.approx(PROBS[best] ** (1 / temperature) / kept_mass, abs=0.03)
    # log-probs are of the untruncated softmax(logits / T)
    full = [p ** (1 / temperature) / sum(q ** (1 / temperature) for q in PROBS) for p in PROBS]
    torch.testing.assert_close(logp, torch.tensor(full).log()[token], atol=1e-5, rtol=0)
    # the fast path draws the same tokens from the same generator's noise
    noise = torch.empty(logits.shape).exponential_(generator=torch.Generator().manual_seed(0))
    cfg = fast_rollout._SamplingConfig(temperature_3, top_k, top_p, torch.tensor([99]), banned, 0)
    assert torch.equal(fast_rollout._choose_token(logits, noise, cfg)[0], token)


# ----------------------------------------------------------------------------------------------
# Gemma 3: the model's own transformers forward and cache, through the same loop (extras.any_model)

@pytest.mark.parametrize("which", ["gemma3_text", "gemma3_multimodal"])
def test_gemma3_greedy_matches_generate_and_logprobs_match_forward(tokenizer, which, request):
    gemma = request.getfixturevalue(which)
    assert not rollout.has_llama_forward(gemma, 1000)
    with pytest.raises(ValueError, match="extras.any_model.sample"):   # never a silent wrong forward
        rollout.sample(gemma, tokenizer, PROMPTS, 4)
    out = any_model.sample(gemma, tokenizer, PROMPTS, 40, temperature=0.0, suppress_eos=True)
    assert torch.equal(out.completion_ids, hf_greedy(gemma, tokenizer, PROMPTS, 40, min_new_tokens=40))
    assert len(set(out.completion_ids[0].tolist())) > 3   # not a degenerate repetition
    # fast_rollout has no fused forward for Gemma: it hands the call to the core
    assert torch.equal(fast_rollout.sample(gemma, tokenizer, PROMPTS, 40, temperature=0.0,
                                           suppress_eos=True).completion_ids, out.completion_ids)
    sampled = any_model.sample(gemma, tokenizer, PROMPTS, 30, temperature=0.8, seed=0)
    reference = full_forward_logprobs(gemma, sampled, 0.8)   # the model's forward: soft-capped logits
    torch.testing.assert_close(sampled.logprobs, reference, atol=1e-4, rtol=0)
    recomputed = rollout.token_logprobs(gemma, sampled.input_ids, sampled.attention_mask,
                                        sampled.completion_start, temperature=0.8)
    torch.testing.assert_close(recomputed * sampled.completion_mask, reference, atol=1e-4, rtol=0)


def test_gemma3_text_softcapping_is_applied(gemma3_text, tokenizer, monkeypatch):
    out = any_model.sample(gemma3_text, tokenizer, PROMPTS, 10, seed=0)
    capped = rollout.token_logprobs(gemma3_text, out.input_ids, out.attention_mask, out.completion_start)
    monkeypatch.setattr(gemma3_text.config, "final_logit_softcapping", None)
    uncapped = rollout.token_logprobs(gemma3_text, out.input_ids, out.attention_mask, out.completion_start)
    assert (capped - uncapped).abs().max() > 0.1   # so the tests above would see it missing


# ----------------------------------------------------------------------------------------------
# extras.fast_rollout.generate and the CUDA-graph path

def test_generate_returns_texts_in_prompt_order(model, tokenizer):
    prompts = PROMPTS + ["ok", "a longer prompt than most"]
    texts = fast_rollout.generate(model, tokenizer, prompts, 12, batch_size=2)
    assert texts == rollout.sample(model, tokenizer, prompts, 12, temperature=0.0).texts
    assert fast_rollout.generate(model, tokenizer, [], 12) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the CUDA-graph path only exists there")
def test_cuda_graph_path_equals_eager_twin_and_core(model, tokenizer):
    gpu = copy.deepcopy(model).cuda()
    greedy = dict(temperature=0.0, suppress_eos=True)
    graph = fast_rollout.sample(gpu, tokenizer, PROMPTS, 70, fast=True, **greedy)
    eager = fast_rollout.sample(gpu, tokenizer, PROMPTS, 70, fast=False, **greedy)
    core = rollout.sample(gpu, tokenizer, PROMPTS, 70, **greedy)
    default = fast_rollout.sample(gpu, tokenizer, PROMPTS, 70, **greedy)  # fast=None: graphs on CUDA
    assert torch.equal(graph.completion_ids, eager.completion_ids)
    assert torch.equal(graph.logprobs, eager.logprobs)
    assert torch.equal(graph.completion_ids, core.completion_ids)
    assert torch.equal(default.completion_ids, graph.completion_ids)
    torch.testing.assert_close(graph.logprobs, core.logprobs, atol=1e-3, rtol=0)
    kw = dict(temperature=1.0, top_p=0.9, top_k=20, seed=3)
    a = fast_rollout.sample(gpu, tokenizer, PROMPTS, 70, fast=True, check_every=3, **kw)
    b = fast_rollout.sample(gpu, tokenizer, PROMPTS, 70, fast=False, **kw)
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.logprobs, b.logprobs)
    assert math.isfinite(a.logprobs.sum().item())


def test_sampling_in_chunks_equals_one_call(tiny_qwen):
    """extras.fast_rollout.in_chunks: a step's rollouts in chunks that fit in memory, merged with
    the prompts re-padded on the left, give the tokens and log-probs of one call (greedy)."""
    from extras.fast_rollout import in_chunks
    model, tok = tiny_qwen
    prompts = ["a b c d e f g", "x", "hello there", "1 2 3", "q"]
    whole = rollout.sample(model, tok, prompts, 6, temperature=0.0)
    parts = in_chunks(rollout.sample, 2)(model, tok, prompts, 6, temperature=0.0, seed=0)
    assert parts.texts == whole.texts
    assert torch.equal(parts.lengths, whole.lengths)
    T = whole.completion_ids.shape[1]
    assert torch.equal(parts.completion_ids[:, :T], whole.completion_ids)
    torch.testing.assert_close(parts.logprobs[:, :T], whole.logprobs, atol=1e-5, rtol=0)
    again = rollout.token_logprobs(model, parts.input_ids, parts.attention_mask, parts.completion_start)
    torch.testing.assert_close(again * parts.completion_mask, parts.logprobs, atol=1e-4, rtol=0)


def test_sampling_in_chunks_keeps_the_rows_of_a_last_chunk_of_several(tiny_qwen):
    """A last chunk of two distinct rows (6 prompts in chunks of 4), row by row against one call:
    rows of a chunk put back in another order would fail here."""
    from extras.fast_rollout import in_chunks
    model, tok = tiny_qwen
    prompts = ["a b c d e f g", "x", "hello there", "1 2 3", "q r s", "the end of it"]
    whole = rollout.sample(model, tok, prompts, 6, temperature=0.0)
    parts = in_chunks(rollout.sample, 4)(model, tok, prompts, 6, temperature=0.0, seed=0)
    assert whole.texts[4] != whole.texts[5]   # the last chunk's rows tell apart
    T = whole.completion_ids.shape[1]
    for i in range(len(prompts)):
        assert parts.texts[i] == whole.texts[i], i
        assert torch.equal(parts.completion_ids[i, :T], whole.completion_ids[i]), i
        torch.testing.assert_close(parts.logprobs[i, :T], whole.logprobs[i], atol=1e-5, rtol=0)
