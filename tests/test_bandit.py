"""Tests for bandit.py: the paper's router (Eq. 1, 6, 7 with the official code's defaults), the
stronger bandits, the fixed ablation routers, exact resume, logging and the heatmap."""
import json
import math

import numpy as np
import pytest
import torch

import bandit
from bandit import make_router
from data import Example

LANGS = ["en", "zh", "ja", "fr"]


def ex(lang="zh", topic="Regional Knowledge", region=("China",)):
    return Example(id="x", question="q", answer="a", lang=lang, topic=topic, region=region)


def softmax(z):
    e = np.exp(z - np.max(z))
    return e / e.sum()


def feed(router, examples, allocation, reward_fn):
    """observe() one reward per rollout, reward_fn(example, language)."""
    flat = [(e, lang) for e, langs in zip(examples, allocation) for lang in langs]
    router.observe([e.topic for e, _ in flat], [e.region for e, _ in flat], [l for _, l in flat],
                   [reward_fn(e, l) for e, l in flat])


# ---- Eq. 1: softmax with temperature, ε-uniform exploration ----------------------------------

def test_probabilities_are_epsilon_mixed_tempered_softmax_of_summed_rows():
    r = make_router("paper", LANGS)
    r.q_topic["Regional Knowledge"] = np.array([0.2, 0.5, -0.1, 0.0])
    r.q_region["China"] = np.array([0.0, 0.4, 0.1, -0.3])
    r.q_region["Japan"] = np.array([0.1, 0.0, 0.6, 0.0])
    r.q_topic["chat"] = np.array([1.0, 0.0, 0.0, 0.0])
    r.tau, r.eps = 0.5, 0.1
    z = r.q_topic["Regional Knowledge"] + r.q_region["China"] + r.q_region["Japan"]
    want = 0.9 * softmax(z / 0.5) + 0.1 / 4
    got = r.probabilities("Regional Knowledge", ("China", "Japan"))
    assert np.allclose([got[l] for l in LANGS], want)
    # regions do not count for a non-regional topic (code); they do with the paper's rule
    chat = r.probabilities("chat", ("China",))
    assert np.allclose([chat[l] for l in LANGS], 0.9 * softmax(np.array([2.0, 0, 0, 0])) + 0.025)
    paper_rule = make_router("paper", LANGS, regional_topics=None)
    paper_rule.q_topic["chat"] = np.zeros(4)
    paper_rule.q_region["China"] = np.array([1.0, 0, 0, 0])
    assert paper_rule.probabilities("chat", ("China",))["en"] > 0.25
    # unknown topic and region: zero rows, i.e. uniform
    assert np.allclose(list(r.probabilities("unseen topic", ("Atlantis",)).values()), 0.25)


def test_sampling_frequencies_match_probabilities():
    r = make_router("paper", LANGS)
    r.q_topic["chat"] = np.array([1.5, 0.0, -1.0, 0.5])
    r.tau, r.eps = 0.7, 0.2
    want = r.probabilities("chat")
    out = r.allocate([ex("en", "chat", ())] * 4000, 8, 2, np.random.default_rng(0))
    routed = [l for langs in out for l in langs[2:]]
    for lang in LANGS:   # 24,000 draws: standard error < 0.004
        assert abs(routed.count(lang) / len(routed) - want[lang]) < 0.015


def test_temperature_sharpens_and_epsilon_floors():
    r = make_router("paper", LANGS, eps0=0.0)
    r.q_topic["chat"] = np.array([1.0, 0.0, 0.0, 0.0])
    r.tau = 1.0
    hot = r.probabilities("chat")["en"]
    r.tau = 0.3
    cold = r.probabilities("chat")["en"]
    assert cold > hot > 0.25
    r.eps = 1.0
    assert np.allclose(list(r.probabilities("chat").values()), 0.25)


# ---- annealing schedule --------------------------------------------------------------------

@pytest.mark.parametrize("steps", [0, 1, 100, 1500])
def test_annealing_follows_the_official_schedule(steps):
    r = make_router("paper", LANGS)                  # τ 1.0→0.3 at 0.999, ε 0.2→0 at 0.995
    floor = make_router("paper", LANGS, eps_min=0.05)
    for _ in range(steps):
        r.end_step()
        floor.end_step()
    r.begin_step(123)   # the caller's step is only a label: annealing uses the router's counter
    floor.begin_step(0)
    assert r.tau == pytest.approx(max(0.3, 0.999 ** steps))
    assert r.eps == pytest.approx(max(0.0, 0.2 * 0.995 ** steps))
    assert floor.eps == pytest.approx(max(0.05, 0.2 * 0.995 ** steps))
    if steps == 1500:
        assert r.tau == 0.3 and floor.eps == 0.05


# ---- allocation: K_on, fixed topics, ablation mixes ------------------------------------------

@pytest.mark.parametrize("name", bandit.ROUTER_NAMES)
@pytest.mark.parametrize("K,K_on", [(8, 2), (5, 3), (4, 0)])
def test_group_size_and_own_language_quota(name, K, K_on):
    r = make_router(name, LANGS)
    r.begin_step(0)
    examples = [ex("zh"), ex("sw", "General Knowledge", ()), ex("fr", "chat", ())]   # sw is not in L
    out = r.allocate(examples, K, K_on, np.random.default_rng(1))
    # the fixed mixes use the paper's shares of K instead of K_on (round half up, at least 1)
    share = {"monolingual": 1.0, "input-dominant": 0.75, "english-dominant": 0.25}.get(name)
    n_own = K_on if share is None else max(1, math.floor(share * K + 0.5))
    for e, langs in zip(examples, out):
        assert len(langs) == K
        assert langs[:n_own] == [e.lang] * n_own
        assert set(langs[n_own:]) <= set(LANGS) | {e.lang}
        if share is not None:
            assert langs[n_own:] == ["en"] * (K - n_own)


@pytest.mark.parametrize("name", bandit.ROUTER_NAMES)
def test_fixed_language_topics_are_never_routed(name):
    r = make_router(name, LANGS)
    r.begin_step(0)
    rng = np.random.default_rng(0)
    for topic in ("Translation", "translation", "TRANSLATION"):
        out = r.allocate([ex("ja", topic, ())] * 50, 8, 2, rng)
        assert all(langs == ["ja"] * 8 for langs in out)
    custom = make_router(name, LANGS, fixed_topics=("Safety / Ethics",))
    assert custom.allocate([ex("fr", "safety / ethics", ())], 6, 1, rng) == [["fr"] * 6]


def test_fixed_ablation_mixes_follow_the_paper_shares():
    rng = np.random.default_rng(0)
    e = ex("zh")
    assert make_router("monolingual", LANGS).allocate([e], 8, 2, rng) == [["zh"] * 8]
    assert make_router("input-dominant", LANGS).allocate([e], 8, 2, rng) == [["zh"] * 6 + ["en"] * 2]
    assert make_router("english-dominant", LANGS).allocate([e], 8, 2, rng) == [["zh"] * 2 + ["en"] * 6]
    assert make_router("english-dominant", LANGS).allocate([e], 6, 2, rng) == [["zh"] * 2 + ["en"] * 4]
    assert make_router("input-dominant", LANGS).probabilities("x", (), input_lang="zh") == \
        {"en": 0.25, "zh": 0.75, "ja": 0.0, "fr": 0.0}
    with pytest.raises(ValueError, match="input_lang"):
        make_router("monolingual", LANGS).probabilities("x")
    out = make_router("uniform", LANGS).allocate([e] * 3000, 8, 2, rng)
    assert all(langs[:2] == ["zh", "zh"] for langs in out)
    routed = [l for langs in out for l in langs[2:]]
    for lang in LANGS:
        assert abs(routed.count(lang) / len(routed) - 0.25) < 0.02


# ---- Eq. 6-7 with the code's z-score: a hand-made buffer -------------------------------------

def test_zscore_ema_update_matches_hand_computation():
    r = make_router("paper", LANGS, alpha=0.1, update_every=2)
    rk = "Regional Knowledge"
    # step 1: China (single region), and one question about China+Japan; a chat bucket
    r.observe([rk] * 4, [("China",)] * 4, ["zh", "zh", "en", "ja"], [1.0, 0.8, 0.5, 0.3])
    r.observe([rk] * 2, [("China", "Japan")] * 2, ["ja", "en"], [0.9, 0.1])
    r.observe(["chat"] * 3, [()] * 3, ["en", "fr", "xx"], [0.2, 0.6, 5.0])   # xx is outside L: dropped
    assert r.end_step()["router/updated"] == 0.0 and len(r.buffer) == 8
    m = r.end_step()   # step 2 = M: update
    assert m["router/updated"] == 1.0 and r.buffer == []

    def z(values):
        v = np.array(values)
        return (v - v.mean()) / (v.std() + 1e-6)   # population std, eps 1e-6

    china = dict(zip(["zh", "en", "ja"], z([0.9, (0.5 + 0.1) / 2, (0.3 + 0.9) / 2])))
    japan = dict(zip(["ja", "en"], z([0.9, 0.1])))
    chat = dict(zip(["en", "fr"], z([0.2, 0.6])))
    a = 0.1
    # region rows: one EMA step from zero
    assert r.q_region["China"][LANGS.index("zh")] == pytest.approx(a * china["zh"])
    assert r.q_region["China"][LANGS.index("en")] == pytest.approx(a * china["en"])
    assert r.q_region["Japan"][LANGS.index("ja")] == pytest.approx(a * japan["ja"])
    assert r.q_region["Japan"][LANGS.index("fr")] == 0.0
    # the topic row takes one EMA step per (topic, region) bucket, China's first (buffer order)
    en = a * china["en"]
    en = (1 - a) * en + a * japan["en"]
    assert r.q_topic[rk][LANGS.index("en")] == pytest.approx(en)
    assert r.q_topic["chat"][LANGS.index("fr")] == pytest.approx(a * chat["fr"])
    assert "chat" not in r.q_region and "None" not in r.q_region
    # a second update: EMA from the current value
    before = r.q_topic["chat"].copy()
    r.observe(["chat"] * 2, [()] * 2, ["en", "fr"], [0.9, 0.1])
    r.end_step(), r.end_step()
    assert r.q_topic["chat"][0] == pytest.approx((1 - a) * before[0] + a * 1.0, abs=1e-5)
    assert r.q_topic["chat"][3] == pytest.approx((1 - a) * before[3] - a * 1.0, abs=1e-5)


def test_center_and_none_normalisations():
    for norm, want_en in (("center", 0.2 - 0.4), ("none", 0.2)):
        r = make_router("paper", LANGS, update_every=1, group_norm=norm, alpha=0.5)
        r.observe(["chat"] * 2, [()] * 2, ["en", "fr"], [0.2, 0.6])
        r.end_step()
        assert r.q_topic["chat"][0] == pytest.approx(0.5 * want_en)


# ---- exact resume ----------------------------------------------------------------------------

def _train(router, rng, steps, examples):
    history = []
    for step in range(steps):
        router.begin_step(step)
        out = router.allocate(examples, 8, 2, rng)
        feed(router, examples, out, lambda e, l: (0.9 if l == e.lang else 0.3) + 0.1 * (l == "en"))
        router.end_step()
        history.append(out)
    return history


@pytest.mark.parametrize("name", ["paper", "ucb", "thompson", "uniform"])
@pytest.mark.parametrize("generator", ["numpy", "torch"])
def test_state_round_trip_gives_identical_later_samples(name, generator):
    examples = [ex("zh"), ex("ja", "Regional Knowledge", ("Japan", "China")), ex("fr", "chat", ()),
                ex("en", "Translation", ())]
    make_rng = (lambda: np.random.default_rng(7)) if generator == "numpy" else \
        (lambda: torch.Generator().manual_seed(7))
    a, rng_a = make_router(name, LANGS), make_rng()
    _train(a, rng_a, 7, examples)   # 7 steps: the paper router updated at 5, has 2 in its buffer
    state = json.loads(json.dumps(a.state_dict()))   # plain JSON survives the trip
    b = make_router(name, LANGS)
    b.load_state_dict(state)
    rng_b = make_rng()
    if generator == "numpy":
        rng_b.bit_generator.state = rng_a.bit_generator.state
    else:
        rng_b.set_state(rng_a.get_state())
    assert _train(a, rng_a, 6, examples) == _train(b, rng_b, 6, examples)
    assert a.state_dict() == b.state_dict()
    with pytest.raises(ValueError, match="router"):
        make_router("paper" if name != "paper" else "ucb", LANGS).load_state_dict(state)


# ---- learning: every learner moves toward the best language ---------------------------------

@pytest.mark.parametrize("name", ["paper", "ucb", "thompson"])
def test_learners_favour_the_best_language(name):
    r = make_router(name, LANGS, update_every=1) if name != "paper" else make_router(name, LANGS)
    rng, noise = np.random.default_rng(0), np.random.default_rng(1)
    truth = {"en": 0.5, "zh": 0.5, "ja": 0.8, "fr": 0.4}
    examples = [ex("zh", "Regional Knowledge", ("Japan",))] * 16
    for step in range(40):
        r.begin_step(step)
        out = r.allocate(examples, 8, 2, rng)
        feed(r, examples, out, lambda e, l: truth[l] + 0.1 * noise.standard_normal())
        metrics = r.end_step()
    p = r.probabilities("Regional Knowledge", ("Japan",))
    assert max(p, key=p.get) == "ja"
    assert p["ja"] > (0.3 if name == "paper" else 0.6)
    assert metrics["router/entropy"] < math.log(4)


# ---- bad input, logging, plotting -------------------------------------------------------------

def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unknown router"):
        make_router("greedy", LANGS)
    with pytest.raises(TypeError, match="ucb"):
        make_router("ucb", LANGS, alpha=0.1)
    with pytest.raises(ValueError, match="group_norm"):
        make_router("paper", LANGS, group_norm="minmax")
    r = make_router("paper", LANGS)
    with pytest.raises(ValueError, match="orig_lang_min"):
        r.allocate([ex()], 4, 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"examples\[1\].*region"):
        r.allocate([ex(), object()], 4, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="langs has 1"):
        r.observe(["a", "b"], [(), ()], ["en"], [0.1, 0.2])
    with pytest.raises(TypeError, match="Generator"):
        r.allocate([ex()], 4, 2, rng=42)


def test_jsonl_log_and_heatmap(tmp_path):
    r = make_router("paper", LANGS, update_every=1)
    rng = np.random.default_rng(0)
    examples = [ex("zh"), ex("fr", "chat", ())]
    path = tmp_path / "router.jsonl"
    for step in range(3):
        r.begin_step(step)
        out = r.allocate(examples, 8, 2, rng)
        feed(r, examples, out, lambda e, l: float(l == "ja"))
        r.end_step()
        r.log_probabilities(path, step)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [rec["step"] for rec in records] == [0, 1, 2]
    assert set(records[-1]["probs"]) == {"Regional Knowledge | China", "chat"}
    assert sum(records[-1]["probs"]["chat"].values()) == pytest.approx(1.0)
    assert records[-1]["probs"]["chat"]["ja"] > records[0]["probs"]["chat"]["ja"] - 1e-12
    png = bandit.plot_router_heatmap(path, tmp_path / "heat.png")
    assert png.stat().st_size > 1000
    assert make_router("monolingual", LANGS).log_probabilities(path, 3) is None


def test_routes_the_built_in_world():
    toy = pytest.importorskip("toy", reason="toy.py (the built-in world) is not in this checkout")
    examples = toy.load_split("train")[:64]
    r = make_router("paper", list(toy.LANGS))
    regional = next(e for e in examples if e.topic == "regional")
    r.q_region[regional.region[0]] = np.where(np.array(toy.LANGS) == "ja", 3.0, 0.0)
    r.begin_step(0)
    out = r.allocate(examples, 8, 2, np.random.default_rng(0))
    assert [len(langs) for langs in out] == [8] * len(examples)
    assert all(langs[:2] == [e.lang] * 2 for e, langs in zip(examples, out))
    # "regional" is a regional topic by default, so its region row counts
    assert r.probabilities("regional", regional.region)["ja"] > 0.5
    assert r.probabilities("arithmetic", regional.region)["ja"] == pytest.approx(1 / len(toy.LANGS))
