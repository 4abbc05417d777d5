"""Named datasets: how the raw rows of a public dataset become ``data.Example`` records.

``data.load_examples("helpsteer3")`` (or ``--data helpsteer3``) loads a recipe's hub dataset;
``recipe="helpsteer3"`` converts a local file holding the same raw rows (a raw HelpSteer3 file is
also detected without it). A recipe's ``convert(row, where, row_id)`` returns an Example, or a
short reason why the row is skipped; the loader counts skipped rows by reason. Errors name the
file, the row and the field (``where``).

* ``helpsteer3``: the paper's training data (§4.2, App. A.1), HelpSteer3's multilingual domain.
* ``gsm8k``: English math word problems with a numeric answer, for the verifier reward.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from data import DataError, Example, UNLABELLED_TOPIC, as_regions, lang_code


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
