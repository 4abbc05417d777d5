"""bench/classroom.py: the statistics of the pre-registered classroom experiment."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

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


# ---- the confirmatory run (issue 21): its cells, its frozen worlds, its decision rule ----

spec_c = importlib.util.spec_from_file_location("confirm", Path(__file__).parents[1] / "bench" / "confirm.py")
confirm = importlib.util.module_from_spec(spec_c)
spec_c.loader.exec_module(confirm)


def _scored(examples, hit):
    return {"test": [{"id": e.id, "lang": e.lang, "group": classroom.toy.question_group(e),
                      "strict": hit(e)} for e in examples]}


def test_h2_cell_is_exactly_the_held_out_arithmetic_asked_in_zh_and_ja():
    test = classroom.toy.load_split("test")
    rows = _scored(test, lambda e: True)["test"]
    chosen = confirm.cell_rows(rows, confirm.H2_CELL)
    expected = {(e.id, e.lang) for e in test if e.topic == "arithmetic" and e.lang in ("zh", "ja")}
    assert {(r["id"], r["lang"]) for r in chosen} == expected and len(expected) == 72
    # the bootstrap's matrix sees the same questions
    keys = classroom.strict_by_question({"test": rows}, "test", *confirm.H2_CELL)
    assert set(keys) == expected
    # the mean counts only that cell: right on zh/ja arithmetic and nothing else gives 1.0
    only = _scored(test, lambda e: e.topic == "arithmetic" and e.lang in ("zh", "ja"))
    assert confirm.cell_mean(only, confirm.H2_CELL) == 1.0
    assert confirm.cell_mean(only, confirm.H1_CELL) == 0.0


def test_world_check_accepts_the_frozen_world_and_refuses_a_changed_one(monkeypatch):
    # World version 4 is H1's frozen world text (the famous world); its warm-start key is new
    # (WORLD_VERSION is part of it), and H2's world (version 3) is gone from toy.py.
    frozen = {"world_hash": confirm.EXPERIMENTS["H1"]["world_hash"],
              "warm_start_key": classroom.warm_start_key()}
    classroom.check_world(frozen["world_hash"], frozen["warm_start_key"])
    with pytest.raises(SystemExit, match="world text hash .* is not the frozen"):
        classroom.check_world(confirm.EXPERIMENTS["H2"]["world_hash"], frozen["warm_start_key"])
    toy = classroom.toy
    renamed = (toy.Region("Eastmoor", "en", "Harwick", "Tollen", "Pennat", 5),) + toy.REGIONS[1:]
    monkeypatch.setattr(toy, "REGIONS", renamed)   # one festival month moved
    with pytest.raises(SystemExit, match="world text hash .* is not the frozen"):
        classroom.check_world(frozen["world_hash"], frozen["warm_start_key"])
    monkeypatch.undo()
    monkeypatch.setattr(toy, "WORLD_VERSION", toy.WORLD_VERSION + 1)
    with pytest.raises(SystemExit, match="warm-start key"):
        classroom.check_world(frozen["world_hash"], frozen["warm_start_key"])


def _two_methods(delta, n_seeds=10, n_q=72):
    rows = []
    for method, shift in (("lrpo", delta), ("uniform", 0.0)):
        for seed in range(n_seeds):
            rng = np.random.default_rng([seed, 3])
            p = rng.random(n_q)
            hits = p < 0.3 + shift   # the same questions, lrpo's right ones a subset or superset
            rows.append({"method": method, "seed": seed, "test": [
                {"id": f"q{i}", "lang": "zh", "group": "arithmetic", "strict": bool(h)}
                for i, h in enumerate(hits)]})
    return rows


def test_non_inferiority_uses_the_margin():
    pair = [("x", "lrpo", "uniform", "arithmetic", ("zh", "ja"))]
    slightly = classroom.compare_pairs(_two_methods(-0.02), pair, margin=0.05, holm=False)["x"]
    assert slightly["delta"] < 0 and slightly["holm"]["verdict"] == "not worse"
    assert slightly["holm"]["level"] == 0.95
    # the same data without the margin is no win; far worse is refuted
    assert classroom.compare_pairs(_two_methods(-0.02), pair)["x"]["holm"]["verdict"] != "LRPO better"
    far = classroom.compare_pairs(_two_methods(-0.2), pair, margin=0.05, holm=False)["x"]
    assert far["holm"]["verdict"] == "worse by more than the margin"


def _verdicts(h2a, h2b):
    tests = {f"H2a m{i}-grpo": {"holm": {"verdict": v}} for i, v in enumerate(h2a)}
    return tests | {f"H2b lrpo-m{i}": {"holm": {"verdict": v}} for i, v in enumerate(h2b)}


def test_decision_rule_is_the_pre_registered_one():
    win, tie = ["LRPO better", "better", "better", "better"], ["not worse"] * 3
    assert confirm.decide(_verdicts(win, tie), "H2", 10) == "confirmed"
    assert confirm.decide(_verdicts(win, tie), "H2", 9).startswith("INCOMPLETE")
    one_short = ["LRPO better", "better", "no detectable difference", "better"]
    assert confirm.decide(_verdicts(one_short, tie), "H2", 10) == "not confirmed"
    assert confirm.decide(_verdicts(win, ["not worse", "no decision", "not worse"]), "H2", 10) \
        == "not confirmed"
    assert confirm.decide(_verdicts(win, ["worse by more than the margin"] * 3), "H2", 10) == "refuted"
    h1 = {"H1 lrpo-grpo": {"holm": {"verdict": "no detectable difference"}}}
    assert confirm.decide(h1, "H1", 10) == "not confirmed"
