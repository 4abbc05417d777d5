"""bf16 training with float32 master weights, and compiled decoder layers (not needed to understand LRPO).

On a GPU the policy computes and samples in bf16, which halves memory and doubles GEMM speed.
Two things then go wrong if nothing is done, and this file fixes both:

* **Updates vanish.** At the paper's lr of 1e-6 an AdamW update is far below bf16's resolution
  (8 bits of mantissa: 1 + 2⁻⁸ is the next number after 1), so updating bf16 weights directly
  rounds most updates away. :class:`MasterWeightAdamW` keeps float32 master copies and float32
  moments, and rounds the result into the bf16 model after each step.
* **Gradients lose precision while they add up.** A step's gradient is the sum over many
  micro-batches; summed in bf16 the small ones are rounded away. Here each parameter's bf16
  gradient is added into its float32 master gradient as soon as the backward produces it (a
  post-accumulate-grad hook) and the bf16 one is freed, so accumulation and clipping happen in
  float32, as verl does (its FSDP actor keeps float32 gradients).

Memory per parameter: 2 (bf16 weight) + 4 (master) + 4 (master grad) + 8 (moments) bytes.

:func:`compile_layers` compiles each decoder layer with ``torch.compile`` (regional compilation:
all layers share one kernel set, so it takes seconds). It fuses the element-wise work of the
training forward and backward; BENCHMARKS.md has the measured effect.
"""
from __future__ import annotations

import torch


class MasterWeightAdamW:
    """AdamW over float32 master copies of low-precision parameters (interface of torch.optim)."""

    def __init__(self, params, **adamw_kwargs):
        self.params = [p for p in params if p.requires_grad]
        self.masters = [p.detach().float().clone().requires_grad_(True) for p in self.params]
        fused = self.masters[0].is_cuda   # one kernel over all tensors on CUDA
        self.inner = torch.optim.AdamW(self.masters, fused=fused, **adamw_kwargs)
        self.param_groups = self.inner.param_groups   # clip_grad_norm_ over these clips in float32
        for p, m in zip(self.params, self.masters):
            p.register_post_accumulate_grad_hook(self._accumulate_into(m))

    @staticmethod
    def _accumulate_into(master):
        def hook(p):
            if master.grad is None:
                master.grad = p.grad.float()
            else:
                master.grad.add_(p.grad)
            p.grad = None
        return hook

    def zero_grad(self, set_to_none: bool = True):
        for p, m in zip(self.params, self.masters):
            p.grad = None
            m.grad = None

    @torch.no_grad()
    def step(self):
        self.inner.step()
        for p, m in zip(self.params, self.masters):
            p.copy_(m)

    def state_dict(self):
        return {"inner": self.inner.state_dict(), "masters": [m.detach() for m in self.masters]}

    @torch.no_grad()
    def load_state_dict(self, state):
        for m, saved in zip(self.masters, state["masters"]):
            m.copy_(saved)
        for p, m in zip(self.params, self.masters):
            p.copy_(m)
        self.inner.load_state_dict(state["inner"])


def compile_layers(model) -> None:
    """torch.compile every decoder layer; dynamic shapes avoid a recompile per sequence length."""
    for layer in model.base_model.layers:
        layer.compile(dynamic=True)
