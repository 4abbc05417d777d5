"""LRPO's reward (§3.2, Eqs. 2-5) as plug-ins for distributed trainers: TRL and verl.

The reward itself lives in ``calibrate.py``: r_k = r_lang(y_k) · r_qual(y_k, z), with the gate
r_lang = 1[LID(y_k) = ℓ_k] (Eq. 4) and the calibrated similarity r_qual to the reference z written
in the question language ℓ_x (mean calibration, Eq. 2, by default; quantile, Eq. 3, as an option),
or the numeric verifier of ``extras/verifier.py`` for mGSM-style data. This file only translates
the calling conventions of two trainers into ``score(responses, target_langs, references,
reference_langs)``. Neither ``trl`` nor ``verl`` is imported (they call us), and the scorers are
imported on the first call, so importing this file costs nothing.

**TRL** (``trl.GRPOTrainer(reward_funcs=[...])``). Checked against ``GRPOTrainer._calculate_rewards``
in ``trl/trainer/grpo_trainer.py`` of recent TRL (0.2x and the 1.x line the project's anchors
snapshot, 1.10.0.dev0) and the v0.20 ``trl.rewards`` docs (``(completions, **kwargs) ->
list[float]``). It calls every callable reward as::

    reward_func(prompts=prompts, completions=completions, completion_ids=completion_ids_list,
                **reward_kwargs)     # reward_kwargs: every dataset column but prompt/completion/
                                     # completion_ids, one value per completion, + trainer_state

and logs it under ``reward_func.__name__``. ``completions`` are strings (standard datasets) or
message lists ``[{"role": "assistant", "content": ...}]`` (conversational). Return: list[float]
(None would become NaN; we never return None). Older TRL passed no ``trainer_state`` or
``completion_ids``; ``**kwargs`` absorbs the difference. Columns read, first present wins:

* reference z (similarity mode): ``reference``, else ``answer``;
* gold number (verifier mode): ``answer_number``, else ``reference``, else ``answer``;
* question language ℓ_x: ``reference_lang``, else ``lang``, else ``language`` (codes or names);
* target language ℓ_k: ``target_lang``; without it, ℓ_x (answer in the question's language).

TRL repeats each prompt ``num_generations`` times and normalises rewards inside that group; it has
no per-rollout language routing. So the K rollouts of one TRL group share one ``target_lang``: to
mix languages inside a group, as LRPO does, the router must live in the trainer (LRPO's verl fork).
The prompt (with its reference) keys each group, so a reference is encoded once per call.

**verl.** Two eras, both read in the source (not run end-to-end with verl):

*verl <= 0.7 and LRPO's fork* (``custom_reward_function.path/.name``, ``compute_score`` or
``compute_score_batch``). Checked against volcengine/verl ``verl/workers/reward_manager/naive.py``
and ``batch.py`` (stored commits 10a6180e and abddec4c, the registry-era managers of the 0.5 line
that LRPO's fork pins, 0.5.0.dev; the 0.5.0 and 0.7.0 wheels), ``verl/trainer/ppo/reward.py``
(``get_custom_reward_fn``), and Guochry/LRPO's fork of ``batch.py``:

* NaiveRewardManager: ``compute_score(data_source=, solution_str=, ground_truth=, extra_info=)``,
  returns a float or a dict with ``"score"`` (other keys are logged as ``reward_extra_info``);
* BatchRewardManager: ``compute_score(data_sources=, solution_strs=, ground_truths=,
  extra_infos=, **reward_model.reward_kwargs)`` returns a list of floats or of such dicts.
  In 0.7 the default ``reward_model.use_reward_loop=True`` computes rewards in the reward loop
  below, whose registry has no ``batch``: the batch route there needs ``use_reward_loop=False``.

*verl >= 0.8* (checked in the 0.8.0 and 0.9.1 wheels; the files named are identical in both
unless a line is given for each). The reward runs in ``RewardLoopWorker`` Ray actors
(``reward.num_workers``, default 8) through the reward-loop managers of
``verl/experimental/reward_loop/reward_manager/``: ``naive`` (default), ``dapo``, ``gdpo``,
``rate_limited``, ``remote``; there is **no batch manager**, so only ``compute_score`` applies.
Keys live under ``reward.`` (``trainer/config/reward/reward.yaml:8-19``):
``reward.custom_reward_function.path`` / ``.name`` (default name ``compute_score``),
``reward.reward_manager.name``. ``get_custom_reward_fn`` (``trainer/ppo/reward.py:50-86``) loads
the function and merges ``reward.custom_reward_function.reward_kwargs`` into every call, the
configured kwargs winning (``reward.py:32-38``); that key is not in the yaml, so it takes ``+``.
``NaiveRewardManager.run_single`` (``reward_loop/reward_manager/naive.py:34-99``) calls, once per
response, ``compute_score(data_source=, solution_str=, ground_truth=, extra_info=)``, a sync
function through ``loop.run_in_executor(None, ...)`` (so from a thread pool, :74-84) and an
``async def`` one awaited directly (:66-73); ``extra_info`` is the row's ``extra_info`` column plus
``num_turns``, ``rollout_reward_scores`` and any tool extra fields (:44-52), no other columns;
with a reward-model router it also passes ``reward_router_address=`` and
``reward_model_tokenizer=`` (:58-65; accepted and ignored here). A dict result must have
``"score"``; all its keys go to ``reward_extra_info`` (:86-95), a float is logged as ``acc``.
The legacy top-level keys (``custom_reward_function.*``, ``reward_model.reward_manager``) are
still in the yaml (``trainer/config/legacy_reward_impl.yaml``) but are only moved under
``reward.`` by ``migrate_legacy_reward_impl`` (``experimental/reward_loop/reward_loop.py:39-90``),
which 0.8.0's ``main_ppo`` calls (``trainer/main_ppo.py:47``) and 0.9.1's ``main_ppo`` does not:
there they are silently ignored. Use the ``reward.*`` keys.

Fields and configuration, both eras:

* ``reward_kwargs`` are added to every call: that is how our configuration (``encoder``,
  ``stats_path``, ``calibration``, ``lam``, ``gate``, ``reward``, ``device``, ``output``)
  arrives; environment variables ``LRPO_<KEY>`` (e.g. ``LRPO_STATS_PATH``) fill what the kwargs
  leave out, handy for Ray workers. One scorer is cached per configuration (per process: each
  verl >= 0.8 reward worker loads its own encoder).
* LRPO's fork overwrites ``data_source`` with the rollout's target language (``lang``), puts the
  question language *name* in ``extra_info["language"]`` and the reference z in ``ground_truth``;
  we read the same fields (``extra_info["target_lang"]``, if present, overrides data_source).
  Upstream verl passes the dataset's own ``data_source``, so there put the target language in
  ``extra_info["target_lang"]`` (or make data_source a language code).
  The fork's BatchRewardManager unpacks a 3-tuple ``(scores, embed_scores, consistency_scores)``
  from ``compute_score_batch``: ``output="lrpo_fork"`` returns exactly that. Upstream verl wants
  ``output="dict"`` (default): ``{"score", "embedding_score", "consistency_score"}``, the names
  the official code logs (embedding_score = ungated r_qual, consistency_score = r_lang).
  ``output="float"`` is for older managers that accept only numbers (verl's first
  BatchRewardManager silently turned anything else into 0.0).

verl imports the file by path (as module ``custom_module`` in 0.5; from 0.7 as
``custom_module_<hash>``, not put in ``sys.modules``: ``verl/utils/import_utils.py`` ``load_module``,
0.8.0 :95-133, 0.9.1 :151-189), so the repository is not necessarily on ``sys.path``; we add the
repository root before importing ``calibrate`` or ``extras.verifier``. A relative ``path`` is
resolved against the reward worker's working directory: give an absolute one.

Threads: verl may call the reward from several threads at once. One scorer per configuration is
built under a lock (so an encoder is loaded once), and ``FastRewardScorer`` locks its embedding
cache.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

_HERE = Path(__file__).resolve().parents[1]   # the repository root, where calibrate.py lives

# Configuration keys, their defaults, and the environment variable that can set each one.
DEFAULTS: dict[str, Any] = {"reward": "similarity", "encoder": None, "stats_path": None,
                            "calibration": "mean", "lam": 1.0, "gate": "hard", "device": None,
                            "output": "dict"}
REWARDS = ("similarity", "verifier")
OUTPUTS = ("dict", "float", "lrpo_fork")
ENV_PREFIX = "LRPO_"
# Keywords verl >= 0.8's reward-loop managers pass when a reward-model router is running
# (verl/experimental/reward_loop/reward_manager/naive.py:58-65): accepted, not used, no warning.
TRAINER_KEYWORDS = ("reward_router_address", "reward_model_tokenizer")

TRL_REFERENCE_COLUMNS = ("reference", "answer")
TRL_GOLD_COLUMNS = ("answer_number", "reference", "answer")
TRL_REFERENCE_LANG_COLUMNS = ("reference_lang", "lang", "language")
TRL_TARGET_LANG_COLUMNS = ("target_lang",)

_SCORERS: dict[tuple, Any] = {}   # one scorer (encoder + LID + caches) per configuration
_SCORERS_LOCK = threading.Lock()
_warned_keys: set[str] = set()


def _project(module: str):
    """A module of this repository (``calibrate``, ``extras.verifier``), importable from here."""
    if str(_HERE) not in sys.path:
        sys.path.insert(0, str(_HERE))
    return importlib.import_module(module)


def reward_config(**overrides) -> dict[str, Any]:
    """Defaults, then ``LRPO_<KEY>`` environment variables, then keyword arguments (not None).
    Unknown keywords are ignored with one warning (trainers may pass their own)."""
    config = dict(DEFAULTS)
    for key in DEFAULTS:
        value = os.environ.get(ENV_PREFIX + key.upper())
        if value not in (None, ""):
            config[key] = value
    for key, value in overrides.items():
        if key in TRAINER_KEYWORDS:
            continue
        if key not in DEFAULTS:
            if key not in _warned_keys:
                _warned_keys.add(key)
                warnings.warn(f"reward_adapters: ignoring unknown keyword {key!r} "
                              f"(known: {', '.join(DEFAULTS)})")
            continue
        if value is not None:
            config[key] = value
    config["lam"] = float(config["lam"])
    if config["reward"] not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {config['reward']!r}")
    if config["output"] not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {config['output']!r}")
    if config["stats_path"] is not None:
        config["stats_path"] = str(config["stats_path"])
    return config


def _build_scorer(config: dict[str, Any]):
    if config["reward"] == "verifier":
        return _project("extras.verifier").VerifierScorer(gate=config["gate"])
    if config["calibration"] != "none" and config["stats_path"] is None:
        raise ValueError(
            "reward_adapters: calibration=%r needs stats_path (a CSV from 'python -m "
            "extras.pair_stats'): pass stats_path=... (TRL: make_trl_reward(stats_path=...); verl >= 0.8: "
            "+reward.custom_reward_function.reward_kwargs.stats_path, verl <= 0.7: "
            "+custom_reward_function.reward_kwargs.stats_path) or set LRPO_STATS_PATH; "
            "calibration='none' scores raw similarity" % config["calibration"])
    # The encoder named by config["encoder"] is loaded by calibrate.load_encoder.
    return _project("extras.fast_reward").FastRewardScorer(
        encoder=config["encoder"], stats_path=config["stats_path"], calibration=config["calibration"],
        lam=config["lam"], gate=config["gate"], device=config["device"])


def get_scorer(config: dict[str, Any]):
    """The cached ``FastRewardScorer`` / ``VerifierScorer`` of a configuration (built on first use)."""
    key = tuple(sorted((k, v) for k, v in config.items() if k != "output"))
    # Held while building: threads asking for a new configuration at once must not each load
    # an encoder (a GPU model per thread) and keep different caches.
    with _SCORERS_LOCK:
        if key not in _SCORERS:
            _SCORERS[key] = _build_scorer(config)
        return _SCORERS[key]


def _is_verifier(scorer) -> bool:
    return isinstance(scorer, _project("extras.verifier").VerifierScorer)


# ----------------------------------------------------------------------------------------------
# TRL


def completion_text(completion, where: str = "completion") -> str:
    """The text of a TRL completion: a string, or the assistant messages of a conversation."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and all(isinstance(m, dict) for m in completion):
        parts = []
        for message in completion:
            if message.get("role", "assistant") != "assistant":
                continue
            content = message.get("content", "")
            if isinstance(content, list):   # multimodal content parts: keep the text ones
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(str(content or ""))
        return "\n".join(parts)
    raise TypeError(f"{where}: expected a string or a list of message dicts, "
                    f"got {type(completion).__name__}")


def _prompt_key(prompt) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True,
                                                             ensure_ascii=False, default=str)


def _column(kwargs: dict, names: Sequence[str], n: int, what: str, required: bool = True):
    for name in names:
        if kwargs.get(name) is not None:
            values = list(kwargs[name])
            if len(values) != n:
                raise ValueError(f"TRL reward: column {name!r} has {len(values)} values for "
                                 f"{n} completions")
            return name, values
    if not required:
        return None, None
    columns = sorted(k for k in kwargs if k not in ("trainer_state", "completion_ids"))
    raise KeyError(f"TRL reward: no dataset column for the {what}; looked for "
                   f"{' / '.join(names)}, the batch has {columns}")


def make_trl_reward(scorer=None, name: str = "lrpo_reward", **scorer_kwargs) -> Callable:
    """A reward function ``fn(prompts, completions, **kwargs) -> list[float]`` for TRL's
    ``GRPOTrainer(reward_funcs=[fn])``, logged by TRL under ``name``.

    ``scorer``: a ``calibrate.RewardScorer`` or ``extras.verifier.VerifierScorer`` to use as is;
    otherwise one is built (and cached) on the first call from ``scorer_kwargs`` (``reward``,
    ``encoder``, ``stats_path``, ``calibration``, ``lam``, ``gate``, ``device``) and ``LRPO_*``
    variables. After each call ``fn.last_result`` holds the ``RewardResult`` or ``VerifierResult``
    (``.metrics()`` for logging).
    """
    state = {"scorer": scorer}

    def reward_fn(prompts, completions, **kwargs) -> list[float]:
        if state["scorer"] is None:
            state["scorer"] = get_scorer(reward_config(**scorer_kwargs))
        scorer_ = state["scorer"]
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"TRL reward: {len(prompts)} prompts for {n} completions")
        texts = [completion_text(c, f"completions[{i}]") for i, c in enumerate(completions)]
        verifier = _is_verifier(scorer_)
        ref_col, references = _column(kwargs, TRL_GOLD_COLUMNS if verifier else TRL_REFERENCE_COLUMNS,
                                      n, "gold number" if verifier else "reference answer")
        for i, ref in enumerate(references):
            if ref is None or (isinstance(ref, str) and not ref.strip()):
                raise ValueError(f"TRL reward: column {ref_col!r} is empty at row {i}")
        _, ref_langs = _column(kwargs, TRL_REFERENCE_LANG_COLUMNS, n, "question language")
        _, targets = _column(kwargs, TRL_TARGET_LANG_COLUMNS, n, "target language", required=False)
        group_ids = [(_prompt_key(p), str(r)) for p, r in zip(prompts, references)]
        result = scorer_.score(texts, targets or ref_langs, references, ref_langs, group_ids)
        reward_fn.last_result = result
        return [float(r) for r in result.reward]

    reward_fn.__name__ = reward_fn.__qualname__ = name
    reward_fn.last_result = None
    return reward_fn


# Ready to pass to TRL; configured by LRPO_* environment variables on its first call.
lrpo_reward = make_trl_reward()


# ----------------------------------------------------------------------------------------------
# verl


def _verl_languages(data_source, extra_info, i: int) -> tuple[str, str]:
    """(target language ℓ_k, question language ℓ_x) of one verl row, as codes."""
    data = _project("data")
    extra = extra_info if isinstance(extra_info, dict) else {}
    target = extra.get("target_lang", data_source)
    try:
        target = data.lang_code(target, f"data_sources[{i}]")
    except data.DataError as err:
        raise data.DataError(f"{err}. LRPO's trainer sets data_source to the rollout's target "
                             "language; otherwise put it in extra_info['target_lang']") from None
    for field in ("language", "lang", "reference_lang"):
        if extra.get(field):
            return target, data.lang_code(extra[field], f"extra_infos[{i}][{field!r}]")
    raise KeyError(f"verl reward: extra_infos[{i}] has no question language (looked for "
                   f"'language', 'lang', 'reference_lang'); it has {sorted(extra)}")


def compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos=None, **kwargs):
    """verl <= 0.7 BatchRewardManager entry point (verl >= 0.8 has no batch manager): one reward
    per response (see the module docstring for the fields read and ``output``). Configuration
    comes from ``kwargs`` (verl's ``reward_kwargs``) and ``LRPO_*`` environment variables."""
    config = reward_config(**kwargs)
    scorer = get_scorer(config)
    n = len(solution_strs)
    extra_infos = [None] * n if extra_infos is None else list(extra_infos)
    for name, values in (("data_sources", data_sources), ("ground_truths", ground_truths),
                         ("extra_infos", extra_infos)):
        if len(values) != n:
            raise ValueError(f"verl reward: {len(values)} {name} for {n} solution_strs")
    responses = ["" if s is None else str(s) for s in solution_strs]
    for i, gt in enumerate(ground_truths):
        if gt is None or (isinstance(gt, str) and not gt.strip()):
            raise ValueError(f"verl reward: ground_truths[{i}] is empty (reward_model.ground_truth)")
    langs = [_verl_languages(ds, ex, i) for i, (ds, ex) in enumerate(zip(data_sources, extra_infos))]
    targets, ref_langs = [t for t, _ in langs], [r for _, r in langs]
    verifier = _is_verifier(scorer)
    references = list(ground_truths) if verifier else [str(g) for g in ground_truths]
    result = scorer.score(responses, targets, references, ref_langs)

    scores = [float(r) for r in result.reward]
    quality_name = "correct" if verifier else "embedding_score"
    quality = [float(q) for q in (result.correct if verifier else result.calibrated_similarity)]
    gate = [float(g) for g in result.gate]
    if config["output"] == "float":
        return scores
    if config["output"] == "lrpo_fork":
        return scores, quality, gate
    return [{"score": s, quality_name: q, "consistency_score": g}
            for s, q, g in zip(scores, quality, gate)]


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    """verl NaiveRewardManager entry point (all versions; the only one verl >= 0.8's reward loop
    calls): the reward of one response, a dict with ``"score"`` (``output="dict"``, default) or
    a float (``output="float"``). Synchronous on purpose: verl >= 0.8 runs it in a thread pool,
    and the scorer is thread-safe."""
    if reward_config(**kwargs)["output"] == "lrpo_fork":
        raise ValueError("output='lrpo_fork' is for compute_score_batch (the fork's batch manager)")
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info], **kwargs)[0]
