"""The paper's step on one GPU, measured through ``lrpo.py``'s own loop (issue 18).

Runs ``lrpo.main`` (the command users run, not a copy of its loop) at the real-run preset:
256 questions × 8 rollouts of up to 1,024 new tokens, bf16 with float32 masters, compiled layers,
for ``--steps`` steps, then prints one row per step from the run's own ``metrics.jsonl``: each
phase's seconds, tokens, update MFU, peak GiB and skipped optimizer steps. Last line: JSON.

Without ``--model/--data/--encoder`` it builds what the issue's run used: a random-init
Qwen2.5-1.5B-shaped model folder with the built-in world's tokenizer, a random mmBERT-small-shaped
encoder folder (``--calibration none``: no statistics exist for a random encoder), and the built-in
world's 1,008 questions as a JSONL file with topics and regions. Speed does not depend on the
weights; rollouts end at EOS (the sampler draws from the tokenizer's 1,536 ids, so a rollout of
random weights ends after ~750 tokens on average, as a trained model's answers in the paper do).

Update MFU = 6 · params · tokens / update seconds / 989 TFLOP/s (H100 SXM dense bf16), tokens =
every prompt and response token of the step; the reference forward is timed but not counted.

    python bench/paper_step.py                      # on the GPU: 4 steps of the paper's shape
    python bench/paper_step.py --diagnose           # + where a non-finite value first appears
    python bench/paper_step.py --smoke              # a tiny model on the CPU, < 1 min (a test)
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.train_bench import MMBERT_SMALL, QWEN25_15B, SMOKE, H100_BF16_DENSE


def build_inputs(work: Path, smoke: bool) -> tuple[str, str, str]:
    """The issue's folders: model, data file, encoder (random weights, the world's tokenizer)."""
    import toy
    from transformers import ModernBertConfig, ModernBertModel, Qwen2Config, Qwen2ForCausalLM
    tok = toy.train_tokenizer()
    model_dir, encoder_dir, data_file = work / "policy", work / "encoder", work / "questions.jsonl"
    if not model_dir.exists():
        config = Qwen2Config(**(SMOKE if smoke else QWEN25_15B), eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id, torch_dtype="bfloat16")
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu"):   # fast init
            model = Qwen2ForCausalLM(config).to(torch.float32 if smoke else torch.bfloat16)
        model.save_pretrained(model_dir)
        del model
        tok.save_pretrained(model_dir)
    if not encoder_dir.exists():
        shape = dict(MMBERT_SMALL, vocab_size=2048, num_hidden_layers=2) if smoke else MMBERT_SMALL
        config = ModernBertConfig(**shape, pad_token_id=tok.pad_token_id, bos_token_id=tok.pad_token_id,
                                  eos_token_id=tok.eos_token_id, cls_token_id=tok.pad_token_id,
                                  sep_token_id=tok.eos_token_id)
        ModernBertModel(config).save_pretrained(encoder_dir)
        tok.save_pretrained(encoder_dir)
    if not data_file.exists():
        rows = [dataclasses.asdict(ex) for split in ("train", "test") for ex in toy.load_split(split)]
        data_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(model_dir), str(data_file), str(encoder_dir)


# ----------------------------------------------------------------------------------------------
# --diagnose: where a non-finite value first appears (wraps lrpo's functions; the loop is lrpo's)

def install_probes(found: list, probed: dict) -> None:
    """Record the first non-finite log-prob, loss term or parameter gradient, with the shape and
    lengths of the micro-batch it came from. Costs a host sync per parameter and micro-batch."""
    import loss
    import lrpo
    import rollout
    from extras import fast_training
    state = {"micro": 0, "rows": None}

    def note(what, **details):
        if len(found) < 20:
            found.append({"what": what, "micro_batch": state["micro"], **details})
            print(f"[diagnose] non-finite {what} in micro-batch {state['micro']}: {details}", flush=True)

    def probe(original):   # the run's log-prob function, whichever speed_paths picks at set-up
        @functools.wraps(original)
        def token_logprobs(model, ids, mask, start, **kw):
            out = original(model, ids, mask, start, **kw)
            logp = out[0] if isinstance(out, tuple) else out
            grad = torch.is_grad_enabled()
            state["micro"] += grad
            kind = "grad passes" if grad else "no-grad passes"
            probed[kind] = probed.get(kind, 0) + 1
            lengths = mask[:, start:].sum(1).tolist()
            state["rows"] = {"shape": list(ids.shape), "start": start, "completion_lengths": lengths,
                             "prompt_lengths": mask[:, :start].sum(1).tolist()}
            if not torch.isfinite(logp).all():
                bad = (~torch.isfinite(logp)).nonzero()[:5].tolist()
                note("log-prob" + (" (grad pass)" if grad else " (no-grad pass)"), positions=bad, **state["rows"])
            return out
        return token_logprobs
    rollout.token_logprobs = probe(rollout.token_logprobs)
    fast_training.token_logprobs = probe(fast_training.token_logprobs)

    original_loss = loss.policy_loss

    @functools.wraps(original_loss)
    def policy_loss(logp, old_logp, advantages, weights, **kw):
        for name, t in (("logp", logp), ("old_logp", old_logp), ("ref_logp", kw.get("ref_logp")),
                        ("advantages", advantages), ("weights", weights)):
            if t is not None and not torch.isfinite(t).all():
                note(f"loss input {name}", **(state["rows"] or {}))
        value, metrics = original_loss(logp, old_logp, advantages, weights, **kw)
        for name, v in {"loss": value, **metrics}.items():
            if not torch.isfinite(v).all():
                note(f"loss term {name}", **(state["rows"] or {}))
        return value, metrics
    loss.policy_loss = policy_loss

    names = {}
    original_hook = fast_training.MasterWeightAdamW._accumulate_into

    def accumulate_into(master):
        inner = original_hook(master)
        def hook(p):
            if not torch.isfinite(p.grad).all():
                note("gradient", parameter=names.get(id(p), tuple(p.shape)), **(state["rows"] or {}))
            inner(p)
        return hook
    fast_training.MasterWeightAdamW._accumulate_into = staticmethod(accumulate_into)

    original_optimizer = lrpo.make_optimizer

    def make_optimizer(model, cfg):
        names.update({id(p): n for n, p in model.named_parameters()})
        return original_optimizer(model, cfg)
    lrpo.make_optimizer = make_optimizer


# ----------------------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="policy folder or hub id (default: build a random Qwen2.5-1.5B shape)")
    p.add_argument("--data", help="JSONL questions (default: the built-in world's, with topics and regions)")
    p.add_argument("--encoder", help="reward encoder folder (default: a random mmBERT-small shape)")
    p.add_argument("--steps", type=int, default=4, help="training steps to run and report")
    p.add_argument("--work", help="folder for the built inputs and the run (default: a temp folder)")
    p.add_argument("--run-dir", help="the lrpo run folder (default: <work>/run)")
    p.add_argument("--diagnose", action="store_true", help="report where a non-finite value first appears")
    p.add_argument("--smoke", action="store_true", help="a tiny model on the CPU: checks this script")
    p.add_argument("lrpo_args", nargs="*", help="more lrpo.py flags, after --")
    args = p.parse_args()
    if not args.smoke:
        from extras.models import need_gpu
        need_gpu("bench/paper_step.py", "the paper's step takes ~57 GiB of GPU memory: an 80 GB H100 "
                 "as in BENCHMARKS.md")
    work = Path(args.work or tempfile.mkdtemp(prefix="paper_step_"))
    work.mkdir(parents=True, exist_ok=True)
    built = build_inputs(work, args.smoke) if not (args.model and args.data and args.encoder) else (None,) * 3
    model, data_file, encoder = args.model or built[0], args.data or built[1], args.encoder or built[2]
    out = Path(args.run_dir) if args.run_dir else work / "run"
    argv = ["--model", model, "--data", data_file, "--encoder", encoder, "--calibration", "none",
            "--steps", str(args.steps), "--eval-size", "0", "--save-every", str(10 * args.steps),
            "--out", str(out), "--no-progress", "--no-check-tags", "--samples-per-step", "0"]
    if args.smoke:
        argv += ["--device", "cpu", "--questions-per-step", "2", "--max-new-tokens", "8", "--micro-batch", "16",
                 "--threads", "1"]
    argv += args.lrpo_args
    from extras import runlog
    # Checkpoints are not what is measured: at the paper's shape the model, its float32 masters and
    # AdamW's moments are a 21 GB write at the last step.
    runlog.save_if_sound = lambda *a, **k: None
    runlog.check_finished = lambda *a, **k: None   # so the run's end asks for no checkpoint
    found, probed = [], {}
    if args.diagnose:
        install_probes(found, probed)
    import lrpo
    print("[paper_step] python lrpo.py " + " ".join(argv), flush=True)
    lrpo.main(argv)

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    cfg = json.loads((out / "config.json").read_text())
    n_params = sum(t.numel() for t in _state_shapes(model))
    rows = []
    for m in metrics:
        update_s = m["time/update"]
        rows.append({"step": m["step"], "step_s": m["time/step"], "rollout_s": m["time/rollout"],
                     "reward_s": m["time/reward"], "reference_s": m.get("time/update_reference", 0.0),
                     "forward_backward_s": m.get("time/update_forward_backward", 0.0),
                     "update_s": update_s, "tokens": m.get("tokens"),
                     "mean_response": m["response_length"],
                     "update_mfu": 6 * n_params * m.get("tokens", 0) / update_s / H100_BF16_DENSE,
                     "peak_gib": m.get("memory/peak_gib"), "alloc_retries": m.get("memory/alloc_retries"),
                     "skipped_steps": m["train/skipped_steps"]})
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else "cpu"
    print(f"\n{device}, {cfg['questions_per_step']}×{cfg['group_size']} rollouts, up to "
          f"{cfg['max_new_tokens']} new tokens, {n_params / 1e9:.3f} B parameters\n")
    print("| step | rollout | reward | reference | fwd/bwd | update | step | tokens | mean resp | update MFU | peak GiB | alloc retries | skipped |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['step']} | {r['rollout_s']:.1f} | {r['reward_s']:.1f} | {r['reference_s']:.1f} | "
              f"{r['forward_backward_s']:.1f} | {r['update_s']:.1f} | {r['step_s']:.1f} | {r['tokens']} | "
              f"{r['mean_response']:.0f} | {r['update_mfu']:.1%} | {r['peak_gib'] or 0:.1f} | {r['alloc_retries']} | {r['skipped_steps']} |")
    print(json.dumps({"device": device, "params": n_params, "steps": rows, "non_finite": found,
                      **({"probed": probed} if args.diagnose else {})}))


def _state_shapes(model_dir: str):
    """Parameter tensors of the saved policy (tied embeddings counted once), read lazily."""
    from transformers import AutoConfig, AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return list(model.parameters())


if __name__ == "__main__":
    from extras.interrupt import main_with_one_line_ctrl_c
    main_with_one_line_ctrl_c(main, "paper_step")
