"""bench/classroom.py: the statistics of the pre-registered classroom experiment."""
import importlib.util
from pathlib import Path

import numpy as np

spec = importlib.util.spec_from_file_location("classroom", Path(__file__).parents[1] / "bench" / "classroom.py")
classroom = importlib.util.module_from_spec(spec)
spec.loader.exec_module(classroom)


def test_paired_bootstrap_is_the_mean_difference_over_resampled_seeds_and_questions():
    rng = np.random.default_rng(0)
    a = rng.random((5, 40)) < 0.6
    b = rng.random((5, 40)) < 0.4
    boot = classroom.paired_bootstrap(a, b, n_boot=4000, seed=1)
    diff = a.astype(float) - b.astype(float)
    # centred on the observed difference; its spread is that of a two-level resample
    assert abs(boot.mean() - diff.mean()) < 0.01
    # the first resample by hand (all seed draws come first, then all question draws): the same
    # seeds and questions for both methods
    r = np.random.default_rng(1)
    seeds = [r.integers(0, 5, 5) for _ in range(4000)]
    questions = [r.integers(0, 40, 40) for _ in range(4000)]
    assert np.isclose(boot[0], diff[seeds[0]][:, questions[0]].mean())
    assert np.isclose(boot[-1], diff[seeds[-1]][:, questions[-1]].mean())
    # identical methods: every resample is exactly 0
    assert np.all(classroom.paired_bootstrap(a, a, n_boot=50) == 0)


def _results(shift):
    rows = []
    for method, p in (("lrpo", 0.5 + shift), ("grpo", 0.5), ("uniform", 0.5)):
        for seed in range(3):
            rng = np.random.default_rng([seed, 7])
            hits = rng.random(60) < 0.5
            hits = hits | (rng.random(60) < (p - 0.5) * 2) if p > 0.5 else hits
            rows.append({"method": method, "seed": seed, "test": [
                {"id": f"q{i}", "lang": "en", "group": classroom.HEADLINE, "strict": bool(h)}
                for i, h in enumerate(hits)]})
    return rows


def test_compare_finds_a_real_gain_and_not_an_absent_one():
    better = classroom.compare(_results(0.3), ["grpo", "uniform"])
    assert all(c["delta"] > 0.15 and c["ci95"][0] > 0 and c["holm"]["verdict"] == "LRPO better"
               for c in better.values())
    # Holm: the smaller p is judged at the stricter level
    levels = sorted(c["holm"]["level"] for c in better.values())
    assert np.allclose(levels, [0.95, 0.975])
    same = classroom.compare(_results(0.0), ["grpo", "uniform"])
    assert all(c["delta"] == 0 and c["holm"]["verdict"] == "no detectable difference" for c in same.values())
