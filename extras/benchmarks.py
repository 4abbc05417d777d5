"""The paper's evaluation benchmarks: their data and their scoring rules (paper §4.3, App. B.3, C.2).

What a benchmark *is* lives here; how it is run (generation, log-likelihood, reports, the
command line) lives in ``evaluate.py``.

* **Loaders** turn rows of one benchmark, from its hub id or from a local JSONL / JSON / Parquet
  file with the same fields, into :class:`Item` records. They are written against each dataset's
  published schema; the hub path and the local-file path run the same row converter, so the
  offline fixture tests cover both.
* **Scoring rules** turn (item, answer) pairs into :class:`Record` s: the numeric verifier for
  mGSM, letter extraction for multiple choice, the four-label LLM judge for CARE-pro, and
  ``toy.is_correct`` for the built-in world.

===================  ====================================  ===============================================
benchmark            hub id (one config per language)      fields read
===================  ====================================  ===============================================
``mgsm``             ``juletxara/mgsm`` (bn de en es fr ja  ``question``, ``answer_number`` (int); ``answer``
                     ru sw te th zh), split ``test``        and ``equation_solution`` are empty in test.
                                                            A local file adds ``id`` and ``lang``.
``global-mmlu-lite`` ``CohereForAI/Global-MMLU-Lite`` (ar   ``sample_id``, ``question``, ``option_a`` ..
                     bn de en es fr hi id it ja ko pt sw    ``option_d``, ``answer`` (a letter "A".."D"),
                     yo zh), split ``test``                 ``cultural_sensitivity_label`` (CS / CA),
                                                            ``subject``. A local file adds ``lang``.
``include-lite``     ``CohereForAI/include-lite-44`` (44    ``language`` (an English name), ``question``,
                     configs named by language, e.g.        ``choices`` (list) *or* ``option_a`` ..
                     "German"), split ``test``              ``option_d``, ``answer`` (0-based int),
                                                            ``domain``, ``subject``.
``care-pro``         ``geyang627/care_pro``                 ``question``, a reference answer, a language.
``toy``              the built-in world (``toy.py``)        ``toy.load_split("test")``.
===================  ====================================  ===============================================

Honest notes on the schemas:

* **mGSM** is hosted with a loading script and TSV files; recent ``datasets`` versions refuse
  scripts, so the hub path may fail. Then convert the TSVs once to JSONL and pass the file.
  ``--bench-id`` points at an mGSM-v2 copy (the paper's version, Peter et al. 2025); it is
  assumed to keep mGSM's fields.
* **include-lite-44** rows carry ``choices`` as a list (as ``inspect_evals`` reads it), while
  ``include-base-44`` and lm-eval-harness read ``option_a..option_d``; both forms are accepted.
* **CARE-pro**: its dataset card (JSON files, 775 rows in zh / hi / es) could not be read here,
  so its field names are *not confirmed*. The loader takes the question from ``question``, the
  reference from the first of ``answer``, ``gold``, ``reference``, ``target``, the language
  from ``lang`` or ``language`` (code or English name), and the item kind from ``type`` or
  ``category`` if present. A row without any of these fails with an error listing its fields.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import data
from data import DataError
from extras.recipes import read_rows

MGSM_HUB_ID = "juletxara/mgsm"
GMMLU_HUB_ID = "CohereForAI/Global-MMLU-Lite"
INCLUDE_HUB_ID = "CohereForAI/include-lite-44"
CARE_PRO_HUB_ID = "geyang627/care_pro"

MGSM_LANGS = ("bn", "de", "en", "es", "fr", "ja", "ru", "sw", "te", "th", "zh")
GMMLU_LANGS = ("ar", "bn", "de", "en", "es", "fr", "hi", "id", "it", "ja", "ko", "pt", "sw", "yo", "zh")
CARE_PRO_LANGS = ("zh", "hi", "es")
# INCLUDE config name -> ISO 639-1 code ("Dutch-Flemish" is an empty config on the hub).
INCLUDE_LANGS = {
    "Albanian": "sq", "Arabic": "ar", "Armenian": "hy", "Azerbaijani": "az", "Basque": "eu",
    "Belarusian": "be", "Bengali": "bn", "Bulgarian": "bg", "Chinese": "zh", "Croatian": "hr",
    "Dutch": "nl", "Estonian": "et", "Finnish": "fi", "French": "fr", "Georgian": "ka",
    "German": "de", "Greek": "el", "Hebrew": "he", "Hindi": "hi", "Hungarian": "hu",
    "Indonesian": "id", "Italian": "it", "Japanese": "ja", "Kazakh": "kk", "Korean": "ko",
    "Lithuanian": "lt", "Malay": "ms", "Malayalam": "ml", "Nepali": "ne", "North Macedonian": "mk",
    "Persian": "fa", "Polish": "pl", "Portuguese": "pt", "Russian": "ru", "Serbian": "sr",
    "Spanish": "es", "Tagalog": "tl", "Tamil": "ta", "Telugu": "te", "Turkish": "tr",
    "Ukrainian": "uk", "Urdu": "ur", "Uzbek": "uz", "Vietnamese": "vi",
}
# Languages the benchmarks use beyond data.LANGUAGES (evaluation only; never rollout targets).
EXTRA_LANGUAGE_NAMES = {code: name for name, code in INCLUDE_LANGS.items()
                        if code not in data.LANGUAGES}
EXTRA_LANGUAGE_NAMES.update({"yo": "Yoruba", "my": "Burmese"})
_EXTRA_NAME_TO_CODE = {name.lower(): code for code, name in EXTRA_LANGUAGE_NAMES.items()}
_EXTRA_NAME_TO_CODE.update({"dutch-flemish": "nl", "macedonian": "mk", "filipino": "tl"})

LETTERS = "ABCDEFGHIJ"


def eval_lang_code(value, where: str = "language") -> str:
    """Like :func:`data.lang_code`, but also knows the evaluation-only languages of the benchmarks."""
    key = str(value).strip().lower().replace("_", "-")
    if key in EXTRA_LANGUAGE_NAMES:
        return key
    if key in _EXTRA_NAME_TO_CODE:
        return _EXTRA_NAME_TO_CODE[key]
    try:
        return data.lang_code(value, where)
    except DataError:
        raise DataError(f"{where}: unknown language {value!r}") from None


@dataclass(frozen=True)
class Item:
    """One benchmark question in one language.

    ``gold`` is the number as text (mGSM), the correct letter (multiple choice) or the reference
    answer (CARE-pro, toy). ``group`` is a sub-category reported next to the languages (toy
    topic, Global-MMLU's CS/CA label, INCLUDE's domain). ``example`` keeps the toy Example so
    that ``toy.is_correct`` can score it.
    """
    id: str
    lang: str
    question: str
    gold: str
    options: tuple[str, ...] = ()
    group: str = ""
    example: object = None


def format_multiple_choice(question: str, options: tuple[str, ...]) -> str:
    """The lm-eval-harness layout of Global-MMLU and INCLUDE: question, lettered options, "Answer:"."""
    lines = [question.strip()] + [f"{LETTERS[i]}. {str(o).strip()}" for i, o in enumerate(options)]
    return "\n".join(lines) + "\nAnswer:"


def _need(row: dict, name: str, where: str, schema: str):
    value = row.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: missing or empty field '{name}' ({schema} schema; "
                        f"row has {sorted(row)})")
    return value


# ----------------------------------------------------------------------------------------------
# Row converters (one per benchmark, shared by the hub and the local-file paths)

def mgsm_item(row: dict, where: str, lang: str | None = None, default_id: str = "") -> Item:
    lang = eval_lang_code(lang or _need(row, "lang", where, "mgsm"), f"{where}: field 'lang'")
    number = _need(row, "answer_number", where, "mgsm")
    try:
        gold = float(str(number).replace(",", ""))
    except ValueError:
        raise DataError(f"{where}: field 'answer_number' is not a number: {number!r}") from None
    gold_text = str(int(gold)) if gold == int(gold) else str(gold)
    return Item(id=str(row.get("id") or default_id), lang=lang,
                question=str(_need(row, "question", where, "mgsm")), gold=gold_text)


def _options(row: dict, where: str, schema: str) -> tuple[str, ...]:
    if row.get("choices") is not None:
        choices = row["choices"]
        if isinstance(choices, str) or not hasattr(choices, "__iter__"):
            raise DataError(f"{where}: field 'choices' must be a list of strings")
        options = tuple(str(c) for c in choices)
    else:
        options = tuple(str(_need(row, f"option_{c}", where, schema)) for c in "abcd")
    if not 2 <= len(options) <= len(LETTERS):
        raise DataError(f"{where}: expected 2..{len(LETTERS)} options, got {len(options)}")
    return options


def gmmlu_item(row: dict, where: str, lang: str | None = None, default_id: str = "") -> Item:
    lang = lang or row.get("lang") or _need(row, "language", where, "global-mmlu-lite")
    lang = eval_lang_code(lang, f"{where}: field 'lang'")
    options = _options(row, where, "global-mmlu-lite")
    gold = str(_need(row, "answer", where, "global-mmlu-lite")).strip().upper()
    if gold not in LETTERS[:len(options)]:
        raise DataError(f"{where}: field 'answer' must be a letter A..{LETTERS[len(options) - 1]}, "
                        f"got {row['answer']!r}")
    question = str(_need(row, "question", where, "global-mmlu-lite"))
    return Item(id=str(row.get("sample_id") or row.get("id") or default_id), lang=lang,
                question=format_multiple_choice(question, options), gold=gold, options=options,
                group=str(row.get("cultural_sensitivity_label") or ""))


def include_item(row: dict, where: str, lang: str | None = None, default_id: str = "") -> Item:
    lang = lang or row.get("lang") or _need(row, "language", where, "include-lite")
    lang = eval_lang_code(lang, f"{where}: field 'language'")
    options = _options(row, where, "include-lite")
    answer = _need(row, "answer", where, "include-lite")
    try:
        index = int(answer)
    except (TypeError, ValueError):
        raise DataError(f"{where}: field 'answer' must be a 0-based option index, got {answer!r}") from None
    if not 0 <= index < len(options):
        raise DataError(f"{where}: field 'answer' = {index} is out of range for {len(options)} options")
    question = str(_need(row, "question", where, "include-lite"))
    return Item(id=str(row.get("id") or default_id), lang=lang,
                question=format_multiple_choice(question, options), gold=LETTERS[index],
                options=options, group=str(row.get("domain") or ""))


CARE_PRO_GOLD_FIELDS = ("answer", "gold", "reference", "target")


def care_pro_item(row: dict, where: str, lang: str | None = None, default_id: str = "") -> Item:
    question = _need(row, "question", where, "care-pro")
    gold = next((row[f] for f in CARE_PRO_GOLD_FIELDS if isinstance(row.get(f), str) and row[f].strip()), None)
    if gold is None:
        raise DataError(f"{where}: no reference answer; expected one of {CARE_PRO_GOLD_FIELDS} "
                        f"(care-pro schema not confirmed; row has {sorted(row)})")
    lang = lang or row.get("lang") or row.get("language")
    if not lang:
        raise DataError(f"{where}: no language; expected field 'lang' or 'language' "
                        f"(row has {sorted(row)})")
    return Item(id=str(row.get("id") or default_id), lang=eval_lang_code(lang, f"{where}: language"),
                question=str(question), gold=gold, group=str(row.get("type") or row.get("category") or ""))


CONVERTERS = {"mgsm": mgsm_item, "global-mmlu-lite": gmmlu_item, "include-lite": include_item,
              "care-pro": care_pro_item}
HUB_IDS = {"mgsm": MGSM_HUB_ID, "global-mmlu-lite": GMMLU_HUB_ID, "include-lite": INCLUDE_HUB_ID,
           "care-pro": CARE_PRO_HUB_ID}
BENCHMARKS = ("mgsm", "global-mmlu-lite", "include-lite", "care-pro", "toy")
MULTIPLE_CHOICE = ("global-mmlu-lite", "include-lite")


# ----------------------------------------------------------------------------------------------
# Loading

def load_benchmark(bench: str, source: str | None = None, *, langs: list[str] | None = None,
                   limit: int | None = None) -> list[Item]:
    """Items of ``bench`` from a local file, a hub id (default: the benchmark's own), or the toy world.

    ``langs`` keeps only those languages; ``limit`` keeps the first ``limit`` items per language.
    """
    if bench not in BENCHMARKS:
        raise DataError(f"unknown benchmark {bench!r}; benchmarks: {', '.join(BENCHMARKS)}")
    wanted = {eval_lang_code(l, "--langs") for l in langs} if langs else None
    if bench == "toy":
        items = _toy_items()
    elif source and (Path(source).suffix in (".jsonl", ".json", ".parquet") or Path(source).exists()):
        convert = CONVERTERS[bench]
        items = [convert(row, f"{source}: row {i}", None, f"{Path(source).stem}-{i}")
                 for i, row in read_rows(source)]
    else:
        items = _hub_items(bench, source or HUB_IDS[bench], wanted)
    ids = [(it.id, it.lang) for it in items]
    if len(set(ids)) != len(ids):
        dup = next(k for k in ids if ids.count(k) > 1)
        raise DataError(f"{source or bench}: duplicate item (id, lang) = {dup}")
    if wanted is not None:
        items = [it for it in items if it.lang in wanted]
    if limit is not None:
        seen: dict[str, int] = {}
        kept = []
        for it in items:
            seen[it.lang] = seen.get(it.lang, 0) + 1
            if seen[it.lang] <= limit:
                kept.append(it)
        items = kept
    if not items:
        raise DataError(f"{source or bench}: no items" + (f" in languages {sorted(wanted)}" if wanted else ""))
    return items


def _toy_items() -> list[Item]:
    import toy
    return [Item(id=ex.id, lang=ex.lang, question=ex.question, gold=ex.key or ex.answer,
                 group=ex.topic, example=ex) for ex in toy.load_split("test")]


def _hub_items(bench: str, hub_id: str, wanted: set[str] | None, load=None) -> list[Item]:
    """Items from the hub, one ``datasets.load_dataset(hub_id, config, split=...)`` per language.
    ``load(config, split)`` replaces the hub in tests (it returns the rows of one config)."""
    if load is None:
        try:
            import datasets  # lazy: heavy, and never needed for local files or the toy world
        except ImportError:
            raise DataError(f"{hub_id}: loading a hub dataset needs the 'datasets' package") from None

        def load(config, split):
            try:
                return datasets.load_dataset(hub_id, config, split=split)
            except Exception as e:  # noqa: BLE001 - surface any hub/network failure with the id
                raise DataError(f"{hub_id} (config {config!r}): could not load from the hub or the local "
                                f"cache ({type(e).__name__}: {e}); pass a local file with --bench-file") from None

    convert = CONVERTERS[bench]
    if bench == "care-pro":  # one config; a single split whose name the card does not fix
        ds = load(None, None)
        split = "test" if "test" in ds else next(iter(ds))
        return [convert(row, f"{hub_id}[{split}]: row {i}", None, f"care-pro-{i}")
                for i, row in enumerate(ds[split], start=1)]
    configs = {"mgsm": {c: c for c in MGSM_LANGS}, "global-mmlu-lite": {c: c for c in GMMLU_LANGS},
               "include-lite": {name: code for name, code in INCLUDE_LANGS.items()}}[bench]
    items = []
    for config, code in configs.items():
        if wanted is not None and code not in wanted:
            continue
        for i, row in enumerate(load(config, "test"), start=1):
            items.append(convert(row, f"{hub_id}/{config}: row {i}", code, f"{code}-{i}"))
    return items


# ==============================================================================================
# Scoring rules (items + predictions -> records)

@dataclass
class Record:
    """One scored answer. ``status`` says how it was scored: "scored", "unparsed" (no answer
    could be read), "loglik", or the CARE-pro judge label ("correct", ..., "unparseable")."""
    id: str
    lang: str
    group: str
    gold: str
    prediction: str
    extracted: str | None
    correct: bool
    status: str
    answer_lang: str | None = None  # language ID of the answer (generative benchmarks), None if unknown


def eval_lang_name(code: str) -> str:
    """English name of any benchmark language: data.LANGUAGES plus the evaluation-only extras."""
    return data.LANGUAGES.get(code) or EXTRA_LANGUAGE_NAMES.get(code, code)


# ----------------------------------------------------------------------------------------------
# Scoring rules: mGSM and toy

def score_mgsm(items: list[Item], predictions: list[str]) -> list[Record]:
    from extras.verifier import extract_number, verify_number  # the training reward's verifier
    records = []
    for item, pred in zip(items, predictions):
        lang = item.lang if item.lang in data.LANGUAGES else None  # "1.250" is 1250 in German
        number = extract_number(pred, lang)
        records.append(Record(item.id, item.lang, item.group, item.gold, pred,
                              None if number is None else f"{number:g}",
                              number is not None and verify_number(pred, float(item.gold), lang=lang),
                              "unparsed" if number is None else "scored"))
    return records


def score_toy(items: list[Item], predictions: list[str]) -> list[Record]:
    import toy
    return [Record(it.id, it.lang, it.group, it.gold, pred, None, toy.is_correct(it.example, pred), "scored")
            for it, pred in zip(items, predictions)]


# ----------------------------------------------------------------------------------------------
# Scoring: multiple choice by letter extraction

# "answer" in the benchmarks' languages; the letter must follow within a few characters.
ANSWER_CUES = (
    "answer", "respuesta", "réponse", "reponse", "antwort", "risposta", "resposta", "antwoord",
    "odpowiedź", "odpowiedz", "jawaban", "ответ", "відповідь", "答案", "答え", "正解", "回答", "정답",
    "답", "đáp án", "câu trả lời", "الإجابة", "الاجابة", "الجواب", "उत्तर", "উত্তর", "jibu", "คำตอบ",
    "సమాధానం", "cevap", "yanıt", "απάντηση", "תשובה", "پاسخ", "option", "opción", "choice",
)
_WORD_LETTERS = r"A-Za-z\u0370-\u03FF\u0400-\u04FF"  # Latin, Greek, Cyrillic: a neighbour makes it a word
_LOOKALIKES = {"А": "A", "В": "B", "С": "C", "Е": "E", "Α": "A", "Β": "B", "Ε": "E"}  # Cyrillic, Greek
_ARABIC_LABELS = {"أ": "A", "ا": "A", "ب": "B", "ج": "C", "د": "D", "هـ": "E"}


def _letter_pattern(n: int) -> re.Pattern:
    latin = LETTERS[:n] + "".join(k for k, v in _LOOKALIKES.items() if v in LETTERS[:n])
    return re.compile(rf"(?<![{_WORD_LETTERS}])([{latin}])(?![{_WORD_LETTERS}])")


def _norm(text: str) -> str:
    return re.sub(r"[\W_]+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()


def extract_choice(text: str, options: tuple[str, ...] = (), n_options: int = 4) -> str | None:
    """The option letter a free-form answer picks, or None when it picks none or several.

    In order: a letter right after an answer cue (the last such cue wins, as final answers come
    last); a letter opening the answer ("B. Paris", "(C)"); the only stand-alone letter in the
    answer; the only option whose text the answer contains.
    """
    n = len(options) or n_options
    text = unicodedata.normalize("NFKC", text)  # full-width "Ｂ" -> "B", "（Ｃ）" -> "(C)"
    letter = _letter_pattern(n)
    arabic = re.compile(r"(?<!\w)(" + "|".join(k for k, v in _ARABIC_LABELS.items() if v in LETTERS[:n]) + r")(?!\w)")
    found = None
    lowered = text.lower()
    for cue in ANSWER_CUES:
        for m in re.finditer(re.escape(cue), lowered):
            window = text[m.end():m.end() + 24]
            hit = letter.search(window) or arabic.search(window)
            if hit and (found is None or m.start() > found[0]):
                found = (m.start(), hit.group(1))
    if found:
        return _to_letter(found[1])
    start = re.match(rf"^[\s*_#>(\[]*([{LETTERS[:n]}])(?=\s*$|[.)\]:,*\n])", text)
    if start:
        return start.group(1)
    standalone = {_to_letter(m.group(1)) for m in letter.finditer(text)}
    if len(standalone) == 1:
        return standalone.pop()
    if options:
        answer = f" {_norm(text)} "
        hits = [LETTERS[i] for i, o in enumerate(options) if _norm(str(o)) and f" {_norm(str(o))} " in answer]
        if len(hits) == 1:
            return hits[0]
    return None


def _to_letter(label: str) -> str:
    return _LOOKALIKES.get(label) or _ARABIC_LABELS.get(label) or label


def score_multiple_choice(items: list[Item], predictions: list[str]) -> list[Record]:
    records = []
    for item, pred in zip(items, predictions):
        choice = extract_choice(pred, item.options)
        records.append(Record(item.id, item.lang, item.group, item.gold, pred, choice,
                              choice == item.gold, "unparsed" if choice is None else "scored"))
    return records


# ----------------------------------------------------------------------------------------------
# Scoring: CARE-pro with an LLM judge

JUDGE_LABELS = ("CORRECT", "CORRECT_BUT_WRONG_LANGUAGE", "INCORRECT", "NOT_ATTEMPTED")  # A, B, C, D

JUDGE_PROMPT = """\
You are grading one answer to a question about local or cross-cultural knowledge. You are given \
the question, its language, a gold answer written by a native speaker, and a model's answer. \
Choose exactly one grade:

A. CORRECT: the answer states the essential facts of the gold answer, states nothing that \
contradicts it, and is written in the language of the question. Wording, length, order and \
formatting do not matter, and hedging is fine as long as the gold facts are given and nothing \
false is added. Names or short terms in another script do not change the answer's language.
B. CORRECT_BUT_WRONG_LANGUAGE: the facts are right as for A, but the answer as a whole is \
written in a different language from the question.
C. INCORRECT: the answer gives a fact that contradicts the gold answer, names a wrong or \
incomplete entity, or mixes right and wrong facts. The language does not matter here.
D. NOT_ATTEMPTED: the answer declines, says it does not know, or stays vague without giving \
the gold facts, and contradicts nothing.

Question language: {language}
Question: {question}
Gold answer: {gold}
Model answer: {prediction}

Reply with the letter of the grade only: A, B, C or D."""


def judge_prompt(item: Item, prediction: str) -> str:
    return JUDGE_PROMPT.format(language=eval_lang_name(item.lang), question=item.question.strip(),
                               gold=item.gold.strip(), prediction=prediction.strip())


def parse_judge_reply(reply: str | None) -> str | None:
    """The judge's label, or None when the reply names no label or several (never guessed)."""
    if not reply:
        return None
    text = re.sub(r"<think>.*?</think>", " ", reply, flags=re.S)  # reasoning judges
    text = unicodedata.normalize("NFKC", text).strip()
    bare = re.sub(r"[\s*_`'\"().:\[\]]+", "", text)
    if len(bare) == 1 and bare.upper() in "ABCD":
        return JUDGE_LABELS["ABCD".index(bare.upper())]
    lead = re.match(r"^[\s*_`\"'(\[]*([ABCD])(?![A-Za-z])", text)  # "C. INCORRECT", "**B**"
    if lead:
        return JUDGE_LABELS["ABCD".index(lead.group(1))]
    cued = set(re.findall(r"(?:grade|answer|label)\W{0,3}(?:is\W{0,3})?\(?([ABCD])(?![A-Za-z])", text, flags=re.I))
    if len({c.upper() for c in cued}) == 1:  # "Grade: C", "the answer is (b)"
        return JUDGE_LABELS["ABCD".index(cued.pop().upper())]
    named = set(re.findall(r"\b(CORRECT_BUT_WRONG_LANGUAGE|NOT[_ ]ATTEMPTED|INCORRECT|CORRECT)\b", text.upper()))
    named = {n.replace(" ", "_") for n in named}
    return named.pop() if len(named) == 1 else None


def score_care_pro(items: list[Item], predictions: list[str], judge: Callable[[list[str]], list[str]],
                   replies_out: list | None = None) -> list[Record]:
    prompts = [judge_prompt(it, p) for it, p in zip(items, predictions)]
    replies = judge(prompts)
    if len(replies) != len(prompts):
        raise RuntimeError(f"the judge returned {len(replies)} replies for {len(prompts)} prompts")
    records = []
    for item, pred, prompt, reply in zip(items, predictions, prompts, replies):
        label = parse_judge_reply(reply)
        records.append(Record(item.id, item.lang, item.group, item.gold, pred, label,
                              label == "CORRECT", (label or "unparseable").lower()))
        if replies_out is not None:
            replies_out.append({"id": item.id, "lang": item.lang, "prompt": prompt, "reply": reply,
                                "label": label})
    return records
