"""LRPO: language-routed policy optimization, the training loop (paper Algorithm 2).

    python lrpo.py                                        # the built-in world, CPU, minutes
    python lrpo.py --model Qwen/Qwen2.5-1.5B-Instruct     # a real run on one GPU
    python lrpo.py --method grpo                          # the monolingual baseline
    python lrpo.py --plot runs/lrpo                       # redraw a run's plots

One training step, as the paper's Algorithm 2 and the official code (reference/LRPO_SPEC.md §3.7):

    anneal the router's τ, ε                                  bandit.py  (§3.3)
    take B questions; for each, K target languages:           bandit.py  (Alg. 1, Eq. 1)
        K_on in the question's language, K − K_on routed
    build prompts  question + "\\n<|out_lang_ℓ|>"             data.py    (§3.1)
    sample the B·K rollouts                                   rollout.py
    r_k = 𝟙[LID(y_k) = ℓ_k] · calibrated sim(y_k, z)          calibrate.py (Eq. 2–5)
    router.observe(r); every M steps the EMA update          bandit.py  (Eq. 6, 7)
    A_k = group z-score over all K rollouts of a question     loss.py    (GRPO)
    clipped PG + 0.001 · k3 KL to the frozen reference        loss.py
    micro-batched backward, grad-clip 1.0, AdamW step

Baselines (``--method``): ``grpo`` (all K rollouts in the question's language: the paper's
"Monolingual"), and the fixed mixes of the paper's Table 2, ``input-dominant``,
``english-dominant`` and ``uniform``. ``lrpo`` routes with ``--router`` (the paper's bandit by
default; ``ucb`` and ``thompson`` are alternatives beyond the paper).

Precision. On CPU everything is float32 with torch's AdamW. With ``--dtype bfloat16`` (the GPU
default) the model computes and samples in bf16, while the optimizer keeps float32 master
weights and float32 Adam moments (:class:`MasterWeightAdamW`): at the paper's lr of 1e-6 an
update is far below bf16's resolution, so updating bf16 weights directly would lose it.

The official run is on-policy (one mini-batch, one epoch), so the PPO ratio is ≡ 1 and clipping
never acts (spec §3.5). ``--ppo-epochs`` and ``--mini-batch`` make real off-policy updates, with
the old log-probs recomputed by a training forward before the first update.

Everything a run writes goes to ``--out`` (``runlog.py`` lists it: metrics, samples, router
probabilities, evaluations, plots and an atomically written checkpoint); Ctrl-C saves one. ``--resume`` continues a run exactly: every random
draw of step s is seeded from (seed, s), so a resumed run repeats the draws it would have made.
"""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path

METHODS = {"lrpo": None, "grpo": "monolingual", "input-dominant": "input-dominant",
           "english-dominant": "english-dominant", "uniform": "uniform"}


# ----------------------------------------------------------------------------------------------
# Command line

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="toy", help="hub id or local directory of a causal LM, or "
                   "'toy' for the built-in tiny model warm-started on the built-in world")
    g.add_argument("--data", default=None, help="'toy', a recipe (helpsteer3, gsm8k), a .jsonl/"
                   ".json/.parquet file or a hub id; default: toy for --model toy, else helpsteer3")
    g.add_argument("--recipe", default=None, help="convert the rows of --data with a named recipe")
    g.add_argument("--test-fraction", type=float, default=0.1,
                   help="held-out share per language when --data has no test split")
    g.add_argument("--langs", default=None, help="comma-separated rollout languages; default: "
                   "the built-in world's 6 for toy, the paper's 15 otherwise")
    g.add_argument("--prompt-style", default="tag", choices=["tag", "zero"],
                   help="official <|out_lang_xx|> tag, or the paper's Zero system prompt")
    g = p.add_argument_group("method")
    g.add_argument("--method", default="lrpo", choices=list(METHODS),
                   help="lrpo routes with --router; the others are the paper's baselines")
    g.add_argument("--router", default="paper", choices=["paper", "ucb", "thompson", "uniform"],
                   help="router for --method lrpo")
    g.add_argument("--group-size", type=int, default=8, help="K rollouts per question")
    g.add_argument("--orig-lang-min", type=int, default=2, help="K_on rollouts in the question's language")
    g.add_argument("--router-alpha", type=float, default=0.1, help="EMA rate α of the router")
    g.add_argument("--router-update-every", type=int, default=5, help="router update period M (steps)")
    g.add_argument("--reward", default="similarity", choices=["similarity", "verifier"],
                   help="calibrated similarity to the reference (paper), or numeric-answer check")
    g.add_argument("--calibration", default="mean", choices=["mean", "quantile", "none"],
                   help="per-language-pair calibration of the similarity (Eq. 2 / Eq. 3)")
    g.add_argument("--stats", default=None, help="pair-statistics CSV for calibration; default: "
                   "the shipped stats of the built-in world for toy")
    g.add_argument("--encoder", default=None, help="sentence encoder for the similarity: a hub id "
                   "or path (the paper: jhu-clsp/mmBERT-small); default: offline 4-bit e5-small")
    g = p.add_argument_group("optimisation")
    g.add_argument("--questions-per-step", type=int, default=None,
                   help="questions per step (paper: 256); default 16 for toy, 64 otherwise")
    g.add_argument("--max-new-tokens", type=int, default=None, help="default 32 for toy, 1024 otherwise")
    g.add_argument("--temperature", type=float, default=1.0, help="rollout sampling temperature")
    g.add_argument("--lr", type=float, default=None, help="AdamW lr (paper: 1e-6); default 1e-4 for toy")
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--grad-clip", type=float, default=1.0)
    g.add_argument("--kl-coef", type=float, default=0.001, help="k3 KL coefficient (0 drops the reference)")
    g.add_argument("--loss-agg", default="token-mean", help="loss aggregation (see loss.py)")
    g.add_argument("--no-std-norm", action="store_true", help="advantages r − mean, without /std")
    g.add_argument("--steps", type=int, default=None, help="training steps; default 150 for toy")
    g.add_argument("--epochs", type=float, default=None, help="alternatively, passes over the data")
    g.add_argument("--ppo-epochs", type=int, default=1, help="updates per batch of rollouts")
    g.add_argument("--mini-batch", type=int, default=None,
                   help="rollouts per optimizer step (default: all of a step's, i.e. on-policy)")
    g.add_argument("--micro-batch", type=int, default=None,
                   help="rollouts per forward/backward (gradient accumulation); default 128 toy, 8 otherwise")
    g.add_argument("--logprob-micro-batch", type=int, default=None,
                   help="rollouts per no-grad forward (reference / old log-probs); default 4× --micro-batch")
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile each decoder layer for the training forward/backward (fuses "
                   "the element-wise ops; the sampler is unaffected); default: on for cuda")
    g.add_argument("--ref-on-cpu", action="store_true", help="keep the frozen reference on the CPU")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", default=None, help="run folder; default runs/<method>-<model>-s<seed>")
    g.add_argument("--resume", action="store_true", help="continue from --out/checkpoint")
    g.add_argument("--eval-every", type=int, default=None, help="steps between evaluations (0: start and end only)")
    g.add_argument("--eval-size", type=int, default=None, help="test questions per evaluation (default: all for toy, 256)")
    g.add_argument("--save-every", type=int, default=50, help="steps between checkpoints")
    g.add_argument("--samples-per-step", type=int, default=2, help="questions whose completions are logged")
    g.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    g.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="default: bfloat16 on cuda (fp32 master weights), float32 on cpu")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--plot", metavar="RUN_DIR", default=None, help="only redraw the plots of a run")
    args = p.parse_args(argv)

    toy_run = args.model == "toy"
    def default(name, toy_value, real_value):
        if getattr(args, name) is None:
            setattr(args, name, toy_value if toy_run else real_value)
    default("data", "toy", "helpsteer3")
    default("questions_per_step", 16, 64)
    default("max_new_tokens", 32, 1024)
    default("lr", 1e-4, 1e-6)
    default("micro_batch", 128, 8)
    default("eval_every", 50, 50)
    if args.logprob_micro_batch is None:
        args.logprob_micro_batch = 4 * args.micro_batch
    default("eval_size", 10_000, 256)
    if args.steps is None and args.epochs is None:
        args.steps = 150 if toy_run else None
        args.epochs = None if toy_run else 4.0
    if args.orig_lang_min > args.group_size:
        p.error(f"--orig-lang-min ({args.orig_lang_min}) exceeds --group-size ({args.group_size})")
    if args.out is None:
        name = args.model.rstrip("/").split("/")[-1]
        args.out = f"runs/{args.method}-{name}-s{args.seed}"
    return args


# ----------------------------------------------------------------------------------------------
# Set-up

def load_policy(args, torch):
    """The policy, its tokenizer, and the frozen reference (a copy of the initial policy)."""
    import copy
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.startswith("cuda") else "float32"))
    args.device, args.dtype = device, str(dtype).replace("torch.", "")
    if args.model == "toy":
        import toy
        model, tokenizer = toy.load_model_and_tokenizer(device)
        model = model.to(dtype)
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        try:
            tokenizer = AutoTokenizer.from_pretrained(args.model)
            model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device)
        except Exception as e:  # noqa: BLE001 - any failure here means the --model is unusable
            sys.exit(f"error: --model {args.model!r} could not be loaded as a local directory or "
                     f"from the hub (cache): {type(e).__name__}: {e}")
        if tokenizer.chat_template is None:
            sys.exit(f"error: --model {args.model!r} has no chat template; use an instruct model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    if args.compile is None:
        args.compile = device.startswith("cuda")
    if args.compile:
        compile_layers(model)
    reference = None
    if args.kl_coef > 0:
        reference = copy.deepcopy(model).to("cpu" if args.ref_on_cpu else device).eval()
        reference.requires_grad_(False)
        if args.compile:
            compile_layers(reference)
    return model, reference, tokenizer


def compile_layers(model) -> None:
    """Regional compilation: every decoder layer has the same code, so torch.compile builds one
    kernel set for all of them (seconds, not minutes); dynamic shapes avoid a recompile for
    every new sequence length."""
    for layer in model.base_model.layers:
        layer.compile(dynamic=True)


def load_data(args):
    import data
    if args.data == "toy":
        return data.load_examples("toy", split="train"), data.load_examples("toy", split="test")
    try:
        examples = data.load_examples(args.data, recipe=args.recipe)
    except data.DataError as e:
        sys.exit(f"error: --data: {e}")
    return data.split_examples(examples, args.test_fraction, seed=args.seed)


class MasterWeightAdamW:
    """AdamW over float32 master copies of low-precision (bf16) parameters.

    The model keeps computing (and sampling) in bf16; gradients are copied into the float32
    masters, AdamW updates them with float32 moments, and the result is rounded back into the
    model. Memory per parameter: 2 (bf16 weight) + 2 (bf16 grad) + 4 (master) + 8 (moments).
    """

    def __init__(self, params, **adamw_kwargs):
        import torch
        self.params = [p for p in params if p.requires_grad]
        self.masters = [p.detach().float().clone().requires_grad_(True) for p in self.params]
        # fused: one kernel over all tensors on CUDA (the masters are ~4 bytes × params)
        fused = self.masters[0].is_cuda
        self.inner = torch.optim.AdamW(self.masters, fused=fused, **adamw_kwargs)
        self.param_groups = self.inner.param_groups

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    def step(self):
        for p, m in zip(self.params, self.masters):
            m.grad = None if p.grad is None else p.grad.float()
        self.inner.step()
        with __import__("torch").no_grad():
            for p, m in zip(self.params, self.masters):
                p.copy_(m)

    def state_dict(self):
        return {"inner": self.inner.state_dict(), "masters": [m.detach() for m in self.masters]}

    def load_state_dict(self, state):
        import torch
        with torch.no_grad():
            for m, saved in zip(self.masters, state["masters"]):
                m.copy_(saved)
            for p, m in zip(self.params, self.masters):
                p.copy_(m)
        self.inner.load_state_dict(state["inner"])


def make_optimizer(model, args, torch):
    kwargs = dict(lr=args.lr, betas=(0.9, 0.999), weight_decay=args.weight_decay)
    if next(model.parameters()).dtype == torch.float32:
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **kwargs)
    return MasterWeightAdamW(model.parameters(), **kwargs)


def make_scorer(args):
    import calibrate
    if args.reward == "verifier":
        return calibrate.VerifierScorer()
    stats = args.stats
    if stats is None and args.data == "toy" and args.encoder is None:
        stats = str(Path(__file__).parent / "stats" / "toy_e5.csv")
    if stats is None and args.calibration != "none":
        print("[lrpo] warning: no --stats given, so similarities are left uncalibrated; produce "
              "pair statistics with `python calibrate.py stats` (see README)")
    return calibrate.RewardScorer(encoder=args.encoder, stats_path=stats,
                                  calibration=args.calibration if stats else "none")


# ----------------------------------------------------------------------------------------------
# One training step (Algorithm 2)

def step_seed(seed: int, step: int, purpose: int) -> int:
    """A seed for every random draw of a step, so a resumed run repeats the same draws."""
    return (seed * 1_000_003 + step * 7_919 + purpose) % (2**63)


def questions_for_step(n_examples: int, step: int, per_step: int, seed: int) -> list[int]:
    """Indices of a step's questions: an epoch-wise shuffle, a function of (seed, step) only."""
    import numpy as np
    steps_per_epoch = max(1, n_examples // per_step)
    epoch, k = divmod(step, steps_per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n_examples)
    return order[k * per_step:(k + 1) * per_step].tolist()


def generate(model, tokenizer, examples, langs, args, seed: int, temperature: float):
    import data
    import rollout
    prompts = [data.build_prompt(tokenizer, ex.question, lang, args.prompt_style)
               for ex, lang in zip(examples, langs)]
    return rollout.sample(model, tokenizer, prompts, args.max_new_tokens,
                          temperature=temperature, seed=seed)


def score(scorer, args, examples, langs, texts, group_ids):
    references = [ex.answer_number if args.reward == "verifier" else ex.answer for ex in examples]
    if args.reward == "verifier" and any(r is None for r in references):
        bad = next(ex for ex in examples if ex.answer_number is None)
        raise SystemExit(f"error: --reward verifier needs numeric answers, but example {bad.id!r} has none")
    return scorer.score(texts, langs, references, [ex.lang for ex in examples], group_ids)


def sequence_logprobs(model, ids, mask, start, micro_batch, torch):
    """Per-token log-probs of the completions under ``model``, in micro-batches, without grad
    (the frozen reference's, or the old policy's for off-policy updates)."""
    outs = []
    with torch.no_grad():
        for i in range(0, ids.shape[0], micro_batch):
            logp, _ = _trimmed_logprobs(model, ids[i:i + micro_batch], mask[i:i + micro_batch],
                                        start, torch, entropy=False)
            outs.append(torch.nn.functional.pad(logp.float().cpu(), (0, ids.shape[1] - start - logp.shape[1])))
    return torch.cat(outs)


def policy_update(model, reference, optimizer, batch, advantages, args, torch):
    """PPO-style update(s) on one step's rollouts; on-policy (ratio ≡ 1) by default.

    Loss aggregation follows LRPO's verl: token-mean within each micro-batch, divided by the
    number of micro-batches of the optimizer step (gradient accumulation).
    """
    import loss as L
    ids, mask, start, cmask = batch["ids"], batch["mask"], batch["start"], batch["completion_mask"]
    n = ids.shape[0]
    clock = PhaseClock(next(model.parameters()).device, torch)
    ref_logp = None
    if reference is not None:
        ref_logp = sequence_logprobs(reference, ids, mask, start, args.logprob_micro_batch, torch)
    clock.lap("time/update_reference")
    mini = args.mini_batch or n
    off_policy = args.ppo_epochs > 1 or mini < n
    old_logp = sequence_logprobs(model, ids, mask, start, args.logprob_micro_batch, torch) if off_policy else None
    clock.lap("time/update_old_logprobs")
    totals, count, skipped = defaultdict(float), 0, 0
    model.train()
    for epoch in range(args.ppo_epochs):
        for m0 in range(0, n, mini):
            rows = list(range(m0, min(n, m0 + mini)))
            micro = [rows[i:i + args.micro_batch] for i in range(0, len(rows), args.micro_batch)]
            optimizer.zero_grad(set_to_none=True)
            step_ok = True
            for mb in micro:
                idx = torch.tensor(mb)
                logp, ent = _trimmed_logprobs(model, ids[idx], mask[idx], start, torch)
                T = logp.shape[1]
                pick = lambda x: None if x is None else x[idx][:, :T].to(logp.device)
                value, metrics = L.policy_loss(
                    logp.float(), pick(old_logp), advantages[idx].to(logp.device),
                    cmask[idx][:, :T].to(logp.device), ref_logp=pick(ref_logp),
                    kl_coef=args.kl_coef, agg=args.loss_agg, entropy=ent.detach())
                if not torch.isfinite(value):
                    step_ok = False
                    break
                (value / len(micro)).backward()
                for k, v in metrics.items():
                    totals[k] += float(v)
                totals["loss"] += float(value.detach())
                count += 1
            if not step_ok:
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                print("[lrpo] warning: non-finite loss; skipped an optimizer step", file=sys.stderr)
                continue
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            if not torch.isfinite(grad_norm):
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                print("[lrpo] warning: non-finite gradient; skipped an optimizer step", file=sys.stderr)
                continue
            totals["grad_norm"] += float(grad_norm)
            clock.lap("time/update_forward_backward")
            optimizer.step()
            clock.lap("time/update_optimizer")
    model.eval()
    out = {f"train/{k}": v / max(1, count) for k, v in totals.items() if k != "grad_norm"}
    out.update(clock.totals)
    out["train/grad_norm"] = totals["grad_norm"] / max(1, args.ppo_epochs * math.ceil(n / mini) - skipped)
    out["train/skipped_steps"] = skipped
    return out


class PhaseClock:
    """Wall time per phase; on a GPU it synchronises at each lap so the time is the GPU's too."""

    def __init__(self, device, torch):
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.totals = defaultdict(float)
        self.sync()
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.totals[name] += now - self.last
        self.last = now


def _trimmed_logprobs(model, ids, mask, start, torch, entropy: bool = True):
    """token_logprobs on a micro-batch with the columns that are padding in every row cut off
    (left of the longest prompt, right of the longest completion): same values, less work."""
    import rollout
    first = int(mask[:, :start].any(0).float().argmax())
    last = start + int(mask[:, start:].sum(1).max())
    ids, mask = ids[:, first:max(last, start + 1)], mask[:, first:max(last, start + 1)]
    device = next(model.parameters()).device
    out = rollout.token_logprobs(model, ids.to(device), mask.to(device), start - first,
                                 return_entropy=entropy)
    return out if entropy else (out, None)


def train_step(step, state, args, torch):
    """Algorithm 2, one iteration. Returns the step's metrics and the samples to log."""
    import numpy as np
    import loss as L
    model, router, scorer = state["model"], state["router"], state["scorer"]
    timings = {}
    t0 = time.perf_counter()
    router.begin_step(step)
    qidx = questions_for_step(len(state["train"]), step, args.questions_per_step, args.seed)
    questions = [state["train"][i] for i in qidx]
    langs_per_q = router.allocate(questions, args.group_size, args.orig_lang_min,
                                  np.random.default_rng(step_seed(args.seed, step, 1)))
    examples = [q for q, langs in zip(questions, langs_per_q) for _ in langs]
    langs = [lang for langs in langs_per_q for lang in langs]
    group_ids = [g for g, langs in enumerate(langs_per_q) for _ in langs]

    roll = generate(model, state["tokenizer"], examples, langs, args,
                    step_seed(args.seed, step, 2), args.temperature)
    timings["time/rollout"] = time.perf_counter() - t0

    t = time.perf_counter()
    result = score(scorer, args, examples, langs, roll.texts, group_ids)
    rewards = torch.tensor(result.reward, dtype=torch.float32)
    router.observe([ex.topic for ex in examples], [ex.region for ex in examples], langs,
                   result.reward.tolist())
    router_metrics = router.end_step()
    advantages, adv_metrics = L.group_advantages(rewards, group_ids, norm_by_std=not args.no_std_norm)
    timings["time/reward"] = time.perf_counter() - t

    t = time.perf_counter()
    batch = {"ids": torch.cat([roll.prompt_ids, roll.completion_ids], 1).cpu(),
             "mask": torch.cat([roll.prompt_mask, roll.completion_mask], 1).long().cpu(),
             "start": roll.prompt_ids.shape[1], "completion_mask": roll.completion_mask.float().cpu()}
    update = policy_update(model, state["reference"], state["optimizer"], batch, advantages, args, torch)
    timings["time/update"] = time.perf_counter() - t
    timings["time/step"] = time.perf_counter() - t0

    metrics = {"step": step + 1, **result.metrics(), "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
               **{f"adv/{k}": v for k, v in adv_metrics.items()}, **update, **router_metrics,
               "response_length": float(roll.lengths.float().mean()), **timings}
    by_lang = defaultdict(list)
    for lang, r in zip(langs, result.reward):
        by_lang[lang].append(float(r))
    metrics.update({f"reward/{lang}": float(np.mean(v)) for lang, v in sorted(by_lang.items())})
    metrics.update({f"routed/{lang}": len(v) / len(langs) for lang, v in sorted(by_lang.items())})
    samples = [{"step": step + 1, "id": ex.id, "question_lang": ex.lang, "target_lang": lang,
                "question": ex.question, "reference": ex.answer, "completion": text,
                "reward": float(r), "gate": float(g), "predicted_lang": p,
                "raw_similarity": float(s), "advantage": float(a)}
               for ex, lang, text, r, g, p, s, a, gid in zip(
                   examples, langs, roll.texts, result.reward, result.gate, result.predicted_lang,
                   result.raw_similarity, advantages.tolist(), group_ids)
               if gid < args.samples_per_step]
    return metrics, samples


# ----------------------------------------------------------------------------------------------
# Evaluation: greedy answers in each question's own language

def evaluate_policy(state, args, step: int) -> dict:
    """Reward and (where checkable) accuracy per question language on the held-out split.

    Accuracy uses the built-in world's gold values (toy.is_correct) or, for examples with a
    numeric answer, the verifier of calibrate.py. evaluate.py runs the paper's benchmarks.
    """
    import numpy as np
    import calibrate
    examples = state["test"][:args.eval_size]
    langs = [ex.lang for ex in examples]
    roll = generate(state["model"], state["tokenizer"], examples, langs, args, args.seed, 0.0)
    result = score(state["scorer"], args, examples, langs, roll.texts, list(range(len(examples))))
    if args.data == "toy":
        import toy
        correct = [toy.is_correct(ex, text) for ex, text in zip(examples, roll.texts)]
    elif all(ex.answer_number is not None for ex in examples):
        correct = [calibrate.verify_number(text, ex.answer_number, lang=ex.lang)
                   for ex, text in zip(examples, roll.texts)]
    else:
        correct = None
    out = {"step": step, "eval/reward": float(np.mean(result.reward)),
           "eval/in_language": float(np.mean(result.gate))}
    if correct is not None:
        out["eval/accuracy"] = float(np.mean(correct))
    for lang in sorted(set(langs)):
        rows = [i for i, l in enumerate(langs) if l == lang]
        out[f"eval/reward/{lang}"] = float(np.mean(result.reward[rows]))
        if correct is not None:
            out[f"eval/accuracy/{lang}"] = float(np.mean([correct[i] for i in rows]))
        for topic in sorted({examples[i].topic for i in rows}):
            trows = [i for i in rows if examples[i].topic == topic]
            if correct is not None:
                out[f"eval/accuracy/{topic}/{lang}"] = float(np.mean([correct[i] for i in trows]))
    return out


# ----------------------------------------------------------------------------------------------
# Main

def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.plot:
        from extras import runlog
        for path in runlog.plot_run(args.plot):
            print(path)
        return {}
    import torch
    import bandit
    import data
    from extras import runlog

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    if out.exists() and (out / "metrics.jsonl").exists() and not args.resume:
        sys.exit(f"error: {out} already holds a run; pass --resume to continue it or --out elsewhere")
    out.mkdir(parents=True, exist_ok=True)

    train, test = load_data(args)
    langs = args.langs.split(",") if args.langs else (
        list(__import__("toy").LANGS) if args.data == "toy" else list(data.ROLLOUT_LANGUAGES))
    langs = [data.lang_code(l, "--langs") for l in langs]
    model, reference, tokenizer = load_policy(args, torch)
    router_name = METHODS[args.method] or args.router
    router_options = {"alpha": args.router_alpha, "update_every": args.router_update_every} if router_name == "paper" else {}
    state = {"model": model, "reference": reference, "tokenizer": tokenizer, "train": train,
             "test": test, "scorer": make_scorer(args), "optimizer": make_optimizer(model, args, torch),
             "router": bandit.make_router(router_name, langs, **router_options)}
    total = args.steps if args.steps is not None else math.ceil(args.epochs * len(train) / args.questions_per_step)
    start = runlog.load_checkpoint(state, args) if args.resume else 0
    (out / "args.json").write_text(json.dumps(vars(args), indent=2))
    print(f"[lrpo] {args.method} ({router_name} router) on {args.data}: {len(train)} train / "
          f"{len(test)} test questions, languages {','.join(langs)}, {total} steps of "
          f"{args.questions_per_step}×{args.group_size} rollouts, {args.device} {args.dtype}, out {out}")

    stop = state["stop"] = {"requested": False}
    def request_stop(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        print("\n[lrpo] Ctrl-C: finishing this step, then saving a checkpoint (again to abort)")
    previous_handler = signal.signal(signal.SIGINT, request_stop)
    try:
        return run_training(state, args, out, start, total)
    finally:
        signal.signal(signal.SIGINT, previous_handler)


def run_training(state, args, out: Path, start: int, total: int) -> dict:
    """The step loop: evaluate, train, log, checkpoint; evaluate again and plot at the end."""
    import torch
    from tqdm import tqdm
    from extras import runlog
    stop = state["stop"]

    before = None
    if start == 0:
        before = evaluate_policy(state, args, 0)
        runlog.append_jsonl(out / "eval.jsonl", [before])
    bar = tqdm(range(start, total), initial=start, total=total, disable=args.no_progress,
               desc=args.method, dynamic_ncols=True)
    metrics = {}
    for step in bar:
        metrics, samples = train_step(step, state, args, torch)
        runlog.append_jsonl(out / "metrics.jsonl", [metrics])
        runlog.append_jsonl(out / "samples.jsonl", samples)
        state["router"].log_probabilities(out / "router.jsonl", step + 1)
        bar.set_postfix(reward=f"{metrics['reward']:.3f}", gate=f"{metrics['gate']:.2f}",
                        kl=f"{metrics.get('train/kl_loss', 0):.4f}")
        done = step + 1
        if args.eval_every and done % args.eval_every == 0 and done < total:
            runlog.append_jsonl(out / "eval.jsonl", [evaluate_policy(state, args, done)])
        if done % args.save_every == 0 or done == total or stop["requested"]:
            runlog.save_checkpoint(state, args, done)
        if stop["requested"]:
            print(f"[lrpo] saved {out / 'checkpoint'} at step {done}; continue with --resume")
            return metrics
    bar.close()
    after = evaluate_policy(state, args, total)
    runlog.append_jsonl(out / "eval.jsonl", [after])
    if before is None:
        before = json.loads((out / "eval.jsonl").read_text().splitlines()[0])
    print(runlog.before_after_table(before, after))
    for path in runlog.plot_run(out):
        print(f"[lrpo] wrote {path}")
    return {"before": before, "after": after, "last": metrics}


if __name__ == "__main__":
    main()
