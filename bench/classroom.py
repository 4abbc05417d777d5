"""The classroom experiment (issue 11), pre-registered in docs/benchmarks_history.md: does routing
help?

    python bench/classroom.py                   # 4 methods × 5 seeds on the 2-core CPU (~1 h)
    python bench/classroom.py --device cuda     # the same on one GPU, several runs at once
    python bench/classroom.py --seeds 0 --steps 60 --methods lrpo grpo   # a few minutes, for a class
    python bench/classroom.py --lrpo-args "--calibration none" --out runs/no-calibration   # exercises

The small-scale analogue of the paper's Table 2. Every method trains the same warm-started tiny
model on the built-in world with the same budget and seeds (each run an ordinary
``python lrpo.py --method M --seed S``, its folder under ``--out``, resumable). Afterwards every
held-out question is answered greedily in its own language and scored **strictly**: right
(``toy.is_correct``) *and* in the question's language (the reward's language-ID gate,
``calibrate.in_language``). The headline cell is the held-out regional questions asked in a
language other than their region's (``toy.question_group`` = "regional/other-q"): the facts the
warm start taught mainly in the region's local language, where routing rollouts to that language
can help. For LRPO − each baseline the script gives the paired difference and a two-level
bootstrap 95% interval (seeds and questions resampled independently, 10,000 times), with the
Holm-adjusted verdict over the three baselines of the claim.

Writes ``<out>/results.json``, ``<out>/results.md`` (the tables) and ``<out>/classroom.png``
(accuracy with intervals; the router's probability of the region's local language over steps).
A finished run (its ``answers.json``) is reused, so an interrupted experiment continues.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import toy  # noqa: E402

METHODS = ("lrpo", "grpo", "uniform", "english-dominant")   # the paper's Table 2; lrpo first
CLAIM_BASELINES = ("grpo", "uniform", "english-dominant")   # the pre-registered comparisons
HEADLINE = "regional/other-q"
SCORING = threading.Lock()
GROUPS = (HEADLINE, "regional/local-q", "arithmetic")


# ----------------------------------------------------------------------------------------------
# Scoring one model on every question of the world

def score_model(model, tokenizer, examples) -> list[dict]:
    """Greedy answer to each question in its own language, scored strictly and leniently."""
    from calibrate import detect_languages, in_language
    answers = toy.greedy_answers(model, tokenizer, examples, [e.lang for e in examples], batch_size=256)
    detected = detect_languages(answers)
    local = {r.name: r.local for r in toy.REGIONS}
    return [{"id": e.id, "lang": e.lang, "group": toy.question_group(e), "answer": a, "answer_lang": d,
             "lenient": bool(toy.is_correct(e, a)), "in_language": bool(in_language(d, e.lang)),
             "strict": bool(toy.is_correct(e, a) and in_language(d, e.lang)),
             "in_local": bool(e.region and d == local[e.region[0]])}
            for e, a, d in zip(examples, answers, detected)]


def score_folder(folder: Path, device: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    return score_splits(model, tokenizer)


def score_splits(model, tokenizer) -> dict:
    return {split: score_model(model, tokenizer, toy.load_split(split)) for split in ("test", "train")}


# ----------------------------------------------------------------------------------------------
# The frozen world: a pre-registered run checks it before training anything

def world_hash(cfg=None) -> str:
    """sha256 of the world's text, exactly as ``toy._cache_key`` keys the warm start: the warm-start
    corpus and every question of the world (in this process, so a patched world counts)."""
    cfg = cfg or toy.WorldConfig()
    text = json.dumps([toy.sft_pairs(cfg), [asdict(e) for e in toy.build_examples(cfg)]],
                      ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def warm_start_key() -> str:
    """The warm-start cache key (world text, WORLD_VERSION, model and warm-start settings)."""
    return toy._cache_key(toy.WorldConfig(), toy.ModelConfig(), toy.WarmStartConfig())


def check_world(expected_hash: str, expected_key: str) -> None:
    """Refuse to run on any world but the frozen one (one line naming what differs)."""
    got_hash, got_key = world_hash(), warm_start_key()
    if got_hash != expected_hash:
        raise SystemExit(f"world text hash {got_hash[:16]}… is not the frozen {expected_hash[:16]}…: "
                         "the world changed since the pre-registration")
    if got_key != expected_key:
        raise SystemExit(f"warm-start key {got_key} is not the frozen {expected_key}: the warm "
                         "start's settings or toy.WORLD_VERSION changed since the pre-registration")


# ----------------------------------------------------------------------------------------------
# Running the methods

def run_one(method: str, seed: int, args) -> dict:
    """Train (or resume) one run with lrpo.py, then score its final checkpoint."""
    out = Path(args.out) / f"{method}-s{seed}"
    answers = out / "answers.json"
    if answers.exists():
        return json.loads(answers.read_text())
    t0 = time.time()
    entry = getattr(args, "entry", [str(ROOT / "lrpo.py")])   # confirm.py: lrpo.py in its world
    cmd = [sys.executable, *entry, "--method", method, "--seed", str(seed),
           "--steps", str(args.steps), "--out", str(out), "--no-progress", "--eval-size", "0",
           "--save-every", "50", "--threads", str(args.threads), "--device", args.device, "--no-compile",
           "--dtype", "float32", *shlex.split(args.lrpo_args)]
    if (out / "config.json").exists() and (out / "checkpoint").exists():
        cmd.append("--resume")
    elif out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    with (Path(args.out) / f"{method}-s{seed}.log").open("w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                              env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if done.returncode != 0:
        raise SystemExit(f"{method} seed {seed} failed (exit {done.returncode}); see {out}.log")
    with SCORING:   # one at a time: a CUDA-graph capture fails if another thread launches kernels
        scores = score_folder(out / "checkpoint", args.device)
    result = {"method": method, "seed": seed, "seconds": time.time() - t0, **scores}
    answers.write_text(json.dumps(result, ensure_ascii=False))
    return result


def strict_by_question(result: dict, split: str, group: str | None, langs=None) -> dict:
    return {(r["id"], r["lang"]): r["strict"] for r in result[split]
            if (group is None or r["group"] == group) and (langs is None or r["lang"] in langs)}


def mean(rows, key="strict", **where) -> float:
    chosen = [r[key] for r in rows if all(r[k] == v for k, v in where.items())]
    return float(np.mean(chosen)) if chosen else float("nan")


# ----------------------------------------------------------------------------------------------
# Analysis: paired two-level bootstrap of LRPO − baseline

def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 10_000, seed: int = 0) -> np.ndarray:
    """Resampled mean differences of (a − b), arrays of shape (seeds, questions): seeds and
    questions are drawn with replacement independently (the same draw for both methods)."""
    diff = (a.astype(float) - b.astype(float))
    n_s, n_q = diff.shape
    rng = np.random.default_rng(seed)
    w_s = np.stack([np.bincount(rng.integers(0, n_s, n_s), minlength=n_s) for _ in range(n_boot)])
    w_q = np.stack([np.bincount(rng.integers(0, n_q, n_q), minlength=n_q) for _ in range(n_boot)])
    return np.einsum("bs,sq,bq->b", w_s, diff, w_q) / (n_s * n_q)


def compare(results: list[dict], baselines, group=HEADLINE, split="test") -> dict:
    """Δ = LRPO − b on the cell, its bootstrap interval and one-sided p, Holm over ``baselines``."""
    tests = compare_pairs(results, [(f"lrpo-{b}", "lrpo", b, group, None) for b in baselines], split)
    return {b: tests[f"lrpo-{b}"] for b in baselines}


def cell_matrix(results: list[dict], method: str, group, langs=None, split="test"):
    """Seeds, question keys and the (seeds × questions) strict 0/1 matrix of one method's cell."""
    runs = sorted((r for r in results if r["method"] == method), key=lambda r: r["seed"])
    if not runs:
        raise SystemExit(f"no finished run of method {method!r}")
    per_seed = [strict_by_question(r, split, group, langs) for r in runs]
    keys = sorted(per_seed[0])
    if not keys or any(sorted(s) != keys for s in per_seed):
        raise SystemExit(f"{method}: the cell {group} {langs or ''} is empty or differs between seeds")
    return [r["seed"] for r in runs], keys, np.array([[s[k] for k in keys] for s in per_seed], dtype=float)


def compare_pairs(results: list[dict], pairs, split="test", margin: float = 0.0,
                  holm: bool = True) -> dict:
    """Paired bootstrap of a − b for each ``(name, a, b, group, langs)``, Holm over all pairs.

    ``margin`` > 0 turns "better" into "not worse by more than margin" (p = P(Δ* ≤ −margin)).
    ``holm=False`` judges each at 95% (an intersection-union claim needs no adjustment)."""
    out = {}
    for name, a, b, group, langs in pairs:
        seeds, keys, x = cell_matrix(results, a, group, langs, split)
        b_seeds, b_keys, y = cell_matrix(results, b, group, langs, split)
        if b_seeds != seeds or b_keys != keys:
            raise SystemExit(f"{a} and {b} were not run on the same seeds and questions")
        boot = paired_bootstrap(x, y)
        out[name] = {"a": a, "b": b, "n_seeds": len(seeds), "n_questions": len(keys),
                     "delta": float((x - y).mean()), "ci95": np.percentile(boot, [2.5, 97.5]).tolist(),
                     "p_one_sided": float(np.mean(boot <= -margin)), "boot": boot}
    # Holm: the smallest p is judged at α/m, the next at α/(m−1), ...; the matching two-sided
    # intervals are 1 − 2α/m, ... (α = 0.025 per side: 98.3%, 97.5%, 95% for three comparisons)
    for rank, name in enumerate(sorted(out, key=lambda n: out[n]["p_one_sided"])):
        level = 0.05 / (len(out) - rank) if holm else 0.05
        lo, hi = np.percentile(out[name]["boot"], [100 * level / 2, 100 * (1 - level / 2)])
        out[name]["holm"] = {"level": 1 - level, "ci": [float(lo), float(hi)],
                             "verdict": verdict(lo, hi, margin, out[name]["a"])}
    for name in out:
        del out[name]["boot"]
    return out


def verdict(lo: float, hi: float, margin: float, a: str) -> str:
    """The decision rule for an interval of a − b (with a margin: non-inferiority of a)."""
    who = "LRPO " if a == "lrpo" else ""
    if margin:
        return "not worse" if lo > -margin else "worse by more than the margin" if hi < -margin \
            else "no decision"
    return who + "better" if lo > 0 else who + "worse" if hi < 0 else "no detectable difference"


def router_local_probability(folder: Path) -> tuple[list[int], list[float]]:
    """Mean over regional contexts of the router's probability of the region's local language."""
    local = {r.name: r.local for r in toy.REGIONS}
    steps, probs = [], []
    for line in (folder / "router.jsonl").read_text().splitlines():
        rec = json.loads(line)
        ps = [p[local[ctx.split(" | ")[1]]] for ctx, p in rec["probs"].items()
              if ctx.startswith("regional | ") and ctx.split(" | ")[1] in local]
        if ps:
            steps.append(rec["step"])
            probs.append(float(np.mean(ps)))
    return steps, probs


def summarise(results: list[dict], untrained: dict, args) -> dict:
    methods = [m for m in args.methods if any(r["method"] == m for r in results)]
    rows = {"untrained": [untrained]} | {m: [r for r in results if r["method"] == m] for m in methods}
    cells = [("held-out " + g, "test", dict(group=g)) for g in GROUPS]
    cells += [("held-out all", "test", {})] + [(f"held-out {l}", "test", dict(lang=l)) for l in toy.LANGS]
    cells += [("train " + HEADLINE, "train", dict(group=HEADLINE))]
    table = {}
    for name, runs in rows.items():
        table[name] = {}
        for cell, split, where in cells:
            vals = [mean(r[split], **where) for r in runs]
            table[name][cell] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0}
        head = [x for r in runs for x in r["test"] if x["group"] == HEADLINE]
        table[name]["headline lenient"] = {"mean": mean(head, "lenient")}
        table[name]["headline answered in question language"] = {"mean": mean(head, "in_language")}
        table[name]["headline answered in local language"] = {"mean": mean(head, "in_local")}
    out = {"settings": {"steps": args.steps, "seeds": args.seeds, "methods": methods, "device": args.device,
                        "lrpo_args": args.lrpo_args, "world_version": toy.WORLD_VERSION},
           "n_headline_per_seed": sum(x["group"] == HEADLINE for x in untrained["test"]),
           "table": table, "wall_seconds": {f"{r['method']}-s{r['seed']}": r["seconds"] for r in results}}
    if "lrpo" in methods and len(args.seeds) > 1:
        out["lrpo_minus"] = compare(results, [b for b in methods if b != "lrpo" and b in CLAIM_BASELINES]
                                    or [b for b in methods if b != "lrpo"])
        out["lrpo_minus_all_held_out"] = compare(results, [b for b in methods if b != "lrpo"], group=None)
    if "lrpo" in methods:
        curves = [router_local_probability(Path(args.out) / f"lrpo-s{s}") for s in args.seeds]
        out["router_local_probability"] = {"steps": curves[0][0], "mean": np.mean([c[1] for c in curves], 0).tolist(),
                                           "per_seed": [c[1] for c in curves]}
    return out


def markdown(summary: dict) -> str:
    table = summary["table"]
    cells = [c for c in next(iter(table.values())) if "std" in next(iter(table.values()))[c]]
    lines = ["| method | " + " | ".join(cells) + " |", "|---|" + "---|" * len(cells)]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]['mean']:.3f} ± {row[c]['std']:.3f}" for c in cells) + " |")
    lines += ["", "| method | headline lenient | headline answered in question language | … in region's local language |",
              "|---|---|---|---|"]
    for name, row in table.items():
        lines.append(f"| {name} | {row['headline lenient']['mean']:.3f} | "
                     f"{row['headline answered in question language']['mean']:.3f} | "
                     f"{row['headline answered in local language']['mean']:.3f} |")
    for key, title in (("lrpo_minus", f"headline cell ({summary['n_headline_per_seed']} questions × seeds)"),
                       ("lrpo_minus_all_held_out", "all held-out questions")):
        if key in summary:
            lines += ["", f"LRPO − baseline, {title}:", "",
                      "| baseline | Δ | 95% CI | one-sided p | Holm interval | verdict |", "|---|---|---|---|---|---|"]
            for b, c in summary[key].items():
                lines.append(f"| {b} | {c['delta']:+.3f} | [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] | "
                             f"{c['p_one_sided']:.3f} | {100 * c['holm']['level']:.1f}%: [{c['holm']['ci'][0]:+.3f}, "
                             f"{c['holm']['ci'][1]:+.3f}] | {c['holm']['verdict']} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    """Three panels: strict accuracy by method, LRPO − baseline with 95% intervals, and the
    router's probability of each region's local language over training (LRPO)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1.3, 1, 1.1]})
    names = list(summary["table"])
    for i, (cell, label) in enumerate(((f"held-out {HEADLINE}", "regional, not in the region's language"),
                                       ("held-out all", "all held-out questions"))):
        means = [summary["table"][n][cell]["mean"] for n in names]
        errs = [summary["table"][n][cell]["std"] for n in names]
        ax1.bar(np.arange(len(names)) + 0.4 * i - 0.2, means, 0.4, yerr=errs, capsize=3, label=label)
    ax1.set_xticks(range(len(names)), names, rotation=20)
    ax1.set_ylabel("strict accuracy (right, in the question's language)")
    n_seeds = len(summary["settings"]["seeds"])
    ax1.set_title(f"Held-out accuracy, mean ± std over {n_seeds} seed{'s' * (n_seeds != 1)}")
    ax1.legend(fontsize=8, loc="lower right")
    for key, offset, label in (("lrpo_minus", -0.1, "headline cell"), ("lrpo_minus_all_held_out", 0.1, "all held-out")):
        if key in summary:
            comps = summary[key]
            y = np.arange(len(comps)) + offset
            deltas = [c["delta"] for c in comps.values()]
            lo = [c["delta"] - c["ci95"][0] for c in comps.values()]
            hi = [c["ci95"][1] - c["delta"] for c in comps.values()]
            ax2.errorbar(deltas, y, xerr=[lo, hi], fmt="o", capsize=3, label=label)
            ax2.set_yticks(np.arange(len(comps)), [f"LRPO − {b}" for b in comps])
    ax2.axvline(0, color="grey", ls="--")
    ax2.set_xlabel("difference in strict accuracy (paired bootstrap 95% CI)")
    ax2.set_title("LRPO minus each baseline")
    if "lrpo_minus" in summary:
        ax2.legend(fontsize=8, loc="best")
    else:   # one seed, or no LRPO run: no interval to draw
        ax2.text(0.5, 0.5, "needs LRPO, a baseline and 2+ seeds", ha="center", transform=ax2.transAxes)
    curve = summary.get("router_local_probability")
    if curve:
        for seed_curve in curve["per_seed"]:
            ax3.plot(curve["steps"], seed_curve, color="tab:blue", alpha=0.25, lw=1)
        ax3.plot(curve["steps"], curve["mean"], color="tab:blue", lw=2, label="LRPO router, mean over seeds")
        ax3.axhline(1 / len(toy.LANGS), color="grey", ls="--", label="uniform routing (1/6)")
        ax3.set_xlabel("training step")
        ax3.set_ylabel("p(region's local language), routed slot")
        ax3.set_title("The router finds the local language")
        ax3.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS),
        help="methods to train (lrpo.py --method values)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4],
        help="seeds of every method")
    p.add_argument("--steps", type=int, default=150,
        help="training steps per run (the default run's 150)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--jobs", type=int, default=None, help="runs at once (default: 2 on CPU, 10 on CUDA)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--out", default="runs/classroom",
        help="folder of the runs and the results (an interrupted experiment continues there)")
    p.add_argument("--lrpo-args", default="", help='more lrpo.py flags for every run, e.g. "--calibration none"')
    args = p.parse_args(argv)
    from extras.models import check_device
    check_device(args.device, instead="leave --device out: the CPU runs the experiment too "
                 "(85 min on 2 cores; a few minutes with --seeds 0 --steps 60 --methods lrpo grpo)")
    jobs = args.jobs or (10 if args.device.startswith("cuda") else 2)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    # the warm start (trained once and cached) and its score: the "untrained" row
    import torch
    torch.set_num_threads(max(1, args.threads))
    base, tokenizer = toy.load_model_and_tokenizer(device=args.device)
    untrained_path = Path(args.out) / "untrained.json"
    if not untrained_path.exists():
        untrained_path.write_text(json.dumps({"method": "untrained", "seed": None, "seconds": 0.0,
                                              **score_splits(base, tokenizer)}, ensure_ascii=False))
    untrained = json.loads(untrained_path.read_text())
    print(f"[classroom] warm start: held-out {HEADLINE} strict {mean(untrained['test'], group=HEADLINE):.3f}, "
          f"all held-out {mean(untrained['test']):.3f} ({time.time() - t0:.0f}s)", flush=True)

    todo = [(m, s) for s in args.seeds for m in args.methods]
    finished = []

    def one(job):
        result = run_one(*job, args)
        finished.append(job)
        print(f"[classroom] {len(finished)}/{len(todo)} {job[0]} seed {job[1]}: {result['seconds'] / 60:.1f} min, "
              f"held-out {HEADLINE} {mean(result['test'], group=HEADLINE):.3f}, all {mean(result['test']):.3f} "
              f"(elapsed {(time.time() - t0) / 60:.1f} min)", flush=True)
        return result
    with ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(one, todo))

    summary = summarise(results, untrained, args)
    summary["wall_seconds_total"] = time.time() - t0
    (Path(args.out) / "results.json").write_text(json.dumps(summary, indent=1))
    text = markdown(summary)
    (Path(args.out) / "results.md").write_text(text)
    plot(summary, Path(args.out) / "classroom.png")
    print(text)
    print(f"[classroom] {len(results)} runs in {summary['wall_seconds_total'] / 60:.1f} min; wrote "
          f"{args.out}/results.json, results.md, classroom.png")
    return summary


if __name__ == "__main__":
    from extras.interrupt import main_with_one_line_ctrl_c
    main_with_one_line_ctrl_c(main, "classroom", "finished runs are kept under --out and each "
                              "running one saved a checkpoint: the same command continues")
