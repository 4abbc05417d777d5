"""The language router (paper §3.3, Algorithm 1, Eq. 1, 6, 7) and the baselines' fixed routers.

A question x (language ℓ_x, topic t, regions g) gets K rollouts: K_on in ℓ_x, then K − K_on drawn
    p(ℓ | x) = (1 − ε) · softmax((A[t] + 𝟙[g ≠ ∅] · Σ_g B[g]) / τ)_ℓ + ε / |L|         (Eq. 1)
from the topic matrix A and the region matrix B (rows: topics, regions; columns: L), with
τ = max(τ_min, τ0 · d_τ^n), ε = max(ε_min, ε0 · d_ε^n). Every rollout's reward r enters a buffer;
every M steps r̄_{t,g,ℓ} = mean r (Eq. 6), then A_{t,ℓ} ← (1 − α) A_{t,ℓ} + α r̄ and
B_{g,ℓ} ← (1 − α) B_{g,ℓ} + α r̄ (Eq. 7), and the buffer is cleared. A and B start at 0: uniform.
Where the official code (verl/utils/lang_policy.py) differs, the code is the default:
* group_norm="zscore": each (t, g) bucket's r̄ become (r̄ − mean) / (pop. std + norm_eps) before
  the EMA; "none" is Eq. 7 as printed, "center" only subtracts the mean.
* region_rows="regional-topics": B counts only for regional_topics ("Regional Knowledge", the
  built-in world's "regional"; any case); "any" is the paper's 𝟙[g ≠ ∅]; "none": topic-only.
* Several regions: Eq. 1 sums their rows; the update makes one bucket per region, and A[t] takes
  one EMA step per bucket, in buffer order.
* fixed_topics (default "translation") are never routed, all K in ℓ_x; their rewards and the K_on
  own-language ones are buffered, not those of a language outside L. n counts the router's steps.
* uniform_topics (lrpo.py passes data.UNLABELLED_TOPIC) are routed uniformly, as the code's
  sample() adds no row for topic None (lang_policy.py:131-134); their rewards still update a row.
Ablations: Table 2's FixedRouter mixes "grpo", "input-dominant", "english-dominant", "uniform";
Table 4 "w/o uniform init": topic_prior / region_prior {name: {lang: weight}} giving logits log w,
as the code's mix strings ("en:6,zh:2"); "w/o annealing": tau_decay = eps_decay = 1. Beyond the
paper: UCB and Thompson sampling (extras/routers.py); the per-step log: extras/router_log.py.
"""
from __future__ import annotations

import math

import numpy as np

import data

METHODS = ("lrpo", "grpo", "uniform", "input-dominant", "english-dominant")
GROUP_NORMS = ("zscore", "center", "none")
REGION_ROWS = ("regional-topics", "any", "none")   # when B's rows count (module docstring)
# share of the K rollouts in ℓ_x (None: K_on, the rest uniform over L)
FIXED_MIXES = {"grpo": 1.0, "input-dominant": 0.75, "english-dominant": 0.25, "uniform": None}
PRIOR_FLOOR = 1e-6   # the weight of a language a prior leaves out (the code's mix strings)
MIN_TAU = 1e-6       # τ never divides by less, whatever τ_min a caller sets


def _prior_logits(mix: dict, languages: list[str]) -> np.ndarray:
    """A prior row {lang: weight} as logits log w, log PRIOR_FLOOR where unlisted."""
    return np.log([max(float(mix.get(lang, 0.0)), PRIOR_FLOOR) for lang in languages])


def eq1(logits: np.ndarray, tau: float, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 1 on a context's summed logits z = A[t] + Σ_g B[g]: (softmax(z / τ), and its mixture
    (1 − ε) · softmax + ε / |L|, the distribution a routed slot is drawn from); τ ≥ MIN_TAU."""
    z = logits / max(tau, MIN_TAU)
    soft = np.exp(z - z.max())
    return soft / soft.sum(), (1.0 - eps) * soft / soft.sum() + eps / len(z)


class LanguageRouter:
    """The paper's router: A (topic × L) and B (region × L), Eq. 1 draws, Eq. 6–7 updates."""
    name = "lrpo"
    learns = True   # its distributions change: it buffers rewards and logs τ, ε and entropy

    def __init__(self, languages, *, alpha=0.1, update_every=5, tau0=1.0, tau_min=0.3,
                 tau_decay=0.999, eps0=0.2, eps_min=0.0, eps_decay=0.995, group_norm="zscore",
                 norm_eps=1e-6, fixed_topics=("translation",), region_rows="regional-topics",
                 regional_topics=("regional knowledge", "regional"), topic_prior=None,
                 region_prior=None, uniform_topics=()):
        self.languages = [str(lang) for lang in languages]
        self.index = {lang: i for i, lang in enumerate(self.languages)}
        topic_lists = (fixed_topics, uniform_topics, regional_topics)   # matched in any case
        self.fixed_topics, self.uniform_topics, self.regional_topics = (
            frozenset(str(t).lower() for t in ts) for ts in topic_lists)
        self.region_rows = region_rows
        self.alpha, self.update_every = float(alpha), int(update_every)
        self.group_norm, self.norm_eps = group_norm, float(norm_eps)
        self.tau0, self.tau_min, self.tau_decay = float(tau0), float(tau_min), float(tau_decay)
        self.eps0, self.eps_min, self.eps_decay = float(eps0), float(eps_min), float(eps_decay)
        # the paper's A and B, one row per topic / region; absent rows are zeros (uniform)
        self.A = {str(t): _prior_logits(w, self.languages) for t, w in (topic_prior or {}).items()}
        self.B = {str(g): _prior_logits(w, self.languages) for g, w in (region_prior or {}).items()}
        self.steps_done = 0     # the code's lang_policy_step: end_step() calls so far
        self.last_step = None   # the trainer's step, a label only
        self.seen: dict[tuple, int] = {}   # routed context -> questions routed there
        self.buffer: list[tuple] = []      # (topic, regions, language, reward) per rollout
        self.begin_step()

    # -- contexts -------------------------------------------------------------------------------
    def is_fixed(self, topic) -> bool:
        return str(topic).lower() in self.fixed_topics

    def is_regional(self, topic) -> bool:
        """Whether B's rows count for this topic (region_rows)."""
        if self.region_rows == "regional-topics":
            return str(topic).lower() in self.regional_topics
        return self.region_rows == "any"

    def context(self, topic, region=()) -> tuple:
        """(topic, the regions the router conditions on): none for a non-regional topic."""
        topic, regions = str(topic), data.as_regions(region)
        return (topic, regions if regions and self.is_regional(topic) else ())

    # -- Eq. 1 and Algorithm 1 ------------------------------------------------------------------
    def begin_step(self, step=None) -> None:
        """Anneal τ and ε from the router's own counter, so a resumed run continues the schedule."""
        self.last_step = step
        self.tau = max(self.tau_min, self.tau0 * self.tau_decay ** self.steps_done)
        self.eps = max(self.eps_min, self.eps0 * self.eps_decay ** self.steps_done)

    def schedule(self) -> dict:
        return {"tau": self.tau, "eps": self.eps} if self.learns else {}

    def _probs(self, context) -> np.ndarray:
        """Eq. 1 for a context (topic, regions)."""
        topic, regions = context
        if topic.lower() in self.uniform_topics:
            return np.full(len(self.languages), 1.0 / len(self.languages))
        z = self.A.get(topic, np.zeros(len(self.languages))).copy()
        for g in regions:
            z += self.B.get(g, 0.0)
        return eq1(z, self.tau, self.eps)[1]

    def probabilities(self, topic, region=(), input_lang=None) -> dict[str, float]:
        """The distribution a routed slot is drawn from (Eq. 1 with ε); input_lang is not used."""
        return dict(zip(self.languages, map(float, self._probs(self.context(topic, region)))))

    def _draw(self, contexts, n_slots, rng) -> list[list[str]]:
        # inverse CDF of the ε-mixture, one uniform per slot (the code first draws "explore?")
        cache = {c: self._probs(c) for c in dict.fromkeys(contexts)}
        cdf = np.cumsum(np.stack([cache[c] for c in contexts]), axis=1)
        u = rng.random((len(contexts), n_slots))
        idx = np.minimum((u[:, :, None] >= cdf[:, None, :]).sum(-1), len(self.languages) - 1)
        return [[self.languages[j] for j in row] for row in idx]

    def allocate(self, examples, group_size, orig_lang_min, rng) -> list[list[str]]:
        """Algorithm 1: for each example its K languages, the K_on in ℓ_x first."""
        K, K_on = int(group_size), int(orig_lang_min)
        if K < 1 or not 0 <= K_on <= K:
            raise ValueError(f"need group_size >= 1 and 0 <= orig_lang_min <= group_size, "
                             f"got {K}, {K_on}")
        if not isinstance(rng, np.random.Generator):   # the one source of randomness: exact resume
            raise TypeError(f"rng must be a numpy.random.Generator, "
                            f"got {type(rng).__module__}.{type(rng).__name__}")
        out, routed, contexts = [], [], []
        for i, ex in enumerate(examples):
            if not (isinstance(getattr(ex, "lang", None), str) and ex.lang
                    and hasattr(ex, "topic") and hasattr(ex, "region")):
                raise ValueError(f"examples[{i}] needs .lang (a language code), .topic and "
                                 f".region: {ex!r}")
            if self.is_fixed(ex.topic):
                out.append([ex.lang] * K)
                continue
            ctx = self.context(ex.topic, ex.region)
            self.seen[ctx] = self.seen.get(ctx, 0) + 1
            out.append([ex.lang] * K_on)
            if K_on < K:
                routed.append(i)
                contexts.append(ctx)
        if routed:
            for i, langs in zip(routed, self._draw(contexts, K - K_on, rng)):
                out[i].extend(langs)
        return out

    # -- Eq. 6 and 7 ----------------------------------------------------------------------------
    def observe(self, topics, regions, langs, rewards) -> None:
        """Buffer one (topic, regions, language, reward) per rollout; the four lists are flat."""
        if not len(topics) == len(regions) == len(langs) == len(rewards):
            raise ValueError(f"observe: topics, regions, langs and rewards have {len(topics)}, "
                             f"{len(regions)}, {len(langs)} and {len(rewards)} entries")
        for i, (t, g, lang, r) in enumerate(zip(topics, regions, langs, rewards)):
            r = float(r)
            if not math.isfinite(r):
                raise ValueError(f"observe: rewards[{i}] is {r}; rewards must be finite")
            # a fixed router keeps nothing; as the code, a language outside L has no column
            if lang in self.index and self.learns:
                self.buffer.append((str(t), data.as_regions(g), lang, r))

    def _update(self, buffer) -> None:
        # Eq. 6 per (topic, region, language), as the code aggregates: several regions give one
        # key each, no region the key None (the code's "None" row)
        rewards: dict[tuple, list] = {}
        for topic, regions, lang, r in buffer:
            for g in regions or (None,):
                rewards.setdefault((topic, g, lang), []).append(r)
        means = {key: sum(v) / len(v) for key, v in rewards.items()}
        buckets: dict[tuple, list] = {}
        for (topic, g, _), m in means.items():
            buckets.setdefault((topic, g), []).append(m)
        stats = {b: (float(np.mean(v)), float(np.std(v))) for b, v in buckets.items()}
        for (topic, g, lang), m in means.items():   # insertion order, as the code
            mu, sd = stats[(topic, g)]
            if self.group_norm == "center":
                m = m - mu
            elif self.group_norm == "zscore":
                m = (m - mu) / (sd + self.norm_eps)
            rows = [(self.A, topic)] + [(self.B, g)] * (g is not None and self.is_regional(topic))
            for table, key in rows:   # Eq. 7: B only for regional topics (code)
                cells, j = table.setdefault(key, np.zeros(len(self.languages))), self.index[lang]
                cells[j] = (1 - self.alpha) * cells[j] + self.alpha * m

    def end_step(self, entropy: bool = True) -> dict:
        """Close a step; every update_every-th one learns from the buffer and clears it. Returns
        router/* metrics; router/entropy (mean over seen contexts) is skipped with entropy=False."""
        self.steps_done += 1
        due = self.steps_done % self.update_every == 0
        updated = due and bool(self.buffer)
        if updated:
            self._update(self.buffer)
        if due:
            self.buffer.clear()
        metrics = {"router/updated": float(updated), "router/step": float(self.steps_done),
                   "router/buffer": float(len(self.buffer)),
                   "router/contexts": float(len(self.seen)),
                   **{f"router/{k}": v for k, v in self.schedule().items()}}
        if entropy and self.learns and self.seen:
            ps = [p[p > 0] for p in map(self._probs, self.seen)]
            metrics["router/entropy"] = float(np.mean([-(p * np.log(p)).sum() for p in ps]))
        return metrics

    def state_dict(self) -> dict:
        return {"router": self.name, "languages": self.languages[:], "steps_done": self.steps_done,
                "seen": [[t, list(g), n] for (t, g), n in self.seen.items()],
                "buffer": [[t, list(g), lang, r] for t, g, lang, r in self.buffer],
                "A": {k: v.tolist() for k, v in self.A.items()},
                "B": {k: v.tolist() for k, v in self.B.items()}}

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (("router", self.name), ("languages", self.languages)):
            if state.get(key) != mine:
                raise ValueError(f"router state was saved with {key}={state.get(key)!r}, "
                                 f"but this router has {key}={mine!r}")
        self.steps_done = int(state["steps_done"])
        self.seen = {(t, tuple(g)): int(n) for t, g, n in state["seen"]}
        self.buffer = [(t, tuple(g), lang, float(r)) for t, g, lang, r in state["buffer"]]
        saved = {t: state[t] if t in state else state[old]   # runs saved before issue 20: q_*
                 for t, old in (("A", "q_topic"), ("B", "q_region"))}
        self.A, self.B = ({k: np.array(v, np.float64) for k, v in saved[t].items()} for t in "AB")
        self.begin_step(self.last_step)


class FixedRouter(LanguageRouter):
    """The paper's Table 2 baselines, which learn nothing. The mixes put round-half-up(share · K),
    at least 1, of the K rollouts in ℓ_x whatever K_on is, and the rest in English (K = 8: grpo
    8 + 0, input-dominant 6 + 2, english-dominant 2 + 6; K = 6: 5 + 1, 2 + 4). "uniform" puts K_on
    in ℓ_x and draws the rest uniformly over L: the paper's router at its start, never updated."""
    learns = False

    def __init__(self, languages, mix="uniform", *, english="en", fixed_topics=("translation",)):
        self.name, self.share, self.english = mix, FIXED_MIXES[mix], str(english)
        super().__init__(languages, fixed_topics=fixed_topics)

    def allocate(self, examples, group_size, orig_lang_min, rng) -> list[list[str]]:
        if self.share is not None:
            orig_lang_min = max(1, math.floor(self.share * int(group_size) + 0.5))
        return super().allocate(examples, group_size, orig_lang_min, rng)

    def _draw(self, contexts, n_slots, rng) -> list[list[str]]:
        if self.share is None:
            return super()._draw(contexts, n_slots, rng)
        return [[self.english] * n_slots for _ in contexts]

    def probabilities(self, topic, region=(), input_lang=None) -> dict[str, float]:
        """uniform: a routed slot's distribution. A mix: its shares of the whole group, which
        depend on the question's language input_lang."""
        if self.share is None:
            return super().probabilities(topic, region)
        if input_lang not in self.index:
            raise ValueError(f"{self.name} router: probabilities() needs input_lang among "
                             f"{self.languages} (its mix depends on it), got {input_lang!r}")
        p = dict.fromkeys(self.languages, 0.0)
        p[input_lang] += self.share
        if self.share < 1:
            p[self.english] += 1.0 - self.share
        return p


def make_router(method: str, languages, **options):
    """The router of a method (METHODS): "lrpo" is the paper's, the rest are FixedRouter mixes.
    Options are the chosen class's keyword arguments; extras.routers.make_router checks them
    first, with one error per bad option (the checks are not the algorithm)."""
    if method == "lrpo":
        return LanguageRouter(languages, **options)
    return FixedRouter(languages, method, **options)
