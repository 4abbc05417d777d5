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

Loaders read JSONL and Parquet files with a column mapping, hub
dataset ids through ``datasets`` (imported only when needed), and two named recipes written
against the public schemas of their datasets:

* ``helpsteer3`` (the paper's training source, ``nvidia/HelpSteer3``, subset ``preference``):
  the preferred response is the reference, the row's ``language`` becomes the language and its
  ``domain`` the topic. **This is the default data of a real ``--model`` run.**
* ``gsm8k`` (``openai/gsm8k``, subset ``main``): English math word problems with a numeric
  answer, for the verifier reward; LRPO's routed rollouts supply the other languages.

Every bad row raises :class:`DataError` naming the file, the row and the field.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

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


# Column mapping: Example field -> column name in the file. Missing optional columns are fine.
DEFAULT_COLUMNS = {"id": "id", "question": "question", "answer": "answer", "lang": "lang",
                   "topic": "topic", "region": "region", "answer_number": "answer_number",
                   "key": "key"}
REQUIRED_FIELDS = ("question", "answer", "lang")


def as_regions(value, where: str = "region") -> tuple[str, ...]:
    """A question's regions as a tuple: None, "" and "none" are no region; a string is one."""
    if value is None or value == "" or (isinstance(value, str) and value.lower() == "none"):
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    try:  # numpy arrays from Parquet
        return tuple(str(v) for v in list(value))
    except TypeError:
        raise DataError(f"{where}: field 'region' must be a string or a list of strings, "
                        f"got {type(value).__name__}") from None


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
        return row.get(cols[name])

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
                   topic=str(topic) if topic not in (None, "") else "general",
                   region=as_regions(get("region"), where), answer_number=number,
                   key=None if get("key") in (None, "") else str(get("key")))


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
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: a .json file must hold a list of rows")
        yield from enumerate(rows, start=1)
    elif path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: row {i}: not valid JSON ({e.msg})") from None
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (use .jsonl, .json or .parquet)")


# ----------------------------------------------------------------------------------------------
# Named recipes for real runs

_CALC = re.compile(r"<<[^>]*>>")


def helpsteer3_example(row: dict, where: str, row_id: str) -> Example | None:
    """``nvidia/HelpSteer3`` (subset ``preference``) -> Example, or None for a skipped row.

    Schema: ``domain`` (general / stem / code / multilingual), ``language`` (a natural language
    name such as "chinese", or a programming language in the code domain), ``context`` (a list of
    {"role", "content"} turns ending with the user), ``response1``, ``response2`` and
    ``overall_preference`` in -3..3 (negative: response 1 is better). The preferred response is
    the reference z. Skipped: programming-language rows, ties, and multi-turn contexts (LRPO's
    prompt is a single user turn).
    """
    for name in ("domain", "language", "context", "response1", "response2", "overall_preference"):
        if name not in row:
            raise DataError(f"{where}: missing field '{name}' (helpsteer3 schema)")
    try:
        lang = lang_code(row["language"])
    except DataError:
        return None  # e.g. "python" in the code domain
    context = row["context"]
    if not isinstance(context, list) or not context or not all(isinstance(t, dict) for t in context):
        raise DataError(f"{where}: field 'context' must be a non-empty list of turns")
    user_turns = [t for t in context if t.get("role") == "user"]
    if len(context) != 1 or len(user_turns) != 1:
        return None
    pref = row["overall_preference"]
    if not isinstance(pref, (int, float)):
        raise DataError(f"{where}: field 'overall_preference' must be a number, got {pref!r}")
    if pref == 0:
        return None
    reference = row["response1"] if pref < 0 else row["response2"]
    return Example(id=row_id, question=user_turns[0]["content"], answer=reference, lang=lang,
                   topic=str(row["domain"]))


def gsm8k_example(row: dict, where: str, row_id: str) -> Example:
    """``openai/gsm8k`` (subset ``main``) -> Example. Schema: ``question``, ``answer`` where the
    answer is a worked solution with ``<<a*b=c>>`` calculator notes ending in ``#### 72``."""
    for name in ("question", "answer"):
        if not isinstance(row.get(name), str):
            raise DataError(f"{where}: missing or non-string field '{name}' (gsm8k schema)")
    solution, sep, final = row["answer"].rpartition("####")
    if not sep:
        raise DataError(f"{where}: field 'answer' has no '#### <number>' final answer")
    try:
        number = float(final.strip().replace(",", ""))
    except ValueError:
        raise DataError(f"{where}: field 'answer' ends in a non-number: {final.strip()!r}") from None
    reference = _CALC.sub("", solution).strip() + f"\nThe answer is {final.strip()}."
    return Example(id=row_id, question=row["question"], answer=reference, lang="en",
                   topic="math", answer_number=number)


@dataclass(frozen=True)
class Recipe:
    hub_id: str
    config: str | None
    convert: Callable[[dict, str, str], Example | None]
    splits: dict = field(default_factory=lambda: {"train": "train", "test": "test"})


RECIPES: dict[str, Recipe] = {
    "helpsteer3": Recipe("nvidia/HelpSteer3", "preference", helpsteer3_example,
                         {"train": "train", "test": "validation"}),
    "gsm8k": Recipe("openai/gsm8k", "main", gsm8k_example),
}
DEFAULT_REAL_RECIPE = "helpsteer3"


# ----------------------------------------------------------------------------------------------
# Loading

def load_examples(source: str, *, recipe: str | None = None, columns: dict | None = None,
                  split: str = "train", limit: int | None = None) -> list[Example]:
    """Load examples from a recipe name, a local file, or a hub dataset id (the built-in world
    is ``toy.load_split``).

    ``recipe`` converts raw rows of a local file or hub id with a named recipe; otherwise rows
    go through the column mapping ``columns`` (Example field -> column name).
    """
    if source in RECIPES and recipe is None:
        recipe, source = source, RECIPES[source].hub_id
    if recipe is not None and recipe not in RECIPES:
        raise DataError(f"unknown recipe {recipe!r}; recipes: {', '.join(RECIPES)}")
    path = Path(source)
    if path.suffix in (".jsonl", ".json", ".parquet") or path.exists():
        rows, origin = read_rows(path), str(path)
    else:
        rows, origin = _hub_rows(source, recipe, split), source
    convert = RECIPES[recipe].convert if recipe else None
    examples, skipped = [], 0
    for i, row in rows:
        where = f"{origin}: row {i}"
        if convert:
            ex = convert(row, where, f"{recipe}-{split}-{i}")
        else:
            ex = example_from_row(row, columns, where=where, default_id=f"{path.stem}-{i}")
        if ex is None:
            skipped += 1
            continue
        examples.append(ex)
        if limit is not None and len(examples) >= limit:
            break
    if skipped:
        print(f"[data] {origin}: kept {len(examples)} rows, skipped {skipped} "
              f"(see data.{convert.__name__} for which rows are skipped)")
    if not examples:
        raise DataError(f"{origin}: no usable rows")
    return examples


def _hub_rows(hub_id: str, recipe: str | None, split: str):
    try:
        import datasets  # lazy: heavy, and never needed for the built-in world
    except ImportError:
        raise DataError(f"{hub_id}: loading a hub dataset needs the 'datasets' package") from None
    config = RECIPES[recipe].config if recipe else None
    hub_split = RECIPES[recipe].splits.get(split, split) if recipe else split
    try:
        ds = datasets.load_dataset(hub_id, config, split=hub_split)
    except Exception as e:  # noqa: BLE001 - surface any hub/network failure with the id
        raise DataError(f"{hub_id}: could not load split {hub_split!r} from the hub or the "
                        f"local cache ({type(e).__name__}: {e})") from None
    return enumerate(ds, start=1)


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
