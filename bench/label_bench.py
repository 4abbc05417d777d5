"""What labelling costs before a run (issue 30): the paper's two prompts (App. A.2, Figs. 5-6)
answered by the policy itself through the run's sampler, at the paper's shape, on one GPU.

``lrpo.py`` labels data without topics before training, by default with the policy model,
greedy, through the sampler the run uses (``extras/setup.label_data``). This times that call on
a random-init Qwen2.5-1.5B-shaped model (speed does not depend on the weights), bf16:

* N prompts (default 4,885, the paper's training set), each Fig. 5's text (544 tokens by a BPE
  tokenizer of SmolLM2's vocabulary, which stands in for Qwen's here) plus a question of 20-500
  tokens (uniform; HelpSteer3's multilingual prompts after the 512-token filter), then Fig. 6
  (474 tokens) for the regional share (default 1/6);
* up to 64 new tokens (``setup.LABEL_TOKENS``); random weights almost never sample EOS, so every
  reply runs to 64 tokens: an upper bound, as a real model stops after ``[[...]]`` (~8 tokens).

Prompts are token ids drawn from the toy tokenizer's vocabulary (the sampler takes ids), so the
lengths are the ones above whatever the tokenizer. Prints seconds and prompts/s; last line JSON.

    python bench/label_bench.py                # one GPU
    python bench/label_bench.py --smoke        # a tiny model on the CPU (checks the script)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOPIC_PROMPT_TOKENS, REGION_PROMPT_TOKENS = 544, 474


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=4885, help="questions to label (paper: 4,885)")
    p.add_argument("--regional-share", type=float, default=1 / 6, help="share asked Fig. 6 too")
    p.add_argument("--smoke", action="store_true", help="a tiny model on the CPU, 8 prompts")
    args = p.parse_args(argv)
    import torch
    if not args.smoke:
        from extras.models import need_gpu
        need_gpu("bench/label_bench.py", "one H100 in BENCHMARKS.md")
    import toy
    from bench.train_bench import QWEN25_15B, SMOKE, build_policy
    from extras import setup
    from extras.fast_rollout import in_chunks, sample
    device = "cpu" if args.smoke else "cuda"
    n = 8 if args.smoke else args.prompts
    tokenizer = toy.train_tokenizer()
    model = build_policy(tokenizer, SMOKE if args.smoke else QWEN25_15B, device,
                         torch.float32 if args.smoke else torch.bfloat16)
    run_sample = in_chunks(sample, None if not args.smoke else 4)   # what the run samples with
    g = torch.Generator().manual_seed(0)
    ids = lambda k: torch.randint(10, len(tokenizer), (k,), generator=g).tolist()

    def prompts(template_tokens: int, count: int) -> list[list[int]]:
        lengths = torch.randint(20, 501, (count,), generator=g).tolist()
        return [ids(template_tokens + q) for q in lengths]

    passes = {"topic (Fig. 5)": prompts(TOPIC_PROMPT_TOKENS, n),
              "region (Fig. 6)": prompts(REGION_PROMPT_TOKENS, round(n * args.regional_share))}
    run_sample(model, tokenizer, passes["topic (Fig. 5)"][:8], 4, temperature=0.0, seed=0)  # warm-up
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "passes": {}}
    for name, batch in passes.items():
        order = sorted(batch, key=len, reverse=True)   # as label.sampler_labeller batches them
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        tokens = 0
        for i in range(0, len(order), 256 if device == "cuda" else 4):
            out = run_sample(model, tokenizer, order[i:i + (256 if device == "cuda" else 4)],
                             setup.LABEL_TOKENS, temperature=0.0, seed=i)
            tokens += int(out.lengths.sum())
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        result["passes"][name] = {"prompts": len(batch), "seconds": seconds, "new_tokens": tokens,
                                  "prompts_per_s": len(batch) / seconds}
        print(f"{name:16} {len(batch):6d} prompts  {seconds:8.1f} s  {len(batch) / seconds:8.1f} prompts/s  "
              f"{tokens / len(batch):5.1f} new tokens each")
    total = sum(v["seconds"] for v in result["passes"].values())
    print(f"{'total':16} {n:6d} questions {total:8.1f} s")
    print(json.dumps({**result, "total_s": total}))
    return 0


if __name__ == "__main__":
    from extras.interrupt import main_with_one_line_ctrl_c
    main_with_one_line_ctrl_c(lambda: sys.exit(main()), "label_bench", "nothing was written")
