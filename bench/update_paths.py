"""The update's two passes at the paper's row shape, timed on one GPU (issue 18).

One call times, on the same random-init Qwen2.5-1.5B-shaped model (bf16; speed does not depend on
the weights) and the same rows, the update's two passes through ``extras.fast_training.
token_logprobs``, what lrpo trains with on a GPU, with the vocabulary head's element-wise passes
compiled (now) and eager (``extras.fast_rollout.FUSE = False``, as at commit f932e01): the
baseline and the change in the same run.

* the forward/backward of one training micro-batch (8 rows, the real preset's ``--micro-batch``);
* the reference's no-grad forward over 128 rows in passes of 32 (``--logprob-micro-batch``)
  through ``lrpo.frozen_logprobs``, which takes them in length order.

Earlier calls of this bench (docs/benchmarks_history.md, issue 18): commit 5049b20 found that
plain causal attention without the padding mask gives the same log-probs to the bit and the
same time (taken out again), and that sorting the reference's rows by length cuts its passes by
17.7%.

Rows: prompts of 19–36 tokens left-padded to 40 and answers of 256–1,024 tokens, a quarter at the
cap (mean ~800, as the paper-shape bench's rollouts; ``bench/paper_step.py``); a training
micro-batch is 8 neighbours in length order, as ``policy_update`` groups them. MFU = 6 (training)
or 2 (reference) · params · real tokens / seconds / 989 TFLOP/s.

    python bench/update_paths.py            # on the GPU, under a minute
    python bench/update_paths.py --profile  # + the training pass's kernel time by kind
    python bench/update_paths.py --liger    # + both passes with liger-kernel's layer kernels
                                            #   (eager layers only: under --compile, torch 2.11's
                                            #   dynamo fails on Liger's RMSNorm, H100 2026-12-06)
    python bench/update_paths.py --loop     # + lrpo's own update on rows like the run's, against
                                            #   the bare passes of the same micro-batches
    python bench/update_paths.py --smoke    # tiny shapes on the CPU: checks the script
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.train_bench import H100_BF16_DENSE, QWEN25_15B, SMOKE, Timer, kernel_breakdown


def paper_rows(n: int, vocab: int, max_new: int, seed: int = 0, answers: str = "quarter-capped"):
    """n rows as lrpo's sampler returns them: left-padded prompts of 19–36 tokens (left-padded to
    40), answers padded on the right. Answer lengths: "quarter-capped", a quarter at the cap and the
    rest spread over [cap/4, cap) (mean ~800); or "run-like", those of bench/paper_step.py's
    rollouts: random weights sample EOS with probability 1/1,536 per token (the world tokenizer's
    ids), so about half reach the cap and the mean is ~750."""
    gen = torch.Generator().manual_seed(seed)
    prompt_len = torch.randint(19, 37, (n,), generator=gen)
    if answers == "quarter-capped":
        answer_len = torch.where(torch.rand(n, generator=gen) < 0.25, torch.full((n,), max_new),
                                 torch.randint(max_new // 4, max_new, (n,), generator=gen))
    else:
        answer_len = torch.empty(n).exponential_(1 / 1536, generator=gen).ceil().long().clamp(1, max_new)
    start = 40 if max_new > 64 else int(prompt_len.max())
    ids = torch.randint(3, vocab, (n, start + max_new), generator=gen)
    cols = torch.arange(start + max_new)[None]
    mask = ((cols >= start - prompt_len[:, None]) & (cols < start + answer_len[:, None])).long()
    return ids, mask, start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--compile", action="store_true", help="compile each decoder layer, as lrpo does")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each pass (median)")
    parser.add_argument("--liger", action="store_true",
                        help="also both passes with liger-kernel's RMSNorm, SwiGLU and RoPE (needs liger-kernel)")
    parser.add_argument("--loop", action="store_true",
                        help="also extras.fast_training.policy_update (lrpo's GPU update) on 128 rows like the run's")
    parser.add_argument("--profile", action="store_true",
                        help="also the kernel time of one training micro-batch, by kind of kernel")
    args = parser.parse_args()
    if not args.smoke:
        from extras.models import need_gpu
        need_gpu("bench/update_paths.py", "the update's passes at the paper's row shape, 1.5B in bf16: "
                 "an 80 GB H100 as in BENCHMARKS.md")
    import lrpo
    from extras import fast_rollout, fast_training
    from transformers import Qwen2Config, Qwen2ForCausalLM
    device = "cpu" if args.smoke else "cuda"
    shape, max_new = (SMOKE, 32) if args.smoke else (QWEN25_15B, 1024)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(Qwen2Config(**shape, pad_token_id=0)).to(
            torch.float32 if args.smoke else torch.bfloat16)
    model.config._attn_implementation = "sdpa"
    if args.compile:
        fast_training.compile_layers(model)
    params = sum(p.numel() for p in model.parameters())
    n_ref = 32 if args.smoke else 128
    ids, mask, start = paper_rows(n_ref, shape["vocab_size"], max_new)
    ids, mask = ids.to(device), mask.to(device)
    micro = mask.sum(1).argsort()[n_ref // 2:n_ref // 2 + 8]   # 8 length neighbours near the median
    run, timer = type("Run", (), {})(), Timer(device)   # run: what lrpo.frozen_logprobs reads
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
               "params": params, "compile": args.compile}

    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        logp = lrpo.completion_logprobs(run, model, ids[micro], mask[micro], start)
        (logp.float() * mask[micro, start:start + logp.shape[1]]).sum().backward()

    def time_both_passes(label: str) -> None:
        for name, fn, tokens, flops_per in (
                (f"train micro-batch (8 rows), {label}", fwd_bwd, mask[micro].sum(), 6),
                (f"reference (128 rows), {label}", lambda: lrpo.frozen_logprobs(run, model, ids, mask, start),
                 mask.sum(), 2)):
            model.train() if flops_per == 6 else model.eval()
            seconds, peak = timer.median_s(fn, args.repeats), timer.peak_gib()
            mfu = flops_per * params * int(tokens) / seconds / H100_BF16_DENSE
            results[name] = {"s": round(seconds, 4), "mfu": round(mfu, 3), "peak_gib": round(peak, 1),
                             "real_tokens": int(tokens)}
            print(f"{name:60s} {seconds * 1e3:9.1f} ms  MFU {mfu:6.1%}  peak {peak:5.1f} GiB", flush=True)

    @torch.no_grad()
    def micro_logprobs():
        model.eval()
        return lrpo.completion_logprobs(run, model, ids[micro], mask[micro], start).float()

    run.cfg = lrpo.Config(temperature=1.0, logprob_micro_batch=32)
    run.logprobs = fast_training.token_logprobs
    fast_rollout.FUSE = False
    time_both_passes("head eager (as at f932e01)")
    fast_rollout.FUSE = True
    time_both_passes("head compiled (now)")
    if args.profile:   # where the training pass's time goes: GEMMs, attention, compiled kernels, ...
        model.train()
        results["profile"] = kernel_breakdown(fwd_bwd, cuda=device == "cuda")
        for group, seconds in sorted(results["profile"]["groups_s"].items(), key=lambda g: -g[1]):
            print(f"  {group:40s} {seconds * 1e3:8.1f} ms")
    if args.liger:   # Liger's Triton kernels in place of the layers' own (not with --compile: see above)
        from liger_kernel.transformers import apply_liger_kernel_to_qwen2
        before = micro_logprobs()
        apply_liger_kernel_to_qwen2(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False, model=model)
        difference = (micro_logprobs() - before).abs().max().item()
        results["liger_max_abs_logprob_difference"] = difference
        print(f"liger: max |log-prob difference| on the micro-batch {difference:.3g}", flush=True)
        time_both_passes("head compiled + liger RMSNorm/SwiGLU/RoPE")
    if args.loop:
        results["loop"] = time_loop_update(model, params, device, args, timer)
    print(json.dumps(results))


def time_loop_update(model, params, device, args, timer) -> dict:
    """lrpo's GPU update (extras.fast_training.policy_update, the code the run calls) on 128 rows
    like the run's, its forward/backward phase set against the bare forward/backward passes of the
    same micro-batches (log-probs, a sum, backward; no loss, no gradient accumulation hooks): what
    the loop adds per micro-batch. Variants: plain AdamW on the bf16 weights (bf16 gradients add
    up in place); lrpo's MasterWeightAdamW (a float32 add per parameter per pass, in a hook) with
    fixed passes of 8 rows (as at 2bcb5eb) and with the token-budget passes lrpo uses now; a budget
    of 16 rows. Then the float32 accumulation alone, three ways. The optimizer and reference
    phases are reported too (the reference here is the policy itself; its pass is the reference
    pass of lrpo's update)."""
    import types

    import lrpo
    from extras import fast_training
    n = 32 if args.smoke else 128
    ids, mask, start = paper_rows(n, model.config.vocab_size, 32 if args.smoke else 1024, seed=1,
                                  answers="run-like")
    ids, mask = ids.to(device), mask.to(device)
    cfg = lrpo.Config(**{k: lrpo.REAL[k] for k in ("micro_batch", "loss_micro_batch", "lr")},
                      max_new_tokens=ids.shape[1] - start, logprob_micro_batch=32, device=device)
    roll = types.SimpleNamespace(input_ids=ids, attention_mask=mask, completion_start=start,
                                 completion_mask=mask[:, start:])
    advantages, order = torch.randn(n, generator=torch.Generator().manual_seed(0)), torch.randperm(n).to(device)
    run = types.SimpleNamespace(cfg=cfg, model=model, reference=model, logprobs=fast_training.token_logprobs,
                                guard=types.SimpleNamespace(check=lambda *a: True))
    tokens = int(mask.sum())
    out = {"rows": n, "real_tokens": tokens, "mean_answer": round(float(mask[:, start:].sum(1).float().mean()), 1)}

    def bare_passes():   # the micro-batches policy_update forms, without its loss and accumulation
        by_length = mask[order].sum(1).argsort(stable=True)
        for i in range(0, n, cfg.micro_batch):
            rows = order[by_length[i:i + cfg.micro_batch]]
            model.zero_grad(set_to_none=True)
            lrpo.completion_logprobs(run, model, ids[rows], mask[rows], start).float().sum().backward()

    def report(name, phases, seconds_fwd_bwd):
        per = seconds_fwd_bwd / (n / 8)
        mfu = 6 * params * tokens / seconds_fwd_bwd / H100_BF16_DENSE
        out[name] = {**{k: round(v, 4) for k, v in phases.items()}, "fwd_bwd_per_8_rows_s": round(per, 4),
                     "fwd_bwd_mfu": round(mfu, 3), "peak_gib": round(timer.peak_gib(), 1)}
        print(f"loop: {name:46s} fwd/bwd {seconds_fwd_bwd:7.3f} s ({per * 1e3:6.1f} ms per 8 rows) "
              f"MFU {mfu:6.1%}  " + "  ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in phases.items()
                                             if k != "time/update_forward_backward")
              + f"  peak {timer.peak_gib():5.1f} GiB", flush=True)

    def timed_update(name):
        runs = []
        for r in range(args.repeats):
            if r == 1:
                timer.reset_peak()
            runs.append({k: v for k, v in fast_training.policy_update(run, roll, advantages, order, 0).items()
                         if k.startswith("time/")})
        phases = sorted(runs[1:] or runs, key=lambda p: p["time/update_forward_backward"])[len(runs[1:] or runs) // 2]
        report(name, phases, phases["time/update_forward_backward"])

    model.train()
    seconds = timer.median_s(bare_passes, args.repeats)
    report("bare passes of 8 rows (no loss, no accumulation)", {}, seconds)
    run.optimizer = torch.optim.AdamW(params_of(model), lr=cfg.lr, fused=device == "cuda")
    timed_update("policy_update, AdamW on bf16 weights")
    run.optimizer = None   # AdamW's bf16 moments go before the float32 masters come
    if device == "cuda":
        torch.cuda.empty_cache()
    run.optimizer = lrpo.make_optimizer(model, cfg)   # float32 masters for bf16 weights
    planner = fast_training.token_budget_passes
    fixed = lambda prompt, answer, k: [slice(i, i + k) for i in range(0, len(prompt), k)]   # as at 2bcb5eb
    fast_training.token_budget_passes = fixed
    timed_update("policy_update, float32 masters, passes of 8 rows")
    fast_training.token_budget_passes = planner
    timed_update("policy_update, float32 masters (as lrpo)")
    cfg.micro_batch = 16
    timed_update("policy_update, float32 masters, 16-row budget")
    cfg.micro_batch = lrpo.REAL["micro_batch"]
    # the float32 master gradients' share of a pass: adding each parameter's bf16 gradient into its
    # float32 master, as MasterWeightAdamW's hook does (one add per parameter), in one foreach call,
    # and compiled into Triton kernels (13 s to compile on the H100)
    grads = [torch.randn_like(p) for p in params_of(model)]
    masters = [torch.zeros_like(g, dtype=torch.float32) for g in grads]
    def add_all(masters, grads):
        for m, g in zip(masters, grads):
            m.add_(g)
    compiled = torch.compile(add_all, dynamic=False) if device == "cuda" else add_all
    t0 = timer.now()
    compiled(masters, grads)
    print(f"loop: compiling the accumulation took {timer.now() - t0:.1f} s", flush=True)
    for name, fn in (("add_ per parameter (the hook)", lambda: [m.add_(g) for m, g in zip(masters, grads)]),
                     ("one _foreach_add_", lambda: torch._foreach_add_(masters, grads)),
                     ("compiled, all parameters", lambda: compiled(masters, grads))):
        seconds = timer.median_s(fn, args.repeats)
        out[f"accumulate: {name}"] = round(seconds, 5)
        print(f"loop: float32 gradient accumulation, {name:32s} {seconds * 1e3:7.2f} ms", flush=True)
    del grads, masters
    if device == "cuda":   # the GPU's busy time in one update: what the host adds is the rest
        model.train()
        prof = kernel_breakdown(lambda: fast_training.policy_update(run, roll, advantages, order, 0))
        wall = sum(out["policy_update, float32 masters (as lrpo)"].get(k, 0) for k in
                   ("time/update_reference", "time/update_forward_backward", "time/update_optimizer"))
        out["kernel_s_of_one_update"], out["wall_s_of_one_update"] = round(prof["total_s"], 3), round(wall, 3)
        out["kernel_groups_s"] = {k: round(v, 3) for k, v in prof["groups_s"].items()}
        print(f"loop: GPU kernel time of one update {prof['total_s']:.3f} s (its unprofiled wall {wall:.3f} s); by kind "
              + ", ".join(f"{k} {v:.3f}" for k, v in sorted(prof["groups_s"].items(), key=lambda g: -g[1])),
              flush=True)
    return out


def params_of(model):
    return [p for p in model.parameters() if p.requires_grad]


if __name__ == "__main__":
    from extras.interrupt import main_with_one_line_ctrl_c
    main_with_one_line_ctrl_c(main, "update_paths")
