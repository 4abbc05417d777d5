"""The language router: which languages a question's K rollouts are written in (paper §3.1, §3.3).

LRPO splits the rollout group of a question x (language ℓ_x, topic t(x), regions g(x)) into
K_on rollouts in ℓ_x and K − K_on rollouts in languages chosen by a contextual bandit
(Algorithm 1). The paper's router keeps two tables of logits over the candidate languages L,
A (topic × language) and B (region × language), and samples

    z = A[t(x)] + 𝟙[g(x) ≠ ∅] · Σ_{g ∈ g(x)} B[g]                                         (Eq. 1)
    p(ℓ | x) = (1 − ε) · softmax(z / τ)_ℓ + ε / |L|          (ε-uniform exploration, §3.3)

with τ = max(τ_min, τ0 · d_τ^step) and ε = max(ε_min, ε0 · d_ε^step) annealed from the router's
own step counter. Every rollout's reward goes into a buffer indexed by (topic, region, language);
every M steps the router computes r̄_{t,g,ℓ} = mean reward (Eq. 6) and moves the tables toward it
with an exponential moving average, A_{t,ℓ} ← (1 − α) A_{t,ℓ} + α r̄ and likewise B_{g,ℓ} (Eq. 7).

Paper vs official code (reference/LRPO_SPEC.md §3.2, §3.6, §8). The code is the default:
* ``group_norm="zscore"`` (code): before the EMA, each (topic, region) bucket's per-language means
  are z-scored, (m − mean) / (population std + 1e-6), so the tables hold z-score EMAs, not reward
  estimates. ``group_norm="none"`` is the paper's Eq. 7 on raw means; ``"center"`` subtracts the mean.
* Region logits apply only to *regional topics* (code: topic == "Regional Knowledge"). The default
  ``regional_topics=("regional knowledge", "regional")`` matches the official key and the built-in
  world's "regional" (case-insensitively); ``regional_topics=None`` is the paper's rule 𝟙[g(x) ≠ ∅].
* Multi-region questions sum their region rows; in the update a list of regions expands into one
  bucket per region, and the topic row takes one EMA step per bucket, sequentially (code, §8.3).
* Topics in ``fixed_topics`` (default "translation", case-insensitive) are never routed: all K
  rollouts are in ℓ_x. Their rewards still enter the buffer, as do the K_on own-language ones.
* Unknown topics and regions are zero rows (uniform). Languages outside L (a question in an
  evaluation-only language) still get their K_on own-language slots; their rewards are not buffered.
* The code draws "explore?" then a language; we draw once from the mixture above (same law).

Beyond the paper (its future work asks for other routing strategies), with the same interface:
* ``ucb``: discounted UCB (Garivier & Moulines 2011) per (context, language), context =
  (topic, regions) for regional topics and (topic,) otherwise. Index = mean + c·σ̂·√(2 ln N / n)
  with discounted counts; within a step each pick adds a virtual count so a batch spreads out.
* ``thompson``: Thompson sampling with a Gaussian posterior per (context, language),
  N((Σr + n0·m0)/(n + n0), σ̂²/(n + n0)), discounted counts; one posterior draw per slot.
  Both forget at rate ``discount`` per update, so they track rewards that drift as the policy learns.
* The fixed routers of the paper's ablations (Table 2), as shares of the whole group of K:
  ``monolingual`` (= GRPO, all K in ℓ_x), ``input-dominant`` (75 % ℓ_x, 25 % English),
  ``english-dominant`` (25 % ℓ_x, 75 % English), ``uniform`` (K_on in ℓ_x, the rest uniform over
  L). The ℓ_x count is round-half-up(share · K), at least 1, independent of K_on: K = 8 gives
  6 + 2 and 2 + 6; K = 6 gives 5 + 1 and 2 + 4.

Interface used by the training loop:

    router = make_router(name, languages, **options)      # names: ROUTER_NAMES
    router.begin_step(step)                               # annealing (own counter, as the code)
    langs = router.allocate(examples, group_size, orig_lang_min, rng)   # K languages per example
    router.observe(topics, regions, langs, rewards)       # flat, one entry per rollout
    metrics = router.end_step()                           # every-M update; router/* metrics
    router.probabilities(topic, region) -> {lang: p}      # a routed slot's distribution
    router.state_dict() / router.load_state_dict(state)   # plain JSON-able; exact resume
    router.log_probabilities("router.jsonl", step); plot_router_heatmap("router.jsonl", "r.png")

``rng`` is a ``numpy.random.Generator`` or a ``torch.Generator``; it is the only source of
randomness, so the same generator state and router state give the same languages. ``observe``
takes whatever reward the caller chooses; the official code buffers the raw rollout reward r_k.
``examples`` need ``.lang``, ``.topic`` and ``.region`` (a tuple, empty if none), as data.Example.

Options (``make_router(name, languages, **options)``): all routers take ``fixed_topics``,
``regional_topics`` and ``update_every`` (M; paper default 5, ucb/thompson default 1).
paper: alpha, tau0, tau_min, tau_decay, eps0, eps_min, eps_decay, group_norm, norm_eps.
ucb: discount (0.95), exploration (c, 1.0), prior_std (1.0). thompson: discount (0.95),
prior_count (n0, 1.0), prior_std (1.0). Fixed mixes: english ("en"). ucb and thompson keep one
context per region *set*, so unlike the paper's additive tables they share nothing between a
two-region question and its single regions. bench/router_sim.py compares all of them
(bench/results_router.md: Thompson sampling has the lowest regret there; the paper's router
beats uniform but, with the code's mild annealing, not the fixed input/English mixes).
"""
from __future__ import annotations

import heapq
import json
import math
from pathlib import Path

import numpy as np

ROUTER_NAMES = ("paper", "ucb", "thompson", "monolingual", "input-dominant", "english-dominant",
                "uniform")
GROUP_NORMS = ("zscore", "center", "none")
DEFAULT_FIXED_TOPICS = ("translation",)
DEFAULT_REGIONAL_TOPICS = ("regional knowledge", "regional")


# ----------------------------------------------------------------------------------------------
# Randomness from the caller's generator only

def _is_torch_generator(rng) -> bool:
    return type(rng).__module__.startswith("torch") and type(rng).__name__ == "Generator"


def _uniform(rng, shape) -> np.ndarray:
    if isinstance(rng, np.random.Generator):
        return rng.random(shape)
    if _is_torch_generator(rng):
        import torch
        return torch.rand(shape, generator=rng, dtype=torch.float64, device=rng.device).cpu().numpy()
    raise TypeError(f"rng must be a numpy.random.Generator or a torch.Generator, got {type(rng)}")


def _normal(rng, shape) -> np.ndarray:
    if isinstance(rng, np.random.Generator):
        return rng.standard_normal(shape)
    if _is_torch_generator(rng):
        import torch
        return torch.randn(shape, generator=rng, dtype=torch.float64, device=rng.device).cpu().numpy()
    raise TypeError(f"rng must be a numpy.random.Generator or a torch.Generator, got {type(rng)}")


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _as_regions(region) -> tuple[str, ...]:
    if type(region) is tuple:   # the common case (Example.region), kept as is
        return region
    if region is None or region == "":
        return ()
    if isinstance(region, str):
        return (region,)
    return tuple(str(g) for g in region)


def context_name(context: tuple) -> str:
    """'topic' or 'topic | region1+region2': the key of a context in logs and plots."""
    topic, regions = context
    return topic if not regions else f"{topic} | {'+'.join(regions)}"


# ----------------------------------------------------------------------------------------------
# The common part: quota, fixed topics, buffer, step counter, state, logging

class Router:
    """Allocation, buffering and bookkeeping shared by every router; subclasses decide languages.

    A subclass sets ``name``, and implements ``_draw`` (languages for the routed slots),
    ``_update`` (learn from the buffer), ``_probs`` (a routed slot's distribution in a context)
    and, if it learns, ``_state`` / ``_load_state``.
    """
    name = "router"
    learns = True              # False: nothing changes over training, so nothing to log
    needs_input_lang = False   # True: probabilities() depends on the question's language

    def __init__(self, languages, *, fixed_topics=DEFAULT_FIXED_TOPICS,
                 regional_topics=DEFAULT_REGIONAL_TOPICS, update_every: int = 1):
        self.languages = [str(lang) for lang in languages]
        if not self.languages or len(set(self.languages)) != len(self.languages):
            raise ValueError(f"languages must be a non-empty list without repeats, got {languages!r}")
        if int(update_every) < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}")
        if isinstance(fixed_topics, str) or (regional_topics is not None and isinstance(regional_topics, str)):
            raise ValueError("fixed_topics and regional_topics are sequences of topic names, not one string")
        self.index = {lang: i for i, lang in enumerate(self.languages)}
        self.fixed_topics = frozenset(t.lower() for t in fixed_topics)
        self.regional_topics = None if regional_topics is None else frozenset(t.lower() for t in regional_topics)
        self.update_every = int(update_every)
        self.steps_done = 0      # the code's lang_policy_step: number of end_step() calls
        self.last_step = None    # the trainer's step, as passed to begin_step()
        self.seen: dict[tuple, int] = {}   # routed context -> questions routed there
        self.buffer: list[tuple] = []      # (topic, regions, language, reward) per rollout

    # -- contexts ---------------------------------------------------------------------------
    def is_fixed(self, topic: str) -> bool:
        return str(topic).lower() in self.fixed_topics

    def is_regional(self, topic: str, regions: tuple) -> bool:
        if not regions:
            return False
        return self.regional_topics is None or str(topic).lower() in self.regional_topics

    def context(self, topic, region=()) -> tuple:
        """(topic, regions the router conditions on): regions are dropped for non-regional topics."""
        topic, regions = str(topic), _as_regions(region)
        return (topic, regions if self.is_regional(topic, regions) else ())

    # -- one training step ------------------------------------------------------------------
    def begin_step(self, step=None) -> None:
        """Start a training step. Annealing reads ``steps_done`` (the router's own counter, as the
        code's lang_policy_step), so it survives resume through ``state_dict``; ``step`` is kept
        only as the caller's label."""
        self.last_step = step

    def input_slots(self, group_size: int, orig_lang_min: int) -> int:
        """How many of a routed question's K rollouts are in its own language (K_on by default)."""
        return orig_lang_min

    def allocate(self, examples, group_size: int, orig_lang_min: int, rng) -> list[list[str]]:
        """Target languages for each example's K rollouts: own-language slots first (Alg. 1)."""
        K, K_on = int(group_size), int(orig_lang_min)
        if K < 1 or not 0 <= K_on <= K:
            raise ValueError(f"need group_size >= 1 and 0 <= orig_lang_min <= group_size, got {K}, {K_on}")
        n_own = min(K, max(0, self.input_slots(K, K_on)))
        out, routed, contexts = [], [], []
        for i, ex in enumerate(examples):
            for field in ("lang", "topic", "region"):
                if not hasattr(ex, field):
                    raise ValueError(f"examples[{i}] has no field {field!r} (needs .lang, .topic, .region)")
            if not isinstance(ex.lang, str) or not ex.lang:
                raise ValueError(f"examples[{i}].lang must be a non-empty language code, got {ex.lang!r}")
            if self.is_fixed(ex.topic):
                out.append([ex.lang] * K)
                continue
            ctx = self.context(ex.topic, ex.region)
            self.seen[ctx] = self.seen.get(ctx, 0) + 1
            out.append([ex.lang] * n_own)
            if n_own < K:
                routed.append(i)
                contexts.append(ctx)
        if routed:
            draws = self._draw(contexts, [examples[i].lang for i in routed], K - n_own, rng)
            for i, langs in zip(routed, draws):
                out[i].extend(langs)
        return out

    def observe(self, topics, regions, langs, rewards) -> None:
        """Buffer one (topic, region, language, reward) per rollout; all four lists are flat."""
        n = len(rewards)
        for field, values in (("topics", topics), ("regions", regions), ("langs", langs)):
            if len(values) != n:
                raise ValueError(f"observe: {field} has {len(values)} entries but rewards has {n}")
        for i, (t, g, lang, r) in enumerate(zip(topics, regions, langs, rewards)):
            r = float(r)
            if not math.isfinite(r):
                raise ValueError(f"observe: rewards[{i}] is {r}; rewards must be finite")
            # as the code: rollouts in languages outside L are not buffered; fixed routers keep none
            if lang in self.index and self.learns:
                self.buffer.append((str(t), _as_regions(g), lang, r))

    def end_step(self, entropy: bool = True) -> dict:
        """Close a step: every ``update_every`` steps learn from the buffer and clear it.

        Returns router/* metrics; ``router/entropy`` is the mean entropy of the routed-slot
        distribution over the contexts seen so far (``entropy=False`` skips it, for simulations).
        """
        self.steps_done += 1
        updated = self.steps_done % self.update_every == 0 and bool(self.buffer)
        if updated:
            self._update(self.buffer)
        if self.steps_done % self.update_every == 0:
            self.buffer.clear()
        metrics = {"router/updated": float(updated), "router/step": float(self.steps_done),
                   "router/buffer": float(len(self.buffer)), "router/contexts": float(len(self.seen))}
        entropies = [] if self.needs_input_lang or not entropy else [_entropy(self._probs(c)) for c in self.seen]
        if entropies:
            metrics["router/entropy"] = float(np.mean(entropies))
        return metrics

    def probabilities(self, topic, region=(), input_lang=None) -> dict[str, float]:
        """The distribution a routed (non-quota) slot is drawn from in this context (paper:
        Eq. 1 with ε; ucb: its batch allocation shares; thompson: P(argmax)). The fixed mixes
        return their whole-group shares instead, which depend on ``input_lang``."""
        p = self._probs(self.context(topic, region), input_lang)
        return {lang: float(p[i]) for i, lang in enumerate(self.languages)}

    # -- state and logs ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"router": self.name, "languages": list(self.languages), "steps_done": self.steps_done,
                "seen": [[t, list(g), n] for (t, g), n in self.seen.items()],
                "buffer": [[t, list(g), lang, r] for t, g, lang, r in self.buffer], **self._state()}

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (("router", self.name), ("languages", self.languages)):
            if state.get(key) != mine:
                raise ValueError(f"router state: {key} is {state.get(key)!r}, this router has {mine!r}")
        self.steps_done = int(state["steps_done"])
        self.seen = {(t, tuple(g)): int(n) for t, g, n in state["seen"]}
        self.buffer = [(t, tuple(g), lang, float(r)) for t, g, lang, r in state["buffer"]]
        self._load_state(state)

    def log_probabilities(self, path, step) -> dict | None:
        """Append one JSONL record: the routed-slot distribution of every context seen so far."""
        if not self.learns:
            return None   # fixed routers have nothing that changes over training
        record = {"step": step, "router": self.name, **self._schedule(),
                  "probs": {context_name(c): self.probabilities(c[0], c[1]) for c in self.seen}}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return record

    # -- what subclasses provide ------------------------------------------------------------
    def _draw(self, contexts, input_langs, n_slots, rng) -> list[list[str]]:
        raise NotImplementedError

    def _update(self, buffer) -> None:
        pass

    def _probs(self, context, input_lang=None) -> np.ndarray:
        raise NotImplementedError

    def _schedule(self) -> dict:
        return {}

    def _state(self) -> dict:
        return {}

    def _load_state(self, state) -> None:
        pass


def _sample_rows(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draws: probs (N, L), u (N, S) uniforms -> indices (N, S)."""
    cdf = np.cumsum(probs, axis=1)
    idx = (u[:, :, None] >= cdf[:, None, :]).sum(-1)
    return np.minimum(idx, probs.shape[1] - 1)


# ----------------------------------------------------------------------------------------------
# The paper's router (LRPO): Q tables per topic and per region, softmax with τ, ε-uniform

class PaperRouter(Router):
    name = "paper"

    def __init__(self, languages, *, alpha=0.1, update_every=5, tau0=1.0, tau_min=0.3,
                 tau_decay=0.999, eps0=0.2, eps_min=0.0, eps_decay=0.995, group_norm="zscore",
                 norm_eps=1e-6, **common):
        super().__init__(languages, update_every=update_every, **common)
        if group_norm not in GROUP_NORMS:
            raise ValueError(f"group_norm must be one of {GROUP_NORMS}, got {group_norm!r}")
        checks = {"alpha": 0 < alpha <= 1, "tau0": tau0 > 0, "tau_min": tau_min > 0,
                  "tau_decay": 0 < tau_decay <= 1, "eps0": 0 <= eps0 <= 1, "eps_min": 0 <= eps_min <= 1,
                  "eps_decay": 0 < eps_decay <= 1, "norm_eps": norm_eps >= 0}
        for option, ok in checks.items():
            if not ok:
                raise ValueError(f"paper router: option {option} is out of range")
        self.alpha, self.group_norm, self.norm_eps = float(alpha), group_norm, float(norm_eps)
        self.tau0, self.tau_min, self.tau_decay = float(tau0), float(tau_min), float(tau_decay)
        self.eps0, self.eps_min, self.eps_decay = float(eps0), float(eps_min), float(eps_decay)
        self.q_topic: dict[str, np.ndarray] = {}    # A: topic -> logits over L
        self.q_region: dict[str, np.ndarray] = {}   # B: region -> logits over L
        self.tau, self.eps = self.tau0, self.eps0
        self.begin_step()

    def begin_step(self, step=None) -> None:
        super().begin_step(step)
        self.tau = max(self.tau_min, self.tau0 * self.tau_decay ** self.steps_done)
        self.eps = max(self.eps_min, self.eps0 * self.eps_decay ** self.steps_done)

    def logits(self, context) -> np.ndarray:
        """z = A[t] + Σ_g B[g] (Eq. 1); regions are already empty for non-regional topics."""
        topic, regions = context
        z = self.q_topic.get(topic, np.zeros(len(self.languages))).copy()
        for g in regions:
            z += self.q_region.get(g, 0.0)
        return z

    def _probs(self, context, input_lang=None) -> np.ndarray:
        z = self.logits(context) / max(self.tau, 1e-6)
        soft = np.exp(z - z.max())
        soft /= soft.sum()
        return (1.0 - self.eps) * soft + self.eps / len(self.languages)

    def _draw(self, contexts, input_langs, n_slots, rng):
        cache = {}
        for c in contexts:
            if c not in cache:
                cache[c] = self._probs(c)
        probs = np.stack([cache[c] for c in contexts])
        idx = _sample_rows(probs, _uniform(rng, (len(contexts), n_slots)))
        return [[self.languages[j] for j in row] for row in idx]

    def _update(self, buffer) -> None:
        # Eq. 6: mean reward per (topic, region, language); a list of regions gives one key per
        # region and no region gives "None", exactly as the code's buffer aggregation.
        sums: dict[tuple, list] = {}
        for topic, regions, lang, r in buffer:
            for g in regions or ("None",):
                acc = sums.setdefault((topic, g, lang), [0.0, 0])
                acc[0] += r
                acc[1] += 1
        means = {key: s / n for key, (s, n) in sums.items()}
        bucket_values: dict[tuple, list] = {}
        for (topic, g, _), m in means.items():
            bucket_values.setdefault((topic, g), []).append(m)
        # per (topic, region) bucket: mean and population std of its per-language means
        bucket_stats = {b: (float(np.mean(v)), float(np.std(v))) for b, v in bucket_values.items()}
        for (topic, g, lang), m in means.items():   # insertion order, as the code
            mu, sd = bucket_stats[(topic, g)]
            if self.group_norm == "center":
                m = m - mu
            elif self.group_norm == "zscore":
                m = (m - mu) / (sd + self.norm_eps)
            # Eq. 7: EMA of the topic row, and of the region row for regional topics.
            j, a = self.index[lang], self.alpha
            row = self.q_topic.setdefault(topic, np.zeros(len(self.languages)))
            row[j] = (1 - a) * row[j] + a * m
            if g != "None" and self.is_regional(topic, (g,)):
                row = self.q_region.setdefault(g, np.zeros(len(self.languages)))
                row[j] = (1 - a) * row[j] + a * m

    def _schedule(self) -> dict:
        return {"tau": self.tau, "eps": self.eps}

    def end_step(self, entropy: bool = True) -> dict:
        metrics = super().end_step(entropy)
        metrics.update({"router/tau": self.tau, "router/eps": self.eps})
        return metrics

    def _state(self) -> dict:
        return {"q_topic": {k: v.tolist() for k, v in self.q_topic.items()},
                "q_region": {k: v.tolist() for k, v in self.q_region.items()}}

    def _load_state(self, state) -> None:
        self.q_topic = {k: np.array(v, dtype=np.float64) for k, v in state["q_topic"].items()}
        self.q_region = {k: np.array(v, dtype=np.float64) for k, v in state["q_region"].items()}
        self.begin_step(self.last_step)


# ----------------------------------------------------------------------------------------------
# Stronger bandits beyond the paper: discounted UCB and Gaussian Thompson sampling

class _DiscountedRouter(Router):
    """Discounted sufficient statistics per (context, language): count, sum and sum of squares.

    Each update first multiplies every statistic by ``discount``, so an observation k updates
    old weighs discount^k: the estimates follow rewards that drift while the policy learns, and
    the counts of neglected languages shrink, which re-opens exploration of them.
    """

    def __init__(self, languages, *, discount=0.95, prior_std=1.0, update_every=1, **common):
        super().__init__(languages, update_every=update_every, **common)
        if not 0 < discount <= 1 or prior_std <= 0:
            raise ValueError(f"{self.name} router: need 0 < discount <= 1 and prior_std > 0")
        self.discount, self.prior_std = float(discount), float(prior_std)
        self.stats: dict[tuple, np.ndarray] = {}   # context -> (3, L): n, Σr, Σr²

    def _update(self, buffer) -> None:
        for s in self.stats.values():
            s *= self.discount
        rows_of: dict[tuple, list[int]] = {}
        for k, (topic, regions, _, _) in enumerate(buffer):
            rows_of.setdefault(self.context(topic, regions), []).append(k)
        lang_idx = np.array([self.index[b[2]] for b in buffer])
        rewards = np.array([b[3] for b in buffer])
        L = len(self.languages)
        for context, rows in rows_of.items():
            j, r = lang_idx[rows], rewards[rows]
            s = self.stats.setdefault(context, np.zeros((3, L)))
            s += np.stack([np.bincount(j, minlength=L), np.bincount(j, r, L), np.bincount(j, r * r, L)])

    def _moments(self, context):
        """Counts n_ℓ, means (the context mean m0 where n_ℓ = 0), m0, and the noise scale σ̂."""
        s = self.stats.get(context)
        if s is None:
            zeros = np.zeros(len(self.languages))
            return zeros, zeros, 0.0, self.prior_std
        n, total = s[0], s[0].sum()
        m0 = float(s[1].sum() / total) if total > 0 else 0.0
        mean = np.where(n > 0, s[1] / np.maximum(n, 1e-12), m0)
        within = float((s[2] - np.where(n > 0, s[1] ** 2 / np.maximum(n, 1e-12), 0.0)).sum())
        dof = total - float((n > 0).sum())
        # pooled within-language variance with one pseudo-observation of prior_std²
        sigma = math.sqrt(max(within, 0.0) + self.prior_std ** 2) / math.sqrt(max(dof, 0.0) + 1.0)
        return n, mean, m0, max(sigma, 1e-6)

    def _state(self) -> dict:
        return {"stats": [[t, list(g), s.tolist()] for (t, g), s in self.stats.items()]}

    def _load_state(self, state) -> None:
        self.stats = {(t, tuple(g)): np.array(s, dtype=np.float64) for t, g, s in state["stats"]}

    def _draw(self, contexts, input_langs, n_slots, rng):
        raise NotImplementedError


class UCBRouter(_DiscountedRouter):
    """Discounted UCB: pick argmax_ℓ mean_ℓ + c·σ̂·√(2 ln N / n_ℓ), N = Σ_ℓ n_ℓ.

    A step routes many slots of one context before any reward comes back, so each pick adds a
    virtual count to its language (its mean is unchanged): the batch spreads over the languages
    whose upper bounds are close instead of piling onto one.
    """
    name = "ucb"

    def __init__(self, languages, *, exploration=1.0, **options):
        super().__init__(languages, **options)
        if exploration < 0:
            raise ValueError(f"ucb router: exploration must be >= 0, got {exploration}")
        self.exploration = float(exploration)

    def _greedy(self, context, n_picks, tie) -> list[int]:
        n, mean, _, sigma = self._moments(context)
        scale = self.exploration * sigma * math.sqrt(2.0 * math.log(max(n.sum() + n_picks, 2.0)))

        def neg_index(j, virtual):
            count = n[j] + virtual
            return -math.inf if count <= 0 else -(mean[j] + scale / math.sqrt(count))

        heap = [(neg_index(j, 0), tie[j], j) for j in range(len(self.languages))]
        heapq.heapify(heap)
        virtual, picks = np.zeros(len(self.languages)), []
        for _ in range(n_picks):
            _, _, j = heapq.heappop(heap)
            picks.append(j)
            virtual[j] += 1
            heapq.heappush(heap, (neg_index(j, virtual[j]), tie[j], j))
        return picks

    def _draw(self, contexts, input_langs, n_slots, rng):
        rows_of: dict[tuple, list[int]] = {}
        for row, c in enumerate(contexts):
            rows_of.setdefault(c, []).append(row)
        ties = _uniform(rng, (len(rows_of), len(self.languages)))   # random tie-breaking only
        out = [None] * len(contexts)
        for (c, rows), tie in zip(rows_of.items(), ties):
            picks = self._greedy(c, len(rows) * n_slots, tie)
            for k, row in enumerate(rows):
                out[row] = [self.languages[j] for j in picks[k * n_slots:(k + 1) * n_slots]]
        return out

    def _probs(self, context, input_lang=None) -> np.ndarray:
        """Share of 120 slots the greedy batch would give each language (ties by index)."""
        counts = np.bincount(self._greedy(context, 120, np.arange(len(self.languages))),
                             minlength=len(self.languages))
        return counts / counts.sum()


class ThompsonRouter(_DiscountedRouter):
    """Gaussian Thompson sampling: per slot draw θ_ℓ ~ N((Σr + n0·m0)/(n_ℓ + n0), σ̂²/(n_ℓ + n0))
    for every language and route to argmax θ. The prior (n0 pseudo-rewards at the context mean
    m0) keeps unseen languages as plausible as the average one."""
    name = "thompson"

    def __init__(self, languages, *, prior_count=1.0, **options):
        super().__init__(languages, **options)
        if prior_count <= 0:
            raise ValueError(f"thompson router: prior_count must be > 0, got {prior_count}")
        self.prior_count = float(prior_count)

    def posterior(self, context):
        n, mean, m0, sigma = self._moments(context)
        post_mean = (n * mean + self.prior_count * m0) / (n + self.prior_count)
        return post_mean, sigma / np.sqrt(n + self.prior_count)

    def _draw(self, contexts, input_langs, n_slots, rng):
        cache = {}
        for c in contexts:
            if c not in cache:
                cache[c] = self.posterior(c)
        mean = np.stack([cache[c][0] for c in contexts])[:, None, :]
        sd = np.stack([cache[c][1] for c in contexts])[:, None, :]
        theta = mean + sd * _normal(rng, (len(contexts), n_slots, len(self.languages)))
        return [[self.languages[j] for j in row] for row in theta.argmax(-1)]

    def _probs(self, context, input_lang=None) -> np.ndarray:
        """P(ℓ is the argmax), estimated from 2,000 posterior draws with a private fixed seed so
        that logging never consumes the training generator."""
        mean, sd = self.posterior(context)
        theta = mean + sd * np.random.default_rng(0).standard_normal((2000, len(self.languages)))
        return np.bincount(theta.argmax(-1), minlength=len(self.languages)) / 2000.0


# ----------------------------------------------------------------------------------------------
# The fixed routers of the paper's ablations (Table 2)

class FixedMixRouter(Router):
    """A fixed share of the K rollouts in ℓ_x, the rest in English: round-half-up(share·K) in
    ℓ_x, at least 1, whatever orig_lang_min says (the paper defines these ablations by their
    shares; with K = 8 and K_on = 2 they agree). ``probabilities`` returns the group shares and
    needs ``input_lang``."""
    learns = False
    needs_input_lang = True
    input_share = 1.0

    def __init__(self, languages, *, english="en", **common):
        super().__init__(languages, **common)
        self.english = str(english)

    def input_slots(self, group_size, orig_lang_min):
        return max(1, math.floor(self.input_share * group_size + 0.5))

    def _draw(self, contexts, input_langs, n_slots, rng):
        return [[self.english] * n_slots for _ in contexts]

    def _probs(self, context, input_lang=None) -> np.ndarray:
        if input_lang is None:
            raise ValueError(f"{self.name} router: probabilities() needs input_lang (its mix depends on it)")
        p = np.zeros(len(self.languages))
        for lang, share in ((input_lang, self.input_share), (self.english, 1.0 - self.input_share)):
            if share > 0:
                if lang not in self.index:
                    raise ValueError(f"{self.name} router: language {lang!r} is not among {self.languages}")
                p[self.index[lang]] += share
        return p


class MonolingualRouter(FixedMixRouter):
    name, input_share = "monolingual", 1.0


class InputDominantRouter(FixedMixRouter):
    name, input_share = "input-dominant", 0.75


class EnglishDominantRouter(FixedMixRouter):
    name, input_share = "english-dominant", 0.25


class UniformRouter(Router):
    """K_on rollouts in ℓ_x, the rest uniform over L with replacement (the router at its start)."""
    name = "uniform"
    learns = False

    def _draw(self, contexts, input_langs, n_slots, rng):
        L = len(self.languages)
        idx = np.minimum((_uniform(rng, (len(contexts), n_slots)) * L).astype(int), L - 1)
        return [[self.languages[j] for j in row] for row in idx]

    def _probs(self, context, input_lang=None) -> np.ndarray:
        return np.full(len(self.languages), 1.0 / len(self.languages))


_ROUTERS = {"paper": PaperRouter, "ucb": UCBRouter, "thompson": ThompsonRouter,
            "monolingual": MonolingualRouter, "input-dominant": InputDominantRouter,
            "english-dominant": EnglishDominantRouter, "uniform": UniformRouter}
_ALIASES = {"lrpo": "paper", "grpo": "monolingual"}


def make_router(name: str = "paper", languages=(), **options) -> Router:
    """Build a router by name (ROUTER_NAMES; "lrpo" = "paper", "grpo" = "monolingual").

    Options common to all: fixed_topics, regional_topics, update_every. paper: alpha, update_every
    (M), tau0, tau_min, tau_decay, eps0, eps_min, eps_decay, group_norm, norm_eps. ucb: discount,
    prior_std, exploration. thompson: discount, prior_std, prior_count. Fixed mixes: english.
    """
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in _ROUTERS:
        raise ValueError(f"unknown router {name!r}; choose one of {', '.join(ROUTER_NAMES)}")
    try:
        return _ROUTERS[key](languages, **options)
    except TypeError as e:
        raise TypeError(f"router {key!r}: {e} (see make_router's docstring for its options)") from None


# ----------------------------------------------------------------------------------------------
# The paper's Fig. 3a, as heatmaps: probability of each language per context over training

def plot_router_heatmap(jsonl_path, out_png, contexts=None, max_contexts: int = 12) -> Path:
    """One heatmap per context (languages × logged steps) from a log_probabilities() JSONL."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = []
    with open(jsonl_path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{jsonl_path}:{line_no}: not JSON ({e})") from None
    if not records:
        raise ValueError(f"{jsonl_path}: no router log records")
    if contexts is None:   # contexts present at the end, most specific (regional) ones first
        final = list(records[-1]["probs"])
        contexts = sorted(final, key=lambda c: (" | " not in c, c))[:max_contexts]
    langs = list(next(p for r in records for p in r["probs"].values()))
    cols = min(3, len(contexts))
    rows = math.ceil(len(contexts) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 0.22 * len(langs) * rows + 1.2),
                             squeeze=False)
    for ax, ctx in zip(axes.flat, contexts):
        steps = [r["step"] for r in records if ctx in r["probs"]]
        grid = np.array([[r["probs"][ctx][lang] for r in records if ctx in r["probs"]] for lang in langs])
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, interpolation="nearest")
        ax.set_title(ctx, fontsize=9)
        ax.set_yticks(range(len(langs)), langs, fontsize=7)
        ticks = np.linspace(0, len(steps) - 1, min(6, len(steps))).astype(int)
        ax.set_xticks(ticks, [str(steps[i]) for i in ticks], fontsize=7)
        ax.set_xlabel("step", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    for ax in list(axes.flat)[len(contexts):]:
        ax.axis("off")
    fig.suptitle(f"router probabilities per context ({records[-1].get('router', '?')})", fontsize=10)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
