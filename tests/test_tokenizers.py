"""The samplers with tokenizers as real chat models have them (issue 33): an EOS and a pad token
added beyond the base vocabulary (Qwen's <|im_end|> is id 151645 of a 151,643-token base
vocabulary), several EOS ids (generation_config.eos_token_id a list, as Qwen2.5's [151645,
151643]), and a chat template written with added tokens. The toy and SmolLM2 tokenizers have
none of these, so without this file one wrong attribute (the base `vocab_size` instead of
`len(tokenizer)`) would ban EOS and no row would ever end, unseen.

A tiny random Qwen2 whose output head adds a large logit to one chosen id makes every row's
first token that id (whatever the noise), so "the row ends at EOS" is one exact assertion."""
import copy
import functools

import pytest
import torch

import data
import rollout
from extras import any_model, fast_rollout

SAMPLERS = {
    "core": rollout.sample,
    "any_model": any_model.sample,
    "fast": functools.partial(fast_rollout.sample, fast=True),       # its own loop, eager on CPU
    "fast_eager": functools.partial(fast_rollout.sample, fast=False),
}
TEMPLATE = ("{%- for m in messages %}{{- '<|turn|>' + m['role'] + '\\n' + m['content'] + '<|turn_end|>\\n' }}"
            "{%- endfor %}{%- if add_generation_prompt %}{{- '<|turn|>assistant\\n' }}{%- endif %}")


class Boosted(torch.nn.Module):
    """The model's output head, plus `boost` on the logit of `token` (None: unchanged)."""

    def __init__(self, head):
        super().__init__()
        self.head, self.token, self.boost = head, None, 60.0
        self.out_features, self.weight = head.out_features, head.weight

    def forward(self, hidden):
        logits = self.head(hidden)
        if self.token is not None:
            logits[..., self.token] += self.boost
        return logits


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def chat(toy_tokenizer):
    """(model, tokenizer, ids): the toy BPE tokenizer with <|turn|>, <|turn_end|> (EOS) and
    <|pad|> added after its 1,536 base tokens and a template that uses them; a tiny Qwen2 with
    1,600 embedding rows, whose generation_config names two EOS ids (<|turn_end|>, <|endoftext|>)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    tok = copy.deepcopy(toy_tokenizer)
    base = tok.vocab_size
    tok.add_special_tokens({"eos_token": "<|turn_end|>", "pad_token": "<|pad|>",
                            "additional_special_tokens": ["<|turn|>"]})
    tok.chat_template = TEMPLATE
    ids = {name: tok.convert_tokens_to_ids(name) for name in ("<|turn_end|>", "<|pad|>", "<|turn|>", "<|endoftext|>")}
    assert tok.vocab_size == base and min(ids["<|turn_end|>"], ids["<|pad|>"], ids["<|turn|>"]) >= base
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=1600, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=ids["<|turn_end|>"], pad_token_id=ids["<|pad|>"])
    model = Qwen2ForCausalLM(config).eval()
    assert len(tok) < config.vocab_size   # embedding rows beyond the tokenizer, as Qwen's
    model.generation_config.eos_token_id = [ids["<|turn_end|>"], ids["<|endoftext|>"]]
    model.lm_head = Boosted(model.lm_head)
    return model, tok, ids


def prompts(tok):
    return [data.build_prompt(tok, q, lang) for q, lang in
            [("What is the capital of Greyhaven?", "fr"), ("Wie viel ist 2 + 3?", "de"), ("x", "ja")]]


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("eos", ["<|turn_end|>", "<|endoftext|>"])
def test_rows_end_at_each_eos_of_a_chat_tokenizer(chat, name, eos):
    """The model's favourite token is an EOS: the tokenizer's added one (beyond the base vocabulary)
    or the other id generation_config names. Every row ends at its first token, that EOS, kept in
    the mask; texts skip it (no special token leaks into the reward's text); the template's added
    tokens reached the model as single ids. At temperature 1 and greedy."""
    model, tok, ids = chat
    sample = SAMPLERS[name]
    model.lm_head.token = ids[eos]
    try:
        for temperature in (1.0, 0.0):
            out = sample(model, tok, prompts(tok), 6, temperature=temperature, seed=0)
            assert out.completion_ids[:, 0].tolist() == [ids[eos]] * 3
            assert out.lengths.tolist() == [1, 1, 1] and out.completion_mask.tolist() == [[1.0]] * 3
            assert out.texts == ["", "", ""]
            assert torch.isfinite(out.logprobs).all()
            starts = (out.prompt_ids == ids["<|turn|>"]).sum(1)
            assert starts.tolist() == [2, 2, 2]   # <|turn|>user ... <|turn|>assistant: one id each
            assert out.prompt_ids[out.prompt_mask == 0].eq(ids["<|pad|>"]).all()   # the added pad
    finally:
        model.lm_head.token = None


@pytest.mark.parametrize("name", SAMPLERS)
def test_an_added_id_that_is_not_eos_runs_on_and_suppress_eos_still_bans_it(chat, name):
    """The other side of the same wire: a favourite added token that is no EOS (<|turn|>) does
    not end a row (rows run to max_new_tokens, and decoding skips it); suppress_eos bans the
    added EOS (a fixed-length benchmark never ends early); padded embedding rows are never drawn."""
    model, tok, ids = chat
    sample = SAMPLERS[name]
    try:
        model.lm_head.token = ids["<|turn|>"]
        out = sample(model, tok, prompts(tok), 5, temperature=1.0, seed=0)
        assert out.lengths.tolist() == [5, 5, 5] and out.completion_ids.eq(ids["<|turn|>"]).all()
        assert out.texts == ["", "", ""]
        model.lm_head.token = ids["<|turn_end|>"]
        out = sample(model, tok, prompts(tok), 5, temperature=1.0, seed=0, suppress_eos=True)
        assert out.lengths.tolist() == [5, 5, 5]
        eos = model.generation_config.eos_token_id
        assert not torch.isin(out.completion_ids, torch.tensor(eos)).any()
        assert out.completion_ids.max() < len(tok)
    finally:
        model.lm_head.token = None
