"""One full LRPO training step on one GPU, timed per phase, and the update's peak memory at the
paper's shape (issues 6 and 13).

Model: a randomly initialised Qwen2.5-1.5B-shaped Qwen2 (speed does not depend on the weights),
bf16 compute with float32 master weights, float32 gradient accumulation and float32 AdamW moments
(``lrpo.make_optimizer`` → extras/fast_training.MasterWeightAdamW), and a frozen bf16 reference
for the k3 KL. The step runs the project's own functions, as ``lrpo.train_step`` does:

    router.allocate → extras.fast_rollout.sample (EOS suppressed: every rollout has --new-tokens)
    → extras.fast_reward.FastRewardScorer (fastText LID + a random-init mmBERT-small-shaped encoder on the GPU)
    → loss.group_advantages → extras.fast_training.policy_update (what lrpo.py runs on a GPU)
      (reference log-probs, shuffled rows, loss.token_weights, micro-batched fwd/bwd, AdamW step)

The update's configuration is ``lrpo.Config`` with the real-run preset (``lrpo.REAL``) and this
benchmark's shape: micro-batch 16 rows per forward/backward, 64 per no-grad forward, verl's
token-mean over ``loss_micro_batch`` rows.

Update-phase MFU = 6 · params · tokens / update time / 989 TFLOP/s (H100 SXM dense bf16), where
tokens = rollouts × (prompt + new tokens): the usual training-FLOPs convention; the reference
forward (another 2 · params · tokens) is counted in the time but not in the FLOPs.

Then the paper's shape: 256 questions × 8 rollouts, 512 prompt + 1024 response tokens. The peak
memory of the update does not depend on how many micro-batches run, so this part times a few
micro-batches of that shape (with gradient checkpointing, as the official run) plus the optimizer
step, and reports the peak.

    python bench/train_bench.py --compile [--questions 64] [--new-tokens 256] [--micro-batch 16]
    python bench/train_bench.py --smoke        # tiny shapes on the CPU: checks the script
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

QWEN25_15B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                  rope_theta=1_000_000.0, tie_word_embeddings=True, rms_norm_eps=1e-6)
MMBERT_SMALL = dict(vocab_size=256000, hidden_size=384, intermediate_size=1152, num_hidden_layers=22,
                    num_attention_heads=6, max_position_embeddings=8192)
H100_BF16_DENSE = 989e12

# --smoke: a tiny CPU version of the same benchmark, to check the script itself anywhere.
SMOKE = dict(QWEN25_15B, vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2)


def build_policy(tokenizer, shape, device, dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    config = Qwen2Config(**shape, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype)
    return model.eval()


def random_encoder_dir(tokenizer, smoke: bool) -> str:
    """A random-init mmBERT-small-shaped ModernBERT saved locally, for RewardScorer(encoder=path)."""
    from transformers import ModernBertConfig, ModernBertModel
    path = Path(tempfile.mkdtemp()) / "mmbert-small-random"
    shape = dict(MMBERT_SMALL, vocab_size=2048, num_hidden_layers=2) if smoke else MMBERT_SMALL
    config = ModernBertConfig(**shape, pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                              cls_token_id=tokenizer.pad_token_id, sep_token_id=tokenizer.eos_token_id)
    ModernBertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


class Timer:
    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        return torch.cuda.max_memory_allocated() / 2**30 if self.cuda else float("nan")

    def median_s(self, fn, repeats: int = 5) -> float:
        """Median seconds of ``repeats`` calls of ``fn`` after one untimed warm-up call; the peak
        memory is reset after the warm-up, so peak_gib() then covers the timed calls."""
        fn()
        self.reset_peak()
        times = []
        for _ in range(repeats):
            t0 = self.now()
            fn()
            times.append(self.now() - t0)
        return sorted(times)[len(times) // 2]


KERNEL_GROUPS = (("gemm", ("gemm", "nvjet", "xmma", "cutlass", "cublas", "splitk", "matmul")),
                 ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn")),
                 ("triton (compiled elementwise/norm)", ("triton",)),
                 ("softmax/logsumexp/reduce", ("softmax", "logsumexp", "reduce")),
                 ("copy/cat/index", ("copy", "cat", "index", "gather", "scatter", "fill")))


def kernel_breakdown(fn, cuda: bool = True) -> dict:
    """CUDA kernel time of one call of ``fn`` grouped by kind of kernel (seconds); on the CPU
    (--smoke) the same over CPU operators, only to check the code."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    groups, top = {}, []
    for e in prof.key_averages():
        if getattr(e, "device_type", None) != (DeviceType.CUDA if cuda else DeviceType.CPU):
            continue
        us = (getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)) if cuda \
            else e.self_cpu_time_total
        name = e.key.lower()
        group = next((g for g, keys in KERNEL_GROUPS if any(k in name for k in keys)), "other elementwise")
        groups[group] = groups.get(group, 0.0) + us / 1e6
        top.append((e.key[:80], round(us / 1e3, 2), e.count))
    top.sort(key=lambda t: -t[1])
    return {"total_s": sum(groups.values()), "groups_s": groups, "top_ms": top[:12]}


def diagnose(run, model, reference, optimizer, tokenizer, scorer, questions, args, device, timer) -> dict:
    """Measurements behind the analysis of issue 13's missed targets (``--diagnose``):

    1. the vocabulary projection of one log-prob chunk of issue 13's chunked head (a strided
       (rows, positions, hidden) slice of the hidden states) against the same product on a
       contiguous copy of the slice;
    2. one reference micro-batch (no grad) and one policy micro-batch (forward + backward) through
       ``lrpo.completion_logprobs`` (issue 13 also timed the chunked head fed contiguous chunks;
       that head is gone: extras.fast_training.token_logprobs is the chunked one now);
    3. the reward's parts on 512 texts like the step's: fastText LID, the encoder's tokenizer calls
       alone (host CPU), and the encoder in float32 (as extras/encoders.HFEncoder loads it) against
       the same encoder cast to bf16.
    """
    import torch.nn.functional as F

    import lrpo

    median_s = timer.median_s

    out = {}
    W = reference.get_output_embeddings().weight
    R, P, T = args.logprob_micro_batch, args.prompt_tokens, args.new_tokens
    pos = max(1, 2048 // R)   # token_logprobs' positions per chunk at R rows
    with torch.no_grad():
        hidden = torch.randn(R, T, W.shape[1], device=device, dtype=W.dtype)
        out["lm_head_one_chunk_ms"] = {
            "rows": R, "positions": pos,
            "strided_slice": 1e3 * median_s(lambda: F.linear(hidden[:, :pos], W)),
            "contiguous_copy": 1e3 * median_s(lambda: F.linear(hidden[:, :pos].contiguous(), W))}
        hidden = None
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, len(tokenizer), (R, P + T), generator=gen).to(device)
    mask = torch.ones_like(ids)
    mb = args.micro_batch

    def ref_fwd():
        with torch.no_grad():
            return lrpo.completion_logprobs(run, reference, ids, mask, P)

    def fwd_bwd():
        model.train()
        logp, _ = lrpo.completion_logprobs(run, model, ids[:mb], mask[:mb], P, entropy=True)
        logp.float().mean().backward()
        optimizer.zero_grad(set_to_none=True)
        model.eval()

    out["reference_micro_batch_s_as_is"] = median_s(ref_fwd)
    out["policy_fwd_bwd_micro_batch_s_as_is"] = median_s(fwd_bwd)
    out["micro_batch_rows"] = {"reference": R, "policy": mb}

    # 3. The reward's parts on 512 texts of the step's kind (256 random in-vocabulary tokens).
    texts = tokenizer.batch_decode(torch.randint(3, len(tokenizer), (8 * len(questions), T), generator=gen).tolist(),
                                   skip_special_tokens=True)
    texts += [q.answer for q in questions]
    out["reward_texts"] = len(texts)
    out["lid_s"] = median_s(lambda: scorer.lid.predict(texts[:8 * len(questions)]), 2)
    enc = scorer.encoder

    def tokenize_only():   # the host-side part of HFEncoder.encode: its tokenizer calls, same batches
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), enc.batch_size):
            enc.tokenizer([texts[i] for i in order[start:start + enc.batch_size]], padding=True, truncation=True,
                          max_length=enc.max_length, return_tensors="pt")
    out["encode_tokenize_only_s"] = median_s(tokenize_only, 3)
    out["TOKENIZERS_PARALLELISM"] = os.environ.get("TOKENIZERS_PARALLELISM")
    out["encode_s_float32"] = median_s(lambda: enc.encode(texts), 3)
    e32 = enc.encode(texts)
    enc.model.to(torch.bfloat16)
    out["encode_s_bfloat16"] = median_s(lambda: enc.encode(texts), 3)
    e16 = enc.encode(texts)
    enc.model.to(torch.float32)
    out["encode_bf16_max_abs_cos_diff"] = float(abs((e32[:-len(questions)] * e32[-1]).sum(1) -
                                                    (e16[:-len(questions)] * e16[-1]).sum(1)).max())
    return out


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", type=int, default=64, help="questions per step")
    p.add_argument("--group-size", type=int, default=8, help="K, rollouts per question")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prompt tokens per rollout")
    p.add_argument("--new-tokens", type=int, default=256, help="completion tokens per rollout")
    p.add_argument("--micro-batch", type=int, default=16,
        help="rollouts per forward/backward (lrpo --micro-batch)")
    p.add_argument("--logprob-micro-batch", type=int, default=64,
        help="rollouts per no-grad forward (lrpo --logprob-micro-batch)")
    p.add_argument("--loss-micro-batch", type=int, default=None, help="default: lrpo.REAL's")
    p.add_argument("--steps", type=int, default=1, help="timed steps after the warm-up step")
    p.add_argument("--paper-shape", action=argparse.BooleanOptionalAction, default=True,
        help="also measure the update's peak memory at the paper's shape (prompt 512, 1,024 new "
             "tokens, gradient checkpointing)")
    p.add_argument("--paper-micro-batch", type=int, default=8,
        help="rows per micro-batch at the paper's shape")
    p.add_argument("--paper-micro-batches", type=int, default=3,
        help="micro-batches timed at the paper's shape")
    p.add_argument("--profile", action="store_true", help="kernel-time breakdown of one micro-batch of each update pass")
    p.add_argument("--diagnose", action="store_true", help="only the measurements of diagnose() (no step)")
    p.add_argument("--compile", action="store_true", help="compiled decoder layers (lrpo --compile)")
    p.add_argument("--logprobs", choices=("fused", "core"), default="fused",
                   help="training log-probs: extras.fast_training.token_logprobs (what lrpo uses on CUDA) "
                        "or the core rollout.token_logprobs (the baseline)")
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU: checks the script")
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for train_bench.json")
    args = p.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        args.questions, args.new_tokens, args.prompt_tokens, args.micro_batch = 4, 8, 16, 8
        args.logprob_micro_batch = 16
    else:
        from extras.models import need_gpu
        need_gpu("bench/train_bench.py", "one 64×8×256 step of a 1.5B model in bf16: an 80 GB H100 "
                 "as in BENCHMARKS.md")

    import numpy as np

    import bandit
    from extras.fast_reward import FastRewardScorer
    import loss as L
    import lrpo
    import toy
    from extras import fast_rollout   # the CUDA-graph twin of rollout.sample (what lrpo uses on CUDA)
    from extras.fast_training import compile_layers

    timer = Timer(device)
    dtype = torch.float32 if args.smoke else torch.bfloat16
    tokenizer = toy.train_tokenizer()   # decodes the sampled ids into text for the reward phase
    shape = SMOKE if args.smoke else QWEN25_15B
    model = build_policy(tokenizer, shape, device, dtype)
    reference = build_policy(tokenizer, shape, device, dtype)
    reference.load_state_dict(model.state_dict())
    reference.requires_grad_(False)
    if args.compile:
        compile_layers(model)
        compile_layers(reference)
    n_params = sum(p.numel() for p in model.parameters())
    cfg = lrpo.Config(**{**lrpo.REAL, "model": "random-qwen2.5-1.5b-shape", "device": device,
                         "dtype": str(dtype).split(".")[-1], "compile": args.compile,
                         "questions_per_step": args.questions, "group_size": args.group_size,
                         "max_new_tokens": args.new_tokens, "micro_batch": args.micro_batch,
                         "logprob_micro_batch": args.logprob_micro_batch,
                         **({"loss_micro_batch": args.loss_micro_batch} if args.loss_micro_batch else {})})
    optimizer = lrpo.make_optimizer(model, cfg)
    import rollout
    from extras import fast_training
    logprobs = fast_training.token_logprobs if args.logprobs == "fused" else rollout.token_logprobs
    from extras.divergence import Guard
    run = SimpleNamespace(cfg=cfg, model=model, reference=reference, optimizer=optimizer, logprobs=logprobs,
                          guard=Guard())
    scorer = FastRewardScorer(encoder=random_encoder_dir(tokenizer, args.smoke), device=device,
                              calibration="none")
    router = bandit.make_router("lrpo", list(toy.LANGS))

    gen = torch.Generator().manual_seed(0)
    questions = toy.load_split("train")[:args.questions]
    prompt = lambda: torch.randint(3, len(tokenizer), (args.prompt_tokens,), generator=gen).tolist()
    K = args.group_size

    if args.diagnose:
        rows = diagnose(run, model, reference, optimizer, tokenizer, scorer, questions, args, device, timer)
        rows.update(bench="train_diagnose", device=torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)",
                    compile=args.compile, date=datetime.date.today().isoformat())
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "train_diagnose.json").write_text(json.dumps(rows, indent=1))
        print(json.dumps(rows))
        return

    def one_step(step: int) -> dict:
        t0 = timer.now()
        router.begin_step(step)
        langs = router.allocate(questions, K, cfg.orig_lang_min, np.random.default_rng(step))
        prompts = [prompt() for q in questions for _ in range(K)]
        roll = fast_rollout.sample(model, tokenizer, prompts, args.new_tokens, temperature=1.0,
                                   seed=step, suppress_eos=True)
        t1 = timer.now()
        flat_langs = [lang for ls in langs for lang in ls]
        examples = [q for q in questions for _ in range(K)]
        group_ids = [i // K for i in range(len(examples))]
        result = scorer.score(roll.texts, flat_langs, [e.answer for e in examples],
                              [e.lang for e in examples], group_ids)
        router.observe([e.topic for e in examples], [e.region for e in examples], flat_langs,
                       result.reward.tolist())
        router.end_step()
        # Random weights give near-identical rewards; random advantages exercise the same work.
        rewards = torch.rand(len(examples), generator=gen)
        advantages, _ = L.group_advantages(rewards, group_ids)
        t2 = timer.now()
        timer.reset_peak()
        update = fast_training.policy_update(run, roll, advantages, torch.randperm(len(examples)), step)
        t3 = timer.now()
        n_tokens = int(roll.attention_mask.sum())
        return {"rollout_s": t1 - t0, "reward_s": t2 - t1, "update_s": t3 - t2, "step_s": t3 - t0,
                "reward_detail": result.timings,
                "update_detail": {k.split("/", 1)[1]: v for k, v in update.items() if k.startswith("time/")},
                "update_peak_gib": timer.peak_gib(), "rollouts": len(examples), "tokens": n_tokens,
                "rollout_new_tok_per_s": len(examples) * args.new_tokens / (t1 - t0),
                "grad_norm": update.get("train/grad_norm")}

    t_start = time.perf_counter()
    warm = one_step(0)       # compile / graph capture / allocator warm-up
    steps = [one_step(s) for s in range(1, 1 + args.steps)]
    step = dict(steps[-1])
    step["update_mfu"] = 6 * n_params * step["tokens"] / step["update_s"] / H100_BF16_DENSE
    fb = step["update_detail"].get("update_forward_backward", float("nan"))
    step["policy_fwd_bwd_mfu"] = 6 * n_params * step["tokens"] / fb / H100_BF16_DENSE
    ref = step["update_detail"].get("update_reference", float("nan"))
    step["reference_fwd_mfu"] = 2 * n_params * step["tokens"] / ref / H100_BF16_DENSE
    rows = {"step": step, "all_timed_steps": steps, "warmup_step_s": warm["step_s"],
            "config": {k: getattr(cfg, k) for k in ("micro_batch", "logprob_micro_batch", "loss_micro_batch",
                                                      "loss_agg", "kl_coef", "lr", "max_new_tokens")}}

    if args.profile:
        # One forward/backward micro-batch and one reference micro-batch, as policy_update runs them.
        ids = torch.randint(3, len(tokenizer), (args.logprob_micro_batch, args.prompt_tokens + args.new_tokens),
                            generator=gen).to(device)
        mask = torch.ones_like(ids)
        def ref_fwd():
            with torch.no_grad():
                lrpo.completion_logprobs(run, reference, ids, mask, args.prompt_tokens)
        def fwd_bwd():
            model.train()
            mb = args.micro_batch
            logp, ent = lrpo.completion_logprobs(run, model, ids[:mb], mask[:mb], args.prompt_tokens, entropy=True)
            logp.float().mean().backward()
            optimizer.zero_grad(set_to_none=True)
            model.eval()
        ref_fwd(), fwd_bwd()
        cuda = device == "cuda"
        rows["profile"] = {"reference_fwd_rows": args.logprob_micro_batch, "reference_fwd": kernel_breakdown(ref_fwd, cuda),
                           "policy_fwd_bwd_rows": args.micro_batch, "policy_fwd_bwd": kernel_breakdown(fwd_bwd, cuda)}

    if args.paper_shape:
        # The paper's shape: peak memory of the update with gradient checkpointing.
        model.gradient_checkpointing_enable()
        P, T, mb = (512, 1024, args.paper_micro_batch) if not args.smoke else (16, 32, 2)
        n = mb * args.paper_micro_batches
        ids = torch.randint(3, len(tokenizer), (n, P + T), generator=gen)
        roll = SimpleNamespace(input_ids=ids, attention_mask=torch.ones_like(ids), completion_start=P,
                               completion_mask=torch.ones(n, T))
        run.cfg = lrpo.Config(**{**vars(cfg), "micro_batch": mb, "logprob_micro_batch": 4 * mb, "max_new_tokens": T})
        part = lambda k: SimpleNamespace(**{a: (v[:k] if torch.is_tensor(v) else v) for a, v in vars(roll).items()})
        fast_training.policy_update(run, part(mb), torch.randn(mb), torch.randperm(mb), 0)  # warm-up
        timer.reset_peak()
        t0 = timer.now()
        fast_training.policy_update(run, roll, torch.randn(n), torch.randperm(n), 1)
        t1 = timer.now()
        run.cfg = cfg
        model.gradient_checkpointing_disable()
        rows["paper_shape"] = {"micro_batch": mb, "micro_batches_timed": args.paper_micro_batches,
                               "seq_len": P + T, "gradient_checkpointing": True,
                               "update_peak_gib": timer.peak_gib(), "update_s_for_timed": t1 - t0,
                               "projected_update_s_2048_rollouts": (t1 - t0) * 2048 / n}

    import transformers
    device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu (smoke)"
    print(f"\n{device_name}  torch {torch.__version__}  transformers {transformers.__version__}  "
          f"params {n_params / 1e9:.3f} B  {datetime.date.today()}")
    s = rows["step"]
    print(f"\nOne LRPO step: {args.questions} questions × {K} rollouts, prompt {args.prompt_tokens}, "
          f"{args.new_tokens} new tokens, micro-batch {cfg.micro_batch} (no-grad {cfg.logprob_micro_batch}), "
          f"compiled layers: {args.compile}; warm-up step {warm['step_s']:.1f}s")
    print(f"{'phase':10s}{'seconds':>10s}")
    for ph in ("rollout", "reward", "update", "step"):
        print(f"{ph:10s}{s[ph + '_s']:10.2f}")
    print("reward detail: " + ", ".join(f"{k} {v:.2f}s" for k, v in s["reward_detail"].items()))
    print("update detail: " + ", ".join(f"{k} {v:.2f}s" for k, v in s["update_detail"].items()))
    print(f"update MFU {100 * s['update_mfu']:.1f}% (policy fwd+bwd alone {100 * s['policy_fwd_bwd_mfu']:.1f}%, "
          f"reference fwd {100 * s['reference_fwd_mfu']:.1f}%; 6·N·tokens / time / 989 TFLOP/s), "
          f"update peak {s['update_peak_gib']:.1f} GiB; rollout {s['rollout_new_tok_per_s']:,.0f} new tok/s "
          f"at batch {s['rollouts']}")
    if "profile" in rows:
        for name in ("reference_fwd", "policy_fwd_bwd"):
            b = rows["profile"][name]
            print(f"kernels, one {name} micro-batch: {b['total_s'] * 1e3:.0f} ms: " +
                  ", ".join(f"{g} {v * 1e3:.0f}" for g, v in sorted(b["groups_s"].items(), key=lambda kv: -kv[1])))
    if "paper_shape" in rows:
        ps = rows["paper_shape"]
        print(f"\nPaper shape (512+1024 tokens), micro-batch {ps['micro_batch']}, checkpointing: "
              f"update peak {ps['update_peak_gib']:.1f} GiB; "
              f"{ps['update_s_for_timed']:.1f}s for {ps['micro_batches_timed']} micro-batches "
              f"(→ {ps['projected_update_s_2048_rollouts']:.0f}s for 2048 rollouts)")
    rows.update(bench="train", device=device_name, compile=args.compile, torch=torch.__version__,
                transformers=transformers.__version__, date=datetime.date.today().isoformat(),
                n_params=n_params, wall_s=time.perf_counter() - t_start)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "train_bench.json").write_text(json.dumps(rows, indent=1))
    print(json.dumps(rows))


if __name__ == "__main__":
    from extras.interrupt import main_with_one_line_ctrl_c
    main_with_one_line_ctrl_c(main, "train_bench")
