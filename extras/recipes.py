"""Loading data into ``data.Example``s: local files, the official formats, hub ids, recipes.

What it adds to the core, and why outside it: data.py defines the record LRPO trains on; this
file turns a user's rows into it, and every check of user data happens here, once, so the core
receives clean Examples. Each bad row raises ``data.DataError`` naming the file, row and field.

* :func:`read_rows` reads JSONL, JSON arrays and Parquet (UTF-8; a BOM is accepted).
* Rows become Examples through a column mapping (dotted names reach nested fields), or the
  official code's own formats (its verl parquet and its source JSON), detected when no mapping
  is given.
* ``load_examples("helpsteer3")`` (or ``--data helpsteer3``) loads a recipe's hub dataset;
  ``recipe="helpsteer3"`` converts a local file holding the same raw rows (a raw HelpSteer3 file
  is also detected without it). A recipe's ``convert(row, where, row_id)`` returns an Example,
  or a short reason why the row is skipped; the loader counts skipped rows by reason.
  ``helpsteer3`` is the paper's training data (§4.2, App. A.1), HelpSteer3's multilingual
  domain; ``gsm8k`` is English math word problems with a numeric answer, for the verifier.
* After loading, before training (lrpo.set_up): :func:`filter_long_prompts`, the official
  512-token prompt filter, and :func:`describe_labels`, what unlabelled data hides from the
  router.
"""
from __future__ import annotations

import codecs
import itertools
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

from data import (ROLLOUT_LANGUAGES, UNLABELLED_TOPIC, DataError, Example, as_regions,
                  build_prompt, lang_code)


# ----------------------------------------------------------------------------------------------
# Reading rows

def _utf8(raw: bytes, path: Path, row: int | None = None) -> str:
    """``raw`` decoded (a UTF-8 BOM is dropped), or a DataError naming the file and row."""
    try:
        return raw.decode("utf-8-sig" if row is None else "utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        where = f"row {row}" if row else f"line {line}"
        raise DataError(f"{path}: {where}: not valid UTF-8 (byte {raw[e.start]:#x} at offset "
                        f"{e.start}); save the file as UTF-8") from None


def read_rows(path: str | Path) -> Iterable[tuple[int, dict]]:
    """Yield (row number, row dict) from a JSONL, JSON-array or Parquet file (1-based rows)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir() and path.suffix != ".parquet":   # (a folder of Parquet shards is one table)
        raise DataError(f"{path}: a folder, not a {path.suffix or 'data'} file")
    try:
        yield from _read_rows(path)
    except OSError as e:   # permissions, I/O
        raise DataError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from None


def _read_rows(path: Path) -> Iterable[tuple[int, dict]]:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq  # lazy: only Parquet users pay for pyarrow
        try:
            table = pq.read_table(path)
        except pa.ArrowException as e:   # cut short, not Parquet at all
            raise DataError(f"{path}: not a readable Parquet file ({' '.join(str(e).split())[:200]})") from None
        for i, row in enumerate(table.to_pylist(), start=1):
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
                bom = i == 1 and raw.startswith(codecs.BOM_UTF8)
                line = _utf8(raw[len(codecs.BOM_UTF8):] if bom else raw, path, i)
                if not line.strip():
                    continue
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: row {i}: not valid JSON ({e.msg})") from None
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} "
                        "(use .jsonl, .json or .parquet)")


# ----------------------------------------------------------------------------------------------
# Rows to Examples: a column mapping, or the official formats


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

SCHEMA_NAMES = {"verl": "the official verl parquet rows (prompt, ability, "
                        "reward_model.ground_truth, extra_info.language, extra_info.region)",
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
        if not math.isfinite(number):
            raise DataError(f"{where}: field 'answer_number' (column '{cols['answer_number']}') "
                            f"is {number}, not a finite number (leave it empty or null for none)")
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
# Recipes: named datasets whose rows need converting

def helpsteer3_example(row: dict, where: str, row_id: str) -> Example | str:
    """``nvidia/HelpSteer3`` (subset ``preference``) -> Example, or why the row is skipped.

    Schema: ``domain`` (general / stem / code / multilingual), ``language`` (a language name such
    as "chinese"; a programming language in the code domain), ``context`` (a list of
    {"role", "content"} turns ending with the user), ``response1``, ``response2`` and
    ``overall_preference`` in -3..3 (negative: response 1 is better, positive: response 2).

    The paper trains on the **multilingual** domain (its 13 non-English languages; the paper's
    14th, Arabic, and part of its Chinese and Japanese come from CARE, which no recipe here
    reads). The preferred response is the reference z: the official code takes the source
    JSON's ``chosen`` as ``reward_model.ground_truth`` (examples/data_preprocess/example.py:37,44),
    and HelpSteer3 has no ``chosen`` column, so it is the response that ``overall_preference``
    prefers. The language comes from the row. HelpSteer3 has no topic or region: those of
    ``python -m extras.label`` (columns ``topic``, ``region`` added to the raw rows) are used
    when present, else topic "general" and no region.

    Skipped: other domains, ties (no preferred response), and multi-turn contexts (LRPO's
    prompt is a single user turn, as the official ``prompt`` column).
    """
    for name in ("domain", "language", "context", "response1", "response2", "overall_preference"):
        if name not in row:
            raise DataError(f"{where}: missing field '{name}' (helpsteer3 schema)")
    if row["domain"] != "multilingual":
        return "not in the multilingual domain"
    lang = lang_code(row["language"], f"{where}: field 'language'")
    context = row["context"]
    if not (isinstance(context, list) and context and all(isinstance(t, dict) for t in context)):
        raise DataError(f"{where}: field 'context' must be a non-empty list of turns")
    if len(context) != 1 or context[0].get("role") != "user":
        return "multi-turn"
    pref = row["overall_preference"]
    if not isinstance(pref, (int, float)):
        raise DataError(f"{where}: field 'overall_preference' must be a number, got {pref!r}")
    if pref == 0:
        return "tie"
    reference = row["response1"] if pref < 0 else row["response2"]
    if not isinstance(reference, str) or not reference.strip():
        raise DataError(f"{where}: the preferred response "
                        f"('{'response1' if pref < 0 else 'response2'}') is empty")
    topic = row.get("topic")
    return Example(id=row_id, question=context[0]["content"], answer=reference, lang=lang,
                   topic=str(topic) if topic else UNLABELLED_TOPIC,
                   region=as_regions(row.get("region"), where))


_CALC = re.compile(r"<<[^>]*>>")


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
        raise DataError(f"{where}: field 'answer' ends in a non-number: "
                        f"{final.strip()!r}") from None
    if not math.isfinite(number):
        raise DataError(f"{where}: field 'answer' ends in {final.strip()!r}, not a finite number")
    reference = _CALC.sub("", solution).strip() + f"\nThe answer is {final.strip()}."
    return Example(id=row_id, question=row["question"], answer=reference, lang="en",
                   topic="math", answer_number=number)


@dataclass(frozen=True)
class Recipe:
    hub_id: str
    config: str | None
    convert: Callable[[dict, str, str], Example | str]
    splits: dict = field(default_factory=lambda: {"train": "train", "test": "test"})
    # where a labelled raw row keeps its topic and region (what extras/label.py writes)
    label_columns: dict = field(default_factory=lambda: {"topic": "topic", "region": "region"})


RECIPES: dict[str, Recipe] = {
    "helpsteer3": Recipe("nvidia/HelpSteer3", "preference", helpsteer3_example,
                         {"train": "train", "test": "validation"}),
    "gsm8k": Recipe("openai/gsm8k", "main", gsm8k_example),
}


# ----------------------------------------------------------------------------------------------
# Loading: a local file, a hub dataset id, or a recipe

def _hub_rows(hub_id: str, recipe, split: str):
    try:
        import datasets  # lazy: heavy, and never needed for the built-in world
    except ImportError:
        raise DataError(f"{hub_id}: loading a hub dataset needs the 'datasets' package") from None
    config = recipe.config if recipe else None
    hub_split = recipe.splits.get(split, split) if recipe else split
    try:
        ds = datasets.load_dataset(hub_id, config, split=hub_split)
    except Exception as e:  # noqa: BLE001 - surface any hub/network failure with the id
        raise DataError(f"{hub_id}: could not load split {hub_split!r} from the hub or the "
                        f"local cache ({type(e).__name__}: {e})") from None
    return enumerate(ds, start=1)


class Source(NamedTuple):
    """The rows of one data source and how each becomes an Example."""
    origin: str                                   # the file or hub id, for messages
    rows: Iterator[tuple[int, dict]]              # (row number, raw row)
    schema: str                                   # "lrpo", "verl", "source", or a recipe name
    columns: dict                                 # field -> column; where labels live in a row
    convert: Callable[[dict, int], "Example | str"]   # an Example, or why the row is skipped


def open_source(source: str, *, recipe: str | None = None, columns: dict | None = None,
                split: str = "train") -> Source:
    """Open a local file or hub dataset id, with a recipe (extras/recipes.py), a column
    mapping, or neither: then the schema is detected from the first row (:func:`detect_schema`).
    A recipe name alone ("helpsteer3") means that recipe's hub dataset."""
    if source in RECIPES and recipe is None:
        recipe, source = source, RECIPES[source].hub_id
    if recipe is not None and recipe not in RECIPES:
        raise DataError(f"unknown recipe {recipe!r}; recipes: {', '.join(RECIPES)}")
    path = Path(source)
    if path.suffix in (".jsonl", ".json", ".parquet") or path.exists():
        rows, origin = iter(read_rows(path)), str(path)
    else:
        rows, origin = iter(_hub_rows(source, RECIPES.get(recipe), split)), source
    schema = recipe or "lrpo"
    if recipe is None and columns is None:
        first = next(rows, None)
        rows = itertools.chain([first] if first else [], rows)
        schema = detect_schema(first[1]) if first else "lrpo"
        if schema in RECIPES:
            recipe = schema
        if schema != "lrpo":
            print(f"[data] {origin}: read as {SCHEMA_NAMES[schema]}")
    if recipe is not None:
        r = RECIPES[recipe]
        return Source(origin, rows, recipe, dict(r.label_columns),
                      lambda row, i: r.convert(row, f"{origin}: row {i}", f"{recipe}-{split}-{i}"))
    mapping = columns if columns is not None else SCHEMAS[schema]
    return Source(origin, rows, schema, {**DEFAULT_COLUMNS, **mapping},
                  lambda row, i: example_from_row(row, mapping, where=f"{origin}: row {i}",
                                                  default_id=f"{path.stem}-{i}"))


def load_examples(source: str, *, recipe: str | None = None, columns: dict | None = None,
                  split: str = "train", limit: int | None = None) -> list[Example]:
    """Load examples from a recipe name, a local file, or a hub dataset id (the built-in world
    is ``toy.load_split``); see :func:`open_source`. Rows a recipe skips are counted by reason."""
    src = open_source(source, recipe=recipe, columns=columns, split=split)
    examples, skipped = [], Counter()
    for i, row in src.rows:
        ex = src.convert(row, i)
        if isinstance(ex, str):
            skipped[ex] += 1
            continue
        examples.append(ex)
        if limit is not None and len(examples) >= limit:
            break
    if skipped:
        reasons = ", ".join(f"{n} {why}" for why, n in skipped.most_common())
        print(f"[data] {src.origin}: kept {len(examples)} rows, skipped {sum(skipped.values())} "
              f"({reasons})")
    if not examples:
        raise DataError(f"{src.origin}: no usable rows")
    return examples


# ----------------------------------------------------------------------------------------------
# After loading: the official prompt-length filter, what the labels let the router learn

# data.max_prompt_length=512, filter_overlong_prompts=True (examples/grpo_trainer/run_lrpo.sh:11,13)
OFFICIAL_MAX_PROMPT_TOKENS = 512


def filter_long_prompts(examples: list[Example], tokenizer,
                        max_prompt_tokens: int = OFFICIAL_MAX_PROMPT_TOKENS, style: str = "tag",
                        langs: Iterable[str] = tuple(ROLLOUT_LANGUAGES)
                        ) -> tuple[list[Example], int]:
    """(kept, number dropped): drop questions whose longest prompt over the languages ``langs``
    and the question's own exceeds ``max_prompt_tokens`` tokens, measured as the official filter
    does (verl/utils/dataset/multilingual_rl_dataset.py:221-262: chat template with generation
    prompt, no special tokens). Its tag lacked the f (line 222), measuring the literal
    ``<|out_lang_{ln}|>``; the real tags are measured here."""
    kept = []
    for ex in examples:
        prompts = [build_prompt(tokenizer, ex.question, lang, style)
                   for lang in dict.fromkeys([*langs, ex.lang])]
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


def test_source(cfg) -> str | None:
    """Where the held-out set comes from when the data has its own: --test-data, the test file
    beside a train file, or "split" for a recipe's test split; None: split --data here."""
    if cfg.test_data:
        return None if cfg.test_data == "none" else cfg.test_data
    path = Path(cfg.data)
    if path.is_file() and "train" in path.stem:
        twin = path.with_name(path.name.replace("train", "test"))
        return str(twin) if twin.is_file() else None
    return "split" if cfg.data in RECIPES and not path.exists() else None
