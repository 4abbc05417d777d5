"""The update's two passes at the paper's row shape, each way lrpo has computed them (issue 18).

One call times, on the same random-init Qwen2.5-1.5B-shaped model (bf16; speed does not depend on
the weights) and the same rows:

* the forward/backward of one training micro-batch (8 rows, the real preset's ``--micro-batch``),
  through ``extras.fast_training.token_logprobs`` with the padding mask given to attention
  (``mask_attention=True``: commit cd819e8's layout, which SDPA must run on its memory-efficient
  kernel) and without it (plain causal attention on left-aligned rows, what lrpo runs now);
* the reference's no-grad forward over 128 rows in passes of 32 (``--logprob-micro-batch``), in
  the rows' shuffled order (as ``lrpo.frozen_logprobs`` took them before) and sorted by length
  (as it does now), each with and without the mask.

Rows: prompts of 19–36 tokens left-padded to 40 and answers of 1–1,024 tokens whose lengths follow
the paper-shape bench's step 2 (mean ~770; ``bench/paper_step.py``); a training micro-batch is 8
neighbours in length order, as ``policy_update`` groups them. MFU = 6 (training) or 2 (reference)
· params · real tokens / seconds / 989 TFLOP/s.

    python bench/update_paths.py            # on the GPU, about a minute
    python bench/update_paths.py --smoke    # tiny shapes on the CPU: checks the script
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.train_bench import H100_BF16_DENSE, QWEN25_15B, SMOKE


def paper_rows(n: int, vocab: int, max_new: int, seed: int = 0):
    """n rows as lrpo's sampler returns them: left-padded prompts, answers padded on the right."""
    gen = torch.Generator().manual_seed(seed)
    prompt_len = torch.randint(19, 37, (n,), generator=gen)
    # answers: a quarter hit the cap (random weights rarely emit EOS early), the rest spread below
    answer_len = torch.where(torch.rand(n, generator=gen) < 0.25, torch.full((n,), max_new),
                             torch.randint(max_new // 4, max_new, (n,), generator=gen))
    start = 40 if max_new > 64 else int(prompt_len.max())
    ids = torch.randint(3, vocab, (n, start + max_new), generator=gen)
    cols = torch.arange(start + max_new)[None]
    mask = ((cols >= start - prompt_len[:, None]) & (cols < start + answer_len[:, None])).long()
    return ids, mask, start


def timed(fn, device: str, repeats: int) -> tuple[float, float]:
    """Median seconds of ``repeats`` calls after one warm-up, and the peak GiB."""
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return sorted(times)[len(times) // 2], peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    parser.add_argument("--compile", action="store_true", help="compile each decoder layer, as lrpo does")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each pass (median)")
    args = parser.parse_args()
    import lrpo
    from extras import fast_training
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
    by_length = mask.sum(1).argsort()
    micro = by_length[n_ref // 2:n_ref // 2 + 8]   # 8 length neighbours near the median
    run = type("Run", (), {})()   # what lrpo.frozen_logprobs reads of a run
    results = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
               "params": params, "compile": args.compile}

    def fwd_bwd(mask_attention: bool):
        def go():
            model.zero_grad(set_to_none=True)
            logp = lrpo.completion_logprobs(run, model, ids[micro], mask[micro], start)
            (logp.float() * mask[micro, start:start + logp.shape[1]]).sum().backward()
        return go

    def reference(mask_attention: bool, sort: bool):
        rows = by_length if sort else torch.arange(n_ref, device=device)

        @torch.no_grad()
        def go():
            for i in range(0, n_ref, 32):
                chunk = rows[i:i + 32]
                lrpo.completion_logprobs(run, model, ids[chunk], mask[chunk], start)
        return go

    for name, mask_attention, fn, tokens, flops_per in (
            ("train micro-batch, mask to attention (cd819e8)", True, fwd_bwd, mask[micro].sum(), 6),
            ("train micro-batch, causal, no mask (now)", False, fwd_bwd, mask[micro].sum(), 6),
            ("reference, shuffled passes, mask (cd819e8)", True, lambda m: reference(m, False), mask.sum(), 2),
            ("reference, shuffled passes, no mask", False, lambda m: reference(m, False), mask.sum(), 2),
            ("reference, sorted passes, no mask (now)", False, lambda m: reference(m, True), mask.sum(), 2)):
        run.cfg = lrpo.Config(temperature=1.0)
        run.logprobs = lambda *a, mask_attention=mask_attention, **kw: fast_training.token_logprobs(
            *a, mask_attention=mask_attention, **kw)
        model.train() if flops_per == 6 else model.eval()
        seconds, peak = timed(fn(mask_attention), device, args.repeats)
        mfu = flops_per * params * int(tokens) / seconds / H100_BF16_DENSE
        results[name] = {"s": round(seconds, 4), "mfu": round(mfu, 3), "peak_gib": round(peak, 1),
                         "real_tokens": int(tokens)}
        print(f"{name:52s} {seconds * 1e3:9.1f} ms  MFU {mfu:6.1%}  peak {peak:5.1f} GiB", flush=True)
    with torch.no_grad():   # the two layouts' values at the answers' tokens (bf16 kernels differ)
        model.eval()
        both = [fast_training.token_logprobs(model, ids[micro], mask[micro], start, mask_attention=m)
                for m in (True, False)]
        real = mask[micro, start:].bool()
        results["max_abs_logp_diff"] = float((both[0] - both[1]).float()[real].abs().max())
        results["mean_abs_logp_diff"] = float((both[0] - both[1]).float()[real].abs().mean())
    print(f"log-probs, mask vs no mask, at real tokens: max |diff| {results['max_abs_logp_diff']:.3g}, "
          f"mean {results['mean_abs_logp_diff']:.3g}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
