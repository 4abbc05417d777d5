"""rollout.py on CPU with a tiny random Qwen2 built from a config (no downloads)."""
import pytest
import torch

import rollout

CHARS = "abcdefghijklmnopqrstuvwxyz ,.?!0123456789"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Matrices this small gain nothing from threads, and spinning OpenMP threads on a busy
    # 2-core machine made each matmul ~100x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def small_kv_buckets(monkeypatch):
    # 70 new tokens after prompts of <= 30 then cross several attention-length buckets.
    monkeypatch.setattr(rollout, "KV_BUCKET", 32)


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


PROMPTS = ["what is 2 plus 3?", "hi", "the capital of france, please.", "abc"]


def full_forward_logprobs(model, out, temperature=1.0):
    """Reference: one HF forward over prompt + completion, full log_softmax, no chunking."""
    ids, mask = out.input_ids, out.attention_mask
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float() / temperature
    P = out.completion_start
    lp = logits[:, P - 1:-1].log_softmax(-1).gather(-1, ids[:, P:, None]).squeeze(-1)
    return lp * out.completion_mask


@pytest.mark.parametrize("fast", [False, True])
def test_greedy_matches_hf_generate(model, tokenizer, fast):
    # 70 new tokens: the attention length grows through several KV buckets mid-generation.
    out = rollout.sample(model, tokenizer, PROMPTS, 70, temperature=0.0, fast=fast, suppress_eos=True)
    rows = tokenizer(PROMPTS, add_special_tokens=False)["input_ids"]
    P = max(map(len, rows))
    ids = torch.tensor([[0] * (P - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in rows])
    assert torch.equal(out.prompt_ids, ids) and torch.equal(out.prompt_mask, mask)
    hf = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=70,
                        min_new_tokens=70, pad_token_id=0, eos_token_id=1,
                        suppress_tokens=list(range(len(tokenizer), model.config.vocab_size)))
    assert torch.equal(out.completion_ids, hf[:, P:])
    assert out.completion_ids.shape == (4, 70) and out.lengths.tolist() == [70] * 4


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_full_forward_and_token_logprobs(model, tokenizer, temperature):
    out = rollout.sample(model, tokenizer, PROMPTS, 70, temperature=temperature, seed=1, fast=False)
    reference = full_forward_logprobs(model, out, temperature)
    torch.testing.assert_close(out.logprobs, reference, atol=1e-4, rtol=0)
    recomputed = rollout.token_logprobs(model, out.input_ids, out.attention_mask, out.completion_start,
                                        chunk_size=8, temperature=temperature)
    torch.testing.assert_close(out.logprobs, recomputed * out.completion_mask, atol=1e-4, rtol=0)
    assert (out.logprobs[out.completion_mask.bool()] < 0).all()


def test_token_logprobs_chunking_entropy_and_gradients(model, tokenizer):
    out = rollout.sample(model, tokenizer, PROMPTS, 10, seed=3)
    args = (model, out.input_ids, out.attention_mask, out.completion_start)
    model.zero_grad()
    lp_small, ent = rollout.token_logprobs(*args, chunk_size=5, return_entropy=True)
    (lp_small * out.completion_mask).sum().backward()
    grads_small = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    lp_big = rollout.token_logprobs(*args, chunk_size=10_000)
    (lp_big * out.completion_mask).sum().backward()
    torch.testing.assert_close(lp_small, lp_big)
    for a, p in zip(grads_small, model.parameters()):
        torch.testing.assert_close(a, p.grad)
    assert any(g.abs().sum() > 0 for g in grads_small)
    model.zero_grad()
    with torch.no_grad():
        logits = model(input_ids=out.input_ids, attention_mask=out.attention_mask,
                       position_ids=(out.attention_mask.cumsum(1) - 1).clamp(min=0)).logits
        logp = logits[:, out.completion_start - 1:-1].log_softmax(-1)
        torch.testing.assert_close(ent, -(logp.exp() * logp).sum(-1), atol=1e-4, rtol=0)


def test_seed_reproducible_and_fast_equals_readable(model, tokenizer):
    kw = dict(temperature=1.0, top_p=0.9, top_k=20)
    a = rollout.sample(model, tokenizer, PROMPTS, 70, seed=7, fast=False, **kw)
    b = rollout.sample(model, tokenizer, PROMPTS, 70, seed=7, fast=True, check_every=3, **kw)
    c = rollout.sample(model, tokenizer, PROMPTS, 70, generator=torch.Generator().manual_seed(7), **kw)
    d = rollout.sample(model, tokenizer, PROMPTS, 70, seed=8, **kw)
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.completion_ids, c.completion_ids)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=0, rtol=0)
    assert a.texts == b.texts and all(isinstance(t, str) for t in a.texts)
    assert not torch.equal(a.completion_ids, d.completion_ids)


def test_never_samples_padded_vocab_rows(model, tokenizer):
    out = rollout.sample(model, tokenizer, ["a", "b"] * 8, 24, temperature=5.0, seed=0, suppress_eos=True)
    assert out.completion_ids.max() < len(tokenizer) < model.config.vocab_size
    # the padded rows are sampled at this temperature if nothing stops them
    probe = rollout.sample(model, None, [[5], [6]] * 8, 24, temperature=5.0, seed=0, eos_token_ids=[1],
                           suppress_eos=True)
    assert probe.completion_ids.max() >= len(tokenizer)


@pytest.mark.parametrize("fast", [False, True])
def test_eos_handling_and_every_row_finishing_early(model, tokenizer, fast):
    greedy = rollout.sample(model, tokenizer, PROMPTS, 8, temperature=0.0, suppress_eos=True, fast=fast)
    # Declare row 0's 3rd greedy token to be EOS: row 0 must stop there, EOS kept in the mask.
    stop = int(greedy.completion_ids[0, 2])
    first = [int((row == stop).nonzero()[0]) + 1 if (row == stop).any() else 8 for row in greedy.completion_ids]
    out = rollout.sample(model, tokenizer, PROMPTS, 8, temperature=0.0, eos_token_ids=[stop], fast=fast)
    assert out.lengths.tolist() == first and first[0] == 3
    assert out.completion_ids.shape[1] == max(first)
    for i, n in enumerate(first):
        assert torch.equal(out.completion_ids[i, :n], greedy.completion_ids[i, :n])
        assert out.completion_mask[i, :n].eq(1).all() and out.completion_mask[i, n:].eq(0).all()
        assert out.logprobs[i, n:].eq(0).all() and out.logprobs[i, :n].lt(0).all()
        assert out.completion_ids[i, n:].eq(tokenizer.pad_token_id).all()
    # Every row finishes after its first token: the loop stops early and T == 1.
    firsts = greedy.completion_ids[:, 0].unique().tolist()
    early = rollout.sample(model, tokenizer, PROMPTS, 8, temperature=0.0, eos_token_ids=firsts, fast=fast)
    assert early.completion_ids.shape == (4, 1) and early.lengths.tolist() == [1] * 4


def test_max_new_tokens_and_batch_of_one(model, tokenizer):
    out = rollout.sample(model, tokenizer, ["hello"], 5, seed=0, suppress_eos=True)
    assert out.completion_ids.shape == (1, 5) and out.lengths.tolist() == [5]
    assert out.prompt_mask.all() and len(out.texts) == 1
    free = rollout.sample(model, tokenizer, PROMPTS, 5, seed=0)
    assert free.completion_ids.shape[1] <= 5 and (free.lengths <= 5).all()
    ids = rollout.sample(model, tokenizer, [[3, 4, 5], [6]], 3, temperature=0.0)
    assert ids.prompt_ids.tolist() == [[3, 4, 5], [0, 0, 6]]


@pytest.mark.parametrize("prompts, kwargs, match", [
    ([], {}, "non-empty"),
    (["ok", ""], {}, r"prompts\[1\] is empty"),
    ([[1, 2], [3, 999]], {}, r"prompts\[1\]: token id 999"),
    (["ok"], {"temperature": -1.0}, "temperature"),
    (["ok"], {"top_p": 0.0}, "top_p"),
    (["ok"], {"max_new_tokens": 0}, "max_new_tokens"),
])
def test_bad_input_is_named(model, tokenizer, prompts, kwargs, match):
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        rollout.sample(model, tokenizer, prompts, kwargs.pop("max_new_tokens"), **kwargs)
