"""A numeric verifier: reward 1 for a correct final number, times the language gate.

Not part of LRPO: the paper rewards every task by calibrated similarity to a reference
(``calibrate.RewardScorer``), and mGSM is only evaluated. This file adds a checkable reward for
GSM8K/mGSM-style data (``lrpo.py --reward verifier``) and the answer check that evaluation uses:

    extract_number(text, lang=None) -> float | None    the final answer in free text
    verify_number(text, gold, lang=None) -> bool        equal to the gold number up to a tolerance
    contains_key(text, key) -> bool                     a short gold string (a name, a month) as a word
    VerifierScorer(gate="hard").score(responses, target_langs, golds) -> VerifierResult

A gold is a number (checked by ``verify_number``) or a :class:`Key` (checked by ``contains_key``:
data whose examples carry ``key``, such as the built-in world's names and months, get a
correctness reward too; its classroom exercise compares that with the paper's similarity).

Numbers are read in any script the training and mGSM languages write digits in, with thousands
separators (1,234 / 1.234 / 1 234 / 1,23,456), decimal comma or point (``lang`` decides
``1.234``: a thousand in DECIMAL_COMMA_LANGS), signs, currency and GSM8K's ``<<3*4=12>>`` notes;
after a final-answer marker ("The answer is", "Antwort:", "答案是", "####", ...) in 20 languages.
The gate is calibrate.py's Eq. 4 (``gate="hard"``, LRPO's routed rollouts must answer in their
target language; ``"soft"`` uses the LID probability; ``"none"`` checks the number only).
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from calibrate import GATES, LanguageID, language_gate, make_lid
from data import lang_code

# Decimal digits of the scripts the 15 training languages and mGSM's bn sw te th write in:
# Arabic-Indic, Eastern Arabic-Indic (Persian/Urdu), Devanagari, Bengali, Telugu, Thai, full-width.
_DIGIT_ZEROS = (0x0660, 0x06F0, 0x0966, 0x09E6, 0x0C66, 0x0E50, 0xFF10)
_TO_ASCII = {z + d: str(d) for z in _DIGIT_ZEROS for d in range(10)}
_TO_ASCII.update({0x066B: ".", 0x066C: ",", 0xFF0C: ",", 0xFF0E: ".", 0xFF0D: "-", 0x2212: "-",
                  0x2013: "-", 0x00A0: " ", 0x202F: " ", 0x2009: " ", 0x2019: "'"})
# Languages that write 1.234,5 (point groups thousands, comma is the decimal mark).
DECIMAL_COMMA_LANGS = {"de", "es", "fr", "id", "it", "nl", "pl", "pt", "ru", "vi"}

# "The answer is", "Answer:", "####", \boxed{...} and their counterparts (mGSM's own
# "Answer:" words included) in the training and mGSM languages.
_MARKERS = [
    r"####", r"\\boxed\{", r"final answer\s*(?:is)?\s*:?", r"the answer is", r"answer\s*:",
    r"die antwort (?:ist|lautet)", r"antwort\s*:", r"la réponse est", r"réponse\s*:",
    r"la respuesta es", r"respuesta\s*:", r"la risposta è", r"risposta\s*:", r"a resposta é",
    r"resposta\s*:", r"het antwoord is", r"antwoord\s*:", r"odpowiedź(?: to)?\s*:?",
    r"ответ\s*:?", r"jawaban(?:nya)?(?: adalah)?\s*:?", r"đáp án\s*:?", r"câu trả lời là",
    r"答案[是为為：:]", r"答えは", r"答え[：:]", r"정답[은:：]?", r"답[은:：]", r"الإجابة(?: هي)?\s*:?",
    r"الجواب\s*:?", r"উত্তর\s*:?", r"jibu(?: ni)?\s*:?", r"సమాధానం\s*:?", r"คำตอบ(?:คือ)?\s*:?",
    r"उत्तर\s*:?",
]
_MARKER_RE = re.compile("|".join(_MARKERS), re.IGNORECASE)
_NUMBER_RE = re.compile(r"(?P<sign>-\s?[$€£¥₹₩₽]?\s?)?(?P<num>\d+(?:[.,' ]\d+)*)")
_CALC_FOLLOWED = re.compile(r"<<[^<>]*>>(?=\s*-?\d)")        # "=<<3*4=12>>12": drop the note
_CALC_ALONE = re.compile(r"<<[^<>]*=\s*([^<>=]*)>>")         # "<<3*4=12>>" alone: keep 12


def _one_number(groups: list[str], seps: list[str], decimal_comma: bool) -> float | None:
    """Read digit groups joined by separators as one number, or None if they cannot be one."""
    frac = None
    if seps and seps[-1] in ".,":
        mark, others = seps[-1], seps[:-1]
        if others and all(s != mark for s in others):            # 1,234.5  1.234,5  1 234,5
            frac, groups, seps = groups[-1], groups[:-1], others
        elif not others:                                          # a single . or ,
            grouped = len(groups[1]) == 3 and groups[0] != "0" and len(groups[0]) <= 3
            if not (grouped and (mark == "," or decimal_comma)):  # 1,5  3.25  (1,234 groups)
                frac, groups, seps = groups[1], groups[:1], []
    if seps:   # the rest must be one thousands separator between groups of three
        indian = set(seps) == {","} and all(len(g) == 2 for g in groups[1:-1])  # 1,23,456
        if len(set(seps)) != 1 or not 1 <= len(groups[0]) <= 3 or len(groups[-1]) != 3 \
                or not (indian or all(len(g) == 3 for g in groups[1:])):
            return None
    return float("".join(groups) + ("." + frac if frac is not None else ""))


def _numbers(text: str, decimal_comma: bool) -> list[tuple[int, float]]:
    """(position, value) of every number in normalised text."""
    out = []
    for m in _NUMBER_RE.finditer(text):
        token, start = m.group("num"), m.start("num")
        negative = m.group("sign") is not None and (m.start() == 0 or not text[m.start() - 1].isalnum())
        value = _one_number(re.split(r"[.,' ]", token), re.findall(r"[.,' ]", token), decimal_comma)
        if value is not None:
            out.append((start, -value if negative else value))
            continue
        # Separators that fit no number format: several numbers ("3 4", "1.2.3").
        for k, piece in enumerate(re.split(r"[' ]", token) if re.search(r"[' ]", token) else
                                  re.split(r"[.,]", token)):
            sub = _numbers(piece, decimal_comma) if piece else []
            out += [(start, -v if negative and k == 0 else v) for _, v in sub]
    return out


def extract_number(text: str, lang: str | None = None) -> float | None:
    """The final numeric answer in free text, or None.

    After the last final-answer marker ("The answer is", "Antwort:", "答案是", "####", ...) the
    first number is taken (the last one if that line holds an "=" chain); without a marker, the
    last number in the text. Digits of any listed script, thousands separators (1,234 / 1.234 /
    1 234 / 1,23,456), decimal comma or point, signs, currency and unit symbols are handled.
    ``1.234`` alone reads as 1234 only for ``lang`` in DECIMAL_COMMA_LANGS (else 1.234).
    """
    text = str(text).translate(_TO_ASCII)
    text = _CALC_ALONE.sub(r" \1 ", _CALC_FOLLOWED.sub("", text))
    decimal_comma = lang is not None and lang_code(lang) in DECIMAL_COMMA_LANGS
    markers = list(_MARKER_RE.finditer(text))
    if markers:
        after = text[markers[-1].end():]
        line = after.split("\n", 1)[0] if _numbers(after.split("\n", 1)[0], decimal_comma) else after
        found = _numbers(line, decimal_comma)
        if found:
            return found[-1][1] if "=" in line else found[0][1]
    found = _numbers(text, decimal_comma)
    return found[-1][1] if found else None


def verify_number(text: str, gold: float | int | str, rel_tol: float = 1e-6, abs_tol: float = 1e-6,
                  lang: str | None = None) -> bool:
    """True if the final number of ``text`` equals ``gold`` up to a small tolerance."""
    gold_value = gold if isinstance(gold, (int, float)) else extract_number(str(gold), lang)
    if gold_value is None:
        raise ValueError(f"gold answer {gold!r} holds no number")
    pred = extract_number(text, lang)
    return pred is not None and math.isclose(pred, float(gold_value), rel_tol=rel_tol, abs_tol=abs_tol)



@dataclass
class VerifierResult:
    """Per-response components: ``correct`` is 0/1, ``reward`` = gate · correct."""
    reward: np.ndarray
    correct: np.ndarray
    gate: np.ndarray
    predicted_lang: list[str | None]
    lid_prob: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        def mean(x):
            return float(np.mean(x)) if len(x) else math.nan
        return {"reward": mean(self.reward), "gate": mean(self.gate), "accuracy": mean(self.correct),
                **{f"time/{k}": v for k, v in self.timings.items()}}

    def details(self, i: int) -> dict:
        """Rollout i's reward components, for a per-sample log."""
        return {"correct": float(self.correct[i]), "predicted_lang": self.predicted_lang[i],
                "gate": float(self.gate[i])}


class Key(str):
    """A gold string that must appear in the response as a word (see :func:`contains_key`)."""


def contains_key(text: str, key: str) -> bool:
    """``key`` occurs in ``text`` and not inside a longer word or number: "二月" must not match
    inside "十二月", "1月" not inside "11月", "Ilse" not inside "Ilsen"."""
    return re.search(r"(?<![0-9A-Za-z十])" + re.escape(key) + r"(?![0-9A-Za-z])", text) is not None


def gold(example):
    """The verifier's gold for a ``data.Example``: its numeric answer, else its key as a :class:`Key`."""
    return Key(example.key) if example.answer_number is None else example.answer_number


class VerifierScorer:
    """Reward 1/0 for a correct final number or gold :class:`Key`, times the language gate. Same
    call as ``calibrate.RewardScorer.score``: ``references`` are the golds (numbers, numbers as
    text, or Keys); ``reference_langs`` and ``group_ids`` are accepted and unused."""

    def __init__(self, gate: str = "hard", rel_tol: float = 1e-6, abs_tol: float = 1e-6,
                 lid: LanguageID | None = None):
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        self.gate_mode, self.rel_tol, self.abs_tol = gate, rel_tol, abs_tol
        self.lid = lid or make_lid("ours")

    def score(self, responses: Sequence[str], target_langs: Sequence[str], references: Sequence,
              reference_langs: Sequence[str] | None = None, group_ids: Sequence | None = None
              ) -> VerifierResult:
        if not len(responses) == len(target_langs) == len(references):
            raise ValueError(f"score(): all lists must have one entry per response, got sizes "
                             f"{len(responses)}, {len(target_langs)}, {len(references)}")
        targets = [lang_code(x, f"target_langs[{i}]") for i, x in enumerate(target_langs)]
        t0 = time.perf_counter()
        # Without a gate the language is not needed, so LID is skipped (predicted_lang is None).
        preds = self.lid.predict(responses) if self.gate_mode != "none" else [(None, 0.0)] * len(targets)
        gate = language_gate(preds, targets, self.gate_mode)
        t1 = time.perf_counter()
        correct = np.array([float(contains_key(r, g) if isinstance(g, Key) else
                                  verify_number(r, g, self.rel_tol, self.abs_tol, lang))
                            for r, g, lang in zip(responses, references, targets)])
        return VerifierResult(gate * correct, correct, gate, [c for c, _ in preds],
                              np.array([p for _, p in preds]),
                              {"lid": t1 - t0, "verify": time.perf_counter() - t1})
