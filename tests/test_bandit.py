"""Tests for bandit.py (the paper's router, Eq. 1, 6, 7 with the official code's defaults, and the
baselines' fixed routers), extras/routers.py (UCB, Thompson), exact resume, logging, the heatmap."""
import json
import math

import numpy as np
import pytest

import bandit
from extras import routers
from extras.router_log import log_router

ALL_METHODS = bandit.METHODS + routers.METHODS


def make_router(name, languages, **options):
    """The core's routers and the two beyond the paper, by name."""
    return routers.make_router(name, languages, **options)
from data import Example

LANGS = ["en", "zh", "ja", "fr"]
SHARES = {"grpo": 1.0, "input-dominant": 0.75, "english-dominant": 0.25}


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


def as_array(p):
    return np.array([p[l] for l in LANGS])


# ---- Eq. 1: softmax with temperature, ε-uniform exploration ----------------------------------

def test_probabilities_are_epsilon_mixed_tempered_softmax_of_summed_rows():
    r = make_router("lrpo", LANGS)
    r.A["Regional Knowledge"] = np.array([0.2, 0.5, -0.1, 0.0])
    r.B["China"] = np.array([0.0, 0.4, 0.1, -0.3])
    r.B["Japan"] = np.array([0.1, 0.0, 0.6, 0.0])
    r.A["chat"] = np.array([1.0, 0.0, 0.0, 0.0])
    r.tau, r.eps = 0.5, 0.1
    z = r.A["Regional Knowledge"] + r.B["China"] + r.B["Japan"]
    want = 0.9 * softmax(z / 0.5) + 0.1 / 4
    assert np.allclose(as_array(r.probabilities("Regional Knowledge", ("China", "Japan"))), want)
    # regions do not count for a non-regional topic (code); they do with the paper's rule
    chat = r.probabilities("chat", ("China",))
    assert np.allclose(as_array(chat), 0.9 * softmax(np.array([2.0, 0, 0, 0])) + 0.025)
    paper_rule = make_router("lrpo", LANGS, region_rows="any")   # at step 0: τ = 1, ε = 0.2
    paper_rule.B["China"] = np.array([1.0, 0, 0, 0])
    assert np.allclose(as_array(paper_rule.probabilities("chat", ("China",))),
                       0.8 * softmax(np.array([1.0, 0, 0, 0])) + 0.05)
    # unknown topic and region: zero rows, i.e. uniform
    assert np.allclose(list(r.probabilities("unseen topic", ("Atlantis",)).values()), 0.25)


def test_sampling_frequencies_match_probabilities():
    r = make_router("lrpo", LANGS)
    r.A["chat"] = np.array([1.5, 0.0, -1.0, 0.5])
    r.tau, r.eps = 0.7, 0.2
    want = r.probabilities("chat")
    out = r.allocate([ex("en", "chat", ())] * 4000, 8, 2, np.random.default_rng(0))
    routed = [l for langs in out for l in langs[2:]]
    for lang in LANGS:   # 24,000 draws: standard error < 0.004
        assert abs(routed.count(lang) / len(routed) - want[lang]) < 0.015


def test_temperature_sharpens_and_epsilon_floors():
    r = make_router("lrpo", LANGS, eps0=0.0)
    r.A["chat"] = np.array([1.0, 0.0, 0.0, 0.0])
    r.tau = 1.0
    assert r.probabilities("chat")["en"] == pytest.approx(math.e / (math.e + 3))
    r.tau = 0.3
    assert r.probabilities("chat")["en"] == pytest.approx(math.exp(1 / 0.3) / (math.exp(1 / 0.3) + 3))
    r.eps = 1.0
    assert np.allclose(list(r.probabilities("chat").values()), 0.25)


# ---- defaults and annealing schedule -------------------------------------------------------

def test_defaults_are_the_official_launch_script():
    r = make_router("lrpo", LANGS)   # run_lrpo.sh, reference/LRPO_SPEC.md §4
    assert (r.alpha, r.update_every, r.group_norm, r.norm_eps) == (0.1, 5, "zscore", 1e-6)
    assert (r.tau0, r.tau_min, r.tau_decay, r.eps0, r.eps_min, r.eps_decay) == (1.0, 0.3, 0.999, 0.2, 0.0, 0.995)
    assert r.fixed_topics == {"translation"} and r.regional_topics == {"regional knowledge", "regional"}
    assert r.region_rows == "regional-topics"
    assert r.A == {} and r.B == {}   # uniform init
    ucb, ts = make_router("ucb", LANGS), make_router("thompson", LANGS)
    assert (ucb.discount, ucb.exploration, ucb.prior_std, ucb.update_every) == (0.95, 1.0, 1.0, 1)
    assert (ts.discount, ts.prior_count, ts.prior_std, ts.update_every) == (0.95, 1.0, 1.0, 1)
    assert make_router("english-dominant", LANGS).english == "en"



@pytest.mark.parametrize("steps", [0, 1, 100, 1500])
def test_annealing_follows_the_official_schedule(steps):
    r = make_router("lrpo", LANGS)                  # τ 1.0→0.3 at 0.999, ε 0.2→0 at 0.995
    floor = make_router("lrpo", LANGS, eps_min=0.05)
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


def test_annealed_tau_and_eps_drive_the_probabilities_and_no_annealing_keeps_them():
    r = make_router("lrpo", LANGS, tau0=2.0, tau_min=0.5, tau_decay=0.9, eps0=0.4, eps_min=0.1,
                    eps_decay=0.5)
    flat = make_router("lrpo", LANGS, tau_decay=1.0, eps_decay=1.0)   # Table 4 "w/o annealing"
    for step in range(4):
        r.end_step()
        flat.end_step()
    r.begin_step(4)
    flat.begin_step(4)
    tau, eps = 2.0 * 0.9 ** 4, max(0.1, 0.4 * 0.5 ** 4)        # 1.3122 (above 0.5), 0.1 (floor)
    assert (r.tau, r.eps) == (pytest.approx(tau), pytest.approx(eps)) and eps == 0.1
    r.A["chat"] = np.array([1.0, 0.0, -1.0, 0.5])
    want = (1 - eps) * softmax(r.A["chat"] / tau) + eps / 4
    assert np.allclose(as_array(r.probabilities("chat")), want)
    assert (flat.tau, flat.eps) == (1.0, 0.2)
    assert r.end_step()["router/tau"] == pytest.approx(tau)


# ---- allocation: K_on, fixed topics, ablation mixes ------------------------------------------

@pytest.mark.parametrize("name", ALL_METHODS)
@pytest.mark.parametrize("K,K_on", [(8, 2), (5, 3), (4, 0)])
def test_group_size_and_own_language_quota(name, K, K_on):
    r = make_router(name, LANGS)
    r.begin_step(0)
    examples = [ex("zh"), ex("sw", "General Knowledge", ()), ex("fr", "chat", ())]   # sw is not in L
    out = r.allocate(examples, K, K_on, np.random.default_rng(1))
    # the fixed mixes use the paper's shares of K instead of K_on (round half up, at least 1)
    share = SHARES.get(name)
    n_own = K_on if share is None else max(1, math.floor(share * K + 0.5))
    for e, langs in zip(examples, out):
        assert len(langs) == K
        assert langs[:n_own] == [e.lang] * n_own
        assert set(langs[n_own:]) <= set(LANGS) | {e.lang}
        if share is not None:
            assert langs[n_own:] == ["en"] * (K - n_own)


@pytest.mark.parametrize("name", ALL_METHODS)
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
    assert make_router("grpo", LANGS).allocate([e], 8, 2, rng) == [["zh"] * 8]
    assert make_router("input-dominant", LANGS).allocate([e], 8, 2, rng) == [["zh"] * 6 + ["en"] * 2]
    assert make_router("english-dominant", LANGS).allocate([e], 8, 2, rng) == [["zh"] * 2 + ["en"] * 6]
    assert make_router("english-dominant", LANGS).allocate([e], 6, 2, rng) == [["zh"] * 2 + ["en"] * 4]
    assert make_router("input-dominant", LANGS).probabilities("x", (), input_lang="zh") == \
        {"en": 0.25, "zh": 0.75, "ja": 0.0, "fr": 0.0}
    with pytest.raises(ValueError, match="input_lang"):
        make_router("grpo", LANGS).probabilities("x")
    with pytest.raises(ValueError, match="english='en' is not among"):
        make_router("english-dominant", ["zh", "ja"])
    assert make_router("grpo", ["zh", "ja"]).probabilities("x", input_lang="ja") == {"zh": 0.0, "ja": 1.0}
    uniform = make_router("uniform", LANGS)
    out = uniform.allocate([e] * 3000, 8, 2, rng)
    assert all(langs[:2] == ["zh", "zh"] for langs in out)
    routed = [l for langs in out for l in langs[2:]]
    for lang in LANGS:   # 18,000 draws: standard error < 0.0033
        assert abs(routed.count(lang) / len(routed) - 0.25) < 0.012
    # nothing is learnt: no buffer, no update, no τ/ε or entropy metrics
    feed(uniform, [e] * 3000, out, lambda e, l: float(l == "ja"))
    assert uniform.buffer == [] and uniform.learns is False
    assert uniform.end_step() == {"router/updated": 0.0, "router/step": 1.0, "router/buffer": 0.0,
                                  "router/contexts": 1.0}
    assert np.allclose(as_array(uniform.probabilities("Regional Knowledge", ("China",))), 0.25)


# ---- Eq. 6-7 with the code's z-score: a hand-made buffer -------------------------------------

def test_zscore_ema_update_matches_hand_computation():
    r = make_router("lrpo", LANGS, alpha=0.1, update_every=2)
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
    assert r.B["China"][LANGS.index("zh")] == pytest.approx(a * china["zh"])
    assert r.B["China"][LANGS.index("en")] == pytest.approx(a * china["en"])
    assert r.B["Japan"][LANGS.index("ja")] == pytest.approx(a * japan["ja"])
    assert r.B["Japan"][LANGS.index("fr")] == 0.0
    # the topic row takes one EMA step per (topic, region) bucket, China's first (buffer order)
    en = a * china["en"]
    en = (1 - a) * en + a * japan["en"]
    assert r.A[rk][LANGS.index("en")] == pytest.approx(en)
    assert r.A["chat"][LANGS.index("fr")] == pytest.approx(a * chat["fr"])
    assert "chat" not in r.B and None not in r.B and "None" not in r.B
    # a second update: EMA from the current value
    before = r.A["chat"].copy()
    r.observe(["chat"] * 2, [()] * 2, ["en", "fr"], [0.9, 0.1])
    r.end_step(), r.end_step()
    assert r.A["chat"][0] == pytest.approx((1 - a) * before[0] + a * 1.0, abs=1e-5)
    assert r.A["chat"][3] == pytest.approx((1 - a) * before[3] - a * 1.0, abs=1e-5)


def test_region_rows_are_updated_only_for_regional_topics():
    def trained(topic, **options):
        r = make_router("lrpo", LANGS, update_every=1, alpha=0.5, **options)
        r.observe([topic] * 2, [("China",)] * 2, ["en", "zh"], [0.2, 0.6])
        r.end_step()
        return r

    zh = 0.5 * 0.2 / (0.2 + 1e-6)   # α · z-score of 0.6 among {0.2, 0.6}
    code = trained("chat")          # a non-regional topic that carries a region
    assert code.B == {}
    assert code.A["chat"][1] == pytest.approx(zh)
    assert code.probabilities("chat", ("China",)) == code.probabilities("chat")
    regional = trained("regional knowledge")   # the regional topic, in any case
    assert regional.B["China"][1] == pytest.approx(zh)
    assert trained("chat", region_rows="any").B["China"][1] == pytest.approx(zh)   # paper
    topic_only = trained("Regional Knowledge", region_rows="none")   # no region table at all
    assert topic_only.B == {}
    topic_only.B["China"] = np.array([5.0, 0, 0, 0])
    rk = "Regional Knowledge"
    assert topic_only.probabilities(rk, "China") == topic_only.probabilities(rk)


def test_center_and_none_normalisations():
    for norm, want_en in (("center", 0.2 - 0.4), ("none", 0.2)):
        r = make_router("lrpo", LANGS, update_every=1, group_norm=norm, alpha=0.5)
        r.observe(["chat"] * 2, [()] * 2, ["en", "fr"], [0.2, 0.6])
        r.end_step()
        assert r.A["chat"][0] == pytest.approx(0.5 * want_en)


def test_non_uniform_prior_sets_the_starting_logits():
    r = make_router("lrpo", LANGS, topic_prior={"Reasoning / Logic": {"en": 6, "zh": 2}},
                    region_prior={"China": {"zh": 6, "en": 2}})
    floor = math.log(1e-6)
    assert np.allclose(r.A["Reasoning / Logic"], [math.log(6), math.log(2), floor, floor])
    assert np.allclose(r.B["China"], [math.log(2), math.log(6), floor, floor])
    p = as_array(r.probabilities("Reasoning / Logic"))   # τ = 1, ε = 0.2: 0.8 · (6, 2, ~0, ~0)/8 + 0.05
    assert np.allclose(p, [0.65, 0.25, 0.05, 0.05], atol=1e-6)
    assert np.allclose(as_array(r.probabilities("chat")), 0.25)
    with pytest.raises(ValueError, match="outside"):
        make_router("lrpo", LANGS, topic_prior={"chat": {"sw": 1}})


# ---- UCB and Thompson (extras/routers.py): values after known observations --------------------

def _observe_chat(r, langs, rewards):
    r.observe(["chat"] * len(langs), [()] * len(langs), langs, rewards)
    r.end_step()


def test_ucb_index_matches_hand_computation():
    r = make_router("ucb", LANGS, exploration=1.5)
    _observe_chat(r, ["en", "en", "zh"], [1.0, 0.5, 0.0])
    # n = (2, 1), means (0.75, 0); pooled within-language SS 0.125 on 3 − 2 = 1 dof, plus one
    # pseudo-observation of prior_std² = 1: σ̂ = √(1.125 / 2) = 0.75; N = 3
    sigma, N = 0.75, 3
    want = [0.75 + 1.5 * sigma * math.sqrt(2 * math.log(N) / 2),
            0.00 + 1.5 * sigma * math.sqrt(2 * math.log(N) / 1)]
    idx = r.indices(r.context("chat"))
    assert idx[:2] == pytest.approx(want) and idx[2] == idx[3] == math.inf
    # the next update first discounts everything by 0.95
    _observe_chat(r, ["zh"], [1.0])
    n = np.array([2 * 0.95, 0.95 + 1])
    s1, s2 = np.array([1.5 * 0.95, 1.0]), np.array([1.25 * 0.95, 1.0])
    mean = s1 / n
    sigma = math.sqrt((s2 - s1 ** 2 / n).sum() + 1) / math.sqrt(n.sum() - 2 + 1)
    want = mean + 1.5 * sigma * np.sqrt(2 * math.log(n.sum()) / n)
    assert r.indices(r.context("chat"))[:2] == pytest.approx(want)
    # unplayed languages are picked first; then a batch spreads by virtual counts
    assert set(r.allocate([ex("en", "chat", ())], 4, 2, np.random.default_rng(0))[0][2:]) == {"ja", "fr"}


def test_thompson_posterior_matches_hand_computation():
    r = make_router("thompson", LANGS, prior_count=2.0)
    _observe_chat(r, ["en", "en", "zh"], [1.0, 0.5, 0.0])
    mean, sd = r.posterior(r.context("chat"))
    m0, sigma, n0 = 0.5, 0.75, 2.0      # context mean, σ̂ as in the UCB test
    assert mean == pytest.approx([(1.5 + n0 * m0) / (2 + n0), (0.0 + n0 * m0) / (1 + n0), m0, m0])
    assert sd == pytest.approx(sigma / np.sqrt([2 + n0, 1 + n0, n0, n0]))
    # routed slots follow P(argmax θ), which probabilities() estimates
    p = r.probabilities("chat")
    out = r.allocate([ex("en", "chat", ())] * 2000, 5, 2, np.random.default_rng(0))
    routed = [l for langs in out for l in langs[2:]]
    for lang in LANGS:   # 6,000 draws vs 2,000: standard errors < 0.012 together
        assert abs(routed.count(lang) / len(routed) - p[lang]) < 0.04


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


@pytest.mark.parametrize("name", ["lrpo", "ucb", "thompson", "uniform", "english-dominant"])
def test_state_round_trip_gives_identical_later_samples(name):
    examples = [ex("zh"), ex("ja", "Regional Knowledge", ("Japan", "China")), ex("fr", "chat", ()),
                ex("en", "Translation", ())]
    a, rng_a = make_router(name, LANGS), np.random.default_rng(7)
    _train(a, rng_a, 7, examples)   # 7 steps: the paper router updated at 5, has 2 in its buffer
    state = json.loads(json.dumps(a.state_dict()))   # plain JSON survives the trip
    b = make_router(name, LANGS)
    b.load_state_dict(state)
    rng_b = np.random.default_rng(0)
    rng_b.bit_generator.state = rng_a.bit_generator.state
    assert _train(a, rng_a, 6, examples) == _train(b, rng_b, 6, examples)
    assert a.state_dict() == b.state_dict()
    if name == "lrpo":   # a run saved before the tables were named A and B still resumes
        old = {("q_topic" if k == "A" else "q_region" if k == "B" else k): v for k, v in state.items()}
        c = make_router(name, LANGS)
        c.load_state_dict(old)
        assert c.A and {k: v.tolist() for k, v in c.A.items()} == state["A"]
        assert {k: v.tolist() for k, v in c.B.items()} == state["B"]
    with pytest.raises(ValueError, match="router"):
        make_router("lrpo" if name != "lrpo" else "ucb", LANGS).load_state_dict(state)
    with pytest.raises(ValueError) as error:
        make_router(name, LANGS[::-1]).load_state_dict(state)
    assert str(LANGS) in str(error.value) and str(LANGS[::-1]) in str(error.value)


def test_only_a_numpy_generator_is_accepted():
    torch = pytest.importorskip("torch")
    for name in ("lrpo", "uniform", "grpo"):
        with pytest.raises(TypeError, match=r"numpy\.random\.Generator.*torch"):
            make_router(name, LANGS).allocate([ex()], 4, 2, torch.Generator().manual_seed(0))


# ---- learning: every learner moves toward the best language ---------------------------------

@pytest.mark.parametrize("name", ["lrpo", "ucb", "thompson"])
def test_learners_favour_the_best_language(name):
    r = make_router(name, LANGS, update_every=1) if name != "lrpo" else make_router(name, LANGS)
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
    if name == "lrpo":   # ≈ 0.72: topic and region rows both favour ja (one row alone gives ≈ 0.5)
        assert 0.65 < p["ja"] < 0.8 and metrics["router/entropy"] < 1.0
    else:                # the bandits commit: ≈ 1
        assert p["ja"] > 0.95 and metrics["router/entropy"] < 0.2


# ---- bad input, logging, plotting -------------------------------------------------------------

def test_bad_input_is_named():
    for name in ("greedy", "paper", "monolingual", "LRPO"):   # one vocabulary, no aliases
        with pytest.raises(ValueError, match=", ".join(bandit.METHODS)):
            make_router(name, LANGS)
    with pytest.raises(TypeError, match="ucb"):
        make_router("ucb", LANGS, alpha=0.1)
    with pytest.raises(TypeError, match="grpo"):
        make_router("grpo", LANGS, alpha=0.1)
    with pytest.raises(ValueError, match="group_norm"):
        make_router("lrpo", LANGS, group_norm="minmax")
    with pytest.raises(ValueError, match="one string"):
        make_router("lrpo", LANGS, fixed_topics="translation")
    with pytest.raises(ValueError, match="one string"):   # the bandits beyond the paper too
        make_router("ucb", LANGS, regional_topics="regional")
    with pytest.raises(ValueError, match="region_rows must be one of"):
        make_router("lrpo", LANGS, region_rows="paper")
    for option, value in (("alpha", 0.0), ("tau_decay", 1.5), ("eps0", -0.1)):
        with pytest.raises(ValueError, match=f"option {option} is out of range"):
            make_router("lrpo", LANGS, **{option: value})
    with pytest.raises(ValueError, match="without repeats"):
        make_router("uniform", ["en", "en"])
    r = make_router("lrpo", LANGS)
    with pytest.raises(ValueError, match="orig_lang_min"):
        r.allocate([ex()], 4, 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"examples\[1\].*region"):
        r.allocate([ex(), object()], 4, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="have 2, 2, 1 and 2 entries"):
        r.observe(["a", "b"], [(), ()], ["en"], [0.1, 0.2])
    with pytest.raises(TypeError, match="Generator"):
        r.allocate([ex()], 4, 2, rng=42)


def test_jsonl_log_and_heatmap(tmp_path):
    from extras.plots import plot_router_heatmap
    r = make_router("lrpo", LANGS, update_every=1)
    rng = np.random.default_rng(0)
    examples = [ex("zh"), ex("fr", "chat", ())]
    path = tmp_path / "router.jsonl"
    for step in range(3):
        r.begin_step(step)
        out = r.allocate(examples, 8, 2, rng)
        feed(r, examples, out, lambda e, l: float(l == "ja"))
        r.end_step()
        log_router(r, path, step)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [rec["step"] for rec in records] == [0, 1, 2]
    assert set(records[-1]["probs"]) == {"Regional Knowledge | China", "chat"}
    assert records[-1]["probs"]["chat"] == r.probabilities("chat")
    assert records[-1]["probs"]["Regional Knowledge | China"] == r.probabilities("Regional Knowledge", ("China",))
    assert (records[-1]["tau"], records[-1]["eps"]) == (r.tau, r.eps)
    ja = [rec["probs"]["chat"]["ja"] for rec in records]
    assert 0.25 < ja[0] < ja[1] < ja[2]   # ja, the only rewarded language, gains at every update
    png = plot_router_heatmap(path, tmp_path / "heat.png")
    assert png.stat().st_size > 1000
    assert log_router(make_router("grpo", LANGS), path, 3) is None


def test_routes_the_built_in_world():
    toy = pytest.importorskip("toy", reason="toy.py (the built-in world) is not in this checkout")
    examples = toy.load_split("train")[:64]
    r = make_router("lrpo", list(toy.LANGS))
    regional = next(e for e in examples if e.topic == "regional")
    r.B[regional.region[0]] = np.where(np.array(toy.LANGS) == "ja", 3.0, 0.0)
    r.begin_step(0)
    out = r.allocate(examples, 8, 2, np.random.default_rng(0))
    assert [len(langs) for langs in out] == [8] * len(examples)
    assert all(langs[:2] == [e.lang] * 2 for e, langs in zip(examples, out))
    # "regional" is a regional topic by default, so its region row counts (τ = 1, ε = 0.2)
    L = len(toy.LANGS)
    want_ja = 0.8 * math.exp(3) / (math.exp(3) + L - 1) + 0.2 / L
    assert r.probabilities("regional", regional.region)["ja"] == pytest.approx(want_ja)
    assert r.probabilities("arithmetic", regional.region)["ja"] == pytest.approx(1 / L)
