"""Loading data: local files, hub dataset ids, and named datasets (recipes) into ``data.Example``s.

``load_examples(source)`` opens a JSONL/JSON/Parquet file or a hub id; rows go through a column
mapping, a detected official format (data.py), or a recipe.

``load_examples("helpsteer3")`` (or ``--data helpsteer3``) loads a recipe's hub dataset;
``recipe="helpsteer3"`` converts a local file holding the same raw rows (a raw HelpSteer3 file is
also detected without it). A recipe's ``convert(row, where, row_id)`` returns an Example, or a
short reason why the row is skipped; the loader counts skipped rows by reason. Errors name the
file, the row and the field (``where``).

* ``helpsteer3``: the paper's training data (§4.2, App. A.1), HelpSteer3's multilingual domain.
* ``gsm8k``: English math word problems with a numeric answer, for the verifier reward.
"""
from __future__ import annotations

import itertools
import re
from collections import Counter
from pathlib import Path
from typing import Iterator, NamedTuple
from dataclasses import dataclass, field
from typing import Callable

from data import (DEFAULT_COLUMNS, SCHEMA_NAMES, SCHEMAS, DataError, Example, UNLABELLED_TOPIC, as_regions,
                  detect_schema, example_from_row, lang_code, read_rows)


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
    if not isinstance(context, list) or not context or not all(isinstance(t, dict) for t in context):
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
        raise DataError(f"{where}: field 'answer' ends in a non-number: {final.strip()!r}") from None
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
