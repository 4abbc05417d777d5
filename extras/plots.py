"""Plots of a run's logs that the training loop does not need.

``plot_router_heatmap``: the paper's Fig. 3a (router probabilities per context over training) as
one heatmap per context, from the JSONL that ``bandit.LanguageRouter.log_probabilities`` writes.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def plot_router_heatmap(jsonl_path, out_png, contexts=None, max_contexts: int = 12) -> Path:
    """One heatmap per context (languages × logged steps); default contexts: those in the last
    record, regional ones first, at most max_contexts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = []
    with open(jsonl_path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{jsonl_path}:{line_no}: not JSON ({e})") from None
    if not records:
        raise ValueError(f"{jsonl_path}: no router log records")
    if contexts is None:
        final = list(records[-1]["probs"])
        contexts = sorted(final, key=lambda c: (" | " not in c, c))[:max_contexts]
    langs = list(next(p for r in records for p in r["probs"].values()))
    cols = min(3, len(contexts))
    rows = math.ceil(len(contexts) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 0.22 * len(langs) * rows + 1.2),
                             squeeze=False)
    for ax, ctx in zip(axes.flat, contexts):
        steps = [r["step"] for r in records if ctx in r["probs"]]
        grid = np.array([[r["probs"][ctx][lang] for r in records if ctx in r["probs"]] for lang in langs])
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, interpolation="nearest")
        ax.set_title(ctx, fontsize=9)
        ax.set_yticks(range(len(langs)), langs, fontsize=7)
        ticks = np.linspace(0, len(steps) - 1, min(6, len(steps))).astype(int)
        ax.set_xticks(ticks, [str(steps[i]) for i in ticks], fontsize=7)
        ax.set_xlabel("step", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    for ax in list(axes.flat)[len(contexts):]:
        ax.axis("off")
    fig.suptitle(f"router probabilities per context ({records[-1].get('router', '?')})", fontsize=10)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
