"""data.py (languages, the prompt tag, the split) and extras/recipes.py (loaders, their errors, recipes)."""
import json

import pytest

import data
from extras import recipes
from data import DataError, Example

FIXTURES = __import__("pathlib").Path(__file__).parent / "fixtures" / "data"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_language_table():
    assert list(data.ROLLOUT_LANGUAGES) == ["ar", "de", "en", "es", "fr", "id", "it", "ja", "ko",
                                            "nl", "pl", "pt", "ru", "vi", "zh"]
    assert {"bn", "sw", "te", "th"} <= set(data.EVAL_ONLY_LANGUAGES)
    assert data.lang_code("Chinese") == "zh" and data.lang_code("chinese") == "zh"
    assert data.lang_code("zh-CN") == "zh" and data.lang_code("in") == "id"
    with pytest.raises(DataError, match="unknown language 'klingon'.*known codes: ar, de"):
        data.lang_code("klingon")


@pytest.mark.parametrize("code", list(data.ROLLOUT_LANGUAGES))
def test_prompt_tag_through_chat_template(toy_tokenizer, code):
    prompt = data.build_prompt(toy_tokenizer, "  What is 2+2?  ", code)
    # The official form: one user turn, question stripped, newline, plain-text tag, no system turn.
    assert prompt == (f"<|im_start|>user\nWhat is 2+2?\n<|out_lang_{code}|><|im_end|>\n"
                      "<|im_start|>assistant\n")
    assert toy_tokenizer.decode(toy_tokenizer(prompt, add_special_tokens=False)["input_ids"]) == prompt


def test_zero_style_prompt_is_a_system_prompt_in_the_target_language(toy_tokenizer):
    assert set(data.ZERO_SYSTEM_PROMPTS) == set(data.LANGUAGES)
    prompt = data.build_prompt(toy_tokenizer, "Hi", "de", style="zero")
    assert prompt.startswith("<|im_start|>system\nDu bist ein hilfreicher Assistent.")
    assert "<|out_lang_" not in prompt
    with pytest.raises(ValueError, match="prompt style"):
        data.build_messages("Hi", "de", style="loud")


def test_jsonl_with_column_mapping(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [
        {"qid": 7, "q": "Was ist 2+2?", "ref": "4", "language": "German", "cat": "math",
         "where": ["Germany", "Europe"], "num": "4"},
        {"qid": 8, "q": "东京在哪？", "ref": "日本", "language": "zh", "where": "Japan"},
    ])
    cols = {"id": "qid", "question": "q", "answer": "ref", "lang": "language", "topic": "cat",
            "region": "where", "answer_number": "num"}
    a, b = recipes.load_examples(str(path), columns=cols)
    assert a == Example(id="7", question="Was ist 2+2?", answer="4", lang="de", topic="math",
                        region=("Germany", "Europe"), answer_number=4.0)
    assert b.region == ("Japan",) and b.topic == "general" and b.answer_number is None


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path / "qa.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "a", "question": "Q?", "answer": "A.", "lang": "fr",
                                          "topic": "t", "region": ["France"]}]), path)
    (ex,) = recipes.load_examples(str(path))
    assert ex.lang == "fr" and ex.region == ("France",)


@pytest.mark.parametrize("row, message", [
    ({"id": 1, "answer": "A", "lang": "en"}, r"row 2: missing or empty field 'question' \(column 'question'\)"),
    ({"id": 1, "question": "Q", "answer": "A", "lang": "xx"}, r"row 2: field 'lang': unknown language 'xx'; known codes"),
    ({"id": 1, "question": "Q", "answer": 3, "lang": "en"}, r"row 2: field 'answer' .* must be a string"),
    ({"id": 1, "question": "Q", "answer": "A", "lang": "en", "answer_number": "many"}, r"row 2: field 'answer_number'.*not a number"),
    ({"id": 1, "question": "Q", "answer": "A", "lang": "en", "region": 5}, r"row 2: field 'region'"),
    ([1, 2], r"row 2: expected an object"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, row, message):
    good = {"id": 0, "question": "Q", "answer": "A", "lang": "en"}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(DataError, match=r"bad\.jsonl: " + message):
        recipes.load_examples(str(path))


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        recipes.load_examples(str(tmp_path / "missing.jsonl"))
    (tmp_path / "broken.jsonl").write_text('{"question": "Q", "answer": "A", "lang": "en"}\n{not json\n')
    with pytest.raises(DataError, match=r"broken\.jsonl: row 2: not valid JSON"):
        recipes.load_examples(str(tmp_path / "broken.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        recipes.load_examples(str(tmp_path / "x.csv"))
    with pytest.raises(DataError, match="column mapping names unknown fields"):
        write_jsonl(tmp_path / "ok.jsonl", [{"question": "Q", "answer": "A", "lang": "en"}])
        recipes.load_examples(str(tmp_path / "ok.jsonl"), columns={"prompt": "q"})
    with pytest.raises(DataError, match="unknown recipe"):
        recipes.load_examples(str(tmp_path / "ok.jsonl"), recipe="alpaca")


def test_helpsteer3_recipe_is_the_multilingual_domain(capsys):
    examples = recipes.load_examples(str(FIXTURES / "helpsteer3.jsonl"), recipe="helpsteer3")
    # kept: the multilingual Chinese row (response 1 preferred, unlabelled) and the French row
    # (response 2 preferred, labelled by extras.label); skipped: 3 other domains, the multi-turn
    # row, the tie.
    zh, fr = examples
    assert (zh.lang, zh.topic, zh.region, zh.answer) == ("zh", "general", (), "北京烤鸭很有名。")
    assert zh.question == "北京有什么好吃的？" and zh.id == "helpsteer3-train-1"
    assert (fr.lang, fr.topic, fr.region) == ("fr", "Regional Knowledge", ("France",))
    assert fr.answer.startswith("La Chandeleur") and fr.id == "helpsteer3-train-6"
    out = capsys.readouterr().out
    assert "skipped 5 (3 not in the multilingual domain, 1 multi-turn, 1 tie)" in out
    # a raw HelpSteer3 file is recognised without naming the recipe
    assert recipes.load_examples(str(FIXTURES / "helpsteer3.jsonl")) == examples


def test_helpsteer3_bad_language_names_the_row(tmp_path):
    row = {"domain": "multilingual", "language": "klingon", "context": [{"role": "user", "content": "Q"}],
           "response1": "A", "response2": "B", "overall_preference": 1}
    path = write_jsonl(tmp_path / "hs.jsonl", [row])
    with pytest.raises(DataError, match=r"hs\.jsonl: row 1: field 'language': unknown language 'klingon'"):
        recipes.load_examples(str(path), recipe="helpsteer3")


def test_helpsteer3_schema_error(tmp_path):
    path = write_jsonl(tmp_path / "hs.jsonl", [{"domain": "general", "language": "english"}])
    with pytest.raises(DataError, match=r"hs\.jsonl: row 1: missing field 'context' \(helpsteer3 schema\)"):
        recipes.load_examples(str(path), recipe="helpsteer3")


def test_gsm8k_recipe(tmp_path):
    a, b = recipes.load_examples(str(FIXTURES / "gsm8k.jsonl"), recipe="gsm8k")
    assert a.answer_number == 72 and a.lang == "en" and a.topic == "math"
    assert "<<" not in a.answer and a.answer.endswith("The answer is 72.")
    assert b.answer_number == 2400
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q", "answer": "no final answer"}])
    with pytest.raises(DataError, match=r"g\.jsonl: row 1: field 'answer' has no '#### <number>'"):
        recipes.load_examples(str(path), recipe="gsm8k")


def test_split_is_deterministic_stratified_and_order_free():
    examples = [Example(id=str(i), question="q", answer="a", lang=lang, topic="t")
                for lang, n in (("en", 50), ("zh", 20), ("ja", 10)) for i in range(n)]
    train, test = data.split_examples(examples, 0.1, seed=42)
    assert len(train) + len(test) == len(examples)
    assert {l: sum(e.lang == l for e in test) for l in ("en", "zh", "ja")} == {"en": 5, "zh": 2, "ja": 1}
    _, test_reversed = data.split_examples(examples[::-1], 0.1, seed=42)
    assert sorted((e.id, e.lang) for e in test) == sorted((e.id, e.lang) for e in test_reversed)
    _, test_other_seed = data.split_examples(examples, 0.1, seed=7)
    assert {(e.id, e.lang) for e in test} != {(e.id, e.lang) for e in test_other_seed}


# ----------------------------------------------------------------------------------------------
# The official formats (examples/data_preprocess/example.py) and dotted column names

def test_official_verl_parquet_is_detected(capsys):
    a, b, c, d = recipes.load_examples(str(FIXTURES / "official_verl.parquet"))
    assert "official verl parquet" in capsys.readouterr().out
    assert (a.id, a.lang, a.topic, a.region) == ("0", "zh", "Regional Knowledge", ("China",))
    assert a.question == "小粉红是什么？" and a.answer.startswith("“小粉红”")
    assert b.region == ("Japan", "China")                     # a list of regions
    assert (c.lang, c.topic, c.region) == ("de", "General Knowledge", ())
    assert (d.lang, d.topic) == ("ar", "Translation")


def test_official_verl_jsonl_string_region_and_string_prompt():
    es, nl = recipes.load_examples(str(FIXTURES / "official_verl.jsonl"))
    assert (es.lang, es.region) == ("es", ("Japan",))        # a string region is one region
    assert (nl.question, nl.lang, nl.topic) == ("Hoe is je dag?", "nl", "Chat / Conversational")


def test_official_source_json_is_detected():
    ja, pl, id_ = recipes.load_examples(str(FIXTURES / "official_source.json"))
    assert (ja.lang, ja.topic, ja.region, ja.id) == ("ja", "Regional Knowledge", ("France",), "official_source-1")
    assert ja.answer.startswith("1789") and pl.region == () and pl.topic == "Reasoning / Logic"
    assert (id_.lang, id_.region) == ("id", ("Southeast Asia", "Vietnam"))


def test_dotted_columns_in_a_mapping(tmp_path):
    path = write_jsonl(tmp_path / "nested.jsonl", [
        {"q": {"text": "Was ist 2+2?"}, "reward_model": {"ground_truth": "4"}, "meta": {"lang": "de", "region": None}},
        {"q": {"text": "東京は？"}, "reward_model.ground_truth": "首都", "meta": {"lang": "ja", "region": ["Japan", None]}},
    ])
    cols = {"question": "q.text", "answer": "reward_model.ground_truth", "lang": "meta.lang", "region": "meta.region"}
    de, ja = recipes.load_examples(str(path), columns=cols)
    assert (de.question, de.answer, de.lang, de.region) == ("Was ist 2+2?", "4", "de", ())
    assert (ja.answer, ja.region) == ("首都", ("Japan",))    # a flat dotted key wins; None entries dropped


@pytest.mark.parametrize("row, message", [
    ({"prompt": [{"role": "user", "content": "Q"}], "reward_model": {}, "extra_info": {"language": "german"}},
     r"row 1: missing or empty field 'answer' \(column 'reward_model.ground_truth'\)"),
    ({"prompt": [{"role": "user", "content": "Q"}], "reward_model": "A", "extra_info": {"language": "german"}},
     r"row 1: column 'reward_model.ground_truth': 'reward_model' is a str, not an object"),
    ({"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}], "reward_model": {"ground_truth": "A"},
      "extra_info": {"language": "german"}}, r"row 1: field 'question' \(column 'prompt'\) is a chat of 2 turns"),
    ({"prompt": "Q", "reward_model": {"ground_truth": "A"}, "extra_info": {"language": "elvish"}},
     r"row 1: field 'lang': unknown language 'elvish'"),
    ({"prompt": "Q", "reward_model": {"ground_truth": "A"}, "extra_info": {"language": "de", "region": {"a": 1}}},
     r"row 1: field 'region' must be a string or a list of strings"),
])
def test_official_schema_errors_name_file_row_and_column(tmp_path, row, message):
    path = write_jsonl(tmp_path / "verl.jsonl", [row])
    with pytest.raises(DataError, match=r"verl\.jsonl: " + message):
        recipes.load_examples(str(path))


def test_source_json_errors_name_the_column(tmp_path):
    path = tmp_path / "src.json"
    path.write_text(json.dumps([{"query": "Q", "chosen": "", "topic": "Translation", "language": "french"}]))
    with pytest.raises(DataError, match=r"src\.json: row 1: missing or empty field 'answer' \(column 'chosen'\)"):
        recipes.load_examples(str(path))


def test_label_sets_are_the_official_keys():
    assert len(data.TOPICS) == 6 and len(data.REGIONS) == 24 and len(set(data.REGIONS)) == 24
    assert {"Regional Knowledge", "Translation", "Chat / Conversational"} <= set(data.TOPICS)


# ----------------------------------------------------------------------------------------------
# The prompt filter and the label note

def test_filter_long_prompts_measures_the_longest_language(toy_tokenizer):
    def ex(i, question, lang="en"):
        return Example(id=str(i), question=question, answer="a", lang=lang, topic="t")
    short, long_ = ex(0, "Hi"), ex(1, "word " * 400)
    lengths = {code: len(toy_tokenizer(data.build_prompt(toy_tokenizer, "Hi", code), add_special_tokens=False)["input_ids"])
               for code in data.ROLLOUT_LANGUAGES}
    kept, dropped = recipes.filter_long_prompts([short, long_], toy_tokenizer)
    assert kept == [short] and dropped == 1
    # the limit is inclusive, and the longest tag decides
    assert recipes.filter_long_prompts([short], toy_tokenizer, max(lengths.values())) == ([short], 0)
    assert recipes.filter_long_prompts([short], toy_tokenizer, max(lengths.values()) - 1) == ([], 1)
    # the question's own language counts too, and the Zero style measures its system prompts
    bn = ex(2, "Hi", "bn")
    n_bn = len(toy_tokenizer(data.build_prompt(toy_tokenizer, "Hi", "bn", "zero"), add_special_tokens=False)["input_ids"])
    assert recipes.filter_long_prompts([bn], toy_tokenizer, n_bn - 1, style="zero", langs=["en"]) == ([], 1)
    assert recipes.filter_long_prompts([bn], toy_tokenizer, n_bn, style="zero", langs=["en"])[1] == 0


def test_describe_labels():
    def ex(topic="general", region=()):
        return Example(id="x", question="q", answer="a", lang="zh", topic=topic, region=region)
    note = recipes.describe_labels([ex(), ex()])
    assert note.startswith("no topics in the data") and "no regions in the data: the router's region table (Eq. 1, B) cannot learn" in note
    assert note.endswith("label it with python -m extras.label") and "\n" not in note
    note = recipes.describe_labels([ex("Regional Knowledge", ("China",)), ex("Regional Knowledge"), ex()])
    assert note == "1 of 3 questions have no topic (topic 'general'); 1 regional questions have no region; label it with python -m extras.label"
    assert recipes.describe_labels([ex("Regional Knowledge", ("China",)), ex("Translation")]) == ""
    assert recipes.describe_labels(recipes.load_examples(str(FIXTURES / "official_verl.parquet"))) == ""


def test_regions_normalise_to_a_tuple_and_bad_ones_name_the_row():
    import numpy as np
    for none in (None, "", "none", "None", [], ()):
        assert data.as_regions(none) == ()
    assert data.as_regions("China") == ("China",)
    assert data.as_regions(["China", None, "Japan"]) == ("China", "Japan")   # official drops None
    assert data.as_regions(np.array(["China", "Japan"], dtype=object)) == ("China", "Japan")
    with pytest.raises(DataError, match=r"^f\.jsonl: row 2: field 'region' must be a string or"):
        data.as_regions([1], "f.jsonl: row 2")


def test_invalid_utf8_names_the_file_and_the_row_or_line(tmp_path):
    jsonl = tmp_path / "latin.jsonl"
    jsonl.write_bytes(b'{"q": 1}\n{"q": "Fr\xe4ge"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl: row 2: not valid UTF-8 \(byte 0xe4 at offset 9\)"):
        list(recipes.read_rows(jsonl))
    array = tmp_path / "latin.json"
    array.write_bytes(b'[\n{"q": 1},\n{"q": "Fr\xe4ge"}\n]')
    with pytest.raises(DataError, match=r"latin\.json: line 3: not valid UTF-8 \(byte 0xe4"):
        list(recipes.read_rows(array))
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"q": 1}\n\n{"q": 2}\n')
    assert list(recipes.read_rows(bom)) == [(1, {"q": 1}), (3, {"q": 2})]   # blank lines keep numbering


def test_data_imports_neither_toy_nor_the_recipes():
    import subprocess
    import sys
    root = str(FIXTURES.parents[2])
    code = ("import sys; import data; "
            "assert not {'toy', 'extras.recipes', 'torch', 'pyarrow'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)
