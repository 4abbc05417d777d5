"""The run folder: what a training run writes, and how it is read back (lrpo.py uses it).

    <out>/args.json        the command-line arguments
    <out>/metrics.jsonl    one line per step: rewards (overall, per language), gate, similarities,
                           loss terms, KL, entropy, clip fractions, router state, time per phase
    <out>/samples.jsonl    completions of a few questions per step, with their reward components
    <out>/router.jsonl     routing probabilities per (topic, region) context, per step
    <out>/eval.jsonl       held-out evaluations (step 0, every --eval-every steps, the end)
    <out>/training.png     reward per language, evaluation per language, time per phase
    <out>/router.png       router probabilities over training per context (the paper's Fig. 3a)
    <out>/checkpoint/      model (safetensors, loadable by from_pretrained), tokenizer,
                           trainer_state.pt (optimizer, router, step)

Checkpoints are written under a temporary name and renamed into place, so a crash while saving
never leaves a broken checkpoint; resuming drops log lines newer than the checkpoint.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path


def append_jsonl(path: Path, rows) -> None:
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def before_after_table(before: dict, after: dict) -> str:
    langs = sorted({k.split("/")[-1] for k in after if k.startswith("eval/reward/")})
    has_acc = "eval/accuracy" in after
    head = f"{'lang':6s}" + (f"{'accuracy before':>17s}{'after':>8s}" if has_acc else "") + \
        f"{'reward before':>15s}{'after':>8s}"
    lines = [head]
    for lang in langs + ["all"]:
        key = lambda m: "" if lang == "all" else f"/{lang}"
        row = f"{lang:6s}"
        if has_acc:
            row += f"{before[f'eval/accuracy{key(before)}']:17.3f}{after[f'eval/accuracy{key(after)}']:8.3f}"
        row += f"{before[f'eval/reward{key(before)}']:15.3f}{after[f'eval/reward{key(after)}']:8.3f}"
        lines.append(row)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Checkpoints: written under a temporary name, then renamed into place

def save_checkpoint(state, args, step: int) -> Path:
    import torch
    out = Path(args.out)
    final, tmp, old = out / "checkpoint", out / "checkpoint.tmp", out / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    state["model"].save_pretrained(tmp)          # safetensors, loadable by from_pretrained
    state["tokenizer"].save_pretrained(tmp)
    torch.save({"step": step, "optimizer": state["optimizer"].state_dict(),
                "router": state["router"].state_dict(), "args": vars(args)},
               tmp / "trainer_state.pt")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(state, args) -> int:
    import torch
    from transformers import AutoModelForCausalLM
    path = Path(args.out) / "checkpoint"
    if not (path / "trainer_state.pt").exists():
        sys.exit(f"error: --resume: no checkpoint in {path}")
    dtype = next(state["model"].parameters()).dtype
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device)
    state["model"].load_state_dict(model.state_dict())
    saved = torch.load(path / "trainer_state.pt", weights_only=False)
    state["optimizer"].load_state_dict(saved["optimizer"])
    state["router"].load_state_dict(saved["router"])
    # Drop log lines written after the checkpoint (a crash between logging and saving).
    for name in ("metrics.jsonl", "samples.jsonl", "eval.jsonl"):
        f = Path(args.out) / name
        if f.exists():
            keep = [l for l in f.read_text().splitlines() if json.loads(l)["step"] <= saved["step"]]
            f.write_text("".join(l + "\n" for l in keep))
    return saved["step"]


# ----------------------------------------------------------------------------------------------
# Plots

def plot_run(run_dir) -> list[Path]:
    """reward per language, evaluation accuracy, time per phase and the router heatmap."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    run = Path(run_dir)
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    written = []
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    steps = [r["step"] for r in rows]
    langs = sorted({k.split("/")[1] for r in rows for k in r if k.startswith("reward/")})
    for lang in langs:
        axes[0].plot(steps, [r.get(f"reward/{lang}", math.nan) for r in rows], label=lang, lw=1)
    axes[0].plot(steps, [r["reward"] for r in rows], "k", lw=2, label="all")
    axes[0].set(title="training reward per rollout language", xlabel="step")
    axes[0].legend(fontsize=7, ncol=2)
    evals = [json.loads(l) for l in (run / "eval.jsonl").read_text().splitlines()] if (run / "eval.jsonl").exists() else []
    metric = "eval/accuracy" if evals and "eval/accuracy" in evals[0] else "eval/reward"
    for lang in sorted({k.split("/")[-1] for e in evals for k in e if k.startswith(metric + "/") and k.count("/") == 2}):
        axes[1].plot([e["step"] for e in evals], [e[f"{metric}/{lang}"] for e in evals], "o-", label=lang)
    axes[1].set(title=f"held-out {metric.split('/')[1]} (own language, greedy)", xlabel="step")
    axes[1].legend(fontsize=7, ncol=2)
    phases = ["time/rollout", "time/reward", "time/update"]
    bottom = [0.0] * len(rows)
    for ph in phases:
        vals = [r.get(ph, 0.0) for r in rows]
        axes[2].bar(steps, vals, bottom=bottom, label=ph.split("/")[1], width=1.0)
        bottom = [b + v for b, v in zip(bottom, vals)]
    axes[2].set(title="time per phase (s)", xlabel="step")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run / "training.png", dpi=110)
    plt.close(fig)
    written.append(run / "training.png")
    if (run / "router.jsonl").exists() and (run / "router.jsonl").stat().st_size:
        import bandit
        written.append(bandit.plot_router_heatmap(run / "router.jsonl", run / "router.png"))
    return written
