"""Routers beyond the paper: discounted UCB and Gaussian Thompson sampling (``make_router("ucb")``,
``make_router("thompson")``).

The paper's router is a softmax over EMA logits with hand-set annealing; its future work asks for
other routing strategies. These are the two textbook bandits for rewards that drift while the
policy learns. Both subclass ``bandit.LanguageRouter`` and keep its allocation (K_on in ℓ_x, fixed
topics never routed), buffer, step counter, state and logging; only the draw, the update and the
distribution differ. They keep discounted statistics per (context, language), context = (topic,
regions) for regional topics and (topic,) otherwise: one context per region *set*, so unlike the
paper's additive tables a two-region question shares nothing with its single regions.

* ``ucb``: discounted UCB (Garivier & Moulines 2011), index mean_ℓ + c·σ̂·√(2 ln N / n_ℓ); within
  a step each pick adds a virtual count to its language, so a batch spreads out.
* ``thompson``: θ_ℓ ~ N((Σr + n0·m0)/(n_ℓ + n0), σ̂²/(n_ℓ + n0)) per slot, route to argmax θ.

Options: discount (0.95), prior_std (1.0), update_every (1), fixed_topics, regional_topics;
ucb: exploration (c, 1.0); thompson: prior_count (n0, 1.0). bench/router_sim.py compares them
with the paper's router and the fixed mixes (bench/results_router.md: Thompson sampling has the
lowest regret there).
"""
from __future__ import annotations

import heapq
import math

import numpy as np

import bandit
from bandit import LanguageRouter
from extras.router_checks import check_common, check_router


class _DiscountedRouter(LanguageRouter):
    """Discounted sufficient statistics per (context, language): count, Σr and Σr².

    Each update first multiplies every statistic by ``discount``, so an observation k updates
    old weighs discount^k: the estimates follow drifting rewards, and the counts of neglected
    languages shrink, which re-opens exploration of them.
    """
    name = "discounted"
    tables = False   # no A and B rows to log

    def __init__(self, languages, *, discount=0.95, prior_std=1.0, update_every=1,
                 fixed_topics=("translation",), regional_topics=("regional knowledge", "regional")):
        super().__init__(languages, update_every=update_every, fixed_topics=fixed_topics,
                         regional_topics=regional_topics)
        if not 0 < discount <= 1 or prior_std <= 0:
            raise ValueError(f"{self.name} router: need 0 < discount <= 1 and prior_std > 0")
        self.discount, self.prior_std = float(discount), float(prior_std)
        self.stats: dict[tuple, np.ndarray] = {}   # context -> (3, L): n, Σr, Σr²

    def schedule(self) -> dict:
        return {}   # no τ or ε

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

    def moments(self, context):
        """Counts n_ℓ, means (the context mean m0 where n_ℓ = 0), m0, and the noise scale σ̂:
        the pooled within-language std with one pseudo-observation of prior_std²."""
        s = self.stats.get(context)
        if s is None:
            zeros = np.zeros(len(self.languages))
            return zeros, zeros, 0.0, self.prior_std
        n, total = s[0], s[0].sum()
        m0 = float(s[1].sum() / total) if total > 0 else 0.0
        mean = np.where(n > 0, s[1] / np.maximum(n, 1e-12), m0)
        within = float((s[2] - np.where(n > 0, s[1] ** 2 / np.maximum(n, 1e-12), 0.0)).sum())
        dof = total - float((n > 0).sum())
        sigma = math.sqrt(max(within, 0.0) + self.prior_std ** 2) / math.sqrt(max(dof, 0.0) + 1.0)
        return n, mean, m0, max(sigma, 1e-6)

    def state_dict(self) -> dict:
        stats = [[t, list(g), s.tolist()] for (t, g), s in self.stats.items()]
        return {**super().state_dict(), "stats": stats}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.stats = {(t, tuple(g)): np.array(s, dtype=np.float64) for t, g, s in state["stats"]}


class UCBRouter(_DiscountedRouter):
    """Discounted UCB: route to argmax_ℓ mean_ℓ + c·σ̂·√(2 ln N / n_ℓ), N = Σ_ℓ n_ℓ.

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

    def _bonus_scale(self, context, n_picks):
        """n_ℓ, mean_ℓ and c·σ̂·√(2 ln N), where N also counts the n_picks picks being planned."""
        n, mean, _, sigma = self.moments(context)
        return n, mean, self.exploration * sigma * math.sqrt(2.0 * math.log(max(n.sum() + n_picks, 2.0)))

    def indices(self, context, n_picks: int = 0) -> np.ndarray:
        """The UCB index of every language in a context; +inf for a language never played."""
        n, mean, scale = self._bonus_scale(context, n_picks)
        return np.array([mean[j] + scale / math.sqrt(n[j]) if n[j] > 0 else math.inf for j in range(len(n))])

    def _greedy(self, context, n_picks, tie) -> list[int]:
        n, mean, scale = self._bonus_scale(context, n_picks)

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

    def _draw(self, contexts, n_slots, rng) -> list[list[str]]:
        rows_of: dict[tuple, list[int]] = {}
        for row, c in enumerate(contexts):
            rows_of.setdefault(c, []).append(row)
        ties = rng.random((len(rows_of), len(self.languages)))   # random tie-breaking only
        out = [None] * len(contexts)
        for (c, rows), tie in zip(rows_of.items(), ties):
            picks = self._greedy(c, len(rows) * n_slots, tie)
            for k, row in enumerate(rows):
                out[row] = [self.languages[j] for j in picks[k * n_slots:(k + 1) * n_slots]]
        return out

    def _probs(self, context) -> np.ndarray:
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
        """(mean, std) of every language's Gaussian posterior."""
        n, mean, m0, sigma = self.moments(context)
        post_mean = (n * mean + self.prior_count * m0) / (n + self.prior_count)
        return post_mean, sigma / np.sqrt(n + self.prior_count)

    def _draw(self, contexts, n_slots, rng) -> list[list[str]]:
        cache = {c: self.posterior(c) for c in dict.fromkeys(contexts)}
        mean = np.stack([cache[c][0] for c in contexts])[:, None, :]
        sd = np.stack([cache[c][1] for c in contexts])[:, None, :]
        theta = mean + sd * rng.standard_normal((len(contexts), n_slots, len(self.languages)))
        return [[self.languages[j] for j in row] for row in theta.argmax(-1)]

    def _probs(self, context) -> np.ndarray:
        """P(ℓ is the argmax), from 2,000 posterior draws with a private fixed seed so that
        logging never consumes the training generator."""
        mean, sd = self.posterior(context)
        theta = mean + sd * np.random.default_rng(0).standard_normal((2000, len(self.languages)))
        return np.bincount(theta.argmax(-1), minlength=len(self.languages)) / 2000.0


METHODS = ("ucb", "thompson")


def make_router(method: str, languages, **options):
    """Any router by name, its options checked first (one error each, extras/router_checks.py):
    the paper's and its baselines (bandit.METHODS, built by bandit.make_router), or UCBRouter
    and ThompsonRouter (METHODS); the options are the class's keyword arguments."""
    if method in bandit.METHODS:
        check_router(method, languages, options)
        return bandit.make_router(method, languages, **options)
    if method not in METHODS:
        raise ValueError(f"unknown router {method!r}; choose one of "
                         f"{', '.join(bandit.METHODS + METHODS)}")
    build = UCBRouter if method == "ucb" else ThompsonRouter
    check_common(method, build, languages, options)
    return build(languages, **options)
