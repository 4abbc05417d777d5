"""Shared fixtures. Everything is built locally: no test downloads anything."""
import os
import sys
from pathlib import Path

# Nothing in the tests may reach a hub: fail at once instead of retrying a lookup for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def toy_tokenizer():
    import toy
    return toy.train_tokenizer()


@pytest.fixture(scope="session")
def toy_model_and_tokenizer():
    """The default warm-started tiny model (trained once per machine, then read from the cache)."""
    import toy
    return toy.load_model_and_tokenizer(log=lambda *a: None)


@pytest.fixture
def tiny_qwen():
    """A tiny randomly initialised Qwen2 model and the toy tokenizer, for sampler/loss tests."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    import toy
    tok = toy.train_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=1600, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return Qwen2ForCausalLM(config).eval(), tok


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (``pytestmark = pytest.mark.usefixtures(...)``): tiny
    matmuls gain nothing from threads, and OpenMP threads spinning on a busy 2-core machine made
    each one ~100x slower; single-threaded sums also round the same way every run."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
