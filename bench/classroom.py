"""The classroom experiment: LRPO vs GRPO vs fixed language mixes on the built-in world.

The small-scale analogue of the paper's Tables 1–2. Each method trains the same warm-started tiny
model with the same budget and seeds; afterwards every held-out question is answered greedily in
its own language and checked against the gold value (toy.is_correct). The table reports per
language accuracy, mean ± std over seeds, with the untrained model as the first row.

    python bench/classroom.py                         # 4 methods × 3 seeds, default lrpo.py budget
    python bench/classroom.py --seeds 0 1 2 3 4 --jobs 2 --steps 150

Each run is an ordinary `python lrpo.py --method M --seed S --out DIR` (folders under --out), so
any run can be inspected, plotted or resumed on its own. A run whose folder already holds a
finished eval is reused, so an interrupted experiment continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("lrpo", "grpo", "uniform", "english-dominant")


def run_one(method: str, seed: int, args) -> dict:
    out = Path(args.out) / f"{method}-s{seed}"
    evals = out / "eval.jsonl"
    if not (evals.exists() and any(json.loads(l)["step"] == args.steps for l in evals.read_text().splitlines())):
        cmd = [sys.executable, str(ROOT / "lrpo.py"), "--method", method, "--seed", str(seed),
               "--steps", str(args.steps), "--out", str(out), "--no-progress",
               "--threads", str(args.threads), "--eval-every", "0"]
        if out.exists() and (out / "checkpoint").exists():
            cmd.append("--resume")
        elif out.exists():
            import shutil
            shutil.rmtree(out)
        log = Path(args.out) / f"{method}-s{seed}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as f:
            subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    rows = [json.loads(l) for l in evals.read_text().splitlines()]
    return {"method": method, "seed": seed, "before": rows[0], "after": rows[-1]}


def mean_std(values):
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run")
    p.add_argument("--out", default="runs/classroom")
    args = p.parse_args()

    jobs = [(m, s) for m in args.methods for s in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run_one(*job, args), jobs))

    langs = sorted({k.split("/")[-1] for r in results for k in r["after"]
                    if k.startswith("eval/accuracy/") and k.count("/") == 2})
    keys = [f"eval/accuracy/{l}" for l in langs] + ["eval/accuracy", "eval/accuracy/regional", "eval/in_language"]
    def cols(rows_of_evals):
        out = {}
        for k in keys:
            if k == "eval/accuracy/regional":
                vals = [statistics.mean(v for kk, v in e.items() if kk.startswith("eval/accuracy/regional/"))
                        for e in rows_of_evals]
            else:
                vals = [e[k] for e in rows_of_evals]
            out[k] = mean_std(vals)
        return out
    table = {"untrained": cols([r["before"] for r in results if r["method"] == args.methods[0]])}
    for m in args.methods:
        table[m] = cols([r["after"] for r in results if r["method"] == m])

    names = langs + ["all", "regional", "in-lang"]
    print(f"\nHeld-out accuracy in the question's own language (greedy), mean ± std over seeds "
          f"{args.seeds}, {args.steps} steps")
    print(f"{'method':18s}" + "".join(f"{n:>14s}" for n in names))
    for method, row in table.items():
        print(f"{method:18s}" + "".join(f"{row[k][0]:8.3f}±{row[k][1]:.3f}" for k in keys))
    print(json.dumps({m: {n: {"mean": row[k][0], "std": row[k][1]} for n, k in zip(names, keys)}
                      for m, row in table.items()}))


if __name__ == "__main__":
    main()
