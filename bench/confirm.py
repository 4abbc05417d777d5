"""The classroom's confirmatory run (issue 21), pre-registered before any run
(docs/benchmarks_history.md; results in BENCHMARKS.md).

    python bench/confirm.py H1 --smoke      # 2 steps × seed 0 of each method, CPU, a few minutes
    python bench/confirm.py H1 --device cuda --jobs 10                   # H1: 20 runs, one call
    python bench/confirm.py H2 --device cuda --jobs 10 --seeds 101 102 103 104   # H2, one block
    python bench/confirm.py H2 --bundle $OUT/h2-a.tgz     # pack finished runs (no checkpoints)
    python bench/confirm.py H2 --analyse    # the pre-registered analysis, once all seeds are in

Everything of the design is a constant below: per hypothesis the world (frozen by the hash of
its text, its warm-start key and its warm start's weights), the methods, the fresh seeds
101-110, 150 steps of the toy preset with the paper's similarity reward, and one cell of
held-out questions scored strictly (right *and* in the question's language, as classroom.py):

* H1, famous world (bench/transfer_probe.py): regional questions asked in a language other
  than the region's ("regional/other-q"): LRPO − GRPO > 0.
* H2, built-in world: arithmetic asked in zh or ja: every multilingual method − GRPO > 0
  (H2a, Holm over the four), and LRPO not worse than any fixed mix by more than MARGIN (H2b,
  intersection-union, each at 95%) — the paper's mGSM pattern (Tables 1, 2).

Runs are ordinary lrpo.py runs in the frozen world (``--lrpo WORLD``, the child entry below),
trained and scored by bench/classroom.py's run_one, resumable; a seed block is one device call
and its results travel back as one tar file.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import toy  # noqa: E402

_spec = importlib.util.spec_from_file_location("classroom", HERE / "classroom.py")
classroom = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(classroom)

# --- the pre-registered design (docs/benchmarks_history.md, "Confirmatory classroom run (issue 21):
# pre-registration") ---
H1_CELL = ("regional/other-q", None)
H2_CELL = ("arithmetic", ("zh", "ja"))
FIXED_MIXES = ("uniform", "english-dominant", "input-dominant")
SEEDS = tuple(range(101, 111))      # never used before (classroom 0-4, default run 0, exercises 0-2)
STEPS = 150
MARGIN = 0.03                        # H2b: "LRPO ≥ the best fixed mix" up to this much
# Each hypothesis in the world that has its premise (measured with `python toy.py`, 2026-12-05):
# the famous world's warm start knows its arithmetic in no language (0.00-0.08), the built-in
# world's in English best (0.22 en, 0.06 zh/ja), as real models do.
EXPERIMENTS = {
    "H1": {"world": "famous", "cell": H1_CELL, "methods": ("lrpo", "grpo"),
           "world_hash": "8a1195ad4ecd659298fba7f29e9e05e130677631828e6f3d80e023cc8711c4b8",
           "warm_start_key": "a495b577982b",
           "weights_sha": "79b52e70a648456c1ac4bf3bb1d6d7303b9f54fb228a7c2689e7d9be2740d97d"},
    "H2": {"world": "current", "cell": H2_CELL,
           "methods": ("lrpo", "grpo", "uniform", "english-dominant", "input-dominant"),
           "world_hash": "c86bef8263d50d07e25c9d88b8aaadbec60d40334aafa9e479d53f4343854e55",
           "warm_start_key": "82cea8eb3d43",
           "weights_sha": "c7f2052a16dbf4e7542b19facd8758d93ed523b97b8452c4e2f7dbfc3c36dd0a"},
}


def use_world(world: str) -> None:
    """Patch ``toy`` in this process to the named world ("current": toy.py as it is). A child run
    inherits the parent's ``$LRPO_CACHE``, already the world's own folder: kept, not nested."""
    import os
    import transfer_probe
    cache = os.environ.get("LRPO_CACHE")
    transfer_probe.use_world(world)
    if cache and Path(cache).name == f"probe-{world}":
        os.environ["LRPO_CACHE"] = cache


def weights_sha() -> str:
    folder = toy.cache_dir() / f"toy-{classroom.warm_start_key()}"
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def check_frozen(exp: dict, smoke: bool = False) -> None:
    """The world's text and the warm start's key must be the frozen ones; the warm start's
    weights too (a warm start built on another CPU may round differently), except in --smoke."""
    classroom.check_world(exp["world_hash"], exp["warm_start_key"])
    if not smoke and weights_sha() != exp["weights_sha"]:
        raise SystemExit(f"warm-start weights {weights_sha()[:16]}… are not the frozen "
                         f"{exp['weights_sha'][:16]}…: carry the frozen cache "
                         "(docs/benchmarks_history.md)")


# ----------------------------------------------------------------------------------------------
# The cells and the tests

def cell_rows(rows: list[dict], cell) -> list[dict]:
    group, langs = cell
    return [r for r in rows if r["group"] == group and (langs is None or r["lang"] in langs)]


def cell_mean(result: dict, cell) -> float:
    return float(np.mean([r["strict"] for r in cell_rows(result["test"], cell)]))


def primary_tests(results: list[dict], hypothesis: str) -> dict:
    """H1: LRPO − GRPO. H2a: each multilingual method − GRPO, Holm over the four; H2b: LRPO −
    each fixed mix, non-inferiority with MARGIN, each at 95% (intersection-union)."""
    if hypothesis == "H1":
        return classroom.compare_pairs(results, [("H1 lrpo-grpo", "lrpo", "grpo", *H1_CELL)])
    methods = EXPERIMENTS["H2"]["methods"]
    superiority = classroom.compare_pairs(
        results, [(f"H2a {m}-grpo", m, "grpo", *H2_CELL) for m in methods if m != "grpo"])
    noninferior = classroom.compare_pairs(
        results, [(f"H2b lrpo-{m}", "lrpo", m, *H2_CELL) for m in FIXED_MIXES],
        margin=MARGIN, holm=False)
    return superiority | noninferior


def decide(tests: dict, hypothesis: str, n_seeds: int) -> str:
    """The pre-registered decision rule, applied mechanically."""
    if n_seeds < len(SEEDS):
        return f"INCOMPLETE: {n_seeds} of {len(SEEDS)} seeds; not the pre-registered analysis"
    if hypothesis == "H1":
        v = tests["H1 lrpo-grpo"]["holm"]["verdict"]
        return "confirmed" if v == "LRPO better" else "refuted (LRPO worse)" \
            if v == "LRPO worse" else "not confirmed"
    h2a = [t["holm"]["verdict"] for n, t in tests.items() if n.startswith("H2a")]
    h2b = [t["holm"]["verdict"] for n, t in tests.items() if n.startswith("H2b")]
    if all(v.endswith("better") for v in h2a) and all(v == "not worse" for v in h2b):
        return "confirmed"
    if all(v.endswith("worse") for v in h2a) or any(v.startswith("worse") for v in h2b):
        return "refuted"
    return "not confirmed"


def summarise(results: list[dict], untrained: dict, hypothesis: str) -> dict:
    methods = EXPERIMENTS[hypothesis]["methods"]
    seeds = sorted({r["seed"] for r in results if r["method"] == "lrpo"})
    complete = [s for s in seeds if all(any(r["method"] == m and r["seed"] == s for r in results)
                                        for m in methods)]
    results = [r for r in results if r["seed"] in complete]
    cells = {"H1: regional/other-q": H1_CELL, "H2: arithmetic zh+ja": H2_CELL,
             "arithmetic en": ("arithmetic", ("en",)), "arithmetic all": ("arithmetic", None),
             "regional/local-q": ("regional/local-q", None)}
    rows = {"untrained": [untrained]} | {m: [r for r in results if r["method"] == m] for m in methods}
    table = {name: {c: [cell_mean(r, v) for r in runs] for c, v in cells.items()}
             for name, runs in rows.items()}
    for name, runs in rows.items():
        table[name]["held-out all"] = [classroom.mean(r["test"]) for r in runs]
    tests = primary_tests(results, hypothesis) if complete else {}
    exp = EXPERIMENTS[hypothesis]
    return {"design": {"hypothesis": hypothesis, "world": exp["world"], "seeds": complete,
                       "world_hash": exp["world_hash"], "warm_start_key": exp["warm_start_key"],
                       "steps": STEPS, "margin": MARGIN},
            "table": table, "tests": tests,
            "decision": {hypothesis: decide(tests, hypothesis, len(complete)) if tests else "no runs"}}


def markdown(summary: dict) -> str:
    table = summary["table"]
    cells = list(next(iter(table.values())))
    lines = ["| method | " + " | ".join(cells) + " |", "|---|" + "---|" * len(cells)]
    for m, row in table.items():
        lines.append(f"| {m} | " + " | ".join(
            f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.3f}" for v in row.values())
            + " |")
    lines += ["", "| test | Δ (a − b) | 95% CI | one-sided p | judged at | verdict |",
              "|---|---|---|---|---|---|"]
    for name, t in summary["tests"].items():
        lines.append(f"| {name} | {t['delta']:+.3f} | [{t['ci95'][0]:+.3f}, {t['ci95'][1]:+.3f}] | "
                     f"{t['p_one_sided']:.3f} | {100 * t['holm']['level']:.1f}%: "
                     f"[{t['holm']['ci'][0]:+.3f}, {t['holm']['ci'][1]:+.3f}] | {t['holm']['verdict']} |")
    lines += [""] + [f"**{h}: {d}**" for h, d in summary["decision"].items()]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    """Accuracy per method in the two primary cells, and every test's interval as judged."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.2))
    names, hypothesis = list(summary["table"]), summary["design"]["hypothesis"]
    for i, cell in enumerate(("H1: regional/other-q", "H2: arithmetic zh+ja")):
        vals = [summary["table"][n][cell] for n in names]
        label = cell if cell.startswith(hypothesis) else f"{cell.split(': ')[1]} (reported, no claim here)"
        ax1.bar(np.arange(len(names)) + 0.4 * i - 0.2, [np.mean(v) for v in vals], 0.4,
                yerr=[np.std(v, ddof=1) if len(v) > 1 else 0 for v in vals], capsize=3, label=label)
    ax1.set_xticks(range(len(names)), names, rotation=20)
    ax1.set_ylabel("strict held-out accuracy (mean ± std over seeds)")
    ax1.legend(fontsize=8)
    tests = summary["tests"]
    for y, (name, t) in enumerate(tests.items()):
        lo, hi = t["holm"]["ci"]
        ax2.errorbar([t["delta"]], [y], xerr=[[t["delta"] - lo], [hi - t["delta"]]], fmt="o", capsize=3)
    ax2.set_yticks(range(len(tests)), list(tests))
    ax2.axvline(0, color="grey", ls="--")
    if hypothesis == "H2":   # H2b's non-inferiority margin
        ax2.axvline(-MARGIN, color="grey", ls=":")
    ax2.set_xlabel("difference in strict accuracy (interval at the level it is judged)")
    ax1.set_title(f"{hypothesis}, {summary['design']['world']} world, seeds {len(summary['design']['seeds'])}",
                  fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Running, bundling, analysing

def load_results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*-s*/answers.json"))]


def untrained_result(out: Path, device: str) -> dict:
    path = out / "untrained.json"
    if not path.exists():
        base, tokenizer = toy.load_model_and_tokenizer(device=device)
        path.write_text(json.dumps({"method": "untrained", "seed": None, "seconds": 0.0,
                                    **classroom.score_splits(base, tokenizer)}, ensure_ascii=False))
    return json.loads(path.read_text())


def train(args, methods) -> None:
    todo = [(m, s) for s in args.seeds for m in methods]
    t0 = time.time()

    def one(job):
        result = classroom.run_one(*job, args)
        print(f"[confirm] {job[0]} seed {job[1]}: {result['seconds'] / 60:.1f} min, H1 cell "
              f"{cell_mean(result, H1_CELL):.3f}, H2 cell {cell_mean(result, H2_CELL):.3f} "
              f"(elapsed {(time.time() - t0) / 60:.1f} min)", flush=True)
    with ThreadPoolExecutor(args.jobs or (10 if args.device.startswith("cuda") else 2)) as pool:
        list(pool.map(one, todo))


def bundle(out: Path, path: Path) -> None:
    """One tar file of what the analysis needs (answers, router, metrics, logs), no checkpoints."""
    keep = ("answers.json", "router.jsonl", "metrics.jsonl", "config.json")
    with tarfile.open(path, "w:gz") as tar:
        for p in sorted(out.rglob("*")):
            if p.is_file() and (p.name in keep and p.parent.parent == out or p.parent == out):
                tar.add(p, arcname=str(p.relative_to(out.parent)))
    print(f"[confirm] bundled {out} into {path} ({path.stat().st_size / 1e6:.1f} MB)")


def analyse(out: Path, device: str, hypothesis: str) -> dict:
    summary = summarise(load_results(out), untrained_result(out, device), hypothesis)
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    text = markdown(summary)
    (out / "results.md").write_text(text)
    if summary["tests"]:
        plot(summary, out / "confirm.png")
    print(text)
    return summary


def parse(argv):
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("hypothesis", choices=sorted(EXPERIMENTS), help="which pre-registered experiment")
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS),
                   help="a block of the pre-registered seeds 101-110")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--jobs", type=int, default=None, help="runs at once (default 2 CPU, 10 CUDA)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--out", default=None, help="folder of the runs (default runs/confirm-<h>)")
    p.add_argument("--smoke", action="store_true", help="2 steps × seed 0, to prove the path")
    p.add_argument("--analyse", action="store_true", help="only analyse the finished runs")
    p.add_argument("--bundle", default=None, help="only pack the finished runs into this .tgz")
    args = p.parse_args(argv)
    world = EXPERIMENTS[args.hypothesis]["world"]
    args.out = args.out or f"runs/confirm-{args.hypothesis.lower()}" + ("-smoke" * args.smoke)
    args.steps, args.lrpo_args = STEPS, ""
    args.entry = [str(HERE / "confirm.py"), "--lrpo", world]
    if args.smoke:
        args.seeds, args.steps = [0], 2
    elif not set(args.seeds) <= set(SEEDS):
        raise SystemExit(f"--seeds {args.seeds}: only the pre-registered seeds {SEEDS[0]}-{SEEDS[-1]}")
    return args


def main(argv=None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--lrpo"]:    # a child run: lrpo.py in the world named next
        use_world(argv[1])
        import lrpo
        return lrpo.main(argv[2:])
    args = parse(argv)
    out, exp = Path(args.out), EXPERIMENTS[args.hypothesis]
    if args.bundle:
        return bundle(out, Path(args.bundle))
    from extras.models import check_device
    check_device(args.device, instead="leave --device out to run on the CPU (--smoke: a few minutes)")
    use_world(exp["world"])
    check_frozen(exp, smoke=args.smoke)
    out.mkdir(parents=True, exist_ok=True)
    if not args.analyse:
        untrained_result(out, args.device)
        train(args, exp["methods"])
    return analyse(out, args.device, args.hypothesis)


if __name__ == "__main__":
    from extras.interrupt import main_with_one_line_ctrl_c
    main_with_one_line_ctrl_c(main, "confirm", "finished runs are kept under --out: the same command continues")
