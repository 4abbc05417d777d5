"""One full LRPO training step on one GPU, timed per phase, and the update's peak memory at the
paper's shape (issue: "lrpo.py + loss.py", GPU benchmark).

Model: a randomly initialised Qwen2.5-1.5B-shaped Qwen2 (speed does not depend on the weights),
bf16 compute with float32 master weights and float32 AdamW moments (lrpo.MasterWeightAdamW), and
a frozen bf16 reference for the k3 KL. The step runs lrpo.py's own functions:

    router.allocate → rollout.sample (EOS suppressed: every rollout has --new-tokens tokens)
    → calibrate.RewardScorer (fastText LID + a random-init mmBERT-small-shaped encoder on the GPU)
    → loss.group_advantages → lrpo.policy_update (reference log-probs + micro-batched fwd/bwd + step)

Update-phase MFU = 6 · params · tokens / update time / 989 TFLOP/s (H100 SXM dense bf16), where
tokens = rollouts × (prompt + new tokens): the usual training-FLOPs convention; the reference
forward (another 2 · params · tokens) is counted in the time but not in the FLOPs.

Then the paper's shape: 256 questions × 8 rollouts, 512 prompt + 1024 response tokens. The peak
memory of the update does not depend on how many micro-batches run, so this part times a few
micro-batches of that shape (with gradient checkpointing, as the official run) plus the optimizer
step, and reports the peak.

    python bench/train_bench.py [--questions 64] [--new-tokens 256] [--micro-batch 16]
"""
from __future__ import annotations

import argparse
import json
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
DEVICE = "cuda"


def build_policy(tokenizer, shape):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    config = Qwen2Config(**shape, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16 if DEVICE == "cuda" else torch.float32)
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


def sync_time() -> float:
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")


def reset_peak() -> None:
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", type=int, default=64)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--logprob-micro-batch", type=int, default=64)
    p.add_argument("--paper-micro-batch", type=int, default=8)
    p.add_argument("--paper-micro-batches", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="lrpo --compile: compiled decoder layers")
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU: checks the script")
    args = p.parse_args()
    global DEVICE
    if args.smoke:
        DEVICE = "cpu"
        args.questions, args.new_tokens, args.prompt_tokens = 4, 8, 16

    import bandit
    import calibrate
    import loss as L
    import lrpo
    from extras import fast_rollout as rollout   # the CUDA-graph sampler (rollout.sample's fast twin)
    import toy

    tokenizer = toy.train_tokenizer()   # decodes the random ids into text for the reward phase
    shape = SMOKE if args.smoke else QWEN25_15B
    model = build_policy(tokenizer, shape)
    reference = build_policy(tokenizer, shape)
    reference.load_state_dict(model.state_dict())
    reference.requires_grad_(False)
    if args.compile:
        lrpo.compile_layers(model)
        lrpo.compile_layers(reference)
    n_params = sum(p.numel() for p in model.parameters())
    train_args = SimpleNamespace(lr=1e-6, weight_decay=0.01, grad_clip=1.0, kl_coef=0.001,
                                 loss_agg="token-mean", ppo_epochs=1, mini_batch=None,
                                 micro_batch=args.micro_batch,
                                 logprob_micro_batch=args.logprob_micro_batch)
    optimizer = lrpo.make_optimizer(model, train_args, torch)
    scorer = calibrate.RewardScorer(encoder=random_encoder_dir(tokenizer, args.smoke), device=DEVICE, calibration="none")
    router = bandit.make_router("lrpo", list(toy.LANGS))

    gen = torch.Generator().manual_seed(0)
    questions = [ex for ex in toy.load_split("train")][:args.questions]
    prompt = lambda: torch.randint(3, len(tokenizer), (args.prompt_tokens,), generator=gen).tolist()
    K = args.group_size
    rows = {}

    def one_step(warm: bool):
        t0 = sync_time()
        router.begin_step(0)
        langs = router.allocate(questions, K, 2, __import__("numpy").random.default_rng(0))
        prompts = [prompt() for q in questions for _ in range(K)]
        roll = rollout.sample(model, tokenizer, prompts, args.new_tokens, temperature=1.0,
                              seed=0, suppress_eos=True)
        t1 = sync_time()
        flat_langs = [l for ls in langs for l in ls]
        examples = [q for q in questions for _ in range(K)]
        result = scorer.score(roll.texts, flat_langs, [e.answer for e in examples],
                              [e.lang for e in examples], [i // K for i in range(len(examples))])
        router.observe([e.topic for e in examples], [e.region for e in examples], flat_langs,
                       result.reward.tolist())
        router.end_step()
        # Random weights give near-identical rewards; random advantages exercise the same work.
        rewards = torch.rand(len(examples), generator=gen)
        advantages, _ = L.group_advantages(rewards, [i // K for i in range(len(examples))])
        t2 = sync_time()
        batch = {"ids": roll.input_ids.cpu(), "mask": roll.attention_mask.cpu(),
                 "start": roll.completion_start, "completion_mask": roll.completion_mask.float().cpu()}
        reset_peak()
        update = lrpo.policy_update(model, reference, optimizer, batch, advantages, train_args, torch)
        t3 = sync_time()
        return {"rollout_s": t1 - t0, "reward_s": t2 - t1, "update_s": t3 - t2, "step_s": t3 - t0,
                "reward_detail": result.timings,
                "update_detail": {k.split("/")[1]: v for k, v in update.items() if k.startswith("time/")},
                "update_peak_gib": peak_gib(),
                "rollouts": len(examples), "tokens": len(examples) * (args.prompt_tokens + args.new_tokens)}

    one_step(warm=True)      # compile / graph capture / allocator warm-up
    step = one_step(warm=False)
    step["update_mfu"] = 6 * n_params * step["tokens"] / step["update_s"] / H100_BF16_DENSE
    rows["step"] = step

    # The paper's shape: peak memory of the update with gradient checkpointing.
    model.gradient_checkpointing_enable()
    P, T, mb = (512, 1024, args.paper_micro_batch) if not args.smoke else (16, 32, 2)
    n = mb * args.paper_micro_batches
    ids = torch.randint(3, len(tokenizer), (n, P + T), generator=gen)
    batch = {"ids": ids, "mask": torch.ones_like(ids), "start": P,
             "completion_mask": torch.ones(n, T)}
    paper_args = SimpleNamespace(**{**vars(train_args), "micro_batch": mb, "mini_batch": None,
                                    "logprob_micro_batch": 4 * mb})
    warm = {k: (v[:mb] if torch.is_tensor(v) else v) for k, v in batch.items()}
    lrpo.policy_update(model, reference, optimizer, warm, torch.randn(mb), paper_args, torch)  # warm-up
    reset_peak()
    t0 = sync_time()
    lrpo.policy_update(model, reference, optimizer, batch, torch.randn(n), paper_args, torch)
    t1 = sync_time()
    rows["paper_shape"] = {"micro_batch": mb, "micro_batches_timed": args.paper_micro_batches,
                           "seq_len": P + T, "gradient_checkpointing": True,
                           "update_peak_gib": peak_gib(),
                           "update_s_for_timed": t1 - t0,
                           "projected_update_s_2048_rollouts": (t1 - t0) * 2048 / n}

    device_name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu (smoke)"
    print(f"\n{device_name}  torch {torch.__version__}  "
          f"transformers {__import__('transformers').__version__}  params {n_params / 1e9:.3f} B")
    s = rows["step"]
    print(f"\nOne LRPO step: {args.questions} questions × {K} rollouts, prompt {args.prompt_tokens}, "
          f"{args.new_tokens} new tokens, micro-batch {args.micro_batch}, compiled layers: {args.compile}")
    print(f"{'phase':10s}{'seconds':>10s}")
    for ph in ("rollout", "reward", "update", "step"):
        print(f"{ph:10s}{s[ph + '_s']:10.2f}")
    print("reward detail: " + ", ".join(f"{k} {v:.2f}s" for k, v in s["reward_detail"].items()))
    print("update detail: " + ", ".join(f"{k} {v:.2f}s" for k, v in s["update_detail"].items()))
    print(f"update MFU {100 * s['update_mfu']:.1f}%  (6·N·tokens / time / 989 TFLOP/s), "
          f"update peak {s['update_peak_gib']:.1f} GiB")
    ps = rows["paper_shape"]
    print(f"\nPaper shape (512+1024 tokens), micro-batch {ps['micro_batch']}, checkpointing: "
          f"update peak {ps['update_peak_gib']:.1f} GiB of 80; "
          f"{ps['update_s_for_timed']:.1f}s for {ps['micro_batches_timed']} micro-batches "
          f"(→ {ps['projected_update_s_2048_rollouts']:.0f}s for 2048 rollouts)")
    rows["device"] = device_name
    rows["compile"] = args.compile
    rows["torch"], rows["transformers"] = torch.__version__, __import__("transformers").__version__
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
