"""The divergence guard of the training loop (lrpo.policy_update, lrpo.train).

A non-finite loss or gradient skips the optimizer step (the weights stay as they were) and is
named: which loss term, the log-probs, or the first parameter whose gradient is non-finite.
``max_in_a_row`` skipped steps in a row, or a non-finite weight after a step, stop the run
(:class:`Diverged`). While the last update was skipped, or the model's log-probs on the last
batch are no longer finite, the model is not saved: the last good checkpoint stays.
"""
from __future__ import annotations

import torch


class Diverged(Exception):
    """The run cannot go on: its message is the one line for the user."""


def first_non_finite(model, grad: bool) -> str | None:
    """The first parameter whose gradient (or value) holds a NaN or an infinity."""
    for name, p in model.named_parameters():
        master = getattr(p, "master", None)   # MasterWeightAdamW keeps the gradient on its master
        t = (p.grad if p.grad is not None or master is None else master.grad) if grad else p
        if t is not None and not torch.isfinite(t).all():
            return name
    return None


class Guard:
    def __init__(self, max_in_a_row: int = 3):
        self.max_in_a_row, self.in_a_row = max_in_a_row, 0
        self.probe = None   # a few rows of the last batch, (ids, mask, start), for `sound`

    def check(self, model, grad_norm, terms: list[dict], step: int, probe=None) -> bool:
        """Whether the optimizer may step: the gradient norm and every micro-batch's loss terms
        (``terms``, device tensors) are finite. A skip is named; the k-th in a row stops the run.
        ``probe``: rows of this batch whose log-probs `sound` checks before a save."""
        self.probe = probe
        # one read per loss term, not per micro-batch: each read waits for the GPU
        names = dict.fromkeys(k for metrics in terms for k in metrics)
        finite = {k: torch.stack([torch.isfinite(torch.as_tensor(m[k])).all() for m in terms if k in m])
                  .all() for k in names}
        bad = sorted(k for k, ok in finite.items() if not bool(ok))
        if torch.isfinite(grad_norm) and not bad:
            self.stepped(model, step)
            return True
        self.skipped(model, step, bad)
        return False

    def skipped(self, model, step: int, bad_terms: list[str]) -> None:
        """An optimizer step skipped on a non-finite loss term or gradient: say why; stop at the
        k-th in a row."""
        why = ", ".join(bad_terms) or f"gradient of {first_non_finite(model, grad=True)}"
        self.in_a_row += 1
        print(f"[lrpo] warning: step {step + 1}: non-finite {why}; skipped an optimizer step "
              f"({self.in_a_row} in a row)")
        if self.in_a_row >= self.max_in_a_row:
            raise Diverged(f"the run diverged: {self.in_a_row} optimizer steps in a row skipped on "
                           f"non-finite values (last: {why}) at step {step + 1}")

    def stepped(self, model, step: int) -> None:
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
