"""The router's per-step log, ``<out>/router.jsonl`` (Fig. 3a's data; extras/plots.py draws it).

bandit.py routes; this file only writes down what the router would draw from, so that a run can
be read afterwards: every context's routed-slot distribution ("probs") and, for the paper's
router, every row of A and B alone ("rows"), as the official code logs them
(verl/utils/lang_policy.py:97-121). lrpo.py calls :func:`log_router` before ``end_step``, so a
record shows what the step's draws used, as the code logs before its update
(ray_trainer.py:684-697).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bandit import eq1


def row_probabilities(router) -> dict[str, dict[str, dict[str, float]]]:
    """Each row of A and B alone: its softmax at the current τ and the ε-mixed one, keyed
    "topic:<t>" and "region:<g>". Rows are those learned or drawn from so far (the code's
    defaultdict makes a row when sample() reads it). Routers without A and B rows (the
    discounted bandits of extras/routers.py, ``tables = False``) have none."""
    if not getattr(router, "tables", True):
        return {}
    topics = dict.fromkeys([*router.A, *(t for t, _ in router.seen
                                         if t.lower() not in router.uniform_topics)])
    regions = dict.fromkeys([*router.B, *(g for _, gs in router.seen for g in gs)])
    zero = np.zeros(len(router.languages))
    out = {}
    for kind, names, table in (("topic", topics, router.A), ("region", regions, router.B)):
        for name in names:
            soft, mixed = eq1(table.get(name, zero), router.tau, router.eps)   # each row alone
            out[f"{kind}:{name}"] = {"softmax": dict(zip(router.languages, soft.tolist())),
                                     "effective": dict(zip(router.languages, mixed.tolist()))}
    return out


def log_router(router, path, step) -> dict | None:
    """Append one JSONL record: the routed-slot distribution of every context seen so far and
    every table row alone; None (nothing written) for a router that learns nothing."""
    if not router.learns:
        return None
    probs = {(f"{t} | {'+'.join(g)}" if g else t): router.probabilities(t, g)
             for t, g in router.seen}
    record = {"step": step, "router": router.name, **router.schedule(), "probs": probs,
              "rows": row_probabilities(router)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return record
