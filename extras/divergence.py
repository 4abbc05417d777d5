"""The divergence guard of the training loop (lrpo.policy_update, lrpo.train).

A non-finite loss or gradient skips the optimizer step (the weights stay as they were) and is
named: which loss term, the log-probs, or the first parameter whose gradient is non-finite.
``max_in_a_row`` skipped steps in a row, or a non-finite weight after a step, stop the run
(:class:`Diverged`). While the last update was skipped, or the model's log-probs on the last
batch are no longer finite, the model is not saved: the last good checkpoint stays.
"""
from __future__ import annotations

import math

import torch


class Diverged(Exception):
    """The run cannot go on: its message is the one line for the user."""


def non_finite_terms(logp: torch.Tensor, metrics: dict) -> list[str]:
    """Names of the non-finite loss terms of a micro-batch (and 'logits/log-probs')."""
    named = [k for k, v in metrics.items() if not math.isfinite(float(v))]
    return (["logits/log-probs"] if not torch.isfinite(logp).all() else []) + named


def first_non_finite(model, grad: bool) -> str | None:
    """The first parameter whose gradient (or value) holds a NaN or an infinity."""
    for name, p in model.named_parameters():
        t = p.grad if grad else p
        if t is not None and not torch.isfinite(t).all():
            return name
    return None


class Guard:
    def __init__(self, max_in_a_row: int = 3):
        self.max_in_a_row, self.in_a_row = max_in_a_row, 0
        self.terms: set[str] = set()   # non-finite loss terms seen in the current optimizer step
        self.probe = None              # a few rows of the last batch: (ids, mask, start)

    def saw(self, logp, metrics) -> None:
        self.terms.update(non_finite_terms(logp, metrics))

    def skipped(self, model, step: int) -> None:
        """An optimizer step skipped on a non-finite loss term or gradient: say why; stop at the
        k-th in a row."""
        why = ", ".join(sorted(self.terms)) or f"gradient of {first_non_finite(model, grad=True)}"
        self.terms.clear()
        self.in_a_row += 1
        print(f"[lrpo] warning: step {step + 1}: non-finite {why}; skipped an optimizer step "
              f"({self.in_a_row} in a row)")
        if self.in_a_row >= self.max_in_a_row:
            raise Diverged(f"the run diverged: {self.in_a_row} optimizer steps in a row skipped on "
                           f"non-finite values (last: {why}) at step {step + 1}")

    def stepped(self, model, step: int) -> None:
        self.terms.clear()
        self.in_a_row = 0
        bad = first_non_finite(model, grad=False)
        if bad is not None:
            raise Diverged(f"the run diverged: weight {bad} is non-finite after the update of "
                           f"step {step + 1}")

    @torch.no_grad()
    def sound(self, model, logprobs) -> bool:
        """Whether the model may be saved: its last update was not skipped and its log-probs
        on a few rows of the last batch (``logprobs(model, ids, mask, start)``) are finite."""
        if self.in_a_row:
            return False
        if self.probe is None:
            return True
        return bool(torch.isfinite(logprobs(model, *self.probe)).all())
