"""The run folder: what a training run writes, and how it is read back (lrpo.py uses it).

    <out>/config.json      the run's configuration (lrpo.Config)
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

import contextlib
import json
import math
import shutil
import signal
import sys
import time
from pathlib import Path


class PhaseClock:
    """Wall time per phase; on a GPU it synchronises at each lap, so the time is the GPU's too."""

    def __init__(self, device: str):
        import torch
        self.sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
        self.totals, self.last = {}, None
        self.lap(None)

    def lap(self, name):
        self.sync()
        now = time.perf_counter()
        if name is not None:
            self.totals[f"time/{name}"] = self.totals.get(f"time/{name}", 0.0) + now - self.last
        self.last = now


@contextlib.contextmanager
def first_ctrl_c_stops():
    """The first Ctrl-C sets stop["requested"] (the loop finishes its step and saves a
    checkpoint); a second one aborts at once."""
    stop = {"requested": False}
    def request_stop(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        print("\n[lrpo] Ctrl-C: finishing this step, then saving a checkpoint (again to abort)")
    previous_handler = signal.signal(signal.SIGINT, request_stop)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous_handler)


def append(cfg, name: str, rows) -> None:
    """Append rows to ``<out>/<name>`` as JSON lines."""
    with (Path(cfg.out) / name).open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read(cfg, name: str) -> list[dict]:
    path = Path(cfg.out) / name
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


def check_out_dir(cfg) -> None:
    """Never write over a finished or running run by accident."""
    out = Path(cfg.out)
    if (out / "metrics.jsonl").exists() and not cfg.resume:
        sys.exit(f"error: {out} already holds a run; pass --resume to continue it or --out elsewhere")
    out.mkdir(parents=True, exist_ok=True)


def write_config(cfg) -> None:
    from dataclasses import asdict
    (Path(cfg.out) / "config.json").write_text(json.dumps(asdict(cfg), indent=2))


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

def save_checkpoint(run, step: int) -> Path:
    import torch
    from dataclasses import asdict
    out = Path(run.cfg.out)
    final, tmp, old = out / "checkpoint", out / "checkpoint.tmp", out / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    run.model.save_pretrained(tmp)          # safetensors, loadable by from_pretrained
    run.tokenizer.save_pretrained(tmp)
    torch.save({"step": step, "optimizer": run.optimizer.state_dict(),
                "router": run.router.state_dict(), "config": asdict(run.cfg)},
               tmp / "trainer_state.pt")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(run) -> int:
    import torch
    from transformers import AutoModelForCausalLM
    path = Path(run.cfg.out) / "checkpoint"
    if not (path / "trainer_state.pt").exists():
        sys.exit(f"error: --resume: no checkpoint in {path}")
    dtype = next(run.model.parameters()).dtype
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(run.cfg.device)
    run.model.load_state_dict(model.state_dict())
    saved = torch.load(path / "trainer_state.pt", weights_only=False)
    run.optimizer.load_state_dict(saved["optimizer"])
    run.router.load_state_dict(saved["router"])
    # Drop log lines written after the checkpoint (a crash between logging and saving).
    for name in ("metrics.jsonl", "samples.jsonl", "eval.jsonl", "router.jsonl"):
        f = Path(run.cfg.out) / name
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
        from extras.plots import plot_router_heatmap
        written.append(plot_router_heatmap(run / "router.jsonl", run / "router.png"))
    return written
