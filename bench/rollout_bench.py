"""Rollout throughput: extras.fast_rollout.sample (and the readable core rollout.sample)
against transformers generate, on one GPU.

A randomly initialised model of the Qwen2.5-1.5B shape (speed does not depend on the weights),
bf16, prompts of 128 random tokens, 256 new tokens with EOS suppressed, pure sampling
(temperature 1, top-p 1, top-k off, as GRPO samples). In one run it measures:

* the device's copy bandwidth, and from it the weight-bandwidth bound on decode steps/s
  (bandwidth / bytes of weights: every decode step must read every weight once);
* that the fast path (CUDA graph) and its eager twin (fast=False) give the same tokens for one seed;
* ours: the fast path (CUDA graphs; ablations: attention over all cache slots, and the fused
  helpers run eagerly, i.e. the kernels before fusion), its eager twin ("ours_fast_eager",
  the same kernels without graphs; "ours_readable" in earlier results), and the readable core `rollout.sample` ("ours_core": plain
  eager PyTorch, no fusion, no graphs); HF generate with the dynamic cache, and with the static
  cache (which auto-compiles its forward: its compile time is reported, not counted);

and prints tok/s (new tokens / wall time of the whole call, prefill included), decode steps/s
(after the prefill), the share of the bandwidth bound, and peak memory; JSON last line.

    PYTHONUNBUFFERED=1 python bench/rollout_bench.py --out runs/bench     # GPU
    python bench/rollout_bench.py --tiny                                   # CPU smoke test (also --smoke)
    python bench/rollout_bench.py --batches 64 256 512 --only fast core hf_dynamic profile

``--only`` picks the parts to run (default: all): fast, fast_eager, core, no_kv_buckets, unfused,
check (fast == eager twin), ending (rows that end at EOS, finished rows dropped or kept), profile
(kernel time per decode step), logprobs, hf_dynamic, hf_static.

``ending`` times the case of the paper's step, where rows end at different lengths: the tokenizer
has ``--answer-vocab`` ids (EOS among them, as in bench/paper_step.py), so a row of random weights
ends after about that many tokens; the fast path runs with finished rows dropped from the batch
(``fast_rollout.COMPACT``, the default) and kept, in turn, same seed, same prompts:

    python bench/rollout_bench.py --only ending --batches 683 1024 --new-tokens 1024
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QWEN25_15B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rms_norm_eps=1e-6,
                  max_position_embeddings=32768, rope_theta=1_000_000.0, eos_token_id=151645,
                  bos_token_id=151643, pad_token_id=151643)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True, max_position_embeddings=1024,
            eos_token_id=1, bos_token_id=1, pad_token_id=0)


class VocabOnly:
    """What sample() needs from a tokenizer when prompts are token ids: Qwen2.5's 151,665 real
    ids inside a 151,936-row embedding, its EOS and pad ids."""

    def __init__(self, size, eos, pad):
        self.size, self.eos_token_id, self.pad_token_id = size, eos, pad

    def __len__(self):
        return self.size

    def batch_decode(self, rows, skip_special_tokens=True):
        return ["" for _ in rows]


PARTS = ("check", "fast", "fast_eager", "core", "no_kv_buckets", "unfused", "ending", "profile", "logprobs",
         "hf_dynamic", "hf_static")


def main():
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256],
        help="rollout batch sizes to time")
    parser.add_argument("--static-batches", type=int, nargs="*", default=[64, 256],
                        help="batches for HF generate with the static cache (each compiles)")
    parser.add_argument("--prompt-len", type=int, default=128, help="prompt tokens per row")
    parser.add_argument("--new-tokens", type=int, default=256, help="decoded tokens per row")
    parser.add_argument("--budget-s", type=float, default=480, help="skip baselines after this many seconds")
    parser.add_argument("--tiny", "--smoke", action="store_true", help="tiny model, CPU allowed (smoke test)")
    parser.add_argument("--only", nargs="+", default=list(PARTS), choices=PARTS, help="parts to run (default all)")
    parser.add_argument("--answer-vocab", type=int, default=1536,
                        help="ending: ids the sampler draws from, EOS included (mean answer ~ this)")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per setting of ours (noise)")
    parser.add_argument("--profile-batches", type=int, nargs="*", default=None,
                        help="batches for the kernel profile (default: all of --batches)")
    parser.add_argument("--out", default=os.environ.get("OUT", "runs/rollout_bench"),
        help="folder for the JSON result (default $OUT or runs/rollout_bench)")
    args = parser.parse_args()
    if not args.tiny:
        from extras.models import need_gpu
        need_gpu("bench/rollout_bench.py", "a 1.5B model decoding batches of up to 512 rows in bf16: "
                 "an 80 GB H100 as in BENCHMARKS.md", instead="--tiny")

    import torch
    import transformers
    from transformers import Qwen2Config, Qwen2ForCausalLM

    import rollout
    from extras import fast_rollout

    start = time.time()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = open(out_dir / "rollout_bench.jsonl", "w")
    results = []

    def record(row):
        results.append(row)
        log.write(json.dumps(row) + "\n")
        log.flush()
        print(json.dumps(row))

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    env = dict(card=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__,
               transformers=transformers.__version__, date=datetime.date.today().isoformat())
    print("env", json.dumps(env))

    torch.manual_seed(0)
    shape = TINY if args.tiny else QWEN25_15B
    with torch.device(device):
        model = Qwen2ForCausalLM(Qwen2Config(**shape)).to(torch.bfloat16 if cuda else torch.float32).eval()
    model.generation_config.eos_token_id = shape["eos_token_id"]
    tokenizer = VocabOnly(151665 if not args.tiny else 500, shape["eos_token_id"], shape["pad_token_id"])
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # tied: counted once
    print(f"weights {weight_bytes / 1e9:.3f} GB")

    # Copy bandwidth (bytes read + written), the ceiling any decode step is measured against.
    bandwidth = None
    if cuda:
        src = torch.empty(2**30, dtype=torch.uint8, device=device).random_()
        dst = torch.empty_like(src)
        for _ in range(3):
            dst.copy_(src)
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(20):
            dst.copy_(src)
        end.record()
        sync()
        bandwidth = 2 * src.numel() * 20 / (begin.elapsed_time(end) / 1e3)
        del src, dst
        record(dict(kind="copy_bandwidth", bytes_per_s=bandwidth, bound_steps_per_s=bandwidth / weight_bytes))

    def prompts(batch, seed=0):
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, tokenizer.size, (batch, args.prompt_len), generator=g)

    def timed(fn):
        sync()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        result = fn()
        sync()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if cuda else 0
        return result, seconds, peak

    def report(name, batch, total_s, prefill_s, peak, new_tokens, extra=None):
        decode_steps_per_s = (new_tokens - 1) / max(total_s - prefill_s, 1e-9)
        row = dict(kind=name, batch=batch, new_tokens=new_tokens, seconds=total_s, prefill_s=prefill_s,
                   tok_per_s=batch * new_tokens / total_s, decode_steps_per_s=decode_steps_per_s,
                   share_of_bound=(decode_steps_per_s / (bandwidth / weight_bytes)) if bandwidth else None,
                   peak_gib=peak / 2**30, peak_above_weights_gib=(peak - weight_bytes) / 2**30, **(extra or {}))
        record(row)

    T = args.new_tokens

    # 1. Same seed, same tokens: fast path (CUDA graph) against the readable path.
    ids = prompts(16, seed=1)
    ids[1::2, : args.prompt_len // 2] = -1  # unequal lengths: half the rows get half a prompt
    rows = [[t for t in r if t >= 0] for r in ids.tolist()]
    for kw in (dict(temperature=1.0), dict(temperature=0.8, top_p=0.95, top_k=50)) if "check" in args.only else ():
        a = fast_rollout.sample(model, tokenizer, rows, 64, seed=5, fast=False, **kw)
        b = fast_rollout.sample(model, tokenizer, rows, 64, seed=5, fast=True, **kw)
        c = fast_rollout.sample(model, tokenizer, rows, 64, seed=6, fast=True, **kw)
        core = rollout.sample(model, tokenizer, rows, 64, seed=5, **kw)
        with torch.no_grad():
            lp = rollout.token_logprobs(model, b.input_ids, b.attention_mask, b.completion_start,
                                        temperature=kw["temperature"])
        mask = b.completion_mask.bool()
        record(dict(kind="check_fast_equals_readable", **kw, same_tokens=bool(torch.equal(a.completion_ids, b.completion_ids)),
                    same_logprobs=bool(torch.equal(a.logprobs, b.logprobs)),
                    other_seed_differs=not torch.equal(b.completion_ids, c.completion_ids),
                    # informative only: the core runs other kernels, and in bf16 a near-tie may flip
                    core_same_tokens=bool(torch.equal(core.completion_ids, b.completion_ids)),
                    max_id=int(b.completion_ids.max()),
                    max_abs_logprob_diff_vs_token_logprobs=float((lp[mask] - b.logprobs[mask]).abs().max()),
                    mean_abs_logprob_diff_vs_token_logprobs=float((lp[mask] - b.logprobs[mask]).abs().mean())))

    # 2. Ours: fast path, its eager twin, and the readable core. Prefill time = a call with one new token.
    OURS = {True: "ours_fast", False: "ours_fast_eager", "core": "ours_core"}

    def ours(batch, fast, name=None):
        rows = prompts(batch)
        if fast == "core":
            run = lambda n: rollout.sample(model, tokenizer, rows, n, seed=0, suppress_eos=True)
        else:
            run = lambda n: fast_rollout.sample(model, tokenizer, rows, n, seed=0, fast=fast, suppress_eos=True)
        # Warm-up with the same shapes, as for generate below: cuBLAS handles, cuDNN attention
        # plans (built once per shape), allocator. A trainer's later calls reuse them.
        _, warm_s, _ = timed(lambda: run(T))
        for repeat in range(args.repeats):   # repeats: the spread of one setting, i.e. the noise
            _, prefill_s, _ = timed(lambda: run(1))
            result, total_s, peak = timed(lambda: run(T))
            assert result.completion_ids.shape == (batch, T), result.completion_ids.shape
            report(name or OURS[fast], batch, total_s, prefill_s, peak, T,
                   dict(first_call_s=warm_s, **({"repeat": repeat} if args.repeats > 1 else {})))

    for batch in args.batches:
        for fast in OURS:
            if OURS[fast].removeprefix("ours_") not in args.only:
                continue
            try:
                ours(batch, fast)
            except Exception as error:  # keep measuring the rest; the error is in the log
                record(dict(kind=OURS[fast], batch=batch, error=repr(error)[:500], trace=traceback.format_exc()[-1500:]))
            if cuda:
                torch.cuda.empty_cache()
    # Ablation: attention over all L cache slots every step (one CUDA graph) instead of buckets.
    bucket = fast_rollout.KV_BUCKET
    for batch in args.batches[1:] if "no_kv_buckets" in args.only else ():
        fast_rollout.KV_BUCKET = 1 << 30
        try:
            ours(batch, True, "ours_fast_no_kv_buckets")
        except Exception as error:
            record(dict(kind="ours_fast_no_kv_buckets", batch=batch, error=repr(error)[:500]))
        fast_rollout.KV_BUCKET = bucket
    # Ablation: the @fused helpers run eagerly, i.e. the kernels of the version before fusion.
    for batch in args.batches[1:] if "unfused" in args.only else ():
        fast_rollout.FUSE = False
        try:
            ours(batch, True, "ours_fast_unfused")
        except Exception as error:
            record(dict(kind="ours_fast_unfused", batch=batch, error=repr(error)[:500]))
        fast_rollout.FUSE = True

    # 2b. Rows that end at EOS: finished rows dropped from the batch (COMPACT) or kept.
    def ending(batch):
        eos, pad = 1, 0
        vocab = VocabOnly(args.answer_vocab, eos, pad)
        rows = torch.randint(2, args.answer_vocab, (batch, args.prompt_len), generator=torch.Generator().manual_seed(3))
        run = lambda: fast_rollout.sample(model, vocab, rows, T, seed=0, fast=True, eos_token_ids=[eos])
        timed(run)   # warm-up: compiles the fused helpers for these shapes, cuDNN plans
        runs = {}
        for compact in (True, False, True, False):   # alternating: drift shows as a spread
            fast_rollout.COMPACT = compact
            result, seconds, peak = timed(run)
            runs.setdefault(compact, []).append((result, seconds, peak))
        fast_rollout.COMPACT = True
        on, off = runs[True][0][0].completion_ids, runs[False][0][0].completion_ids
        width = min(on.shape[1], off.shape[1])
        # bf16: the dropped rows change matmul shapes, so a near-tie may flip a token
        same = float((on[:, :width] == off[:, :width]).all(1).float().mean())
        for compact, timings in runs.items():
            lengths = timings[0][0].lengths.float()
            record(dict(kind="ending_" + ("rows_dropped" if compact else "rows_kept"), batch=batch, new_tokens=T,
                        seconds=[round(t[1], 3) for t in timings], peak_gib=max(t[2] for t in timings) / 2**30,
                        mean_answer_tokens=float(lengths.mean()), rows_at_max=float((lengths >= T).float().mean()),
                        answer_tok_per_s=float(lengths.sum()) / min(t[1] for t in timings),
                        rows_with_same_tokens=same))

    for batch in args.batches if "ending" in args.only else ():
        try:
            ending(batch)
        except Exception as error:
            record(dict(kind="ending_rows_dropped", batch=batch, error=repr(error)[:500], trace=traceback.format_exc()[-1500:]))
        if cuda:
            torch.cuda.empty_cache()

    # 3. Where a decode step's GPU time goes: kernel time by name over 16 eager-twin decode
    #    steps (a 17-token call minus a 1-token call), to compare with the fast path's step time.
    def kernel_profile(batch):
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        rows = prompts(batch)
        totals = []
        for n in (1, 17):
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                fast_rollout.sample(model, tokenizer, rows, n, seed=0, fast=False, suppress_eos=True)
                sync()
            per_name = {}
            for e in prof.key_averages():
                if getattr(e, "device_type", None) == DeviceType.CUDA:
                    us = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
                    name = e.key[:90]
                    total_us, count = per_name.get(name, (0, 0))
                    per_name[name] = (total_us + us, count + e.count)
            totals.append(per_name)
        step = {k: ((v[0] - totals[0].get(k, (0, 0))[0]) / 16, (v[1] - totals[0].get(k, (0, 0))[1]) / 16)
                for k, v in totals[1].items()}
        top = sorted(step.items(), key=lambda kv: -kv[1][0])
        record(dict(kind="kernel_time_per_decode_step", batch=batch,
                    gpu_busy_ms=sum(v[0] for v in step.values()) / 1e3,
                    kernels_per_step=sum(v[1] for v in step.values()),
                    top=[(k, round(v[0], 1), v[1]) for k, v in top[:14]]))

    if cuda and "profile" in args.only:
        for batch in args.batches if args.profile_batches is None else args.profile_batches:
            try:
                kernel_profile(batch)
            except Exception as error:
                record(dict(kind="kernel_time_per_decode_step", batch=batch, error=repr(error)[:500], trace=traceback.format_exc()[-1500:]))

    # 4. Training-side log-probs (fwd + bwd), to size the trainer's micro-batches.
    if cuda and "logprobs" in args.only:
        try:
            ids = prompts(16, seed=2)
            ids = torch.cat([ids, ids], 1).to(device)  # 256 tokens
            mask = torch.ones_like(ids)
            def fwd_bwd():
                lp = rollout.token_logprobs(model, ids, mask, args.prompt_len)
                lp.float().sum().backward()
            fwd_bwd()
            model.zero_grad(set_to_none=True)
            _, seconds, peak = timed(fwd_bwd)
            model.zero_grad(set_to_none=True)
            record(dict(kind="token_logprobs_fwd_bwd", batch=16, seq_len=ids.shape[1], seconds=seconds,
                        peak_gib=peak / 2**30, note="bf16 weights and grads, no activation checkpointing"))
        except Exception as error:
            record(dict(kind="token_logprobs_fwd_bwd", error=repr(error)[:500], trace=traceback.format_exc()[-1500:]))
        torch.cuda.empty_cache()

    # 5. transformers generate, same sampling settings, EOS suppressed by min_new_tokens.
    def hf(batch, cache):
        rows = prompts(batch).to(device)
        mask = torch.ones_like(rows)
        kw = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, pad_token_id=shape["pad_token_id"])
        if cache == "static":
            kw["cache_implementation"] = "static"
        run = lambda n: model.generate(input_ids=rows, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, **kw)
        _, warm_s, _ = timed(lambda: run(T))  # for the static cache: compiles (the cache length is fixed)
        if cache == "dynamic":
            _, prefill_s, _ = timed(lambda: run(1))
            hf_prefill[batch] = prefill_s
        else:  # another cache length would recompile; its prefill runs eagerly, as the dynamic one does
            prefill_s = hf_prefill.get(batch, 0.0)
        result, total_s, peak = timed(lambda: run(T))
        assert result.shape == (batch, args.prompt_len + T), result.shape
        report(f"hf_generate_{cache}", batch, total_s, prefill_s, peak, T, dict(first_call_s=warm_s))

    hf_prefill = {}

    plan = ([(b, "dynamic") for b in args.batches] if "hf_dynamic" in args.only else []) + \
        ([] if args.tiny or "hf_static" not in args.only else [(b, "static") for b in args.static_batches])
    for batch, cache in plan:
        if time.time() - start > args.budget_s:
            record(dict(kind=f"hf_generate_{cache}", batch=batch, error="skipped: time budget"))
            continue
        try:
            hf(batch, cache)
        except Exception as error:
            record(dict(kind=f"hf_generate_{cache}", batch=batch, error=repr(error)[:500], trace=traceback.format_exc()[-1500:]))
        if cuda:
            torch.cuda.empty_cache()

    # Table, then the JSON last line.
    print(f"\n{env['card']}, torch {env['torch']}, transformers {env['transformers']}, {env['date']}; "
          f"prompt {args.prompt_len}, {T} new tokens, bf16" + (f"; copy {bandwidth / 1e12:.2f} TB/s, "
          f"bound {bandwidth / weight_bytes:.0f} steps/s" if bandwidth else ""))
    print(f"{'method':<26}{'batch':>6}{'tok/s':>10}{'steps/s':>9}{'bound':>7}{'peak GiB':>10}")
    for r in results:
        if r["kind"].startswith(("ours", "hf")) and "error" not in r:
            share = f"{100 * r['share_of_bound']:.0f}%" if r["share_of_bound"] else "-"
            print(f"{r['kind']:<26}{r['batch']:>6}{r['tok_per_s']:>10,.0f}{r['decode_steps_per_s']:>9.0f}"
                  f"{share:>7}{r['peak_gib']:>10.1f}")
    for r in results:
        if r["kind"].startswith("ending_") and "error" not in r:
            print(f"{r['kind']:<26}{r['batch']:>6}  seconds {r['seconds']}  mean answer {r['mean_answer_tokens']:.0f}"
                  f"  peak {r['peak_gib']:.1f} GiB  same tokens {r['rows_with_same_tokens']:.0%}")
    summary = dict(bench="rollout", **env, weight_bytes=weight_bytes, copy_bytes_per_s=bandwidth,
                   wall_s=time.time() - start, results=results)
    (out_dir / "rollout_bench.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    from extras.interrupt import main_with_one_line_ctrl_c
    main_with_one_line_ctrl_c(main, "rollout_bench", "the rows measured so far are in <out>/rollout_bench.jsonl")
