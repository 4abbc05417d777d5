"""Router simulator: how well does each router (bandit.py, extras/routers.py) pick the best language?

A synthetic stand-in for LRPO training (paper §3.3), with no model in the loop:

* **Contexts** like the paper's data: topics with Fig. 2's shares (regional knowledge, general
  knowledge, chat, reasoning, safety, translation), regional questions about 11 regions (a few
  about two), question languages with Table 6's shares (87 % of regional questions in the
  region's language, §5).
* **Which language is best differs by context.** Expected reward of a rollout in language ℓ =
  P(the policy follows the language tag) × quality(context, ℓ). Quality has a per-language base
  (English highest), a bonus for the region's own language (+0.12) and its family (+0.04) on
  regional topics, for English on reasoning (+0.08), and a small random offset per
  (context, language).
* **Non-stationary.** As the "policy learns", tag-following rises toward 1 (fastest for English)
  and every (context, language) quality drifts linearly with its own random slope, so the best
  language of some contexts changes during the run.
* **Noise.** A per-question difficulty shared by the group, per-rollout noise, a hard language
  gate (reward 0 if the tag is not followed), rewards clipped to [0, 1].
* **Feedback as in training.** By default the router observes each rollout's group-normalised
  reward, (r − mean_G)/(std_G + 1e-6) over the question's K rollouts (the GRPO advantage, loss.py);
  ``--feedback raw`` gives it the raw rewards instead, as the official code's buffer does.

Per router and seed it counts, over the K − K_on slots after the own-language quota of every
routed question: the regret Σ (best expected reward − expected reward of the chosen language) and
the share of those slots that went to the context's current best language. Same question stream
and world for every router of a seed. Prints a table, saves a plot, and ends with a JSON line
{"lrpo": {"regret": ..., "best_share": ...}, ...}.

    python bench/router_sim.py                      # defaults: 5 seeds × 200 steps × 128 questions
    python bench/router_sim.py --feedback raw --plot runs/router_sim_raw.png
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bandit  # noqa: E402
from extras import routers  # noqa: E402
from extras.router_log import log_router  # noqa: E402


def make_router(name, languages, **options):
    return routers.make_router(name, languages, **options)
from data import ROLLOUT_LANGUAGES, Example  # noqa: E402

LANGS = list(ROLLOUT_LANGUAGES)
# Fig. 2 topic counts (official topic keys) and Table 6 question-language counts (id for "in").
TOPICS = {"Regional Knowledge": 2637, "General Knowledge": 1013, "Chat / Conversational": 687,
          "Reasoning / Logic": 280, "Translation": 210, "Safety / Ethics": 59}
QUESTION_LANGS = {"zh": 2197, "ja": 890, "ar": 643, "ko": 212, "es": 182, "fr": 167, "pt": 111,
                  "de": 107, "ru": 107, "it": 93, "nl": 50, "vi": 43, "pl": 42, "id": 41}
REGIONS = {"China": ("zh", 40), "Japan": ("ja", 20), "South Korea": ("ko", 6), "France": ("fr", 5),
           "Spain": ("es", 4), "Latin America": ("es", 3), "Germany": ("de", 4), "Arab World": ("ar", 12),
           "Russia": ("ru", 4), "Vietnam": ("vi", 2), "Italy": ("it", 3)}
REGION_PAIRS = {("China", "Japan"): 3, ("Japan", "South Korea"): 2, ("France", "Germany"): 2}
FAMILY = {"zh": "cjk", "ja": "cjk", "ko": "cjk", "fr": "rom", "es": "rom", "it": "rom", "pt": "rom",
          "de": "ger", "nl": "ger", "en": "ger", "ru": "sla", "pl": "sla", "ar": "ar", "vi": "vi", "id": "id"}
BASE_QUALITY = {"en": .60, "zh": .57, "es": .55, "fr": .55, "de": .55, "pt": .53, "it": .53, "ru": .53,
                "ja": .53, "nl": .50, "pl": .50, "ko": .50, "ar": .47, "vi": .47, "id": .47}
FOLLOW_AT_START = {"en": .97, "zh": .93, "es": .9, "fr": .9, "de": .9, "pt": .85, "it": .85, "ru": .85,
                   "ja": .88, "nl": .8, "pl": .8, "ko": .82, "ar": .78, "vi": .78, "id": .78}
# Rows: every bandit.METHODS name with its defaults, plus two variants of the paper's router:
# lrpo-eq7, the paper's Eq. 7 on raw means; lrpo-sharp, M = 1 and fast annealing (τ reaches 0.3 at
# step 120, ε 0.2 → 0.01 by step 150), to separate the router's structure from its schedule.
ROUTERS = {"lrpo": ("lrpo", {}), "lrpo-eq7": ("lrpo", {"group_norm": "none"}),
           "lrpo-sharp": ("lrpo", {"update_every": 1, "tau_decay": 0.99, "eps_decay": 0.98}),
           "ucb": ("ucb", {}), "thompson": ("thompson", {}), "uniform": ("uniform", {}),
           "grpo": ("grpo", {}), "input-dominant": ("input-dominant", {}),
           "english-dominant": ("english-dominant", {})}


class World:
    """The contexts, their question languages, and expected rewards over training progress."""

    def __init__(self, seed: int, drift: float = 0.03):
        rng = np.random.default_rng(seed)
        contexts, weights = [], []   # (topic, regions)
        regional_total = sum(w for _, w in REGIONS.values()) + sum(REGION_PAIRS.values())
        for topic, count in TOPICS.items():
            if topic == "Regional Knowledge":
                for regions, w in [((g,), w) for g, (_, w) in REGIONS.items()] + list(REGION_PAIRS.items()):
                    contexts.append((topic, regions))
                    weights.append(count * w / regional_total)
            else:
                contexts.append((topic, ()))
                weights.append(count)
        self.contexts, self.weights = contexts, np.array(weights) / sum(weights)
        C, L = len(contexts), len(LANGS)
        quality = np.tile([BASE_QUALITY[lang] for lang in LANGS], (C, 1))
        for c, (topic, regions) in enumerate(contexts):
            for g in regions:
                local = REGIONS[g][0]
                for j, lang in enumerate(LANGS):
                    if lang == local:
                        quality[c, j] += 0.12 / len(regions) ** 0.5
                    elif FAMILY[lang] == FAMILY[local]:
                        quality[c, j] += 0.04 / len(regions)
                quality[c, LANGS.index("en")] += 0.02
            if topic == "Reasoning / Logic":
                quality[c, LANGS.index("en")] += 0.08
                quality[c, LANGS.index("zh")] += 0.03
            if topic == "General Knowledge":
                quality[c, LANGS.index("en")] += 0.03
        self.quality0 = quality + rng.normal(0, 0.02, (C, L))
        self.slope = 0.08 + rng.normal(0, drift, (C, L))     # shared rise + own drift over the run
        self.follow0 = np.array([FOLLOW_AT_START[lang] for lang in LANGS])
        q_langs, q_w = list(QUESTION_LANGS), np.array(list(QUESTION_LANGS.values()), float)
        self.q_langs, self.q_weights = q_langs, q_w / q_w.sum()

    def quality(self, progress: float) -> np.ndarray:
        return self.quality0 + progress * self.slope

    def follow(self, progress: float) -> np.ndarray:
        return 1 - (1 - self.follow0) * math.exp(-progress / 0.3)

    def expected(self, progress: float) -> np.ndarray:
        """(contexts, languages) expected reward: P(follow tag) × quality."""
        return self.follow(progress)[None, :] * self.quality(progress)

    def questions(self, rng, n: int) -> list[Example]:
        cs = rng.choice(len(self.contexts), size=n, p=self.weights)
        local = rng.random(n) < 0.87             # regional questions: mostly in the local language
        pick_region = rng.integers(0, 2, n)
        other = rng.choice(len(self.q_langs), size=n, p=self.q_weights)
        out = []
        for k, c in enumerate(cs):
            topic, regions = self.contexts[c]
            if regions and local[k]:
                lang = REGIONS[regions[pick_region[k] % len(regions)]][0]
            else:
                lang = self.q_langs[other[k]]
            out.append(Example(id=f"{c}", question="", answer="", lang=lang, topic=topic, region=regions))
        return out


def simulate(router_key: str, seed: int, steps: int, batch: int, K: int, K_on: int,
             feedback: str, log_path: str | None = None, q_noise: float = 0.08,
             noise: float = 0.12) -> dict:
    name, options = ROUTERS[router_key]
    router = make_router(name, LANGS, **options)
    world = World(seed)
    world_rng = np.random.default_rng([seed, 1])    # questions: same stream for every router
    noise_rng = np.random.default_rng([seed, 2])
    router_rng = np.random.default_rng([seed, 3])
    lang_idx = {lang: j for j, lang in enumerate(LANGS)}
    regret_curve, best_curve = np.zeros(steps), np.zeros(steps)
    for step in range(steps):
        progress = step / max(steps - 1, 1)
        expected, quality, follow = world.expected(progress), world.quality(progress), world.follow(progress)
        best = expected.argmax(1)
        questions = world.questions(world_rng, batch)
        router.begin_step(step)
        allocation = router.allocate(questions, K, K_on, router_rng)
        ctx = np.array([int(q.id) for q in questions])
        chosen = np.array([[lang_idx[lang] for lang in langs] for langs in allocation])   # (B, K)
        routed = np.array([not router.is_fixed(q.topic) for q in questions])
        slots = chosen[routed, K_on:]
        c_r = ctx[routed][:, None]
        regret_curve[step] = (expected[c_r, best[c_r]] - expected[c_r, slots]).sum()
        best_curve[step] = (slots == best[c_r]).mean() if slots.size else np.nan
        # rewards: language gate × clipped quality with question- and rollout-level noise
        gate = noise_rng.random(chosen.shape) < follow[chosen]
        r = quality[ctx[:, None], chosen] + noise_rng.normal(0, q_noise, (batch, 1)) \
            + noise_rng.normal(0, noise, chosen.shape)
        r = np.clip(r, 0, 1) * gate
        if feedback == "group":
            r = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-6)
        router.observe([q.topic for q in questions for _ in range(K)],
                       [q.region for q in questions for _ in range(K)],
                       [LANGS[j] for j in chosen.ravel()], r.ravel())
        router.end_step(entropy=False)
        if log_path and (step + 1) % 5 == 0:
            log_router(router, log_path, step + 1)
    n_slots = steps * batch * (K - K_on)
    return {"regret_curve": regret_curve, "best_curve": best_curve,
            "regret": float(regret_curve.sum()), "best_share": float(np.nanmean(best_curve)),
            "best_share_last": float(np.nanmean(best_curve[int(0.8 * steps):])), "slots": n_slots}


def _run(args_tuple):
    return args_tuple[:2], simulate(*args_tuple)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200, help="training steps per run")
    p.add_argument("--batch", type=int, default=128, help="questions per step")
    p.add_argument("--group-size", type=int, default=8, help="K, rollouts per question")
    p.add_argument("--k-on", type=int, default=2, help="K_on, own-language rollouts per question")
    p.add_argument("--seeds", type=int, default=5, help="seeds per router (0..N-1)")
    p.add_argument("--feedback", choices=("group", "raw"), default="group",
                   help="what the router observes: group-normalised rewards (GRPO advantages) or raw")
    p.add_argument("--routers", default=",".join(ROUTERS), help=f"comma list from {list(ROUTERS)}")
    p.add_argument("--plot", default="runs/router_sim.png", help="where to save the plot ('' = none)")
    p.add_argument("--heatmap", default="runs/router_sim_heatmap.png",
                   help="Fig. 3a-style heatmap of the lrpo router's probabilities, seed 0 ('' = none)")
    p.add_argument("--workers", type=int, default=2, help="processes (the CPU here has 2 cores)")
    args = p.parse_args(argv)
    routers = [r.strip() for r in args.routers.split(",") if r.strip()]
    for r in routers:
        if r not in ROUTERS:
            p.error(f"--routers: unknown router {r!r}; choose from {list(ROUTERS)}")

    t0 = time.time()
    log_path = None
    if args.heatmap and "lrpo" in routers:
        log_path = str(Path(args.heatmap).with_suffix(".jsonl"))
        Path(log_path).unlink(missing_ok=True)
    jobs = [(r, s, args.steps, args.batch, args.group_size, args.k_on, args.feedback,
             log_path if (r, s) == ("lrpo", 0) else None)
            for r in routers for s in range(args.seeds)]
    if args.workers > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(args.workers) as pool:
            results = dict(pool.map(_run, jobs))
    else:
        results = dict(map(_run, jobs))
    elapsed = time.time() - t0

    summary = {}
    print(f"router simulator: {args.seeds} seeds × {args.steps} steps × {args.batch} questions, "
          f"K={args.group_size}, K_on={args.k_on}, feedback={args.feedback}, {elapsed:.1f} s")
    print(f"{'router':<17} {'cum. regret':>17} {'regret/slot':>12} {'best share':>11} {'last 20%':>9}")
    for r in routers:
        runs = [results[(r, s)] for s in range(args.seeds)]
        regret = np.array([x["regret"] for x in runs])
        best = np.array([x["best_share"] for x in runs])
        last = np.array([x["best_share_last"] for x in runs])
        summary[r] = {"regret": round(float(regret.mean()), 2), "best_share": round(float(best.mean()), 4)}
        print(f"{r:<17} {regret.mean():>9.1f} ± {regret.std():>5.1f} {regret.mean() / runs[0]['slots']:>12.4f} "
              f"{best.mean():>11.3f} {last.mean():>9.3f}")

    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
        for r in routers:
            regret = np.mean([np.cumsum(results[(r, s)]["regret_curve"]) for s in range(args.seeds)], 0)
            best = np.mean([results[(r, s)]["best_curve"] for s in range(args.seeds)], 0)
            smooth = np.convolve(best, np.ones(10) / 10, mode="valid")
            ax1.plot(regret, label=r)
            ax2.plot(np.arange(len(smooth)) + 9, smooth, label=r)
        ax1.set(xlabel="step", ylabel="cumulative regret (expected reward)", title="regret")
        ax2.set(xlabel="step", ylabel="share of routed slots on the best language",
                title="best-language share (10-step mean)")
        ax1.legend(fontsize=8)
        fig.suptitle(f"router simulator, feedback={args.feedback}, mean of {args.seeds} seeds")
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f"plot: {args.plot}")
    if log_path:
        from extras.plots import plot_router_heatmap
        plot_router_heatmap(log_path, args.heatmap)
        print(f"heatmap: {args.heatmap} (log {log_path})")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    from extras.interrupt import main_with_one_line_ctrl_c
    main_with_one_line_ctrl_c(main, "router_sim")
