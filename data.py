"""Languages, the target-language prompt, and the examples LRPO trains on (paper §3.1, §5).

LRPO asks the policy to answer one question x in several languages. Three things make that
concrete, and they all live here:

* **The language table.** The 15 rollout languages of the official code (the 14 training
  languages of the paper's Table 6 plus English) and a few evaluation-only languages
  (mGSM's bn, sw, te, th and CARE-pro's hi). Codes are ISO 639-1; names are the English names
  the official code uses as calibration-table keys ("Chinese", ...).
* **The prompt.** The official code appends a plain-text tag to the question,
  ``question + "\\n<|out_lang_zh|>"``, as one user turn through the tokenizer's chat template
  with no system prompt (spec §3.3). The paper's "Zero" variant (§5.4) instead puts a system
  prompt written in the target language that asks for an answer in that language.
  ``style="tag"`` is the default, ``style="zero"`` the option.
* **The examples.** One record type, :class:`Example`, for training and evaluation: the question
  x, the reference answer z (written in the question's language ℓ_x), an optional numeric answer
  for the verifier reward, the topic t(x) and the region(s) g(x) that the router conditions on.

The topic is one of the paper's six (App. A.2) and the regions are among the official code's 24
keys; ``python -m extras.label`` assigns both with the paper's two labelling prompts. Data without
them still trains (topic "general", no region): :func:`describe_labels` says what the router then
cannot learn.

Rows become Examples through a column mapping (dotted names reach nested fields) or the official
code's own formats (its verl parquet and its source JSON), detected when no mapping is given.
Opening files, hub ids and named datasets (``helpsteer3``, the paper's data and the default of a
real ``--model`` run; ``gsm8k``) is ``extras/recipes.py``'s ``load_examples``.
:func:`filter_long_prompts` is the official 512-token prompt filter.

Every bad row raises :class:`DataError` naming the file, the row and the field.
"""
from __future__ import annotations

import codecs
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

# ----------------------------------------------------------------------------------------------
# Languages

# code -> English name. The first 15 are the rollout languages L of the official code.
ROLLOUT_LANGUAGES: dict[str, str] = {
    "ar": "Arabic", "de": "German", "en": "English", "es": "Spanish", "fr": "French",
    "id": "Indonesian", "it": "Italian", "ja": "Japanese", "ko": "Korean", "nl": "Dutch",
    "pl": "Polish", "pt": "Portuguese", "ru": "Russian", "vi": "Vietnamese", "zh": "Chinese",
}
# Languages that only appear in evaluation (mGSM's unseen languages, CARE-pro's Hindi).
EVAL_ONLY_LANGUAGES: dict[str, str] = {
    "bn": "Bengali", "sw": "Swahili", "te": "Telugu", "th": "Thai", "hi": "Hindi",
}
LANGUAGES: dict[str, str] = {**ROLLOUT_LANGUAGES, **EVAL_ONLY_LANGUAGES}

_NAME_TO_CODE = {name.lower(): code for code, name in LANGUAGES.items()}
_NAME_TO_CODE.update({"in": "id", "indonesia": "id", "bahasa indonesia": "id"})  # Table 6 writes "in"


class DataError(ValueError):
    """A bad data file, row or field. The message names where the problem is."""


def lang_code(value: str, where: str = "language") -> str:
    """Normalise a language code or English name ("zh", "Chinese", "chinese") to its code.

    Raises DataError listing the known codes if the language is unknown (the official code
    silently fell back to English here; we refuse instead, so nothing is mislabelled).
    """
    key = str(value).strip().lower().replace("_", "-")
    if key in LANGUAGES:
        return key
    if key in _NAME_TO_CODE:
        return _NAME_TO_CODE[key]
    if "-" in key and key.split("-")[0] in LANGUAGES:  # zh-cn, pt-br
        return key.split("-")[0]
    raise DataError(f"{where}: unknown language {value!r}; known codes: {', '.join(LANGUAGES)}")


def lang_name(code: str) -> str:
    return LANGUAGES[lang_code(code)]


# ----------------------------------------------------------------------------------------------
# The target-language prompt

def lang_tag(code: str) -> str:
    """The official code's plain-text output-language tag, e.g. ``<|out_lang_zh|>``."""
    return f"<|out_lang_{lang_code(code)}|>"


# "You are a helpful assistant. Please answer in <language>." written in that language
# (the paper's LRPO-Zero variant, §5.4; the official dict lacked nl, this one is complete).
ZERO_SYSTEM_PROMPTS: dict[str, str] = {
    "ar": "أنت مساعد مفيد. يرجى الإجابة باللغة العربية.",
    "de": "Du bist ein hilfreicher Assistent. Bitte antworte auf Deutsch.",
    "en": "You are a helpful assistant. Please answer in English.",
    "es": "Eres un asistente útil. Por favor, responde en español.",
    "fr": "Tu es un assistant utile. Réponds en français, s'il te plaît.",
    "id": "Anda adalah asisten yang membantu. Silakan jawab dalam bahasa Indonesia.",
    "it": "Sei un assistente utile. Per favore, rispondi in italiano.",
    "ja": "あなたは役に立つアシスタントです。日本語で答えてください。",
    "ko": "당신은 도움이 되는 어시스턴트입니다. 한국어로 답변해 주세요.",
    "nl": "Je bent een behulpzame assistent. Antwoord alsjeblieft in het Nederlands.",
    "pl": "Jesteś pomocnym asystentem. Proszę odpowiadać po polsku.",
    "pt": "Você é um assistente prestativo. Por favor, responda em português.",
    "ru": "Вы полезный помощник. Пожалуйста, отвечайте на русском языке.",
    "vi": "Bạn là một trợ lý hữu ích. Vui lòng trả lời bằng tiếng Việt.",
    "zh": "你是一个乐于助人的助手。请用中文回答。",
    "bn": "আপনি একজন সহায়ক সহকারী। অনুগ্রহ করে বাংলায় উত্তর দিন।",
    "sw": "Wewe ni msaidizi mwenye manufaa. Tafadhali jibu kwa Kiswahili.",
    "te": "మీరు సహాయకరమైన సహాయకుడు. దయచేసి తెలుగులో సమాధానం ఇవ్వండి.",
    "th": "คุณเป็นผู้ช่วยที่เป็นประโยชน์ กรุณาตอบเป็นภาษาไทย",
    "hi": "आप एक मददगार सहायक हैं। कृपया हिंदी में उत्तर दें।",
}

PROMPT_STYLES = ("tag", "zero")


def build_messages(question: str, target_lang: str, style: str = "tag") -> list[dict]:
    """The chat messages asking for an answer to ``question`` in ``target_lang``."""
    if style == "tag":
        return [{"role": "user", "content": question.strip() + "\n" + lang_tag(target_lang)}]
    if style == "zero":
        return [{"role": "system", "content": ZERO_SYSTEM_PROMPTS[lang_code(target_lang)]},
                {"role": "user", "content": question.strip()}]
    raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {style!r}")


def build_prompt(tokenizer, question: str, target_lang: str, style: str = "tag") -> str:
    """The prompt text (chat template applied, generation prompt added) for one rollout."""
    return tokenizer.apply_chat_template(build_messages(question, target_lang, style),
                                         tokenize=False, add_generation_prompt=True)


# ----------------------------------------------------------------------------------------------
# Examples

@dataclass(frozen=True)
class Example:
    """One question x with its reference answer z, as the router and the reward see it.

    ``id`` is shared by translations of the same item (parallel data), so (id, lang) is the
    unique key. ``region`` is a tuple because a question may concern several regions (the
    router sums their logits); it is empty for non-regional questions. ``key`` is an optional
    short gold string (a name, a month) that evaluation looks for in a response.
    """
    id: str
    question: str
    answer: str
    lang: str
    topic: str
    region: tuple[str, ...] = ()
    answer_number: float | None = None
    key: str | None = None

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["region"] = list(self.region)
        return d


# The paper's label sets (§4.2, App. A.2), spelled as the official code's keys
# (verl/utils/dataset/multilingual_rl_dataset.py:130-162, and :319 for "Translation").
# `python -m extras.label` assigns them; unlabelled questions have topic "general", no region.
TOPICS = ("Regional Knowledge", "General Knowledge", "Chat / Conversational",
          "Reasoning / Logic", "Safety / Ethics", "Translation")
REGIONS = ("Russia", "Southeast Asia", "Latin America", "Japan", "South Asia", "North Korea",
           "Anglosphere", "Europe", "Africa", "China", "Israel", "France", "Turkey", "Germany",
           "South Korea", "Iran", "Spain", "Poland", "Vietnam", "Polynesia", "India",
           "Central Asia", "Arab World", "Italy")
UNLABELLED_TOPIC = "general"

# Column mappings: Example field -> column in the file; a dotted name reaches into nested
# objects ("reward_model.ground_truth"). Missing optional columns are fine.
DEFAULT_COLUMNS = {"id": "id", "question": "question", "answer": "answer", "lang": "lang",
                   "topic": "topic", "region": "region", "answer_number": "answer_number",
                   "key": "key"}
REQUIRED_FIELDS = ("question", "answer", "lang")
# The official data, read as is (both are detected when no mapping is given):
# * "verl": the parquet rows that examples/data_preprocess/example.py:40-55 writes, where
#   prompt = [{"role": "user", "content": query}], ability = topic, the chosen response is
#   reward_model.ground_truth, and extra_info holds the language name and the region(s);
# * "source": the JSON that example.py:19-38 reads (query, chosen, topic, language, region).
SCHEMAS = {
    "lrpo": DEFAULT_COLUMNS,
    "verl": {"id": "extra_info.index", "question": "prompt", "answer": "reward_model.ground_truth",
             "lang": "extra_info.language", "topic": "ability", "region": "extra_info.region"},
    "source": {"question": "query", "answer": "chosen", "lang": "language", "topic": "topic",
               "region": "region"},
}

SCHEMA_NAMES = {"verl": "the official verl parquet rows (prompt, ability, reward_model.ground_truth, "
                        "extra_info.language, extra_info.region)",
                "source": "the official source JSON (query, chosen, topic, language, region)",
                "helpsteer3": "raw nvidia/HelpSteer3 rows (recipe helpsteer3)"}


def detect_schema(row) -> str:
    """Which schema a file's first row is written in: "verl", "source", "helpsteer3" (raw rows
    of nvidia/HelpSteer3, read with that recipe), or "lrpo" (this project's own columns)."""
    if isinstance(row, dict):
        if "prompt" in row and "reward_model" in row:
            return "verl"
        if "query" in row and "chosen" in row:
            return "source"
        if {"context", "response1", "response2", "overall_preference"} <= row.keys():
            return "helpsteer3"
    return "lrpo"


def get_column(row: dict, column: str, where: str):
    """``row[column]``, or for a dotted name the nested value; None where absent."""
    if column in row:
        return row[column]
    value, path = row, []
    for part in column.split("."):
        if value is None:
            return None
        if not isinstance(value, dict):
            raise DataError(f"{where}: column '{column}': '{'.'.join(path)}' is a "
                            f"{type(value).__name__}, not an object")
        value, path = value.get(part), path + [part]
    return value


def as_regions(value, where: str = "region") -> tuple[str, ...]:
    """A question's regions as a tuple: None, "", "none" and [] are no region; a string is one
    region; a list (or a Parquet array) is several, its None entries dropped as the official
    code does (verl/utils/lang_policy.py:123-128)."""
    if value is None or value == "" or (isinstance(value, str) and value.lower() == "none"):
        return ()
    if isinstance(value, str):
        return (value,)
    if hasattr(value, "tolist"):  # numpy arrays
        value = value.tolist()
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) or v is None for v in value):
        return tuple(v for v in value if v)
    raise DataError(f"{where}: field 'region' must be a string or a list of strings, "
                    f"got {value!r:.60}")


def question_text(value, where: str, column: str):
    """A question column holds the text, or (verl's ``prompt``) a chat of one user turn."""
    if not isinstance(value, list):
        return value
    if len(value) != 1 or not isinstance(value[0], dict) or value[0].get("role") != "user":
        raise DataError(f"{where}: field 'question' (column '{column}') is a chat of "
                        f"{len(value)} turns; LRPO's prompt is one user turn")
    return value[0].get("content")


def example_from_row(row: dict, columns: dict | None = None, *, where: str,
                     default_id: str | None = None) -> Example:
    """Build an Example from one raw row through a column mapping; errors name ``where``."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {type(row).__name__}")
    cols = {**DEFAULT_COLUMNS, **(columns or {})}
    unknown = set(columns or {}) - set(DEFAULT_COLUMNS)
    if unknown:
        raise DataError(f"column mapping names unknown fields {sorted(unknown)}; "
                        f"fields are {list(DEFAULT_COLUMNS)}")

    def get(name):
        value = get_column(row, cols[name], where)
        return question_text(value, where, cols[name]) if name == "question" else value

    for name in REQUIRED_FIELDS:
        value = get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(f"{where}: missing or empty field '{name}' (column '{cols[name]}')")
        if not isinstance(value, str):
            raise DataError(f"{where}: field '{name}' (column '{cols[name]}') must be a string, "
                            f"got {type(value).__name__}")
    number = get("answer_number")
    if number is not None and number != "":
        try:
            number = float(str(number).replace(",", ""))
        except ValueError:
            raise DataError(f"{where}: field 'answer_number' (column '{cols['answer_number']}') "
                            f"is not a number: {number!r}") from None
    else:
        number = None
    ex_id = get("id")
    if ex_id is None:
        if default_id is None:
            raise DataError(f"{where}: missing field 'id' (column '{cols['id']}')")
        ex_id = default_id
    topic = get("topic")
    return Example(id=str(ex_id), question=get("question"), answer=get("answer"),
                   lang=lang_code(get("lang"), f"{where}: field 'lang'"),
                   topic=str(topic) if topic not in (None, "") else UNLABELLED_TOPIC,
                   region=as_regions(get("region"), where), answer_number=number,
                   key=None if get("key") in (None, "") else str(get("key")))


# ----------------------------------------------------------------------------------------------
# Loading

def read_rows(path: str | Path) -> Iterable[tuple[int, dict]]:
    """Yield (row number, row dict) from a JSONL, JSON-array or Parquet file (1-based rows)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # lazy: only Parquet users pay for pyarrow
        for i, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield i, row
    elif path.suffix == ".json":
        try:
            rows = json.loads(_utf8(path.read_bytes(), path))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: a .json file must hold a list of rows")
        yield from enumerate(rows, start=1)
    elif path.suffix == ".jsonl":
        with path.open("rb") as f:
            for i, raw in enumerate(f, start=1):
                line = _utf8(raw[3:] if i == 1 and raw.startswith(codecs.BOM_UTF8) else raw, path, i)
                if not line.strip():
                    continue
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: row {i}: not valid JSON ({e.msg})") from None
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .jsonl, .json or .parquet)")


def _utf8(raw: bytes, path: Path, row: int | None = None) -> str:
    """``raw`` decoded (a UTF-8 BOM is dropped), or a DataError naming the file and row."""
    try:
        return raw.decode("utf-8-sig" if row is None else "utf-8")
    except UnicodeDecodeError as e:
        where = f"row {row}" if row else f"line {raw.count(10, 0, e.start) + 1}"   # 10: newline
        raise DataError(f"{path}: {where}: not valid UTF-8 (byte {raw[e.start]:#x} at offset "
                        f"{e.start}); save the file as UTF-8") from None


def split_examples(examples: list[Example], test_fraction: float = 0.1,
                   seed: int = 42) -> tuple[list[Example], list[Example]]:
    """Deterministic train/test split, stratified by language (as the official preprocessing).

    Within each language, examples are ordered by a hash of (seed, id, lang), so the split does
    not depend on the input order, and the first ``round(test_fraction * n)`` go to test, at
    least one when the language has two or more examples (and test_fraction > 0), so that
    small data still gets a held-out row per language.
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    by_lang: dict[str, list[Example]] = {}
    for ex in examples:
        by_lang.setdefault(ex.lang, []).append(ex)
    test_keys = set()
    for lang, group in by_lang.items():
        group = sorted(group, key=lambda e: hashlib.sha256(f"{seed}|{e.id}|{e.lang}".encode()).hexdigest())
        n_test = round(test_fraction * len(group))
        if test_fraction > 0 and len(group) >= 2:
            n_test = min(len(group) - 1, max(1, n_test))
        test_keys.update((e.id, e.lang) for e in group[:n_test])
    train = [e for e in examples if (e.id, e.lang) not in test_keys]
    test = [e for e in examples if (e.id, e.lang) in test_keys]
    return train, test


# ----------------------------------------------------------------------------------------------
# Before training: the prompt-length filter and what the labels let the router learn

def filter_long_prompts(examples: list[Example], tokenizer, max_prompt_tokens: int = 512,
                        style: str = "tag", langs: Iterable[str] | None = None
                        ) -> tuple[list[Example], int]:
    """(kept, number dropped): drop questions whose prompt, in the language giving the longest
    one, exceeds ``max_prompt_tokens`` tokens (official: data.max_prompt_length=512 and
    filter_overlong_prompts=True, examples/grpo_trainer/run_lrpo.sh:11,13).

    A prompt is measured as the official filter does
    (verl/utils/dataset/multilingual_rl_dataset.py:221-262): chat template with generation
    prompt, tokenized without special tokens, maximum over the languages ``langs`` (default
    the 15 rollout languages) and the question's own. The official filter wrote the tag without
    an f-string, measuring the literal ``<|out_lang_{ln}|>`` (spec §8.14); the real tags are
    measured here.
    """
    langs = list(langs or ROLLOUT_LANGUAGES)
    kept = []
    for ex in examples:
        prompts = [build_prompt(tokenizer, ex.question, lang, style)
                   for lang in dict.fromkeys(langs + [ex.lang])]
        ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        if max(len(x) for x in ids) <= max_prompt_tokens:
            kept.append(ex)
    return kept, len(examples) - len(kept)


def describe_labels(examples: list[Example]) -> str:
    """A one-line note of what the router cannot learn from unlabelled data ("" if nothing).

    The router conditions on the topic (table A of Eq. 1) and, for regional questions, the
    region(s) (table B); unlabelled questions all share topic "general" and have no region.
    """
    n = len(examples)
    topics = Counter(e.topic for e in examples)
    notes = []
    if set(topics) == {UNLABELLED_TOPIC}:
        notes.append("no topics in the data: the router's topic table (Eq. 1, A) has a single "
                     "row, so routing cannot depend on what a question is about")
    elif topics[UNLABELLED_TOPIC]:
        notes.append(f"{topics[UNLABELLED_TOPIC]} of {n} questions have no topic "
                     f"(topic '{UNLABELLED_TOPIC}')")
    if not any(e.region for e in examples):
        notes.append("no regions in the data: the router's region table (Eq. 1, B) cannot learn")
    else:
        bare = sum(1 for e in examples if e.topic.lower() in ("regional knowledge", "regional")
                   and not e.region)
        if bare:
            notes.append(f"{bare} regional questions have no region")
    return "; ".join(notes) + "; label it with python -m extras.label" if notes else ""
