"""data.py: languages, the prompt tag, loaders and their errors, recipes, the split."""
import json

import pytest

import data
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
    a, b = data.load_examples(str(path), columns=cols)
    assert a == Example(id="7", question="Was ist 2+2?", answer="4", lang="de", topic="math",
                        region=("Germany", "Europe"), answer_number=4.0)
    assert b.region == ("Japan",) and b.topic == "general" and b.answer_number is None


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    path = tmp_path / "qa.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "a", "question": "Q?", "answer": "A.", "lang": "fr",
                                          "topic": "t", "region": ["France"]}]), path)
    (ex,) = data.load_examples(str(path))
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
        data.load_examples(str(path))


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        data.load_examples(str(tmp_path / "missing.jsonl"))
    (tmp_path / "broken.jsonl").write_text('{"question": "Q", "answer": "A", "lang": "en"}\n{not json\n')
    with pytest.raises(DataError, match=r"broken\.jsonl: row 2: not valid JSON"):
        data.load_examples(str(tmp_path / "broken.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        data.load_examples(str(tmp_path / "x.csv"))
    with pytest.raises(DataError, match="column mapping names unknown fields"):
        write_jsonl(tmp_path / "ok.jsonl", [{"question": "Q", "answer": "A", "lang": "en"}])
        data.load_examples(str(tmp_path / "ok.jsonl"), columns={"prompt": "q"})
    with pytest.raises(DataError, match="unknown recipe"):
        data.load_examples(str(tmp_path / "ok.jsonl"), recipe="alpaca")


def test_helpsteer3_recipe(capsys):
    examples = data.load_examples(str(FIXTURES / "helpsteer3.jsonl"), recipe="helpsteer3")
    # kept: the Chinese row (response 1 preferred) and the English row (response 2 preferred);
    # skipped: the code row (python is no language), the multi-turn row and the tie.
    assert [(e.lang, e.topic, e.answer) for e in examples] == [
        ("zh", "multilingual", "北京烤鸭很有名。"), ("en", "general", "Red is a primary colour.")]
    assert examples[0].question == "北京有什么好吃的？" and examples[0].id == "helpsteer3-train-1"
    assert "skipped 3" in capsys.readouterr().out


def test_helpsteer3_schema_error(tmp_path):
    path = write_jsonl(tmp_path / "hs.jsonl", [{"domain": "general", "language": "english"}])
    with pytest.raises(DataError, match=r"hs\.jsonl: row 1: missing field 'context' \(helpsteer3 schema\)"):
        data.load_examples(str(path), recipe="helpsteer3")


def test_gsm8k_recipe(tmp_path):
    a, b = data.load_examples(str(FIXTURES / "gsm8k.jsonl"), recipe="gsm8k")
    assert a.answer_number == 72 and a.lang == "en" and a.topic == "math"
    assert "<<" not in a.answer and a.answer.endswith("The answer is 72.")
    assert b.answer_number == 2400
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "Q", "answer": "no final answer"}])
    with pytest.raises(DataError, match=r"g\.jsonl: row 1: field 'answer' has no '#### <number>'"):
        data.load_examples(str(path), recipe="gsm8k")


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
