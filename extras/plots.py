"""Plots of a run's logs that the training loop does not need.

``plot_router_heatmap``: the paper's Fig. 3a (router probabilities per context over training) as
one heatmap per context, from the JSONL that ``bandit.LanguageRouter.log_probabilities`` writes;
every context the run saw, each region's local language marked where it is known (the built-in
world's regions: ``local_languages``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def local_languages(data_name) -> dict[str, str]:
    """Region -> the language its facts are taught in, for the built-in world; {} for other data
    (a real data set's regions name places, not languages)."""
    if data_name != "toy":
        return {}
    import toy
    return {r.name: r.local for r in toy.REGIONS}


def context_locals(context: str, local: dict) -> list[str]:
    """The local languages of the regions of a router context "topic | region+region"."""
    _, _, regions = context.partition(" | ")
    return [local[r] for r in regions.split("+") if r in local]


def plot_router_heatmap(jsonl_path, out_png, contexts=None, max_contexts: int | None = None,
                        local: dict | None = None) -> Path:
    """One heatmap per context (languages × logged steps); default contexts: every one in the
    last record (or the first max_contexts), regional ones first. A region's local language
    (``local``: region -> language) is marked "◀" and in red."""
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
    cols = min(3 if len(contexts) <= 12 else 4, len(contexts))
    rows = math.ceil(len(contexts) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 0.22 * len(langs) * rows + 1.2),
                             squeeze=False)
    for ax, ctx in zip(axes.flat, contexts):
        steps = [r["step"] for r in records if ctx in r["probs"]]
        grid = np.array([[r["probs"][ctx][lang] for r in records if ctx in r["probs"]] for lang in langs])
        image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0.0, interpolation="nearest")
        marked = context_locals(ctx, local or {})
        ax.set_title(ctx + (f"  (local: {', '.join(marked)})" if marked else ""), fontsize=9)
        ax.set_yticks(range(len(langs)), [f"{l} ◀" if l in marked else l for l in langs], fontsize=7)
        for label, lang in zip(ax.get_yticklabels(), langs):
            if lang in marked:
                label.set_color("red")
                label.set_fontweight("bold")
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
