"""Tests for extras/verifier.py: reading the final number in 20 languages, and the gated scorer."""
import numpy as np
import pytest

from extras.verifier import VerifierResult, VerifierScorer, extract_number, verify_number

NUMBER_CASES = [
    ("Lina has 12 apples now.", None, 12),
    ("The answer is 1,234.", None, 1234),
    ("It costs $1,234.50 in total.", None, 1234.5),
    ("3.25 liters", None, 3.25),
    ("Die Antwort ist 1.234 €.", "de", 1234),
    ("1.234.567 Einwohner", "de", 1234567),
    ("Il a payé 1 234,50 €.", "fr", 1234.5),
    ("Réponse : 3,5 kg", "fr", 3.5),
    ("0,125", "de", 0.125),
    ("A resposta é 7,5.", "pt", 7.5),
    ("1'234", None, 1234),
    ("Answer: 1,23,456 rupees", "hi", 123456),
    ("He ends with -5 degrees.", None, -5),
    ("The temperature is −12°C.", None, -12),
    ("He paid -$5.", None, -5),
    ("The range 3-4 gives 4", None, 4),
    ("She buys 3*4=<<3*4=12>>12 eggs. #### 12", None, 12),
    ("Total: <<1000/2=500>>500 people", None, 500),
    ("So the result is <<5+7=12>>", None, 12),
    ("The answer is 18 dollars, which is 3 more than 15.", None, 18),
    ("The answer is 3 + 4 = 7.", None, 7),
    ("The answer is 12\n\nBecause 3 times 4.", None, 12),
    ("In 2023, 100 people came. The answer is 100.", None, 100),
    ("x = 5, so the answer is **5**.", None, 5),
    ("\\boxed{72}", None, 72),
    ("50%", None, 50),
    ("الإجابة هي ٤٢", "ar", 42),
    ("جواب: ۱۲۳", None, 123),
    ("٣٫٥ كيلوغرام", "ar", 3.5),
    ("उत्तर: ४२", "hi", 42),
    ("উত্তর: ১২৩৪", "bn", 1234),
    ("సమాధానం: ౫౬", "te", 56),
    ("คำตอบคือ ๑๒", "th", 12),
    ("答案是１２３个苹果。", "zh", 123),
    ("Mei现在有9个苹果。", "zh", 9),
    ("答えは 42 個です。", "ja", 42),
    ("정답: 7개", "ko", 7),
    ("Ответ: 15 яблок", "ru", 15),
    ("Jibu: 18", "sw", 18),
    ("Jawabannya adalah 25.", "id", 25),
    ("Đáp án: 30", "vi", 30),
    ("Mei hat jetzt 9 Äpfel.", "de", 9),
    ("no number here", None, None),
]


@pytest.mark.parametrize("text, lang, expected", NUMBER_CASES)
def test_extract_number(text, lang, expected):
    assert extract_number(text, lang) == expected


def test_verify_number_tolerance_and_gold_forms():
    assert verify_number("The answer is 0.3333333", 1 / 3, rel_tol=1e-6)
    assert not verify_number("The answer is 0.33", 1 / 3)
    assert verify_number("Antwort: 1.234", "1234", lang="de")
    assert verify_number("#### 1,234", "#### 1234")
    assert not verify_number("no idea", 5)
    with pytest.raises(ValueError, match="holds no number"):
        verify_number("5", "five")


def test_verifier_scorer_gates_by_language():
    responses = ["Lina hat jetzt 12 Äpfel.", "Lina has 12 apples now.", "Lina a maintenant 13 pommes."]
    golds, targets = [12, 12, 12], ["de", "de", "fr"]
    gated = VerifierScorer().score(responses, targets, golds)
    np.testing.assert_array_equal(gated.reward, [1, 0, 0])          # right number, wrong language
    np.testing.assert_array_equal(gated.correct, [1, 1, 0])
    free = VerifierScorer(gate="none").score(responses, targets, golds)
    np.testing.assert_array_equal(free.reward, [1, 1, 0])


def test_verifier_result_has_its_own_fields_metrics_and_details():
    responses = ["Lina hat jetzt 12 Äpfel.", "Lina has 12 apples now.", "Lina hat jetzt 13 Äpfel."]
    res = VerifierScorer().score(responses, ["de", "de", "de"], [12, 12, 12])
    assert isinstance(res, VerifierResult) and not hasattr(res, "raw_similarity")
    np.testing.assert_array_equal(res.correct, [1, 1, 0])
    np.testing.assert_array_equal(res.gate, [1, 0, 1])
    np.testing.assert_array_equal(res.reward, [1, 0, 0])
    assert res.predicted_lang == ["de", "en", "de"] and res.lid_prob.shape == (3,)
    metrics = res.metrics()
    assert set(metrics) == {"reward", "gate", "accuracy", "time/lid", "time/verify"}
    assert metrics["reward"] == pytest.approx(1 / 3) and metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["gate"] == pytest.approx(2 / 3)
    assert res.details(1) == {"correct": 1.0, "predicted_lang": "en", "gate": 0.0}
    assert res.details(2) == {"correct": 0.0, "predicted_lang": "de", "gate": 1.0}


def test_verifier_gate_is_a_constructor_option():
    responses = ["Lina has 12 apples now.", "Lina a maintenant 12 pommes."]
    hard = VerifierScorer(gate="hard").score(responses, ["de", "fr"], [12, 12])
    np.testing.assert_array_equal(hard.reward, [0, 1])
    none = VerifierScorer(gate="none").score(responses, ["de", "fr"], [12, 12])
    np.testing.assert_array_equal(none.reward, [1, 1])
    assert none.predicted_lang == [None, None] and "lid" in none.timings   # no LID without a gate
    soft = VerifierScorer(gate="soft").score(responses, ["de", "fr"], [12, 12])
    assert soft.reward[0] == 0 and 0.5 < soft.reward[1] <= 1.0              # the LID probability
    with pytest.raises(ValueError, match="gate must be one of"):
        VerifierScorer(gate="strict")
    with pytest.raises(ValueError, match="one entry per response"):
        VerifierScorer().score(responses, ["de"], [12, 12])


def test_verifier_checks_a_gold_key_as_a_word_and_gates_it():
    from extras.verifier import Key, contains_key
    assert contains_key("Hoshima の首都は Kaderu です。", "Kaderu")
    assert not contains_key("The capital is Kaderus.", "Kaderu")            # inside a longer word
    assert not contains_key("Sandoria 的丰收节是在十二月举行的。", "二月")       # 二月 inside 十二月
    assert not contains_key("収穫祭は 11月 に", "1月") and contains_key("収穫祭は 1月 に", "1月")
    s = VerifierScorer(gate="hard")
    out = s.score(["The capital of Hoshima is Kaderu.", "The capital of Hoshima is Yumeda.",
                   "Hoshima の首都は Kaderu です。", "There are 12 apples."],
                  ["en", "en", "en", "en"], [Key("Kaderu"), Key("Kaderu"), Key("Kaderu"), 12])
    # right key in English; wrong key; right key but in Japanese (gate 0); a number still checks
    assert out.correct.tolist() == [1, 0, 1, 1] and out.reward.tolist() == [1, 0, 0, 1]
