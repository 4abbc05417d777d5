"""Languages, the target-language prompt, and the examples LRPO trains on (paper §3.1, §5).

LRPO asks the policy to answer one question x in several languages ℓ. This file holds:

* **Languages.** The 15 rollout languages L of the official code (the 14 training languages of
  the paper's Table 6 plus English) and the evaluation-only ones (mGSM's bn, sw, te, th;
  CARE-pro's hi). Codes are ISO 639-1; names are the official calibration-table keys.
* **The prompt (§3.1).** The official code appends a plain-text tag to the question,
  ``x + "\\n<|out_lang_ℓ|>"``, as one user turn through the chat template, no system prompt
  (verl/trainer/ppo/ray_trainer.py:517-520): ``style="tag"``. The paper's "Zero" variant (§5.4)
  puts a system prompt in ℓ asking for an answer in ℓ: ``style="zero"``.
* **The record.** :class:`Example`: x, the reference answer z (in x's language ℓ_x), an
  optional numeric answer for the verifier, the topic t(x) and regions g(x) the router
  conditions on (App. A.2; ``python -m extras.label`` assigns them; unlabelled data has topic
  "general" and no region).
* **The split (§5).** :func:`split_examples` holds out a share of every language.

Reading data (JSONL, JSON, Parquet, the official verl and source formats, column mappings, hub
ids, recipes such as ``helpsteer3``) and the official 512-token prompt filter are
``extras/recipes.py``; its errors name the file, row and field, so the core gets clean Examples.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

# ----------------------------------------------------------------------------------------------
# Languages

# code -> English name. The first 15 are the rollout languages L of the official code.
ROLLOUT_LANGUAGES: dict[str, str] = {
    "ar": "Arabic", "de": "German", "en": "English", "es": "Spanish", "fr": "French",
    "id": "Indonesian", "it": "Italian", "ja": "Japanese", "ko": "Korean", "nl": "Dutch",
    "pl": "Polish", "pt": "Portuguese", "ru": "Russian", "vi": "Vietnamese", "zh": "Chinese",
}
# Languages that only appear in evaluation (mGSM's unseen languages, CARE-pro's Hindi).
EVAL_ONLY_LANGUAGES = {"bn": "Bengali", "sw": "Swahili", "te": "Telugu", "th": "Thai",
                       "hi": "Hindi"}
LANGUAGES: dict[str, str] = {**ROLLOUT_LANGUAGES, **EVAL_ONLY_LANGUAGES}

_NAME_TO_CODE = {name.lower(): code for code, name in LANGUAGES.items()}
_NAME_TO_CODE.update({"in": "id", "indonesia": "id", "bahasa indonesia": "id"})  # Table 6: "in"


class DataError(ValueError):
    """A bad data file, row, field or language. The message names where the problem is."""


def lang_code(value: str, where: str = "language") -> str:
    """A language code or English name ("zh", "Chinese", "chinese") as its code. Unknown ones
    raise DataError listing the known codes (the official code silently fell back to English
    here; we refuse, so nothing is mislabelled)."""
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


# The paper's label sets (§4.2, App. A.2), spelled as the official code's keys
# (verl/utils/dataset/multilingual_rl_dataset.py:130-162, and :319 for "Translation").
TOPICS = ("Regional Knowledge", "General Knowledge", "Chat / Conversational",
          "Reasoning / Logic", "Safety / Ethics", "Translation")
REGIONS = ("Russia", "Southeast Asia", "Latin America", "Japan", "South Asia", "North Korea",
           "Anglosphere", "Europe", "Africa", "China", "Israel", "France", "Turkey", "Germany",
           "South Korea", "Iran", "Spain", "Poland", "Vietnam", "Polynesia", "India",
           "Central Asia", "Arab World", "Italy")
NEUTRAL = "neutral"   # the language ID of a language-neutral text ("42"): passes every gate
UNLABELLED_TOPIC = "general"


def as_regions(value, where: str = "region") -> tuple[str, ...]:
    """A question's regions g(x) as a tuple: None, "", "none" and [] are no region; a string is
    one region; a list is several, its None entries dropped as the official code does
    (verl/utils/lang_policy.py:123-128)."""
    if value is None or (isinstance(value, str) and value.lower() in ("", "none")):
        return ()
    if isinstance(value, str):
        return (value,)
    value = value.tolist() if hasattr(value, "tolist") else value   # a Parquet/numpy array
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) or v is None for v in value):
        return tuple(v for v in value if v)
    raise DataError(f"{where}: field 'region' must be a string or a list of strings, "
                    f"got {value!r:.60}")


# ----------------------------------------------------------------------------------------------
# The held-out split (§5)

def split_examples(examples: list[Example], test_fraction: float = 0.1,
                   seed: int = 42) -> tuple[list[Example], list[Example]]:
    """Deterministic train/test split, stratified by language (as the official preprocessing).
    Within a language, examples are ordered by a hash of (seed, id, lang), so the input order
    does not matter; the first ``round(test_fraction * n)`` go to test, at least one when the
    language has two or more (and test_fraction > 0): small data still holds a row out."""
    by_lang: dict[str, list[Example]] = {}
    for ex in examples:
        by_lang.setdefault(ex.lang, []).append(ex)
    test_keys = set()
    for group in by_lang.values():
        group = sorted(group, key=lambda e: hashlib.sha256(
            f"{seed}|{e.id}|{e.lang}".encode()).hexdigest())
        n_test = round(test_fraction * len(group))
        if test_fraction > 0 and len(group) >= 2:
            n_test = min(len(group) - 1, max(1, n_test))
        test_keys.update((e.id, e.lang) for e in group[:n_test])
    train = [e for e in examples if (e.id, e.lang) not in test_keys]
    test = [e for e in examples if (e.id, e.lang) in test_keys]
    return train, test


def held_out_questions(test: list, n: int) -> list:
    """n held-out questions taken in turn from each language (all of them when n covers the split),
    so that even a small --eval-size reports every language."""
    if n is None or n >= len(test):
        return list(test)
    by_lang = {}
    for ex in test:
        by_lang.setdefault(ex.lang, []).append(ex)
    turns = [ex for rank in range(max(map(len, by_lang.values()), default=0))
             for exs in by_lang.values() if rank < len(exs) for ex in exs[rank:rank + 1]]
    return turns[:n]
