"""The chunked sampler at temperature 1 (extras.fast_rollout.in_chunks; `--rollout-batch`, and
every GPU step whose rollouts do not fit one call): each chunk draws its own noise (chunk n
seeded seed + n), and its rows are those one unchunked call gives with the same per-row noise,
i.e. chunking re-pads prompts and concatenates rows without changing or reordering any of them.
The greedy tests (test_rollout.py) cannot see the seeds; these sample (issue 33)."""
import functools

import pytest
import torch

import rollout
from extras import fast_rollout
from extras.fast_rollout import in_chunks

PROMPTS = ["a b c d e", "hello there", "x"] * 2   # chunks of 3: the second repeats the first's prompts
T = 6


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(toy_tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=1600, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=toy_tokenizer.eos_token_id,
                         pad_token_id=toy_tokenizer.pad_token_id)
    return Qwen2ForCausalLM(config).eval()


class CoreNoise:
    """rollout._choose_token with its Gumbel noise recorded, one (B, V) tensor per step
    (``drawn``), or replayed from ``replay``; otherwise the same token rule as the core's."""

    def __init__(self, replay=None):
        self.drawn, self.replay = [], replay

    def __call__(self, logits, banned, temperature, top_k, top_p, generator):
        logp = rollout._log_probs(logits, temperature)
        scores = rollout._top_k_top_p(logp.masked_fill(banned, -torch.inf), top_k, top_p)
        if self.replay is None:
            noise = torch.empty_like(scores).exponential_(generator=generator)
            self.drawn.append(noise.clone())
        else:
            noise = self.replay.pop(0)
        token = (scores - noise.log()).argmax(dim=-1)
        return token, logp.gather(1, token[:, None]).squeeze(1)


def whole_batch_noise(calls, sizes, vocab):
    """Per step, the chunks' noise stacked in row order (ones where a chunk had already ended)."""
    steps = max(len(c) for c in calls)
    return [torch.cat([c[t] if t < len(c) else torch.ones(n, vocab) for c, n in zip(calls, sizes)])
            for t in range(steps)]


def assert_same_rows(a, b):
    assert a.texts == b.texts
    assert torch.equal(a.lengths, b.lengths)
    width = int(a.lengths.max())
    assert torch.equal(a.completion_ids[:, :width], b.completion_ids[:, :width])
    torch.testing.assert_close(a.logprobs[:, :width], b.logprobs[:, :width], atol=1e-5, rtol=0)


def test_core_chunks_draw_their_own_noise_and_equal_one_call_with_it(model, toy_tokenizer, monkeypatch):
    """rollout.sample in chunks of 3 at temperature 1: chunk 1 (the same prompts as chunk 0)
    gets other noise and other rows; chunk n's noise is a generator seeded seed + n; one
    unchunked call fed the chunks' noise row by row gives the chunked rows exactly."""
    tok = toy_tokenizer
    plain = in_chunks(rollout.sample, 3)(model, tok, PROMPTS, T, temperature=1.0, seed=7)
    assert plain.texts[:3] != plain.texts[3:]   # same prompts, other noise: other rows
    calls = []
    for n in range(2):   # chunk n alone, seeded 7 + n, its noise recorded
        noise = CoreNoise()
        monkeypatch.setattr(rollout, "_choose_token", noise)
        part = rollout.sample(model, tok, PROMPTS[3 * n:3 * n + 3], T, temperature=1.0, seed=7 + n)
        monkeypatch.undo()
        calls.append(noise.drawn)
        assert_same_rows(part, rollout.sample(model, tok, PROMPTS[3 * n:3 * n + 3], T, temperature=1.0,
                                              seed=7 + n))   # the replica is the core's token rule
        for name in ("completion_ids", "logprobs"):   # the wrapper's chunk n is that call
            width = part.completion_ids.shape[1]
            assert torch.equal(getattr(part, name), getattr(plain, name)[3 * n:3 * n + 3, :width])
    assert not torch.equal(calls[0][0], calls[1][0])
    monkeypatch.setattr(rollout, "_choose_token", CoreNoise(replay=whole_batch_noise(calls, [3, 3], 1600)))
    whole = rollout.sample(model, tok, PROMPTS, T, temperature=1.0, seed=12345)
    assert_same_rows(whole, plain)


@pytest.mark.parametrize("fast", [True, False])
def test_fast_chunks_draw_their_own_noise_and_equal_one_call_with_it(model, toy_tokenizer, monkeypatch, fast):
    """The same for the fast twin (its CPU loop, and its eager twin): chunk n's noise is drawn
    from seed + n; the unchunked call fed that noise row by row gives the chunked rows."""
    tok = toy_tokenizer
    sample = functools.partial(fast_rollout.sample, fast=fast)
    recorded, real_draw = [], fast_rollout._draw_noise

    def record(noise, generator):
        real_draw(noise, generator)
        recorded.append(noise.clone())
    monkeypatch.setattr(fast_rollout, "_draw_noise", record)
    chunked = in_chunks(sample, 3)(model, tok, PROMPTS, T, temperature=1.0, seed=7)
    assert chunked.texts[:3] != chunked.texts[3:]
    per_chunk = [[], []]
    for n in range(2):   # the draws of chunk n alone, seeded 7 + n
        recorded.clear()
        alone = sample(model, tok, PROMPTS[3 * n:3 * n + 3], T, temperature=1.0, seed=7 + n)
        per_chunk[n] = list(recorded)
        width = alone.completion_ids.shape[1]
        assert torch.equal(alone.completion_ids, chunked.completion_ids[3 * n:3 * n + 3, :width])
        assert torch.equal(alone.logprobs, chunked.logprobs[3 * n:3 * n + 3, :width])
    assert not torch.equal(per_chunk[0][0], per_chunk[1][0])
    replay = whole_batch_noise(per_chunk, [3, 3], per_chunk[0][0].shape[1])
    monkeypatch.setattr(fast_rollout, "_draw_noise", lambda noise, generator: noise.copy_(replay.pop(0)))
    whole = sample(model, tok, PROMPTS, T, temperature=1.0, seed=12345)
    assert_same_rows(whole, chunked)
