"""Helpers of the wire tests (test_wiring.py, test_config_fields.py): one lrpo Run set up once per
module on the built-in world, fresh copies of it with other Config values, and taps that record
what each stage of `lrpo.train_step` hands the next. Not a test file (no test_ prefix)."""
from __future__ import annotations

import copy
import dataclasses
import re
from types import SimpleNamespace

import torch

import bandit
import loss
import lrpo
from extras import setup
from extras.divergence import Guard

# 4 questions x 4 rollouts of at most 8 tokens: ~0.5 s a step on one CPU thread
SMALL = ["--questions-per-step", "4", "--group-size", "4", "--max-new-tokens", "8", "--eval-size", "0",
         "--no-progress"]
TAG = re.compile(r"<\|out_lang_(\w+)\|>")
REAL_POLICY_LOSS = loss.policy_loss   # before any Tap replaces it


def translations_meet(train: list) -> list:
    """Four training questions, two of them translations of one item (same id, other language),
    so that a step of 4 questions holds both: a loop that grouped rollouts by the item's id (or
    another key translations share) would merge their groups."""
    by_id: dict = {}
    for ex in train:
        by_id.setdefault(ex.id, []).append(ex)
    pair = next(v for v in by_id.values() if len(v) >= 2 and v[0].topic == "regional")[:2]
    others = [next(e for e in train if e.topic == "arithmetic"),
              next(e for e in train if e.topic == "regional" and e.id != pair[0].id)]
    return pair + others


def base_run(out) -> SimpleNamespace:
    """lrpo.set_up once (data, reward model, toy policy, reference); `fresh` copies it."""
    cfg = lrpo.parse_args(SMALL + ["--out", str(out)])
    run = lrpo.set_up(cfg)
    out.mkdir(parents=True, exist_ok=True)   # router.jsonl is written there each step
    run.train = translations_meet(run.train)
    return SimpleNamespace(run=run, state=copy.deepcopy(run.model.state_dict()))


def fresh(base: SimpleNamespace, model=None, **overrides) -> lrpo.Run:
    """A Run as lrpo.set_up would build it for Config(**overrides) on the same data, reward model
    and (reloaded) initial weights, without loading them again: router, optimizer, guard and the
    speed paths are made anew from the changed Config."""
    run0 = base.run
    cfg = dataclasses.replace(run0.cfg, **overrides)
    if model is None:
        model = run0.model
        model.load_state_dict(base.state)
    reference = run0.reference if cfg.kl_coef > 0 else None
    options = lrpo.router_options(cfg) if cfg.method == "lrpo" else {}
    make_router = bandit.make_router
    if cfg.method not in bandit.METHODS:   # ucb, thompson: as lrpo.set_up
        from extras.routers import make_router
    router = make_router(cfg.method, lrpo.routed_languages(cfg, run0.train + run0.test), **options)
    fast = setup.speed_paths(cfg, model, reference)
    return lrpo.Run(cfg, run0.train, run0.test, model, reference, run0.tokenizer, run0.scorer, router,
                    lrpo.make_optimizer(model, cfg), Guard(cfg.max_skipped), *fast)


class Tap:
    """Records, for one Run, what train_step passes between its stages: the router's allocation
    and observations, the sampler's prompts and rollout, the scorer's result, the update's
    arguments, every log-prob forward (with or without grad) and every policy_loss call, and the
    gradients at each optimizer step. `install` wraps the Run's callables (and loss.policy_loss
    through monkeypatch); the production functions still do all the work."""

    def __init__(self, run: lrpo.Run, monkeypatch):
        self.run = run
        self.allocations, self.observed, self.samples, self.scores = [], [], [], []
        self.updates, self.forwards, self.losses, self.steps = [], [], [], []
        self._wrap(run.router, "allocate", self.allocations)
        self._wrap(run.router, "observe", self.observed)
        run.scorer = _Proxy(run.scorer)   # the scorer is shared by every fresh Run: wrap a proxy
        self._wrap(run.scorer, "score", self.scores)
        run.sample = self._recorded(run.sample, self.samples)
        run.logprobs = self._forward(run.logprobs)
        inner = run.update or lrpo.policy_update
        run.update = self._recorded(inner, self.updates)
        real_loss = REAL_POLICY_LOSS

        def policy_loss(logp, old_logp, advantages, weights, **kw):
            self.losses.append(SimpleNamespace(logp=logp.detach().clone(), old_logp=old_logp, kw=kw,
                                               advantages=advantages.detach().clone(),
                                               weights=weights.detach().clone()))
            return real_loss(logp, old_logp, advantages, weights, **kw)
        monkeypatch.setattr(loss, "policy_loss", policy_loss)
        optimizer, real_step = run.optimizer, run.optimizer.step

        def step():
            params = [p for g in optimizer.param_groups for p in g["params"]]
            self.steps.append([None if p.grad is None else p.grad.detach().clone() for p in params])
            return real_step()
        optimizer.step = step

    @staticmethod
    def _recorded(fn, calls):
        def recorded(*args, **kwargs):
            out = fn(*args, **kwargs)
            calls.append(SimpleNamespace(args=args, kwargs=kwargs, out=out))
            return out
        return recorded

    def _wrap(self, obj, name, calls):
        setattr(obj, name, self._recorded(getattr(obj, name), calls))

    def _forward(self, fn):
        def forward(model, ids, mask, start, **kwargs):
            out = fn(model, ids, mask, start, **kwargs)
            self.forwards.append(SimpleNamespace(model=model, ids=ids.clone(), mask=mask.clone(), start=start,
                                                 grad=torch.is_grad_enabled(), kwargs=kwargs))
            return out
        return forward

    def reset(self):
        for calls in (self.allocations, self.observed, self.samples, self.scores, self.updates,
                      self.forwards, self.losses, self.steps):
            calls.clear()

    def training_forwards(self):
        return [f for f in self.forwards if f.grad]


class _Proxy:
    """An object's attributes, any of which may be replaced on the proxy alone."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)


def row_key(ids: torch.Tensor, mask: torch.Tensor, start: int) -> tuple:
    """A row as the tokens the mask keeps, prompt and completion apart (padding-independent)."""
    return (tuple(ids[:start][mask[:start].bool()].tolist()), tuple(ids[start:][mask[start:].bool()].tolist()))


def restated_advantages(rewards, group_size: int, std_norm: bool) -> torch.Tensor:
    """GRPO's advantages restated (loss.py docstring, verl's compute_grpo_outcome_advantage), over
    consecutive blocks of K rows: (r − mean) / (std + 1e-6), std unbiased; Dr. GRPO: r − mean."""
    r = torch.tensor(list(rewards), dtype=torch.float64)
    out = torch.empty_like(r)
    for g in range(0, len(r), group_size):
        block = r[g:g + group_size]
        centred = block - block.mean()
        out[g:g + group_size] = centred / (block.std() + 1e-6) if std_norm else centred
    return out
