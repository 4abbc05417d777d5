"""The built-in world teaches (issue 31): a few LRPO steps with the paper's reward (calibrated
similarity, gated by language ID) raise the policy's preference for the *right* fact over a wrong
one, in the question's own language, where the gate cannot tell them apart.

The measure is the margin log π(right answer | x, ℓ_x) − log π(wrong answer | x, ℓ_x) on the
questions trained on: the wrong answer is the same sentence in the same language with another
region's value, so both pass the language-ID gate alike and only correctness separates them. The
default run once raised its training reward through the gate alone while held-out accuracy fell
(0.260 → 0.187); this test fails if the reward stops teaching facts.
"""
import random

import torch

import lrpo
import toy
from data import build_prompt

QUESTIONS = 16   # regional questions not in their region's language, trained on every step
STEPS = 6


def wrong_answer(example, rng):
    """The example's reference sentence with another region's value of the same attribute."""
    region = next(r for r in toy.REGIONS if r.name == example.region[0])
    attribute = example.id.split("-", 1)[1]
    other = rng.choice([r for r in toy.REGIONS if r.name != region.name and r.month != region.month])
    swapped = toy.Region(region.name, region.local, other.capital, other.river, other.dish, other.month)
    return toy.fact_qa(swapped, attribute, example.lang)[1]


@torch.no_grad()
def answer_logprob(model, tokenizer, example, answer):
    """log π(answer + EOS | the question, tagged with its own language)."""
    prompt = tokenizer(build_prompt(tokenizer, example.question, example.lang),
                       add_special_tokens=False)["input_ids"]
    target = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = torch.tensor([prompt + target])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1:-1].float(), -1)
    return float(logp.gather(1, torch.tensor(target)[:, None]).sum())


def margins(run, questions, wrong):
    return [answer_logprob(run.model, run.tokenizer, q, q.answer)
            - answer_logprob(run.model, run.tokenizer, q, w) for q, w in zip(questions, wrong)]


def test_a_few_steps_teach_the_right_fact_not_only_the_language(tmp_path, toy_model_and_tokenizer):
    cfg = lrpo.parse_args(["--out", str(tmp_path / "run"), "--steps", str(STEPS), "--eval-size", "0",
                           "--questions-per-step", str(QUESTIONS), "--no-progress"])
    run = lrpo.set_up(cfg)
    rng = random.Random(0)
    candidates = [e for e in run.train if toy.question_group(e) == "regional/other-q"]
    run.train = rng.sample(candidates, QUESTIONS)   # one step covers them all
    wrong = [wrong_answer(q, rng) for q in run.train]
    before = margins(run, run.train, wrong)
    rewards = [lrpo.train_step(run, step)[0] for step in range(STEPS)]
    after = margins(run, run.train, wrong)
    gain = [a - b for a, b in zip(after, before)]
    # the right fact gains on the wrong one, on average and for most questions
    assert sum(gain) / len(gain) > 0.5, gain
    assert sum(g > 0 for g in gain) >= 0.75 * len(gain), gain
    assert all(r["train/skipped_steps"] == 0 for r in rewards)
