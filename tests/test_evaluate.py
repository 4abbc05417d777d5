"""evaluate.py and benchmarks.py: loaders on fixtures in the hub schemas, scorers on multilingual
answers, judge parsing, Seen/Unseen arithmetic, predictions mode and comparison end to end."""
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from extras import benchmarks
import evaluate
from extras.benchmarks import Item, Record, DataError, extract_choice, parse_judge_reply

FIX = Path(__file__).parent / "fixtures" / "evaluate"


def rows(name):
    return [json.loads(line) for line in (FIX / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def fake_hub(files):
    """A stand-in for datasets.load_dataset(hub_id, config, split): rows of one fixture per config."""
    def load(config, split):
        assert split == "test"
        return rows(files[config]) if config in files else []
    return load


# ----------------------------------------------------------------------------------------------
# Loaders

def test_mgsm_file_and_hub_rows():
    items = benchmarks.load_benchmark("mgsm", str(FIX / "mgsm.jsonl"))
    assert [(i.id, i.lang, i.gold) for i in items][:3] == [("q1", "en", "18"), ("q1-de", "de", "18"),
                                                           ("q2-de", "de", "1250")]
    assert {i.lang for i in items} == {"en", "de", "zh", "bn", "th"}
    hub = benchmarks._hub_items("mgsm", "juletxara/mgsm", None,
                                load=fake_hub({"de": "mgsm_hub_de.jsonl", "sw": "mgsm_hub_sw.jsonl"}))
    assert [(i.id, i.lang, i.gold) for i in hub] == [("de-1", "de", "8"), ("de-2", "de", "180"), ("sw-1", "sw", "12")]
    only_sw = benchmarks._hub_items("mgsm", "x", {"sw"}, load=fake_hub({"de": "mgsm_hub_de.jsonl",
                                                                         "sw": "mgsm_hub_sw.jsonl"}))
    assert [i.lang for i in only_sw] == ["sw"]


def test_global_mmlu_lite_file_and_hub_rows():
    hub = benchmarks._hub_items("global-mmlu-lite", "CohereForAI/Global-MMLU-Lite", None, load=fake_hub(
        {"de": "global_mmlu_lite_hub_de.jsonl", "ja": "global_mmlu_lite_hub_ja.jsonl",
         "yo": "global_mmlu_lite_hub_yo.jsonl"}))
    assert [(i.id, i.lang, i.gold, i.group) for i in hub] == [
        ("geography/test/1", "de", "B", "CS"), ("math/test/7", "de", "C", "CA"),
        ("geography/test/1", "ja", "B", "CS"), ("math/test/7", "yo", "C", "CA")]
    assert hub[0].options == ("Rhein", "Donau", "Elbe", "Oder")
    assert hub[0].question.splitlines() == ["Welcher Fluss fließt durch Wien?", "A. Rhein", "B. Donau",
                                            "C. Elbe", "D. Oder", "Answer:"]
    items = benchmarks.load_benchmark("global-mmlu-lite", str(FIX / "global_mmlu_lite.jsonl"), langs=["de", "Arabic"])
    assert [(i.lang, i.gold) for i in items] == [("de", "B"), ("ar", "C")]


def test_include_lite_choices_list_and_option_columns():
    items = benchmarks.load_benchmark("include-lite", str(FIX / "include_lite.jsonl"))
    assert [(i.lang, i.gold, i.group) for i in items] == [("de", "C", "Social Science"), ("ru", "C", "STEM"),
                                                          ("el", "B", "Humanities")]
    assert items[2].options == ("Θεσσαλονίκη", "Αθήνα", "Πάτρα", "Ηράκλειο")  # option_a..d layout
    hub = benchmarks._hub_items("include-lite", "CohereForAI/include-lite-44", None, load=fake_hub(
        {"German": "include_lite_hub_German.jsonl", "Greek": "include_lite_hub_Greek.jsonl"}))
    assert [(i.id, i.lang, i.gold) for i in hub] == [("de-1", "de", "C"), ("el-1", "el", "B")]


def test_care_pro_file_and_toy_items():
    items = benchmarks.load_benchmark("care-pro", str(FIX / "care_pro.jsonl"))
    assert [(i.id, i.lang) for i in items] == [("zh-1", "zh"), ("zh-2", "zh"), ("hi-1", "hi"), ("es-1", "es")]
    assert items[2].gold == "गाजर का हलवा" and items[0].group == "local"


@pytest.mark.parametrize("bench,row,message", [
    ("mgsm", {"id": "1", "lang": "de", "question": "q", "answer_number": "viele"}, "'answer_number' is not a number"),
    ("mgsm", {"id": "1", "lang": "xx", "question": "q", "answer_number": 3}, "unknown language 'xx'"),
    ("global-mmlu-lite", {"lang": "de", "question": "q", "option_a": "1", "option_b": "2", "option_c": "3",
                          "option_d": "4", "answer": "E"}, "field 'answer' must be a letter A..D"),
    ("global-mmlu-lite", {"lang": "de", "question": "q", "option_a": "1", "option_b": "2", "option_c": "3",
                          "answer": "A"}, "missing or empty field 'option_d'"),
    ("include-lite", {"language": "German", "question": "q", "choices": ["a", "b"], "answer": 2}, "out of range"),
    ("care-pro", {"language": "Hindi", "question": "q", "notes": "n"}, "no reference answer"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, bench, row, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "0", "lang": "de", "question": "q", "answer_number": 1}) + "\n"
                    if bench == "mgsm" else "", encoding="utf-8")
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=message) as err:
        benchmarks.load_benchmark(bench, str(path))
    assert "bad.jsonl: row" in str(err.value)


# ----------------------------------------------------------------------------------------------
# Scorers

OPTS = ("Rhein", "Donau", "Elbe", "Oder")


@pytest.mark.parametrize("answer,expected", [
    ("B", "B"),
    ("B. Donau", "B"),
    ("**C**", "C"),
    ("The answer is D.", "D"),
    ("Die richtige Antwort ist C, die Elbe.", "C"),
    ("La respuesta correcta es la (A).", "A"),
    ("答案：Ｂ", "B"),                         # full-width letter
    ("正解は (D) です。", "D"),
    ("정답은 A입니다.", "A"),
    ("Ответ: В", "B"),                         # Cyrillic Ve looks like B
    ("الإجابة الصحيحة هي ج", "C"),             # Arabic option label
    ("उत्तर: C", "C"),
    ("Let me think. A is wrong, B is wrong... The answer is C.", "C"),  # last cue wins
    ("Es ist die Donau.", "B"),                # only an option's text
    ("Ich weiß es nicht.", None),
    ("A or B, hard to say", None),              # two stand-alone letters: no guess
])
def test_extract_choice_multilingual(answer, expected):
    assert extract_choice(answer, OPTS) == expected


def test_score_multiple_choice_counts_unparsed_as_wrong():
    items = [Item("1", "de", "q", "B", OPTS), Item("2", "ja", "q", "B", OPTS), Item("3", "sw", "q", "A", OPTS)]
    recs = benchmarks.score_multiple_choice(items, ["Antwort: B", "答え：Ｃ", "Sijui"])
    assert [(r.correct, r.extracted, r.status) for r in recs] == [
        (True, "B", "scored"), (False, "C", "scored"), (False, None, "unparsed")]


@pytest.mark.parametrize("reply,label", [
    ("A", "CORRECT"),
    ("B", "CORRECT_BUT_WRONG_LANGUAGE"),
    ("C.", "INCORRECT"),
    ("**D**", "NOT_ATTEMPTED"),
    ("d", "NOT_ATTEMPTED"),
    ("C. INCORRECT", "INCORRECT"),
    ("Grade: B", "CORRECT_BUT_WRONG_LANGUAGE"),
    ("<think>The gold says Malia and Sasha; only Malia is given.</think>\nC", "INCORRECT"),
    ("INCORRECT", "INCORRECT"),
    ("NOT ATTEMPTED", "NOT_ATTEMPTED"),
    ("CORRECT_BUT_WRONG_LANGUAGE", "CORRECT_BUT_WRONG_LANGUAGE"),
    ("", None),
    ("I cannot grade this.", None),
    ("CORRECT or INCORRECT, it depends", None),  # two labels: unparseable, never guessed
    ("E", None),
])
def test_parse_judge_reply(reply, label):
    assert parse_judge_reply(reply) == label


def test_care_pro_scoring_counts_only_correct_and_keeps_replies():
    items = benchmarks.load_benchmark("care-pro", str(FIX / "care_pro.jsonl"))
    canned = ["A", "B", "Sorry, I can't decide", "D"]
    seen_prompts = []

    def judge(prompts):
        seen_prompts.extend(prompts)
        return canned
    replies = []
    recs = benchmarks.score_care_pro(items, ["p1", "p2", "p3", "p4"], judge, replies)
    assert [r.status for r in recs] == ["correct", "correct_but_wrong_language", "unparseable", "not_attempted"]
    assert [r.correct for r in recs] == [True, False, False, False]
    assert [r["reply"] for r in replies] == canned and replies[2]["label"] is None
    assert "Question language: Chinese" in seen_prompts[0] and "冬天护城河结冰后" in seen_prompts[0]
    assert "Question language: Hindi" in seen_prompts[2]


def test_summarize_seen_unseen_avg_and_groups():
    def rec(lang, ok, group=""):
        return Record("i", lang, group, "", "", None, ok, "scored")
    records = [rec("de", True, "x"), rec("de", False, "x"), rec("zh", True, "y"), rec("bn", False, "y"),
               rec("bn", False, "y"), rec("sw", True, "x"), rec("sw", True, "x"), rec("sw", False, "x"), rec("sw", False, "y")]
    s = evaluate.summarize("toy", records, train_langs={"de", "zh", "en"})
    assert s["per_language"]["de"] == {"accuracy": 0.5, "n": 2, "unparsed": 0}
    assert s["seen"] == pytest.approx((0.5 + 1.0) / 2)
    assert s["unseen"] == pytest.approx((0.0 + 0.5) / 2)
    assert s["avg"] == s["macro"] == pytest.approx((0.5 + 1.0 + 0.0 + 0.5) / 4)
    assert s["seen_languages"] == ["de", "zh"] and s["unseen_languages"] == ["bn", "sw"]
    assert s["per_topic"]["x"] == {"accuracy": 0.6, "n": 5}
    assert evaluate.overall({"a": {"seen": 0.2, "unseen": 0.1, "avg": 0.15},
                             "b": {"seen": 0.4, "unseen": None, "avg": 0.35}}) == \
        pytest.approx({"seen": 0.3, "unseen": 0.1, "avg": 0.25})


# ----------------------------------------------------------------------------------------------
# Predictions mode and comparison, end to end

def test_predictions_mode_multiple_choice_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    results = evaluate.main(["--bench", "global-mmlu-lite", "--bench-file", str(FIX / "global_mmlu_lite.jsonl"),
                             "--predictions", str(FIX / "global_mmlu_lite_predictions.jsonl"), "--out", str(out)])
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    g = saved["global-mmlu-lite"]
    assert {l: v["accuracy"] for l, v in g["per_language"].items()} == {"ar": 1.0, "de": 1.0, "ja": 1.0, "sw": 0.0}
    assert g["per_language"]["sw"]["unparsed"] == 1 and g["macro"] == 0.75
    assert g["seen"] == 1.0 and g["unseen"] == 0.0  # sw is not a rollout language
    assert g["per_cultural_label"] == {"CA": {"accuracy": 0.5, "n": 2}, "CS": {"accuracy": 1.0, "n": 2}}
    assert "in_language" not in g["per_language"]["de"]  # no language ID for a letter
    assert (out / "global-mmlu-lite_per_language.png").stat().st_size > 0
    lines = (out / "global-mmlu-lite_predictions.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[1])["extracted"] == "B"
    assert "Seen 100.00 | Unseen   0.00 | Avg  75.00" in capsys.readouterr().out


def test_predictions_mode_mgsm_end_to_end(tmp_path):
    results = evaluate.main(["--bench", "mgsm", "--bench-file", str(FIX / "mgsm.jsonl"),
                             "--predictions", str(FIX / "mgsm_predictions.jsonl"), "--out", str(tmp_path)])
    per = results["mgsm"]["per_language"]
    assert {l: (v["accuracy"], v["n"]) for l, v in per.items()} == {
        "bn": (1.0, 1), "de": (1.0, 2), "en": (1.0, 1), "th": (0.0, 1), "zh": (1.0, 1)}
    assert per["th"]["unparsed"] == 1
    assert results["mgsm"]["seen"] == 1.0 and results["mgsm"]["unseen"] == 0.5
    assert per["zh"]["in_language"] == 1.0 and per["bn"]["in_language"] == 1.0  # answer-language ID


def test_predictions_need_every_item_and_a_lang_for_repeated_ids(tmp_path):
    items = benchmarks.load_benchmark("global-mmlu-lite", str(FIX / "global_mmlu_lite.jsonl"))
    partial = tmp_path / "p.jsonl"
    partial.write_text(json.dumps({"id": "geography/test/1", "lang": "de", "prediction": "B"}) + "\n")
    with pytest.raises(DataError, match="no prediction for 3 of 4 items"):
        evaluate.read_predictions(str(partial), items)
    assert evaluate.read_predictions(str(partial), items, allow_missing=True) == ["B", "", "", ""]
    ambiguous = tmp_path / "a.jsonl"
    ambiguous.write_text(json.dumps({"id": "geography/test/1", "prediction": "B"}) + "\n")
    with pytest.raises(DataError, match="add a 'lang' field"):
        evaluate.read_predictions(str(ambiguous), items)


class _CannedJudge(BaseHTTPRequestHandler):
    """An OpenAI-compatible /chat/completions endpoint that grades by a keyword in the answer."""
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        answer = prompt.split("Model answer:")[1]
        reply = "B" if "oil lamps" in answer else "D" if "नहीं पता" in answer else "A" if "滑冰" in answer else "Hmm."
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_care_pro_predictions_with_http_judge_end_to_end(tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _CannedJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        results = evaluate.main(["--bench", "care-pro", "--bench-file", str(FIX / "care_pro.jsonl"),
                                 "--predictions", str(FIX / "care_pro_predictions.jsonl"), "--out", str(tmp_path),
                                 "--judge-url", f"http://127.0.0.1:{server.server_port}/v1", "--judge-name", "j"])
    finally:
        server.shutdown()
    c = results["care-pro"]
    assert c["per_language"]["zh"]["accuracy"] == 0.5
    assert c["per_language"]["zh"]["labels"] == {"correct": 1, "correct_but_wrong_language": 1}
    assert c["per_language"]["hi"]["labels"] == {"not_attempted": 1}
    assert c["per_language"]["es"]["labels"] == {"unparseable": 1} and c["unparsed"] == 1
    assert c["seen"] == 0.25 and c["unseen"] == 0.0  # zh, es seen; hi unseen (paper: 2 seen / 1 unseen)
    assert c["per_language"]["zh"]["in_language"] == 0.5  # one of the two Chinese answers is English
    judged = [json.loads(l) for l in (tmp_path / "care-pro_judge.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [j["reply"] for j in judged] == ["A", "B", "D", "Hmm."] and judged[3]["label"] is None


def test_compare_runs_side_by_side(tmp_path):
    def run(name, de, sw):
        per = {"de": {"accuracy": de, "n": 10}, "sw": {"accuracy": sw, "n": 10}}
        d = tmp_path / name
        d.mkdir()
        (d / "results.json").write_text(json.dumps({"mgsm": {"per_language": per, "macro": (de + sw) / 2,
                                                             "seen": de, "unseen": sw, "avg": (de + sw) / 2}}))
        return f"{name}={d}"
    table = evaluate.main(["--compare", run("base", 0.4, 0.1), run("grpo", 0.5, 0.1), run("lrpo", 0.6, 0.2),
                           "--out", str(tmp_path / "cmp")])
    rows, delta = table["mgsm"]["rows"], table["mgsm"]["delta_vs_base"]
    assert rows["de"] == {"base": 0.4, "grpo": 0.5, "lrpo": 0.6}
    assert delta["lrpo"]["avg"] == pytest.approx(0.15) and delta["grpo"]["sw"] == pytest.approx(0.0)
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| de | 40.00 | 50.00 | 60.00 | +10.00 | +20.00 |" in md
    assert (tmp_path / "cmp" / "comparison_mgsm.png").exists()


# ----------------------------------------------------------------------------------------------
# With a model: log-likelihood option scoring, and the toy benchmark end to end

def _tiny_model_and_tokenizer():
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    chars = sorted(set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 .,:?!\n<>|_/"))
    vocab = {"<pad>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "[UNK]": 3, **{c: i + 4 for i, c in enumerate(chars)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", unk_token="[UNK]",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return Qwen2ForCausalLM(cfg).eval(), tok


def test_loglik_choices_match_unpadded_scoring():
    import torch
    model, tok = _tiny_model_and_tokenizer()
    items = benchmarks.load_benchmark("global-mmlu-lite", str(FIX / "global_mmlu_lite.jsonl"))
    items = [Item(i.id, "de", "Which river? x", i.gold, i.options) for i in items[:1]] + \
            [Item("2", "en", "A much longer question to force left padding in the batch?", "A", OPTS)]
    picked = evaluate.loglik_choices(model, tok, items, style="plain", batch_size=3)
    for item, letter in zip(items, picked):
        prompt = tok(evaluate.eval_prompt(tok, item.question, item.lang, "plain"), add_special_tokens=False).input_ids
        scores = {}
        for cand in "ABCD":
            ids = torch.tensor([prompt + tok(cand, add_special_tokens=False).input_ids])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0, -2], -1)
            scores[cand] = logp[ids[0, -1]].item()
        assert letter == max(scores, key=scores.get)


def test_toy_benchmark_end_to_end_with_tiny_model(tmp_path, toy_model_and_tokenizer):
    import toy  # the fixture has warm-started (or read from the cache) the model that --model toy loads
    results = evaluate.main(["--bench", "toy", "--model", "toy", "--device", "cpu", "--limit", "4",
                             "--batch-size", "24", "--out", str(tmp_path)])
    t = results["toy"]
    assert set(t["per_language"]) == set(toy.LANGS) and all(v["n"] == 4 for v in t["per_language"].values())
    assert set(t["per_topic"]) <= {"regional", "arithmetic"} and t["per_topic"]
    assert t["seen"] == pytest.approx(t["avg"]) and t["unseen"] is None  # all toy languages are rollout languages
    assert t["avg"] > 0.0  # the warm-started model answers some of its own world's questions
    saved = [json.loads(l) for l in (tmp_path / "toy_predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(saved) == 24 and all(s["prediction"] for s in saved)
    assert all(0.0 <= v["in_language"] <= 1.0 for v in t["per_language"].values())
    assert sum(s["answer_lang"] == s["lang"] for s in saved) >= 12  # the tag makes it answer in ℓ_x


# ----------------------------------------------------------------------------------------------
# The training loop's held-out check and the judge's key

def test_evaluate_split_reports_accuracy_over_the_checkable_examples(monkeypatch):
    """A test split mixing numeric and free-text answers: accuracy over the numeric ones, with
    their count, per language where a language has any; reward over all."""
    from types import SimpleNamespace
    import numpy as np
    from data import Example
    from extras import fast_rollout
    examples = [Example("a", "What is 2 + 2?", "4", "en", "math", answer_number=4.0),
                Example("b", "What is 3 + 3?", "6", "en", "math", answer_number=6.0),
                Example("c", "Was ist 5 + 5?", "10", "de", "math", answer_number=10.0),
                Example("d", "Wie heißt der Fluss?", "Der Rhein.", "de", "general"),
                Example("e", "Quelle est la capitale ?", "Paris.", "fr", "general")]
    answers = {"What is 2 + 2?": "2 + 2 = 4", "What is 3 + 3?": "It is 7.", "Was ist 5 + 5?": "Die Antwort ist 10.",
               "Wie heißt der Fluss?": "Der Rhein.", "Quelle est la capitale ?": "Paris."}
    monkeypatch.setattr(fast_rollout, "generate", lambda model, tok, prompts, *a, **k: [answers[p] for p in prompts])
    tokenizer = SimpleNamespace(apply_chat_template=lambda messages, **k: messages[0]["content"].split("\n")[0])
    rewards = np.array([1.0, 0.0, 0.5, 0.25, 0.75])
    scorer = SimpleNamespace(score=lambda texts, langs, refs, ref_langs, ids: SimpleNamespace(
        reward=rewards, gate=np.array([1.0, 1.0, 1.0, 0.0, 1.0])))
    cfg = SimpleNamespace(prompt_style="tag", max_new_tokens=8, seed=0, reward="similarity", data="mixed.jsonl")
    out = evaluate.evaluate_split(None, tokenizer, examples, scorer, cfg)
    assert out["eval/n"] == 5 and out["eval/accuracy_n"] == 3
    assert out["eval/accuracy"] == pytest.approx(2 / 3)             # 4 right, 7 wrong, 10 right
    assert out["eval/accuracy/en"] == 0.5 and out["eval/accuracy/de"] == 1.0 and "eval/accuracy/fr" not in out
    assert out["eval/accuracy/math/de"] == 1.0 and "eval/accuracy/general/de" not in out
    assert out["eval/reward"] == pytest.approx(0.5) and out["eval/reward/fr"] == 0.75
    assert out["eval/in_language"] == pytest.approx(0.8)
    examples = examples[3:]   # nothing checkable: no accuracy at all
    rewards = rewards[3:]
    out = evaluate.evaluate_split(None, tokenizer, examples, scorer, cfg)
    assert "eval/accuracy" not in out and "eval/accuracy_n" not in out and out["eval/n"] == 2


@pytest.mark.parametrize("url,warns", [("http://judge.example.org:8000/v1", True), ("https://judge.example.org/v1", False),
                                       ("http://localhost:8000/v1", False), ("http://127.0.0.1:8000/v1", False)])
def test_http_judge_warns_when_the_key_goes_out_unencrypted(monkeypatch, recwarn, url, warns):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    evaluate.http_judge(url, "judge")
    messages = [str(w.message) for w in recwarn.list]
    assert messages == ([f"the judge's API key ($OPENAI_API_KEY) is sent unencrypted to {url}: plain http to "
                         f"another machine; use https, or unset OPENAI_API_KEY"] if warns else [])
    monkeypatch.delenv("OPENAI_API_KEY")
    recwarn.clear()
    evaluate.http_judge(url, "judge")   # no key, nothing to warn about
    assert not recwarn.list
